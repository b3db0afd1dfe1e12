"""Inference: sizes kept (pad, never crop), tiling matches whole-image runs, folders with bad files, formats."""
import hashlib
import os

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from tool_loader import load_tool
from unirain_arch.inference import InferenceError, derain_image, derain_tensor, load_model, load_state_dict
from unirain_arch.padding import PadToMultiple
from unirain_utils.image_io import read_image, write_image

derain_cli = load_tool('derain')

# BasicSR's SwinIR needs sizes divisible by its window and does not pad: the worst case for "never crop".
SWINIR = {'type': 'SwinIR', 'upscale': 1, 'in_chans': 3, 'img_size': 16, 'window_size': 4, 'img_range': 1.,
          'depths': [1], 'embed_dim': 8, 'num_heads': [2], 'mlp_ratio': 1, 'upsampler': '',
          'resi_connection': '1conv'}
SHIFT = 20 / 255  # whole steps in 8 bit (20) and in 16 bit (20 * 257): no rounding ties


def shifting_swinir():
    """SwinIR whose last conv is zero with bias SHIFT: output = clamp(input + SHIFT), exactly predictable."""
    torch.manual_seed(0)
    net = load_model(network=SWINIR, allow_untrained=True)
    assert isinstance(net, PadToMultiple) and net.multiple == 4
    nn.init.zeros_(net.net.conv_last.weight)
    nn.init.constant_(net.net.conv_last.bias, SHIFT)
    return net


@pytest.fixture(scope='module')
def swinir_option(tmp_path_factory):
    """A BasicSR option file whose checkpoint (BasicSR format, params_ema) is the shifting SwinIR."""
    folder = tmp_path_factory.mktemp('model')
    ckpt = folder / 'net_g_7.pth'
    torch.save({'params': {k: torch.zeros_like(v) for k, v in shifting_swinir().net.state_dict().items()},
                'params_ema': shifting_swinir().net.state_dict()}, ckpt)
    opt = folder / 'test_swinir.yml'
    opt.write_text(yaml.safe_dump({'network_g': SWINIR, 'path': {'pretrain_network_g': str(ckpt)}}))
    return opt


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def smooth_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2)
    return (img - img.min()) / (img.max() - img.min()) * 0.8


@pytest.mark.parametrize('size', [(13, 21), (1, 5), (37, 8)])
def test_output_keeps_odd_sizes_without_cropping(size):
    img = smooth_image(*size)
    out = derain_image(shifting_swinir(), img)
    assert out.shape == img.shape
    # every pixel, up to the last row and column, is its own input shifted: padded and cropped back in place
    np.testing.assert_allclose(out, np.clip(img + SHIFT, 0, 1), atol=1e-5)


def test_unirain_tiny_keeps_odd_sizes():
    torch.manual_seed(0)
    net = load_model(network={'type': 'UniRain', 'preset': 'tiny'}, allow_untrained=True)
    x = torch.rand(2, 3, 19, 27)
    assert derain_tensor(net, x).shape == x.shape


