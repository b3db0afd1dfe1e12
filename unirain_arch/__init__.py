"""UniRain networks for BasicSR: importing this package registers every ``*_arch.py`` in ARCH_REGISTRY.

    from unirain_arch import UniRain
    net = UniRain(preset='tiny')
"""
import importlib
from os import path as osp

from unirain_utils.compat import make_basicsr_importable

make_basicsr_importable()

from basicsr.utils import scandir  # noqa: E402  (basicsr imports only after the torchvision alias)

_folder = osp.dirname(osp.abspath(__file__))
_arch_modules = [
    importlib.import_module(f'unirain_arch.{osp.splitext(name)[0]}')
    for name in sorted(scandir(_folder)) if name.endswith('_arch.py')
]

from unirain_arch.prenet_arch import PReNet  # noqa: E402
from unirain_arch.unirain_arch import UniRain, UniRainDense  # noqa: E402

__all__ = ['UniRain', 'UniRainDense', 'PReNet']
