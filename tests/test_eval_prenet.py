"""Real data: the official PReNet Rain100L weights through `basicsr test` score like PReNet on its own data."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unirain_utils.options import load_options

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ('1', '2')


def test_official_prenet_through_basicsr_test(shared_data, tmp_path):
    weights = shared_data / 'prenet_official' / 'Rain100L' / 'net_latest.pth'
    pairs = shared_data / 'rain100l_train'
    if not weights.is_file() or not (pairs / 'rainy').is_dir():
        pytest.skip('official PReNet weights or Rain100L pairs not in the shared data')
    # the per-type layout DistilledRainDataset reads, made of links to the shared files
    for sub, source in (('input', 'rainy'), ('target', 'clean')):
        folder = tmp_path / 'data' / 'drs' / sub
        folder.mkdir(parents=True)
        for name in PAIRS:
            os.symlink(pairs / source / f'{name}.png', folder / f'{name}.png')
    opt = json.loads(json.dumps(load_options(ROOT / 'options' / 'test_PReNet.yml')))
    opt['datasets'] = {'test_1': {**opt['datasets']['test_1'], 'dataroot': str(tmp_path / 'data')}}
    opt['path']['pretrain_network_g'] = str(weights)
    opt['val'].update(save_img=False, pbar=False)
    (tmp_path / 'opt.yml').write_text(yaml.safe_dump(opt, sort_keys=False))

    proc = subprocess.run([sys.executable, '-m', 'unirain_utils.cli', 'test', '-opt', 'opt.yml'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    scores = {name: float(value) for name, value in re.findall(r'# (\w+): ([\d.]+)', log)}
    assert scores['psnr_y'] > 35, log[-2000:]  # published 37.48 dB on the Rain100L test set
    assert scores['ssim_y'] > 0.95
    assert scores['psnr_rgb'] < scores['psnr_y']  # RGB is the stricter convention on this data
