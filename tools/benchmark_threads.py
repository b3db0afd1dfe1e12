"""Time a short CPU training run under different torch thread counts (the default that `basicsr train` picks).

Each run is `basicsr train` on options/train_UniRain_demo.yml cut to --iters iterations (no download: scikit-image's
photos, rain synthesised on the fly by one loader worker, CoBa, the final per-type validation), in a fresh
temporary folder, with OMP_NUM_THREADS unset. Settings:
  before  torch's own default thread count (what a CPU run got before unirain chose one), via num_threads
  after   unirain's default (no num_threads: CPUs minus loader workers, at most 8)
  N       num_threads N (an integer)
Reported: seconds of the training loop (the log's "Start training" to "End of training" timestamps), seconds of
the whole command (start-up, final validation and checkpoint included) and the threads the run used. Prints a
table and writes JSON. On a shared machine run it when the load you want to measure under is there; the load
average at the start of each run is recorded.

Example:
    python tools/benchmark_threads.py --settings before after --iters 60 --json benchmark_threads.json
"""
import argparse
import datetime
import glob
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unirain_utils.cpu_threads import usable_cpus  # noqa: E402
from unirain_utils.options import load_options  # noqa: E402

DEMO = ROOT / 'options' / 'train_UniRain_demo.yml'
STAMP = r'(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO: '


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--settings', nargs='+', default=['before', 'after'],
                        help='before, after or a thread count, each run in turn (default: before after)')
    parser.add_argument('--iters', type=int, default=60, help='training iterations per run (default 60)')
    parser.add_argument('--repeats', type=int, default=1, help='rounds over the settings (default 1)')
    parser.add_argument('--timeout', type=int, default=1800, help='seconds before a run is stopped (default 1800)')
    parser.add_argument('--json', default='benchmark_threads.json', help='where to write the results')
    args = parser.parse_args(argv)
    for setting in args.settings:
        if setting not in ('before', 'after') and not (setting.isdigit() and int(setting) > 0):
            parser.error(f'--settings: {setting!r} is not before, after or a positive integer')
    return args


def clean_env():
    """The caller's environment without OMP_NUM_THREADS, which would override every setting."""
    return {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}


def torch_default_threads():
    out = subprocess.run([sys.executable, '-c', 'import torch; print(torch.get_num_threads())'], env=clean_env(),
                         capture_output=True, text=True, check=True).stdout
    return int(out)


def option_file(folder, setting, iters, before_threads):
    opt = json.loads(json.dumps(load_options(DEMO)))
    opt['name'] = f'benchmark_threads_{setting}'
    opt['train']['total_iter'] = iters
    opt['train']['scheduler']['periods'] = [iters]
    opt['logger'].update(print_freq=max(1, iters // 6), save_checkpoint_freq=iters, use_tb_logger=False)
    if setting != 'after':
        opt['num_threads'] = before_threads if setting == 'before' else int(setting)
    path = Path(folder) / 'train.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))  # not JSON: PyYAML reads JSON's 1e-05 as a string
    return path, opt['name']


def stamp(log, pattern):
    match = re.search(STAMP + pattern, log)
    if not match:
        raise RuntimeError(f'no line matching {pattern!r} in the training log')
    return datetime.datetime.strptime(match.group(1), '%Y-%m-%d %H:%M:%S,%f')


def run_once(setting, iters, before_threads, timeout):
    with tempfile.TemporaryDirectory(prefix='benchmark_threads_') as folder:
        path, name = option_file(folder, setting, iters, before_threads)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, '-m', 'unirain_utils.cli', 'train', '-opt', str(path)], cwd=folder,
                              env=clean_env(), capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f'setting {setting}: basicsr train exited {proc.returncode}\n{proc.stderr[-3000:]}')
        log = Path(glob.glob(os.path.join(folder, 'experiments', name, f'train_{name}_*.log'))[0]).read_text()
    loop = (stamp(log, r'End of training') - stamp(log, r'Start training from epoch')).total_seconds()
    threads = int(re.search(r'CPU threads: (\d+)', log).group(1))
    return {'setting': setting, 'threads': threads, 'loop_s': round(loop, 2), 'wall_s': round(wall, 2),
            'load_average_1min': round(load, 2)}


def main(argv=None):
    args = parse_args(argv)
    before_threads = torch_default_threads()
    runs = []
    for _ in range(args.repeats):
        for setting in args.settings:
            runs.append(run_once(setting, args.iters, before_threads, args.timeout))
            print(f'  {runs[-1]}', flush=True)
    result = {'iters': args.iters, 'usable_cpus': usable_cpus(), 'torch_default_threads': before_threads,
              'machine': platform.platform(), 'python': platform.python_version(), 'runs': runs}
    print(f'\n{args.iters} iterations of {DEMO.name} on {usable_cpus()} usable CPU(s); torch default '
          f'{before_threads} thread(s)')
    print(f'{"setting":>8} {"threads":>7} {"loop s":>8} {"whole s":>8} {"load 1m":>8}')
    for run in runs:
        print(f'{run["setting"]:>8} {run["threads"]:>7} {run["loop_s"]:>8.1f} {run["wall_s"]:>8.1f} '
              f'{run["load_average_1min"]:>8.2f}')
    with open(args.json, 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=2)
    print(f'written: {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
