"""tools/compare.py on a tiny 4-type set: tables, JSON and grids hold independently recomputed values."""
import json
import math

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from tool_loader import load_tool
import unirain_arch  # noqa: F401  (basicsr compat patches)
from unirain_arch.inference import load_model

TYPES = ('drs', 'drd', 'nrs', 'nrd')
SHIFT = 20  # the "model" adds 20/255 to every pixel
SWINIR = {'type': 'SwinIR', 'upscale': 1, 'in_chans': 3, 'img_size': 16, 'window_size': 4, 'img_range': 1.,
          'depths': [1], 'embed_dim': 8, 'num_heads': [2], 'mlp_ratio': 1, 'upsampler': '',
          'resi_connection': '1conv'}


compare = load_tool('compare')


def psnr(a, b):
    return 10 * math.log10(255. ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr_y(a, b):
    def y(img):
        return 16 + (65.481 * img[..., 2] + 128.553 * img[..., 1] + 24.966 * img[..., 0]) / 255.
    return 10 * math.log10(255. ** 2 / np.mean((y(a.astype(np.float64)) - y(b.astype(np.float64))) ** 2))


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('compare')
    rng = np.random.default_rng(0)
    for t_index, rain_type in enumerate(TYPES):
        for sub in ('input', 'target'):
            (root / 'data' / rain_type / sub).mkdir(parents=True)
        for i in range(2 if rain_type != 'nrd' else 3):
            h, w = 21 + i, 30 + 2 * t_index  # odd sizes: nothing may be cropped
            gt = rng.integers(40, 200, (h, w, 3)).astype(np.uint8)
            lq = np.clip(gt.astype(int) - 25 + rng.integers(-6, 7, gt.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / 'data' / rain_type / 'input' / f'{i}.png'), lq)
            cv2.imwrite(str(root / 'data' / rain_type / 'target' / f'{i}.png'), gt)
    torch.manual_seed(0)
    net = load_model(network=SWINIR, allow_untrained=True).net
    nn.init.zeros_(net.conv_last.weight)
    nn.init.constant_(net.conv_last.bias, SHIFT / 255)
    torch.save({'params': net.state_dict()}, root / 'shift.pth')
    (root / 'shift.yml').write_text(yaml.safe_dump({'network_g': SWINIR,
                                                    'path': {'pretrain_network_g': str(root / 'shift.pth')}}))
    (root / 'arch.yml').write_text(yaml.safe_dump({'network_g': SWINIR}))
    return root


@pytest.fixture(scope='module')
def report(workspace):
    out = workspace / 'out'
    code = compare.main(['--data', str(workspace / 'data'), '--out', str(out), '--device', 'cpu', '--quiet',
                         '--model', f'Shift={workspace / "shift.yml"}',
                         '--model', f'ShiftCkpt={workspace / "shift.pth"}:{workspace / "arch.yml"}',
                         '--model', f'Random=untrained:{workspace / "arch.yml"}', '--allow-untrained',
                         '--latency-size', '32', '--grid-samples', '2'])
    assert code == 0
    return json.loads((out / 'results.json').read_text()), (out / 'results.md').read_text(), out


def expected_values(workspace, shift):
    per_type = {}
    for rain_type in TYPES:
        rows = []
        for path in sorted((workspace / 'data' / rain_type / 'input').glob('*.png')):
            lq = cv2.imread(str(path))
            gt = cv2.imread(str(path.parent.parent / 'target' / path.name))
            out = np.clip(lq.astype(int) + shift, 0, 255).astype(np.uint8)
            rows.append((psnr(out, gt), psnr_y(out, gt)))
        per_type[rain_type.upper()] = np.mean(rows, axis=0)
    return per_type


def test_values_equal_independent_computation(workspace, report):
    data, _, _ = report
    models = {m['name']: m for m in data['models']}
    assert list(models) == [compare.INPUT_ROW, 'Shift', 'ShiftCkpt', 'Random']
    assert data['data']['types'] == {'DRS': 2, 'DRD': 2, 'NRS': 2, 'NRD': 3}
    for name, shift in ((compare.INPUT_ROW, 0), ('Shift', SHIFT), ('ShiftCkpt', SHIFT)):
        expected = expected_values(workspace, shift)
        for rain_type, (p_rgb, p_y) in expected.items():
            got = models[name]['per_type'][rain_type]
            assert got['psnr_rgb'] == pytest.approx(p_rgb, abs=1e-6), (name, rain_type)
            assert got['psnr_y'] == pytest.approx(p_y, abs=1e-3), (name, rain_type)
        # the average weighs every type the same (NRD has 3 images, the others 2)
        assert models[name]['average']['psnr_rgb'] == pytest.approx(np.mean([v[0] for v in expected.values()]))
    assert models['Shift']['average']['psnr_rgb'] > models[compare.INPUT_ROW]['average']['psnr_rgb'] + 3
    assert models['Random']['untrained'] and 'untrained' in models['Random']['weights']
    assert models['Shift']['params'] == sum(p.numel() for p in load_model(network=SWINIR,
                                                                          allow_untrained=True).parameters())
    assert models['Shift']['latency_ms_per_mp'] > 0 and models[compare.INPUT_ROW]['latency_ms_per_mp'] is None


def test_markdown_states_conventions_and_columns(report):
    data, text, _ = report
    for column in ('DRS PSNR-RGB', 'NRD SSIM-RGB', 'Avg PSNR-Y', 'Avg SSIM-Y', 'params (M)', 'ms / MP'):
        assert column in text
    assert 'MATLAB BT.601 Y' in text and 'no border crop' in text and 'rounding' in text
    assert 'Random *(untrained)*' in text
    shift = next(m for m in data['models'] if m['name'] == 'Shift')
    assert f'| Shift | {shift["per_type"]["DRS"]["psnr_rgb"]:.2f} |' in text
    if not data['lpips']['computed']:
        assert 'LPIPS: not computed' in text


def test_grids_show_rainy_models_and_clean(report):
    _, _, out = report
    for rain_type in ('DRS', 'DRD', 'NRS', 'NRD'):
        grid = cv2.imread(str(out / f'grid_{rain_type}.png'))
        assert grid is not None
        # 2 sample rows; rainy | 3 models | clean columns of cells at least 160 px high
        assert grid.shape[0] >= 2 * 160 and grid.shape[1] >= 5 * 160


def test_untrained_needs_opt_in_and_readme_block(workspace, tmp_path, capsys):
    args = ['--data', str(workspace / 'data'), '--out', str(tmp_path / 'o'), '--device', 'cpu', '--quiet',
            '--latency-size', '16', '--max-per-type', '1', '--grid-samples', '0', '--lpips', 'off']
    assert compare.main(args + ['--model', 'R=untrained:SwinIR,window_size=4,embed_dim=8']) == 2
    assert '--allow-untrained' in capsys.readouterr().err
    readme = tmp_path / 'README.md'
    readme.write_text(f'# x\n\n{compare.README_BEGIN}\nold\n{compare.README_END}\n\ntail\n')
    assert compare.main(args + ['--model', f'S={workspace / "shift.yml"}', '--readme', str(readme)]) == 0
    text = readme.read_text()
    assert 'old' not in text and '| S |' in text and text.endswith('tail\n')
    assert text.count(compare.README_BEGIN) == 1


def test_manifest_input(workspace, tmp_path):
    from unirain_data.manifest import ManifestEntry, write_manifest
    entries = [ManifestEntry(lq=str(p), gt=str(p.parent.parent / 'target' / p.name), type='DRS', split='test')
               for p in sorted((workspace / 'data' / 'drs' / 'input').glob('*.png'))]
    write_manifest(tmp_path / 'm.jsonl', entries)
    pairs = compare.pairs_from_manifest(str(tmp_path / 'm.jsonl'), 'test')
    assert list(pairs) == ['DRS'] and [p.name for p in pairs['DRS']] == ['0.png', '1.png']
