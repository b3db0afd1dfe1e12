"""Issue 16, the `basicsr train/test` side: one test per finding (1 code in checkpoints, 2 clashing runs, 5 YAML
alias bombs, 6 damaged training states, 9 option-file usage errors, 11 CPU threads).

Each reproduces the failure of the code before the fix. What could run away on that code (an alias bomb walked
by basicsr, a config error message of 10^8 values) runs in a subprocess with a memory limit and a timeout.
"""
import ast
import collections
import errno
import logging
import os
import re
import resource
import socket
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from log_capture import captured
from unirain_utils import cpu_threads, files, options, resume, run_lock
from unirain_utils.checkpoints import CheckpointError
from unirain_utils.options import OptionError, load_options

ROOT = Path(__file__).resolve().parents[1]
TINY_OPT = ROOT / 'tests' / 'options' / 'train_SwinIR_tiny.yml'
BASICSR = [sys.executable, '-m', 'unirain_utils.cli']


def run(args, cwd, env=None, memory_gb=None, timeout=300):
    """A subprocess with one torch thread, optionally under a data-memory limit; (returncode, stdout, stderr)."""
    def limit():
        if memory_gb:
            size = int(memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_DATA, (size, size))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    return proc.returncode, proc.stdout, proc.stderr


def one_line_usage_error(returncode, stderr, *names, after_log=False):
    """Exit 2 and the error as the last line of stderr, without a traceback; alone there unless basicsr's logger
    (which also writes to stderr) had started."""
    assert returncode == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith('basicsr: error: ') and 'Traceback' not in stderr, stderr[-3000:]
    assert after_log or len(lines) == 1, stderr[-3000:]
    for name in names:
        assert name in lines[-1], lines[-1]
    return lines[-1]


# ------------------------------------------------------------------ finding 1: code in a checkpoint never runs

class _RunsCode:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _malicious_checkpoint(folder):
    marker = folder / 'code_ran'
    path = folder / 'net_g_evil.pth'
    torch.save({'params': _RunsCode(f'touch {marker}')}, path)
    return path, marker


def test_load_network_refuses_code_even_with_torchs_unsafe_switch(tmp_path, monkeypatch):
    from basicsr.models.base_model import BaseModel
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')  # torch 2.14's switch back to full unpickling
    model = BaseModel.__new__(BaseModel)
    model.opt = {'dist': False}
    evil, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match='refused') as err:
        model.load_network(torch.nn.Linear(2, 2), str(evil))
    assert str(evil) in str(err.value) and 'posix.system' in str(err.value)
    assert not marker.exists()

    good_net = torch.nn.Linear(2, 2)
    torch.save({'params': good_net.state_dict()}, tmp_path / 'net_g_good.pth')
    loaded = torch.nn.Linear(2, 2)
    model.load_network(loaded, str(tmp_path / 'net_g_good.pth'))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), good_net.state_dict().values()))


def _write_pairs(folder, count=2, size=16):
    rng = np.random.default_rng(0)
    for sub in ('gt', 'lq'):
        (folder / sub).mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(folder / sub / f'{i}.png'), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_basicsr_test_refuses_code_in_pretrain_network_g(tmp_path):
    _write_pairs(tmp_path / 'data')
    evil, marker = _malicious_checkpoint(tmp_path)
    tiny = load_options(TINY_OPT)
    opt = {'name': 'evil_checkpoint', 'model_type': 'SRModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {'test_1': {'name': 'pairs', 'type': 'PairedImageDataset', 'filename_tmpl': '{}',
                                   'dataroot_gt': str(tmp_path / 'data' / 'gt'),
                                   'dataroot_lq': str(tmp_path / 'data' / 'lq'), 'io_backend': {'type': 'disk'}}},
           'network_g': dict(tiny['network_g']),
           'path': {'pretrain_network_g': str(evil), 'strict_load_g': True},
           'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}}}
    (tmp_path / 'test.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    code, _, err = run(BASICSR + ['test', '-opt', 'test.yml'], tmp_path,
                       env={'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD': '1'})
    one_line_usage_error(code, err, str(evil), 'refused', after_log=True)
    assert not marker.exists()


