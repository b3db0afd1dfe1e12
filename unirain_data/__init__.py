"""Datasets (``*_dataset.py``, DATASET_REGISTRY), manifests, rain synthesis and distillation for UniRain.

Only the dataset files are imported here; the distillation stages (open_clip, transformers, faiss) are
imported by ``tools/distill.py`` when used, so ``basicsr train`` does not pay for them. No network is imported.
"""
import importlib
from os import path as osp

from unirain_utils.compat import make_basicsr_importable

make_basicsr_importable()

from basicsr.utils import scandir  # noqa: E402  (basicsr imports only after the torchvision alias)

_folder = osp.dirname(osp.abspath(__file__))
_modules = [
    importlib.import_module(f'unirain_data.{osp.splitext(name)[0]}')
    for name in sorted(scandir(_folder)) if name.endswith('_dataset.py')
]

from unirain_data.distilled_dataset import DistilledRainDataset  # noqa: E402

__all__ = ['DistilledRainDataset']
