"""Exact resume: a run stopped and resumed with --auto_resume ends with the same weights as an uninterrupted run."""
import collections
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import torch
import yaml

import unirain_losses  # noqa: F401  (registers the strategies and the model)
from basicsr.models import build_model
from basicsr.utils import get_root_logger
from log_capture import captured

TYPES = ('drs', 'drd', 'nrs', 'nrd')
NAME = 'resume_check'

# 12 training pairs, batch 5: two iterations per epoch (the last 2 samples dropped), so a checkpoint at
# iteration 2 ends an epoch and one at iteration 3 falls inside the next. UniRain's routers add noise in
# training (torch RNG), crops and flips use python's RNG, CoBa's weights change at every iteration and the
# EMA copy is saved with the net: every kind of state must come back for the weights to match bit for bit.
OPTIONS = """
name: resume_check
model_type: UniRainModel
scale: 1
num_gpu: 0
manual_seed: 7
datasets:
  train:
    name: train
    type: DistilledRainDataset
    dataroot: DATA/train
    phase: train
    io_backend: {type: disk}
    gt_size: 16
    use_hflip: true
    use_rot: true
    num_worker_per_gpu: 0
    batch_size_per_gpu: 5
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
VAL_SETS
network_g: {type: UniRain, preset: tiny}
path: {pretrain_network_g: ~, strict_load_g: true, resume_state: ~}
train:
  ema_decay: 0.9
  optim_g: {type: AdamW, lr: !!float 1e-3, weight_decay: !!float 1e-4, betas: [0.9, 0.99]}
  scheduler: {type: CosineAnnealingRestartLR, periods: [6], restart_weights: [1], eta_min: !!float 1e-6}
  total_iter: 6
  warmup_iter: -1
  pixel_opt: {type: CoBaLoss, warmup_updates: 1, window: 3}
val:
  val_freq: 3
  coba_freq: 1
  coba_crop: 16
  save_img: false
  metrics:
    psnr: {type: calculate_psnr, crop_border: 0, test_y_channel: false}
logger: {print_freq: 1, save_checkpoint_freq: 1, use_tb_logger: false, wandb: {project: ~, resume_id: ~}}
dist_params: {backend: nccl, port: 29500}
"""


def write_layout(root, count, size, seed):
    rng = np.random.default_rng(seed)
    for name in TYPES:
        for sub in ('input', 'target'):
            (root / name / sub).mkdir(parents=True)
        for i in range(count):
            clean = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (5, 5), 2)
            rainy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255)
            cv2.imwrite(str(root / name / 'target' / f'{i}.png'), clean.astype(np.uint8))
            cv2.imwrite(str(root / name / 'input' / f'{i}.png'), rainy.astype(np.uint8))