class LocalConvNet(nn.Module):
    """Three 3x3 convolutions: a 7-pixel receptive field, far inside a 32-pixel overlap."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return x + 0.1 * self.body(x)


def test_tiled_matches_untiled_on_a_large_image():
    torch.manual_seed(0)
    net = LocalConvNet().eval()
    torch.set_num_threads(2)
    x = torch.rand(1, 3, 1100, 1500, generator=torch.Generator().manual_seed(1))
    whole = derain_tensor(net, x)
    tiled = derain_tensor(net, x, tile_size=256, tile_overlap=32)
    assert tiled.shape == whole.shape == x.shape
    assert (tiled - whole).abs().max() < 1e-5


def test_half_precision_needs_a_gpu_and_bf16_runs_on_cpu():
    net = LocalConvNet().eval()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(InferenceError, match='CUDA'):
        derain_tensor(net, x, dtype=torch.float16)
    reference = derain_tensor(net, x)
    for tile in (None, 8):
        out = derain_tensor(net, x, tile_size=tile, tile_overlap=4, dtype=torch.bfloat16)
        assert out.dtype == torch.float32 and (out - reference).abs().max() < 0.05


def test_checkpoint_forms(tmp_path):
    state = LocalConvNet().state_dict()
    torch.save({f'module.{k}': v for k, v in state.items()}, tmp_path / 'plain.pth')
    loaded, key = load_state_dict(str(tmp_path / 'plain.pth'))
    assert key is None and loaded.keys() == state.keys()
    other = {k: v + 1 for k, v in state.items()}
    torch.save({'params': other, 'params_ema': state}, tmp_path / 'basicsr.pth')
    loaded, key = load_state_dict(str(tmp_path / 'basicsr.pth'))
    assert key == 'params_ema' and torch.equal(loaded['body.0.weight'], state['body.0.weight'])
    loaded, _ = load_state_dict(str(tmp_path / 'basicsr.pth'), 'params')
    assert torch.equal(loaded['body.0.weight'], other['body.0.weight'])
    torch.save({'params': other}, tmp_path / 'no_ema.pth')
    loaded, key = load_state_dict(str(tmp_path / 'no_ema.pth'), 'params_ema')
    assert key == 'params' and torch.equal(loaded['body.0.weight'], other['body.0.weight'])
    torch.save({'iter': 5, 'weights': state}, tmp_path / 'odd.pth')
    with pytest.raises(InferenceError, match="'iter'"):
        load_state_dict(str(tmp_path / 'odd.pth'))
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(InferenceError, match='junk.pth'):
        load_state_dict(str(tmp_path / 'junk.pth'))


def test_load_model_refuses_missing_weights_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(InferenceError, match='no weights'):
        load_model(network=SWINIR)
    torch.save(LocalConvNet().state_dict(), tmp_path / 'other.pth')
    with pytest.raises(InferenceError, match='does not fit'):
        load_model(str(tmp_path / 'other.pth'), SWINIR)


def write_inputs(folder):
    rng = np.random.default_rng(3)
    base = (smooth_image(20, 30, 5) * 255).round().astype(np.uint8)
    cv2.imwrite(str(folder / 'a.png'), base)
    cv2.imwrite(str(folder / 'b.jpg'), base, [cv2.IMWRITE_JPEG_QUALITY, 98])
    cv2.imwrite(str(folder / 'c.webp'), base)
    deep = (rng.random((17, 23, 3)) * 50000).astype(np.uint16)
    cv2.imwrite(str(folder / 'd16.png'), deep)
    cv2.imwrite(str(folder / 'gray.png'), base[..., 0])
    cv2.imwrite(str(folder / 'alpha.png'), np.dstack([base, rng.integers(0, 256, base.shape[:2], dtype=np.uint8)]))
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 20)
    (folder / 'empty.jpg').write_bytes(b'')
    jpeg = cv2.imencode('.jpg', (smooth_image(64, 64, 6) * 255).astype(np.uint8))[1].tobytes()
    (folder / 'cut.jpg').write_bytes(jpeg[:len(jpeg) // 2])
    (folder / 'notes.txt').write_text('not an image, not an input')
    return base, deep


def test_folder_with_corrupt_files(tmp_path, swinir_option, capsys):
    src, dst = tmp_path / 'in', tmp_path / 'out'
    src.mkdir()
    base, deep = write_inputs(src)
    before = {p.name: digest(p) for p in src.iterdir()}
    code = derain_cli.main(['--input', str(src), '--output', str(dst), '--opt', str(swinir_option),
                            '--device', 'cpu', '--tile', '0', '--quiet'])
    err = capsys.readouterr().err
    assert code == 1
    for bad in ('broken.png', 'empty.jpg', 'cut.jpg'):
        assert bad in err and not (dst / bad).exists()
    assert sorted(p.name for p in dst.iterdir()) == ['a.png', 'alpha.png', 'b.jpg', 'c.webp', 'd16.png', 'gray.png']
    assert {p.name: digest(p) for p in src.iterdir()} == before  # inputs untouched

    shifted = np.clip(base.astype(np.float64) + SHIFT * 255, 0, 255)
    np.testing.assert_array_equal(cv2.imread(str(dst / 'a.png')), np.round(shifted).astype(np.uint8))
    for name in ('b.jpg', 'c.webp'):  # lossy formats stay what they were (quality 95)
        assert (dst / name).read_bytes()[:4] == (src / name).read_bytes()[:4]
        expected = np.clip(cv2.imread(str(src / name)).astype(float) + SHIFT * 255, 0, 255)
        assert np.abs(cv2.imread(str(dst / name)).astype(float) - expected).mean() < 6  # the shift is 20
    out16 = cv2.imread(str(dst / 'd16.png'), cv2.IMREAD_UNCHANGED)
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, np.round(np.clip(deep + SHIFT * 65535, 0, 65535)).astype(np.uint16))
    gray = cv2.imread(str(dst / 'gray.png'), cv2.IMREAD_UNCHANGED)
    assert gray.ndim == 2 and np.abs(gray.astype(float) - np.clip(base[..., 0] + 20., 0, 255)).max() <= 1
    alpha_in = cv2.imread(str(src / 'alpha.png'), cv2.IMREAD_UNCHANGED)
    alpha_out = cv2.imread(str(dst / 'alpha.png'), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(alpha_out[..., 3], alpha_in[..., 3])


def test_never_overwrites_inputs(tmp_path, swinir_option, capsys):
    src = tmp_path / 'in'
    src.mkdir()
    write_inputs(src)
    before = {p.name: digest(p) for p in src.iterdir()}
    for output, inputs in ((src, [str(src)]), (src, [str(src / '*.png')]), (src / '..' / 'in', [str(src / 'a.png')])):
        code = derain_cli.main(['--input', *inputs, '--output', str(output), '--opt', str(swinir_option),
                                '--device', 'cpu', '--quiet'])
        assert code == 2
        assert 'overwrite an input' in capsys.readouterr().err
    assert {p.name: digest(p) for p in src.iterdir()} == before


def test_glob_recursive_layout_and_collisions(tmp_path, swinir_option, capsys):
    for sub in ('x', 'y', 'y/z'):
        (tmp_path / 'in' / sub).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / 'in' / sub / 'p.png'), np.full((9, 9, 3), 100, np.uint8))
    out = tmp_path / 'out'
    args = ['--opt', str(swinir_option), '--device', 'cpu', '--quiet', '--output']
    assert derain_cli.main(['--input', str(tmp_path / 'in'), '--recursive', *args, str(out)]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*.png')) == ['x/p.png', 'y/p.png', 'y/z/p.png']
    inner = tmp_path / 'in' / 'derained'  # an output folder inside the input folder, run twice
    for _ in range(2):
        assert derain_cli.main(['--input', str(tmp_path / 'in'), '--recursive', *args, str(inner)]) == 0
    assert sorted(str(p.relative_to(inner)) for p in inner.rglob('*.png')) == ['x/p.png', 'y/p.png', 'y/z/p.png']
    assert derain_cli.main(['--input', str(tmp_path / 'in' / '*' / 'p.png'), *args, str(tmp_path / 'o2')]) == 2
    assert 'both be written' in capsys.readouterr().err
    assert not (tmp_path / 'o2').exists()


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, :5] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / 'phone.jpg', exif=exif.tobytes(), quality=100)
    img, _ = read_image(str(tmp_path / 'phone.jpg'))
    assert img.shape[:2] == (30, 10) and img[:5].mean() > 0.9 and img[-5:].mean() < 0.1  # band now on top


def test_16bit_png_round_trip(tmp_path):
    deep = (np.random.default_rng(0).random((7, 9, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / 'in.png'), deep)
    img, meta = read_image(str(tmp_path / 'in.png'))
    assert meta.bit_depth == 16
    write_image(str(tmp_path / 'out.png'), img, meta)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'out.png'), cv2.IMREAD_UNCHANGED), deep)
    assert sorted(os.listdir(tmp_path)) == ['in.png', 'out.png']  # the atomic write left no temporary file
    assert os.stat(tmp_path / 'out.png').st_mode & 0o777 == os.stat(tmp_path / 'in.png').st_mode & 0o777
