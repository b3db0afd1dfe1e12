"""Per-type reweighted losses (``*_loss.py``, LOSS_REGISTRY) and the UniRainModel (``*_model.py``, MODEL_REGISTRY).

    from unirain_losses import CoBaLoss, TURLoss, UniformTypeLoss

Importing this package builds no network and imports no arch: the losses are plain ``torch.nn.Module``s.
"""
import importlib
from os import path as osp

from unirain_utils.compat import make_basicsr_importable

make_basicsr_importable()

from basicsr.utils import scandir  # noqa: E402  (basicsr imports only after the torchvision alias)

_folder = osp.dirname(osp.abspath(__file__))
_modules = [
    importlib.import_module(f'unirain_losses.{osp.splitext(name)[0]}')
    for name in sorted(scandir(_folder)) if name.endswith(('_loss.py', '_model.py'))
]

from unirain_losses.coba_loss import CoBaLoss  # noqa: E402
from unirain_losses.tur_loss import TURLoss  # noqa: E402
from unirain_losses.uniform_loss import UniformTypeLoss  # noqa: E402
from unirain_losses.unirain_model import UniRainModel  # noqa: E402

__all__ = ['CoBaLoss', 'TURLoss', 'UniformTypeLoss', 'UniRainModel']