def train(cwd, option_file, resume=False):
    args = [sys.executable, '-m', 'unirain_utils.cli', 'train', '-opt', str(option_file)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(args + (['--auto_resume'] if resume else []), cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def load_state(path):
    with torch.serialization.safe_globals([collections.Counter]):
        return torch.load(path, map_location='cpu', weights_only=True)


def assert_same(a, b, where=''):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


def test_resumed_runs_match_the_uninterrupted_run_bit_for_bit(tmp_path):
    write_layout(tmp_path / 'data' / 'train', count=3, size=20, seed=0)
    write_layout(tmp_path / 'data' / 'val', count=1, size=20, seed=1)
    val_sets = ''.join(f'  val_{i}: {{name: val_{t}, type: DistilledRainDataset, dataroot: DATA/val, types: [{t}], '
                       f'phase: val, io_backend: {{type: disk}}}}\n' for i, t in enumerate(TYPES))
    option_file = tmp_path / 'train_resume.yml'
    option_file.write_text(OPTIONS.replace('VAL_SETS\n', val_sets).replace('DATA', str(tmp_path / 'data')))

    full = tmp_path / 'full'
    full.mkdir()
    finish(train(full, option_file))
    done = full / 'experiments' / NAME

    runs = {}
    for stop in (2, 3):  # 2: at an epoch boundary, 3: inside an epoch
        resumed = tmp_path / f'stopped_at_{stop}' / 'experiments' / NAME
        for sub in ('models', 'training_states'):
            (resumed / sub).mkdir(parents=True)
        shutil.copy(done / 'models' / f'net_g_{stop}.pth', resumed / 'models')
        shutil.copy(done / 'training_states' / f'{stop}.state', resumed / 'training_states')
        runs[stop] = (resumed, train(resumed.parents[1], option_file, resume=True))

    reference_net = torch.load(done / 'models' / 'net_g_6.pth', map_location='cpu', weights_only=True)
    reference_state = load_state(done / 'training_states' / '6.state')
    weights = reference_state['reweighting']['type_weights']
    assert not torch.allclose(weights, torch.full((4,), 0.25))  # CoBa really moved the weights
    assert reference_state['reweighting']['_extra_state']['loss_history'].shape == (6, 4)
    for stop, (resumed, proc) in runs.items():
        log = finish(proc)
        assert f'Resuming training from epoch: {(stop - 1) // 2}, iter: {stop}' in log
        net = torch.load(resumed / 'models' / 'net_g_6.pth', map_location='cpu', weights_only=True)
        assert_same(net, reference_net, f'net_g_6 after resuming at {stop}')
        state = load_state(resumed / 'training_states' / '6.state')
        for key in ('reweighting', 'optimizers', 'schedulers', 'rng'):
            assert_same(state[key], reference_state[key], f'{key} after resuming at {stop}')


TUR_OPTIONS = {
    'name': 'tur_resume', 'model_type': 'UniRainModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 3,
    'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'datasets': {},
    'network_g': {'type': 'UniRain', 'preset': 'tiny'},
    'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
    'train': {'ema_decay': 0, 'optim_g': {'type': 'AdamW', 'lr': 1e-3},
              'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [10], 'restart_weights': [1]},
              'total_iter': 10, 'pixel_opt': {'type': 'TURLoss', 'uncertainty': 'input_head', 'lr': 5e-3}},
}


def test_tur_parameters_and_their_param_group_resume(tmp_path):
    opt = yaml.safe_load(yaml.safe_dump(TUR_OPTIONS))
    opt['path']['training_states'] = str(tmp_path)
    gen = torch.Generator().manual_seed(0)
    batches = [{'lq': torch.rand(4, 3, 16, 16, generator=gen), 'gt': torch.rand(4, 3, 16, 16, generator=gen),
                'type_id': torch.tensor([0, 1, 2, 3])} for _ in range(4)]
    first = build_model(opt)
    for step, batch in enumerate(batches[:2], start=1):
        first.update_learning_rate(step)
        first.feed_data(batch)
        first.optimize_parameters(step)
    first.rng_states = first.gather_host_rng_states()
    first.save_training_state(epoch=0, current_iter=2)

    second = build_model(opt)
    second.net_g.load_state_dict(first.net_g.state_dict())
    second.resume_training(load_state(tmp_path / '2.state'))
    assert_same(second.cri_pix.state_dict(), first.cri_pix.state_dict(), 'strategy')
    assert_same(second.optimizer_g.state_dict(), first.optimizer_g.state_dict(), 'optimizer')
    assert second.optimizer_g.param_groups[1]['params'][0] is next(second.cri_pix.head.parameters())
    for model in (first, second):
        for step, batch in enumerate(batches[2:], start=3):
            model.update_learning_rate(step)
            model.feed_data(batch)
            model.optimize_parameters(step)
    assert_same(second.cri_pix.state_dict(), first.cri_pix.state_dict(), 'strategy after two more steps')
    assert_same(second.net_g.state_dict(), first.net_g.state_dict(), 'network after two more steps')


def test_a_state_without_reweighting_is_reported(tmp_path):
    """A training state written by BasicSR's SRModel resumes the optimizers and says the strategy starts afresh."""
    model = build_model(yaml.safe_load(yaml.safe_dump(TUR_OPTIONS)))
    with captured(get_root_logger()) as records:
        model.resume_training({'optimizers': [model.optimizer_g.state_dict()],
                               'schedulers': [model.schedulers[0].state_dict()]})
    messages = [r.getMessage() for r in records]
    assert any('holds no reweighting state' in m and 'TURLoss starts afresh' in m for m in messages)
    assert any('no python/numpy RNG state' in m for m in messages)
