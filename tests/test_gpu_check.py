"""tools/gpu_check.py, the GPU evidence pack: its CPU dry run, and what it keeps when a stage runs out of time."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unirain_arch  # noqa: F401  (registers the archs)
from unirain_arch.inference import derain_tensor, load_model

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'gpu_check.py'
# flat and at most 8 files: what a lent GPU machine sends back
PACK_FILES = {'a_correctness.json', 'b_throughput.json', 'c_learning.json', 'gpu_check.log', 'net_g.pth',
              'progress.json', 'progress.png', 'train.log'}


def run(out, *extra):
    return subprocess.run([sys.executable, str(TOOL), '--device', 'cpu', '--quick', '--out', str(out), *extra],
                          capture_output=True, text=True, timeout=900, env={**os.environ, 'OMP_NUM_THREADS': '1'})


def stage(out, name):
    return json.loads((out / f'{name}.json').read_text())


def test_dry_run_writes_every_stage_weights_plot_and_log(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} == PACK_FILES

    a = stage(tmp_path, 'a_correctness')
    assert a['complete'] and a['quick'] and a['device'] == 'cpu'
    checks = {row['check']: row for row in a['rows']}
    assert set(checks) == {'moe_device_equals_cpu', 'host_syncs_per_forward', 'amp_step_bf16', 'amp_step_fp16',
                           'tiled_inference', 'resume_fp32', 'resume_fp16'}
    assert checks['host_syncs_per_forward']['pass'] is None  # CUDA only
    assert all(row['pass'] for name, row in checks.items() if name != 'host_syncs_per_forward'), checks
    assert checks['resume_fp16']['bit_exact'] and checks['resume_fp16']['scaler_state_saved']
    assert checks['amp_step_fp16']['loss_scale'] > 0

    b = stage(tmp_path, 'b_throughput')
    assert b['complete']
    rows = {row['check']: row for row in b['rows']}
    training = [row for name, row in rows.items() if name.startswith('train')]
    assert len(training) == 7 and all(row['pass'] and row['it_per_s'] > 0 for row in training)
    compiled = rows['train UniRainDense tiny fp32 compiled']
    assert compiled['compiled_fell_back_to_eager'] is False
    inference = [row for name, row in rows.items() if name.startswith('infer')]
    assert len(inference) == 6
    assert all(row['ms_per_MP'] > 0 for row in inference if row['pass'])
    assert all('CUDA' in row['skipped'] for row in inference if row['pass'] is None)  # fp16 on a CPU

    c = stage(tmp_path, 'c_learning')
    (learning,) = c['rows']
    assert c['complete'] and learning['pass'] and learning['iterations'] >= 1
    assert set(learning['psnr_db_per_type']) == {'drs', 'drd', 'nrs', 'nrd'}
    for values in learning['psnr_db_per_type'].values():
        assert values['gain'] == values['output'] - values['input']
    assert sum(learning['loss_weights'].values()) == pytest.approx(1.0, abs=1e-6)
    progress = json.loads((tmp_path / 'progress.json').read_text())
    assert progress['validations'][-1]['iter'] == learning['iterations']
    assert (tmp_path / 'progress.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'Validation per type' in (tmp_path / 'train.log').read_text()
    # the weights are a BasicSR checkpoint the project's own loader takes
    net = load_model(str(tmp_path / 'net_g.pth'), {'type': 'UniRain', 'preset': 'tiny'})
    out = derain_tensor(net, torch.rand(1, 3, 20, 28))
    assert out.shape == (1, 3, 20, 28) and torch.isfinite(out).all()
    for name in ('a_correctness', 'b_throughput', 'c_learning'):
        assert f'{name}: complete' in proc.stdout


def test_a_stage_out_of_time_is_killed_and_the_next_stage_still_runs(tmp_path):
    proc = run(tmp_path, '--stages', 'c', 'b', '--budget', 'c=1', '--budget', 'b=1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    learning = stage(tmp_path, 'c_learning')
    # the learning stage trains for 2 s before its only row: killed with nothing finished, nothing invented
    assert learning['complete'] is False and 'time budget of 1 s exceeded' in learning['reason']
    assert learning['rows'] == []
    assert 'c_learning: INCOMPLETE' in proc.stdout
    # the throughput stage starts no measurement it has no time for, and says so per row
    throughput = stage(tmp_path, 'b_throughput')
    assert throughput['complete'] and len(throughput['rows']) == 13
    assert all('s left of the stage budget' in row['skipped'] for row in throughput['rows'])
    assert not list(tmp_path.glob('*.partial.jsonl'))


def test_bad_budget_is_named(tmp_path):
    proc = run(tmp_path, '--budget', 'd=5')
    assert proc.returncode != 0 and "--budget 'd=5'" in proc.stderr
