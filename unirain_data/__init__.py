"""Datasets (``*_dataset.py``, DATASET_REGISTRY), manifests, rain synthesis and distillation for UniRain.

Only the dataset files are imported here; the distillation stages (open_clip, transformers, faiss) are
imported by ``tools/distill.py`` when used, so ``basicsr train`` does not pay for them.
"""
import importlib
from os import path as osp

import unirain_arch  # noqa: F401  (applies the basicsr compat patches before basicsr is used)
from basicsr.utils import scandir

from unirain_data import lpips_metric  # noqa: F401  (registers calculate_lpips; lpips is imported on use)

_folder = osp.dirname(osp.abspath(__file__))

_modules = [
    importlib.import_module(f'unirain_data.{osp.splitext(name)[0]}')
    for name in sorted(scandir(_folder)) if name.endswith('_dataset.py')
]
