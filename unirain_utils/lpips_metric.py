"""LPIPS (Zhang et al., CVPR 2018) as a BasicSR metric: ``{type: calculate_lpips, net: alex}`` in ``val.metrics``.

An optional extra: the ``lpips`` package (``pip install 'unirain[metrics]'``), or ``pyiqa`` when installed
instead. Neither is imported until the metric is first computed, so option files without LPIPS never need
them. Both fetch their backbone weights on first use; offline, those must already be in the torch cache.
Lower is better. Inputs follow BasicSR's metric convention: uint8 HxWx3 BGR images in [0, 255].
"""
import numpy as np
import torch

from unirain_utils.compat import make_basicsr_importable

make_basicsr_importable()

from basicsr.utils.registry import METRIC_REGISTRY  # noqa: E402

INSTALL_HINT = "LPIPS needs the optional extra: pip install 'unirain[metrics]' (the lpips package)"
_models = {}


class LPIPSUnavailable(RuntimeError):
    """LPIPS was asked for but its package or its weights are not there."""


def _build(net, device):
    try:
        import lpips
    except ImportError:
        lpips = None
    if lpips is not None:
        try:
            model = lpips.LPIPS(net=net, verbose=False)
        except Exception as exc:  # torchvision's weight download fails offline with various errors
            raise LPIPSUnavailable(f'lpips could not load its {net} backbone weights ({type(exc).__name__}: {exc}); '
                                   'they are downloaded into the torch cache on first use') from exc
        # lpips takes RGB in [-1, 1]
        return lambda a, b: model.to(device)(a * 2 - 1, b * 2 - 1)
    try:
        import pyiqa
    except ImportError:
        raise LPIPSUnavailable(INSTALL_HINT) from None
    try:
        model = pyiqa.create_metric('lpips' if net == 'alex' else f'lpips-{net}', device=device, as_loss=False)
    except Exception as exc:
        raise LPIPSUnavailable(f'pyiqa could not build LPIPS-{net} ({type(exc).__name__}: {exc})') from exc
    # pyiqa takes RGB in [0, 1]
    return lambda a, b: model(a, b)


def lpips_available(net='alex', device='cpu'):
    """(True, '') when LPIPS can be computed here, else (False, the reason)."""
    try:
        _get(net, device)
    except LPIPSUnavailable as exc:
        return False, str(exc)
    return True, ''


def _get(net, device):
    key = (net, str(device))
    if key not in _models:
        _models[key] = _build(net, torch.device(device))
    return _models[key]


def _to_tensor(img):
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f'calculate_lpips expects uint8 images in [0, 255] (BasicSR tensor2img), got {img.dtype}')
    rgb = img[..., ::-1].astype(np.float32) / 255.
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]


@METRIC_REGISTRY.register()
def calculate_lpips(img, img2, crop_border=0, input_order='HWC', net='alex', device='cpu', **kwargs):
    """LPIPS distance between two uint8 HxWx3 BGR images (lower is better); ``net``: alex (default) or vgg."""
    if input_order != 'HWC':
        raise ValueError(f'calculate_lpips: input_order {input_order!r}; only HWC (BasicSR tensor2img) is supported')
    if img.shape != img2.shape:
        raise ValueError(f'calculate_lpips: image shapes differ: {img.shape} vs {img2.shape}')
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    model = _get(net, device)
    with torch.no_grad():
        value = model(_to_tensor(img).to(device), _to_tensor(img2).to(device))
    return float(value.mean())
