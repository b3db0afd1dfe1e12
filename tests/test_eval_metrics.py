"""Evaluation conventions: RGB and MATLAB-Y PSNR/SSIM agree with independent computations; options use them."""
import glob
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from tool_loader import load_tool
import unirain_arch  # noqa: F401  (basicsr compat patches)
from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY
from unirain_utils.options import load_options
from unirain_utils.image_io import to_integer
from unirain_utils import lpips_metric

ROOT = Path(__file__).resolve().parents[1]
TEST_OPTIONS = sorted(glob.glob(str(ROOT / 'options' / 'test_*.yml')))


def matlab_y(bgr_u8):
    """MATLAB rgb2ycbcr's Y in [16, 235] from uint8 BGR, in floating point (no rounding of Y)."""
    b, g, r = (bgr_u8[..., i].astype(np.float64) / 255. for i in range(3))
    return 16. + 65.481 * r + 128.553 * g + 24.966 * b


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255. ** 2 / mse)


def ssim_independent(a, b):
    """MATLAB-style SSIM (Gaussian sigma 1.5, 11 taps, population covariance) from scikit-image."""
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.)
    if a.ndim == 2:
        return structural_similarity(a.astype(np.float64), b.astype(np.float64), **kw)
    return np.mean([structural_similarity(a[..., c].astype(np.float64), b[..., c].astype(np.float64), **kw)
                    for c in range(a.shape[2])])


@pytest.fixture(scope='module')
def fixed_pair():
    """A smooth clean image and a streaky, noisy 'output' of odd size (uint8 BGR)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:37, 0:53]
    clean = np.stack([80 + 60 * np.sin(xx / 7.), 120 + 50 * np.cos(yy / 5.), 60 + xx + yy], axis=-1)
    out = clean + rng.normal(0, 6, clean.shape) + 25 * ((xx + 2 * yy) % 11 == 0)[..., None]
    return np.clip(out, 0, 255).round().astype(np.uint8), np.clip(clean, 0, 255).round().astype(np.uint8)


def test_constant_offset_has_closed_form_psnr():
    compare = load_tool('compare')
    gt = np.full((16, 24, 3), 100, np.uint8)
    out = gt + np.uint8(5)
    values = compare.image_metrics(out, gt)
    assert values['psnr_rgb'] == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    # a grey offset of d moves MATLAB Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219 / 255
    assert values['psnr_y'] == pytest.approx(20 * math.log10(255 / (5 * 219 / 255)), abs=1e-4)


def test_rgb_and_y_metrics_match_independent_numpy(fixed_pair):
    out, gt = fixed_pair
    values = load_tool('compare').image_metrics(out, gt)
    assert values['psnr_rgb'] == pytest.approx(psnr(out, gt), abs=1e-9)
    assert values['psnr_y'] == pytest.approx(psnr(matlab_y(out), matlab_y(gt)), abs=1e-4)
    assert values['ssim_rgb'] == pytest.approx(ssim_independent(out, gt), abs=1e-4)
    assert values['ssim_y'] == pytest.approx(ssim_independent(matlab_y(out), matlab_y(gt)), abs=1e-4)
    # the two conventions really differ on this pair: a table must say which one it uses
    assert abs(values['psnr_rgb'] - values['psnr_y']) > 0.5


def test_y_uses_red_green_blue_weights_in_bgr_order():
    gt = np.zeros((16, 16, 3), np.uint8)
    out = gt.copy()
    out[..., 2] = 10  # red only (BGR order): Y moves by 10 * 65.481 / 255
    values = load_tool('compare').image_metrics(out, gt)
    assert values['psnr_y'] == pytest.approx(20 * math.log10(255 / (10 * 65.481 / 255)), abs=1e-4)


def test_rounding_and_truncation_conventions():
    img = np.array([[[0.0, 0.5, 1.0]], [[0.999, 0.3, -0.2]]], np.float32)
    assert to_integer(img, 8, 'round').tolist() == [[[0, 128, 255]], [[255, 76, 0]]]
    assert to_integer(img, 8, 'trunc').tolist() == [[[0, 127, 255]], [[254, 76, 0]]]
    assert to_integer(img, 16, 'round')[0, 0].tolist() == [0, 32768, 65535]


def test_test_options_compute_both_conventions_without_crop(fixed_pair):
    assert TEST_OPTIONS, 'options/test_*.yml missing'
    out, gt = fixed_pair
    expected = {'psnr_rgb': psnr(out, gt), 'psnr_y': psnr(matlab_y(out), matlab_y(gt)),
                'ssim_rgb': ssim_independent(out, gt), 'ssim_y': ssim_independent(matlab_y(out), matlab_y(gt))}
    for path in TEST_OPTIONS:
        metrics = load_options(path)['val']['metrics']
        if 'niqe' in metrics:  # the unpaired real-photo option
            assert metrics['niqe']['crop_border'] == 0
            continue
        assert set(expected) <= set(metrics), f'{path}: metrics {sorted(metrics)}'
        for name, value in expected.items():
            assert metrics[name]['crop_border'] == 0, f'{path}: {name} crops a border'
            got = calculate_metric({'img': out, 'img2': gt}, metrics[name])
            assert got == pytest.approx(value, abs=1e-4), f'{path}: {name}'


def test_lpips_is_registered_and_names_the_extra_when_missing(monkeypatch):
    assert METRIC_REGISTRY.get('calculate_lpips') is lpips_metric.calculate_lpips
    monkeypatch.setitem(sys.modules, 'lpips', None)
    monkeypatch.setitem(sys.modules, 'pyiqa', None)
    monkeypatch.setattr(lpips_metric, '_models', {})
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(lpips_metric.LPIPSUnavailable, match=r"unirain\[metrics\]"):
        lpips_metric.calculate_lpips(img, img)
    assert lpips_metric.lpips_available() == (False, lpips_metric.INSTALL_HINT)


def test_lpips_feeds_rgb_in_minus_one_one(monkeypatch):
    seen = {}

    class FakeLPIPS:
        def __init__(self, net, verbose):
            seen['net'] = net

        def to(self, device):
            return self

        def __call__(self, a, b):
            seen['a'], seen['b'] = a, b
            return (a - b).abs().mean(dim=(1, 2, 3))

    monkeypatch.setitem(sys.modules, 'lpips', types.SimpleNamespace(LPIPS=FakeLPIPS))
    monkeypatch.setattr(lpips_metric, '_models', {})
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in BGR
    value = calculate_metric({'img': bgr, 'img2': np.zeros_like(bgr)}, {'type': 'calculate_lpips', 'net': 'vgg'})
    assert seen['net'] == 'vgg'
    assert seen['a'].shape == (1, 3, 4, 6)
    assert seen['a'][0, 0].eq(1).all() and seen['a'][0, 1:].eq(-1).all()  # red first, scaled to [-1, 1]
    assert seen['b'].eq(-1).all()
    assert value == pytest.approx(2 / 3)
