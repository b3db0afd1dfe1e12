"""Per-type reweighted losses (``*_loss.py``, LOSS_REGISTRY) and the UniRainModel (``*_model.py``, MODEL_REGISTRY)."""
import importlib
from os import path as osp

import unirain_arch  # noqa: F401  (applies the basicsr compat patches before basicsr is used)
from basicsr.utils import scandir

_folder = osp.dirname(osp.abspath(__file__))
_modules = [
    importlib.import_module(f'unirain_losses.{osp.splitext(name)[0]}')
    for name in sorted(scandir(_folder)) if name.endswith(('_loss.py', '_model.py'))
]
