"""The `basicsr` command: BasicSR's own pipelines, plugin discovery, training, resume and torchrun on CPU."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from unirain_utils.options import load_options

ROOT = Path(__file__).resolve().parents[1]
TINY_OPT = ROOT / 'tests' / 'options' / 'train_SwinIR_tiny.yml'
BASICSR = [sys.executable, '-m', 'unirain_utils.cli']


def run(args, cwd, env=None, check=True):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


def make_pairs(folder, count=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    for sub in ('gt', 'lq'):
        (folder / sub).mkdir(parents=True)
    for i in range(count):
        clean = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (5, 5), 2)
        rainy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255)
        cv2.imwrite(str(folder / 'gt' / f'{i}.png'), clean.astype(np.uint8))
        cv2.imwrite(str(folder / 'lq' / f'{i}.png'), rainy.astype(np.uint8))


@pytest.fixture
def tiny_option(tmp_path):
    make_pairs(tmp_path / 'data')
    opt = load_options(TINY_OPT)
    for phase in ('train', 'val'):
        opt['datasets'][phase]['dataroot_gt'] = str(tmp_path / 'data' / 'gt')
        opt['datasets'][phase]['dataroot_lq'] = str(tmp_path / 'data' / 'lq')
    path = tmp_path / 'train_tiny.yml'
    path.write_text(yaml.safe_dump(_plain(opt), sort_keys=False))
    return path


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def test_help_and_unknown_command(tmp_path):
    out = run(BASICSR + ['--help'], cwd=tmp_path).stdout
    assert 'basicsr {train,test,list}' in out and '--auto_resume' in out
    bad = run(BASICSR + ['trian'], cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


def test_list_shows_basicsr_and_plugin_names(tmp_path):
    lines = run(BASICSR + ['list'], cwd=tmp_path).stdout.splitlines()
    assert lines and all(re.fullmatch(r'(arch|model|dataset|loss|metric): \w+', line) for line in lines)
    assert len(lines) == len(set(lines))
    for expected in ('arch: SwinIR', 'model: SRModel', 'dataset: PairedImageDataset', 'loss: L1Loss',
                     'metric: calculate_psnr'):
        assert expected in lines
    only_arch = run(BASICSR + ['list', '--registry', 'arch'], cwd=tmp_path).stdout.splitlines()
    assert only_arch == [line for line in lines if line.startswith('arch: ')]


def test_broken_plugin_is_reported_by_name(tmp_path):
    """A third-party plugin that raises on import stops the command with its name and error."""
    dist = tmp_path / 'site' / 'brokenplugin-0.1.dist-info'
    dist.mkdir(parents=True)
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: brokenplugin\nVersion: 0.1\n')
    (dist / 'entry_points.txt').write_text('[basicsr.plugins]\nbroken = broken_mod\n')
    (tmp_path / 'site' / 'broken_mod.py').write_text('raise ImportError("needs libfoo")\n')
    proc = run(BASICSR + ['list'], cwd=tmp_path, env={'PYTHONPATH': str(tmp_path / 'site')}, check=False)
    assert proc.returncode == 1
    assert "plugin 'broken' (broken_mod) failed to import: ImportError: needs libfoo" in proc.stderr


def test_train_validate_checkpoint_and_auto_resume_on_cpu(tiny_option, tmp_path):
    run(BASICSR + ['train', '-opt', str(tiny_option)], cwd=tmp_path)
    exp = tmp_path / 'experiments' / 'test_swinir_tiny'
    assert (exp / 'models' / 'net_g_4.pth').is_file() and (exp / 'training_states' / '4.state').is_file()
    log = next(exp.glob('train_test_swinir_tiny_*.log')).read_text()
    psnr = [float(v) for v in re.findall(r'# psnr: ([\d.]+)', log)]
    assert len(psnr) >= 2 and all(10 < v < 60 for v in psnr)
    assert '# ssim:' in log
    weights_4 = torch.load(exp / 'models' / 'net_g_4.pth', map_location='cpu', weights_only=True)['params']

    run(BASICSR + ['train', '-opt', str(tiny_option), '--auto_resume', '--force_yml', 'train:total_iter=6'],
        cwd=tmp_path)
    logs = sorted(exp.glob('train_test_swinir_tiny_*.log'))
    resumed = logs[-1].read_text()
    assert 'Resuming training from epoch' in resumed and 'iter: 4' in resumed
    assert (exp / 'models' / 'net_g_6.pth').is_file()
    weights_6 = torch.load(exp / 'models' / 'net_g_6.pth', map_location='cpu', weights_only=True)['params']
    assert weights_4.keys() == weights_6.keys()
    assert any(not torch.equal(weights_4[k], weights_6[k]) for k in weights_4)


def test_torchrun_two_cpu_processes(tiny_option, tmp_path):
    entry = Path(sys.executable).parent / 'basicsr'  # the installed console script, as a user runs it
    run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29631',
                str(entry), 'train', '-opt', str(tiny_option), '--launcher', 'pytorch'], cwd=tmp_path)
    exp = tmp_path / 'experiments' / 'test_swinir_tiny'
    assert (exp / 'models' / 'net_g_4.pth').is_file()
    log = next(exp.glob('train_test_swinir_tiny_*.log')).read_text()
    assert re.search(r'^\s*world_size: 2$', log, re.M), textwrap.shorten(log, 2000)
    assert re.search(r'# psnr: [\d.]+', log)  # rank 0 validated without deadlocking the other rank
