"""UniRain networks for BasicSR: importing this package registers every ``*_arch.py`` in ARCH_REGISTRY."""
import importlib
from os import path as osp

from unirain_arch import compat

compat.apply()

from basicsr.utils import scandir  # noqa: E402  (basicsr only imports after the compat patches)

_folder = osp.dirname(osp.abspath(__file__))
_arch_modules = [
    importlib.import_module(f'unirain_arch.{osp.splitext(name)[0]}')
    for name in sorted(scandir(_folder)) if name.endswith('_arch.py')
]