def test_torch_floor_is_2_6_in_setup_py():
    from packaging.requirements import Requirement
    tree = ast.parse((ROOT / 'setup.py').read_text())
    setup_call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                      and getattr(node.func, 'id', None) == 'setup')
    requires = ast.literal_eval(next(k.value for k in setup_call.keywords if k.arg == 'install_requires'))
    torch_req = next(Requirement(r) for r in requires if Requirement(r).name == 'torch')
    assert not torch_req.specifier.contains('2.5.1') and torch_req.specifier.contains('2.6.0')


def _fake_venv(folder, torch_version):
    """A venv whose python imports a stand-in torch of ``torch_version`` and whose pip only leaves a mark."""
    site = folder / 'site'
    (site / 'torch').mkdir(parents=True)
    (site / 'torch' / '__init__.py').write_text(f'__version__ = {torch_version!r}\n')
    (site / 'torchvision').mkdir()
    (site / 'torchvision' / '__init__.py').write_text('')
    (site / 'torchvision' / 'ops.py').write_text('')
    (folder / 'bin').mkdir()
    python = folder / 'bin' / 'python'
    python.write_text('#!/bin/sh\n'
                      f'if [ "$1" = -m ] && [ "$2" = pip ]; then echo "$@" >> {folder}/pip_calls; exit 0; fi\n'
                      f'PYTHONPATH={site} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return folder / 'pip_calls'


@pytest.mark.parametrize('version, accepted', [('2.5.1', False), ('1.13.0', False), ('2.6.0', True),
                                               ('2.10.0', True)])
def test_install_sh_refuses_an_existing_torch_older_than_2_6(tmp_path, version, accepted):
    pip_calls = _fake_venv(tmp_path / 'venv', version)
    proc = subprocess.run(['bash', str(ROOT / 'tools' / 'install.sh')], capture_output=True, text=True, timeout=60,
                          env={**os.environ, 'UNIRAIN_VENV': str(tmp_path / 'venv')})
    if accepted:
        assert proc.returncode == 0, proc.stderr
        assert f'torch {version}' in proc.stdout and 'install' in pip_calls.read_text()
    else:
        assert proc.returncode == 1 and f'has torch {version}; unirain needs torch >= 2.6' in proc.stderr
        assert not pip_calls.exists()  # nothing was installed or replaced


# ------------------------------------------------------------------ finding 2: one run per experiment folder

HOLD_LOCK = ('import sys, time\nfrom unirain_utils import run_lock\nrun_lock.acquire(sys.argv[1])\n'
             'print("locked", flush=True)\ntime.sleep(300)\n')


def _hold_lock(folder):
    helper = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert helper.stdout.readline().strip() == 'locked'
    return helper


def test_second_run_with_the_same_name_stops_and_touches_nothing(tmp_path):
    live = tmp_path / 'experiments' / 'test_swinir_tiny'
    (live / 'models').mkdir(parents=True)
    (live / 'models' / 'net_g_100.pth').write_bytes(b'the live run')
    helper = _hold_lock(live)
    try:
        before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*'))
        code, _, err = run(BASICSR + ['train', '-opt', str(TINY_OPT)], tmp_path)
        line = one_line_usage_error(code, err, str(live), f'pid {helper.pid} on host {socket.gethostname()}')
        assert 'in use by another run' in line
        assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*')) == before  # no archive, no log
        assert (live / 'models' / 'net_g_100.pth').read_bytes() == b'the live run'
    finally:
        helper.kill()
        helper.wait()


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    folder = tmp_path / 'experiments' / 'run'
    helper = _hold_lock(folder)
    try:
        with pytest.raises(run_lock.RunLockedError, match=f'pid {helper.pid}'):
            run_lock.acquire(folder)
    finally:
        helper.kill()  # as a killed run: no chance to clean up
        helper.wait()
    try:
        assert run_lock.acquire(folder) == str(folder) + '.lock'
        assert f'pid {os.getpid()} on host' in Path(str(folder) + '.lock').read_text()
    finally:
        run_lock.release()


# ------------------------------------------------------------------ finding 5: YAML alias bombs

def _laughs(levels=9, width=10):
    """A billion-laughs document: each anchor lists the previous one ``width`` times (width**levels leaves)."""
    lines = [f'a0: &a0 [{", ".join(["lol"] * width)}]']
    lines += [f'a{i}: &a{i} [{", ".join([f"*a{i - 1}"] * width)}]' for i in range(1, levels)]
    return '\n'.join(lines) + '\n'


def test_alias_bomb_option_file_is_refused_with_file_and_line(tmp_path):
    bomb = tmp_path / 'bomb.yml'
    bomb.write_text('name: bomb\nnum_gpu: 0\n' + _laughs())
    assert bomb.stat().st_size < 2048  # 10^9 values described in under 2 KB
    with pytest.raises(OptionError) as err:
        load_options(bomb)
    match = re.match(rf'{re.escape(str(bomb))}:(\d+):\d+: .*exceeds {options.MAX_NODES} values', str(err.value))
    assert match and 3 <= int(match.group(1)) <= 11, str(err.value)
    # the basicsr command: one line, exit 2 (the old code wrote a 1.5 GB log in 6.8 GB of memory: capped here)
    code, _, stderr = run(BASICSR + ['train', '-opt', str(bomb)], tmp_path, memory_gb=3, timeout=120)
    one_line_usage_error(code, stderr, str(bomb), 'alias bomb')
    assert not (tmp_path / 'experiments').exists()


def test_a_structure_containing_itself_is_refused(tmp_path):
    loop = tmp_path / 'loop.yml'
    loop.write_text('name: loop\nnet: &net\n  layers: [1, *net]\n')
    with pytest.raises(OptionError, match=rf'{re.escape(str(loop))}:3:\d+: alias \*net points into its own anchor'):
        load_options(loop)


def test_distillation_config_bomb_is_refused(tmp_path):
    config = tmp_path / 'distill.yml'
    anchors = 'abcdefgh'  # 10^8 values in 8 lines
    config.write_text('name:\n' + ''.join(f'- &{a} [{",".join([f"*{anchors[i - 1]}" if i else "x"] * 10)}]\n'
                                          for i, a in enumerate(anchors)))
    assert config.stat().st_size < 350
    code = ('import sys\nfrom unirain_data.distillation.config import ConfigError, load_config\n'
            'try:\n    load_config(sys.argv[1])\nexcept ConfigError as exc:\n    print(exc)\n')
    returncode, out, err = run([sys.executable, '-c', code, str(config)], tmp_path, memory_gb=3, timeout=120)
    assert returncode == 0, err[-2000:]
    assert re.fullmatch(rf'{re.escape(str(config))}:\d+:\d+: .*alias bomb.*\n', out), out[:2000]


@pytest.mark.parametrize('path', sorted(ROOT.glob('options/*.yml')) + sorted(ROOT.glob('tests/options/*.yml')),
                         ids=lambda p: p.name)
def test_every_shipped_option_file_still_loads_unchanged(path):
    with open(path, encoding='utf-8') as f:
        assert load_options(path) == yaml.safe_load(f)


# ------------------------------------------------------------------ finding 6: damaged training states

def _state(current_iter):
    return {'epoch': current_iter // 2, 'iter': current_iter, 'optimizers': [{'lr': 0.1}],
            'schedulers': [{'milestones': collections.Counter({100: 1}), 'last_epoch': current_iter}]}


def _experiment(tmp_path, good=(2, 4)):
    exp = tmp_path / 'experiments' / 'damaged'
    for sub in ('models', 'training_states'):
        (exp / sub).mkdir(parents=True)
    for current_iter in good:
        torch.save(_state(current_iter), exp / 'training_states' / f'{current_iter}.state')
        torch.save({'params': {'w': torch.full((2,), float(current_iter))}},
                   exp / 'models' / f'net_g_{current_iter}.pth')
    opt = {'name': 'damaged', 'num_gpu': 0, 'auto_resume': True, 'network_g': {'type': 'Any'},
           'path': {'resume_state': None, 'models': str(exp / 'models'),
                    'training_states': str(exp / 'training_states')}}
    return exp, opt


def test_auto_resume_skips_damaged_states_newest_first(tmp_path, capsys):
    import basicsr.train
    exp, opt = _experiment(tmp_path, good=(2, 4))
    states = exp / 'training_states'
    good = (states / '4.state').read_bytes()
    (states / '6.state').write_bytes(good[:len(good) // 2])  # killed mid-write
    (states / '8.state').write_bytes(b'')  # a full disk
    torch.save(_state(10), states / '10.state')  # fine, but its network was cut short
    (exp / 'models' / 'net_g_10.pth').write_bytes(b'PK\x03\x04 truncated')
    (states / '60_backup.state').write_bytes(good)  # a user's copy: not a state name, ignored

    loaded = basicsr.train.load_resume_state(opt)  # the patched one, as train_pipeline calls it
    assert loaded['iter'] == 4 and resume._resume_point == (2, 4)
    assert opt['path']['resume_state'] == str(states / '4.state')
    assert opt['path']['pretrain_network_g'] == str(exp / 'models' / 'net_g_4.pth')
    warned = capsys.readouterr().err
    for name in ('net_g_10.pth', '8.state', '6.state'):
        assert name in warned
    assert '60_backup' not in warned
    assert [w.split(':')[1].strip() for w in resume._pending_warnings] == [
        'skipping the training state of iter 10', 'skipping the training state of iter 8',
        'skipping the training state of iter 6']
    logger = logging.getLogger('test_hardening_resume')
    with captured(logger) as records:
        resume.resuming_dataloaders(lambda opt, logger: (None, None, [], 1, 1))(opt, logger)
    assert len(records) == 3 and not resume._pending_warnings  # logged once basicsr's logger exists


def test_auto_resume_with_only_damaged_states_names_each(tmp_path):
    exp, opt = _experiment(tmp_path, good=())
    (exp / 'training_states' / '5.state').write_bytes(b'')
    (exp / 'training_states' / '3.state').write_bytes(b'not a checkpoint')
    with pytest.raises(resume.ResumeStateError) as err:
        resume.load_resume_state(opt)
    message = str(err.value)
    assert message.startswith(f'--auto_resume: no usable training state in {exp / "training_states"}')
    assert '5.state' in message and '3.state' in message


def test_auto_resume_without_states_starts_afresh(tmp_path):
    _, opt = _experiment(tmp_path, good=())
    assert resume.load_resume_state(opt) is None and resume._resume_point is None


@pytest.mark.parametrize('content', [b'', b'PK\x03\x04 truncated', None])
def test_a_damaged_resume_state_path_is_named(tmp_path, content):
    exp, opt = _experiment(tmp_path, good=())
    path = exp / 'training_states' / '7.state'
    if content is not None:
        path.write_bytes(content)
    opt.update(auto_resume=False)
    opt['path']['resume_state'] = str(path)
    with pytest.raises(resume.ResumeStateError, match=rf'^path.resume_state: {re.escape(str(path))}: '):
        resume.load_resume_state(opt)


def test_a_full_disk_while_saving_a_state_names_the_file(tmp_path, monkeypatch):
    if not os.path.exists('/dev/full'):
        pytest.skip('/dev/full (a device that is always full) is Linux only')
    target = tmp_path / '10.state'
    target.write_bytes(b'previous state')

    def mkstemp_on_a_full_disk(dir, prefix, suffix):
        return os.open('/dev/full', os.O_WRONLY), os.path.join(dir, f'{prefix}full{suffix}')

    monkeypatch.setattr(files, 'tempfile', types.SimpleNamespace(mkstemp=mkstemp_on_a_full_disk))
    with pytest.raises(OSError) as err:
        with files.atomic_open(target) as f:  # as UniRainModel.save_training_state writes a state
            torch.save({'iter': 10, 'weights': torch.zeros(100_000)}, f)
    # was a bare "[Errno 28] No space left on device" or torch's "unexpected pos ...", naming no file
    assert err.value.errno == errno.ENOSPC and str(target) in str(err.value)
    assert target.read_bytes() == b'previous state' and os.listdir(tmp_path) == ['10.state']


def test_a_state_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, 'fsync', lambda fd: (calls.append(('fsync', os.readlink(f'/proc/self/fd/{fd}'))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, 'replace', lambda src, dst: (calls.append(('replace', str(src))), real_replace(src, dst)))
    with files.atomic_open(tmp_path / '4.state') as f:
        torch.save(_state(4), f)
    temporary = next(path for kind, path in calls if kind == 'replace')
    assert calls.index(('fsync', temporary)) < calls.index(('replace', temporary))
    with torch.serialization.safe_globals([collections.Counter]):
        assert torch.load(tmp_path / '4.state', weights_only=True) == _state(4)


# ------------------------------------------------------------------ finding 9: option-file usage errors

@pytest.mark.parametrize('case', ['missing', 'folder', 'latin-1', 'invalid', 'list'])
def test_unusable_option_file_is_one_line_and_exit_2(tmp_path, case):
    path = tmp_path / f'{case}.yml'
    expected = {'missing': 'no such option file', 'folder': 'is a folder', 'latin-1': ':2: not UTF-8 text',
                'invalid': ':3:1: not valid YAML', 'list': 'must be a mapping'}[case]
    if case == 'folder':
        path.mkdir()
    elif case == 'latin-1':
        path.write_bytes('name: run\ndescription: pluie forte à Paris\n'.encode('latin-1'))
    elif case == 'invalid':
        path.write_text('name: run\nnetwork_g: {type: UniRain\n')
    elif case == 'list':
        path.write_text('- name: run\n')
    for command in ('train', 'test'):
        code, _, err = run(BASICSR + [command, '-opt', str(path)], tmp_path)
        line = one_line_usage_error(code, err, str(path) + (':' if case in ('latin-1', 'invalid') else ''))
        assert expected in line


# ------------------------------------------------------------------ finding 11: CPU threads

@pytest.mark.parametrize('opt, environ, cpus, expected', [
    ({'num_gpu': 0, 'datasets': {'train': {'num_worker_per_gpu': 1}}}, {}, 2, 1),  # the busy 2-core case
    ({'num_gpu': 0, 'datasets': {'train': {'num_worker_per_gpu': 2}}}, {}, 6, 4),
    ({'num_gpu': 0, 'datasets': {'train': {'num_worker_per_gpu': 0}}}, {}, 64, cpu_threads.MAX_DEFAULT),
    ({'num_gpu': 0, 'datasets': {'train': {'num_worker_per_gpu': 4}}}, {}, 2, 1),  # never below one
    ({'num_gpu': 0, 'datasets': {'train': {}}}, {'LOCAL_WORLD_SIZE': '2'}, 8, 4),  # torchrun: a share each
    ({'num_gpu': 0, 'num_threads': 3, 'datasets': {'train': {}}}, {'OMP_NUM_THREADS': '1'}, 2, 3),  # option first
    ({'num_gpu': 0, 'datasets': {'train': {}}}, {'OMP_NUM_THREADS': '2'}, 8, None),  # torch follows it already
    ({'num_gpu': 1, 'datasets': {'train': {}}}, {}, 8, None),  # GPU: torch's default
])
def test_default_cpu_threads_count_the_loader_workers(monkeypatch, opt, environ, cpus, expected):
    monkeypatch.setattr(cpu_threads, 'usable_cpus', lambda: cpus)
    assert cpu_threads.choose(opt, environ)[0] == expected


@pytest.mark.parametrize('value', [0, -1, 'four', 2.5, True])
def test_a_bad_num_threads_option_is_named(value):
    with pytest.raises(OptionError, match=rf'num_threads: must be an integer >= 1 or ~, got {re.escape(repr(value))}'):
        cpu_threads.choose({'num_threads': value}, {})


def test_a_cpu_training_run_sets_and_logs_its_threads(tmp_path, monkeypatch):
    import basicsr.train

    from unirain_utils import compat
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.setattr(cpu_threads, 'usable_cpus', lambda: 3)
    _write_pairs(tmp_path / 'data')
    train_set = {'name': 'pairs', 'type': 'PairedImageDataset', 'phase': 'train', 'scale': 1, 'filename_tmpl': '{}',
                 'dataroot_gt': str(tmp_path / 'data' / 'gt'), 'dataroot_lq': str(tmp_path / 'data' / 'lq'),
                 'io_backend': {'type': 'disk'}, 'gt_size': 8, 'use_hflip': False, 'use_rot': False,
                 'num_worker_per_gpu': 1, 'batch_size_per_gpu': 1}
    opt = {'num_gpu': 0, 'dist': False, 'rank': 0, 'world_size': 1, 'manual_seed': 0, 'datasets': {'train': train_set},
           'train': {'total_iter': 2}}
    logger = logging.getLogger('test_hardening_threads')
    logger.setLevel(logging.INFO)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with captured(logger) as records:
            basicsr.train.create_train_val_dataloader(opt, logger)  # basicsr's, as compat patches it
        assert torch.get_num_threads() == 2  # 3 CPUs minus 1 loader worker
        assert any(r.getMessage().startswith('CPU threads: 2 (3 CPU(s) for this process minus 1 loader worker')
                   for r in records)
    finally:
        torch.set_num_threads(threads)
        compat._val_datasets = None
