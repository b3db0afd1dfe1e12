"""The GPU evidence pack: correctness, throughput and a short learning run, in one call, each stage to JSON.

    python tools/gpu_check.py --out gpu_check                       # CUDA: the whole pack, at most 7.5 minutes
    python tools/gpu_check.py --device cpu --quick --out DIR        # every stage on the tiny preset, on CPU
    python tools/gpu_check.py --stages a c --budget c=120 --out DIR # some stages, another time budget

Each stage runs in its own process (forked from the driver, which imports torch and the project once) under a
time budget (seconds: a=60, b=150, c=230). The moment a stage ends, DIR/<stage>.json holds its rows; a stage
that runs out of time (or crashes) is killed with everything it started, and its JSON keeps every row it
finished, with "complete": false and the reason. Later stages run regardless.

a_correctness   hard MoE on the device equals the CPU result for the same weights (outputs, expert picks,
                gradients); host synchronisations per forward of the paper preset (CUDA; the grouped
                dispatch reads one count vector per hard layer); one training step with train.amp bf16 and
                fp16 is finite; tiled inference (derain_tensor) on the device equals tiled inference on the
                CPU and is close to the untiled result; a run resumed from a training state on the device
                (fp32 and fp16 with its scaler) ends bit for bit where the uninterrupted run ends.
b_throughput    UniRainModel training iterations/s and peak memory for UniRain paper and UniRainDense paper
                (Restormer's configuration) at batch 8 of 128x128: fp32 / bf16, eager / compiled, and bf16
                with activation checkpointing; derain_tensor ms per megapixel at 1024x1024 in fp32 / bf16 /
                fp16 for UniRain paper with its hard decoder and with a soft one.
c_learning      UniRain small + CoBa (bf16 on CUDA) trained for a fixed time on the four rain types synthesised
                on the fly (DistilledRainDataset, scikit-image's bundled photos), validated on held-out photos:
                per-type PSNR of output and rainy input in c_learning.json, and net_g.pth (BasicSR format,
                params), progress.png / progress.json and train.log in DIR.

Also in DIR: gpu_check.log (every stage's output). At most 8 files in all, flat, so the whole folder can
travel back from a lent machine. ``--quick`` uses the tiny preset, small images and few steps (compiled rows
trace with torch.compile's ``eager`` backend there: no code generation). The working tree's packages are
imported ahead of installed copies, so the pack always checks the code beside it.
"""
import argparse
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = {'a': 'a_correctness', 'b': 'b_throughput', 'c': 'c_learning'}
BUDGETS = {'a': 60, 'b': 150, 'c': 230}
# Sizes of the GPU pack ('full') and of the CPU dry run ('quick'), in one place.
MODES = {
    'full': {
        'check_preset': 'small', 'moe_size': 96, 'amp_batch': (4, 64), 'tiling': (256, 160, 32),
        'resume_batches': (4, 64, 4),  # batch, side, count (saved half-way)
        'bench_preset': 'paper', 'train_batch': (8, 128), 'steps': 10, 'warmup': 2, 'infer_size': 1024,
        'infer_repeats': 3, 'compile': True, 'compile_nets': ('UniRainDense', 'UniRain'),
        'needed_s': {'eager': 8, 'compiled': 60},
        'learn_preset': 'small', 'learn_crop': 128, 'learn_batch': 8, 'held_out': ['chelsea', 'rocket'],
        'coba': {'coba_freq': 100, 'coba_crop': 128, 'window': 5, 'warmup_updates': 5},
        'validations': [0.25, 0.5, 0.75, 1.0], 'reserve_s': 45,
    },
    'quick': {
        'check_preset': 'tiny', 'moe_size': 32, 'amp_batch': (2, 16), 'tiling': (96, 64, 32),
        'resume_batches': (2, 16, 2),  # fp16 autocast on a CPU is slow: one step either side of the save
        'bench_preset': 'tiny', 'train_batch': (2, 32), 'steps': 1, 'warmup': 0, 'infer_size': 64,
        'infer_repeats': 1,
        # traced without code generation; the MoE's graph breaks take ~20 s to trace on a CPU (tests cover them)
        'compile': {'backend': 'eager'}, 'compile_nets': ('UniRainDense',),
        'needed_s': {'eager': 2, 'compiled': 2},
        'learn_preset': 'tiny', 'learn_crop': 32, 'learn_batch': 4, 'held_out': ['chelsea'],
        'coba': {'coba_freq': 2, 'coba_crop': 32, 'window': 2, 'warmup_updates': 1},
        'validations': [1.0], 'learn_seconds': 2.0,
    },
}


# ------------------------------------------------------------------------------------------------- driver


def parse_budgets(items):
    budgets = dict(BUDGETS)
    for item in items:
        key, _, value = item.partition('=')
        if key not in STAGES or not value.replace('.', '', 1).isdigit():
            raise SystemExit(f'gpu_check: --budget {item!r}: expected STAGE=SECONDS with STAGE one of a, b, c')
        budgets[key] = float(value)
    return budgets


def run_stage(key, args, budget, log):
    """Run one stage in a child process with a hard time limit; returns its result (also in DIR/<stage>.json)."""
    name = STAGES[key]
    out = Path(args.out)
    partial, final = out / f'{name}.partial.jsonl', out / f'{name}.json'
    for path in (partial, final):
        path.unlink(missing_ok=True)
    log.write(f'\n===== {name} (budget {budget:.0f} s) =====\n')
    log.flush()
    start = time.time()
    # fork: the child starts with torch and the project already imported (no CUDA yet: the driver never
    # touches it, the child initialises it)
    proc = multiprocessing.get_context('fork').Process(target=stage_process, name=name,
                                                       args=(key, args, start + budget, log.fileno()))
    proc.start()
    proc.join(budget)
    if proc.is_alive():
        kill_stage(proc)
        reason = f'time budget of {budget:.0f} s exceeded: killed; the rows it finished are kept'
    elif proc.exitcode != 0:
        reason = f'the stage process exited with code {proc.exitcode} (see gpu_check.log)'
    else:
        reason = None
    if reason is None and final.is_file():
        partial.unlink(missing_ok=True)
        return json.loads(final.read_text())
    rows = [json.loads(line) for line in partial.read_text().splitlines()] if partial.is_file() else []
    result = {'stage': name, 'complete': False, 'reason': reason or 'the stage wrote no result',
              'seconds': round(time.time() - start, 1), 'rows': rows}
    final.write_text(json.dumps(result, indent=1))
    partial.unlink(missing_ok=True)
    return result


def kill_stage(proc):
    """SIGKILL a stage with its loader workers and compiler processes (its own session), never the driver."""
    try:
        group = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    if group == os.getpgrp():  # it had not yet left the driver's process group
        proc.kill()
    else:
        os.killpg(group, signal.SIGKILL)
    proc.join()


def summary_lines(result):
    lines = [f'{result["stage"]}: {"complete" if result.get("complete") else "INCOMPLETE: " + result["reason"]}'
             f' ({result.get("seconds", "?")} s)']
    for row in result.get('rows', []):
        fields = {k: v for k, v in row.items() if k not in ('stage', 'traceback')}
        lines.append('  ' + ', '.join(f'{k}={_short(v)}' for k, v in fields.items()))
    return lines


def _short(value):
    if isinstance(value, float):
        return f'{value:.4g}'
    if isinstance(value, dict):
        return '{' + ', '.join(f'{k}: {_short(v)}' for k, v in value.items()) + '}'
    return str(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='folder for the stage JSON files, weights, plot and logs')
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda', help='where to run (default cuda)')
    parser.add_argument('--quick', action='store_true', help='tiny preset, small sizes, few steps (a dry run)')
    parser.add_argument('--stages', nargs='+', choices=sorted(STAGES), default=sorted(STAGES),
                        help='stages to run, in order (default: a b c)')
    parser.add_argument('--budget', action='append', default=[], metavar='STAGE=SECONDS',
                        help=f'time budget of a stage (defaults: {", ".join(f"{k}={v}" for k, v in BUDGETS.items())})')
    args = parser.parse_args()
    budgets = parse_budgets(args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_project()
    import torch
    if torch.cuda.is_initialized():  # a forked child cannot use a CUDA its parent started
        raise SystemExit('gpu_check: CUDA was started while importing the project; the stages could not use it')
    with open(out / 'gpu_check.log', 'a', encoding='utf-8') as log:
        for key in args.stages:
            result = run_stage(key, args, budgets[key], log)
            text = '\n'.join(summary_lines(result))
            print(text, flush=True)
            log.write(text + '\n')
            log.flush()
    print(f'results in {out}')
    return 0


# ------------------------------------------------------------------------------------------------- worker


class Stage:
    """What a stage's functions share: device, quick flag, deadline, and the row file written as rows finish."""

    def __init__(self, key, args, deadline):
        import torch
        self.torch = torch
        self.key, self.name = key, STAGES[key]
        self.out = Path(args.out)
        self.quick = args.quick
        self.mode = MODES['quick' if args.quick else 'full']
        self.deadline = deadline
        self.device = torch.device(args.device)
        self.cuda = self.device.type == 'cuda'
        self.started = time.time()
        self.rows = []
        self.partial = open(self.out / f'{self.name}.partial.jsonl', 'a', encoding='utf-8')

    def left(self):
        return self.deadline - time.time()

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def add(self, row):
        row = {k: _plain(v) for k, v in row.items()}
        self.rows.append(row)
        self.partial.write(json.dumps(row) + '\n')
        self.partial.flush()
        os.fsync(self.partial.fileno())
        print(f'[{self.name}] {json.dumps(row)[:400]}', flush=True)

    def attempt(self, check, fn, *args, **kwargs):
        """Run one check; an exception becomes a failed row naming it, and the stage goes on."""
        import traceback
        start = time.time()
        try:
            row = fn(self, *args, **kwargs)
        except Exception as exc:  # a check that breaks must not take the others down
            row = {'pass': False, 'error': f'{type(exc).__name__}: {exc}'[:600],
                   'traceback': traceback.format_exc()[-2000:]}
        self.add({'check': check, **row, 'seconds': round(time.time() - start, 2)})

    def finish(self):
        from unirain_utils.files import atomic_write
        torch = self.torch
        result = {'stage': self.name, 'complete': True, 'device': str(self.device),
                  'gpu': torch.cuda.get_device_name() if self.cuda else None, 'quick': self.quick,
                  'torch': torch.__version__, 'cuda': torch.version.cuda, 'python': sys.version.split()[0],
                  'cpu_count': os.cpu_count(), 'date_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                  'seconds': round(time.time() - self.started, 1), 'rows': self.rows}
        atomic_write(self.out / f'{self.name}.json', json.dumps(result, indent=1))
        self.partial.close()


def _plain(value):
    """JSON-able: tensors and numpy scalars to Python numbers, containers recursively."""
    if hasattr(value, 'tolist'):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_project():
    """torch, the project's registries and BasicSR's patches, imported once by the driver for every stage."""
    sys.path.insert(0, str(REPO))  # the working tree's code, not an installed copy
    import torch  # noqa: F401
    import unirain_arch  # noqa: F401  (registers the archs)
    import unirain_data  # noqa: F401  (registers DistilledRainDataset)
    import unirain_losses  # noqa: F401  (registers the strategies and UniRainModel)
    from unirain_utils import compat
    compat.apply()


def stage_process(key, args, deadline, log_fd):
    """A stage's process: its own session (so a kill takes all it started), output into gpu_check.log."""
    os.setsid()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    if key == 'a':  # deterministic cuBLAS for the resume check; read when cuBLAS starts, in this process
        os.environ['CUBLAS_WORKSPACE_CONFIG'] = ':4096:8'
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('gpu_check: --device cuda but torch sees no GPU (use --device cpu for a dry run)')
    stage = Stage(key, args, deadline)
    {'a': stage_a, 'b': stage_b, 'c': stage_c}[key](stage)
    stage.finish()


def model_options(stage, network, pixel_opt, amp=None, compile_opt=False, root=None, datasets=None, val=None):
    """A BasicSR option dict for UniRainModel, as ``basicsr train`` would hand it over after parsing."""
    root = str(root or stage.out)
    return {
        'name': 'gpu_check', 'model_type': 'UniRainModel', 'scale': 1, 'num_gpu': 1 if stage.cuda else 0,
        'manual_seed': 0, 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1,
        'datasets': datasets or {}, 'network_g': dict(network),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'experiments_root': root, 'models': root, 'training_states': root, 'visualization': root,
                 'log': root},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'AdamW', 'lr': 2e-4, 'weight_decay': 1e-4},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [10 ** 9], 'gamma': 0.5},
                  'total_iter': 10 ** 9, 'warmup_iter': -1, 'pixel_opt': dict(pixel_opt), 'amp': amp,
                  'compile': compile_opt},
        'val': val or {}, 'logger': {'print_freq': 100, 'use_tb_logger': False},
    }


def build(opt):
    import torch
    from basicsr.models import build_model
    torch.manual_seed(0)  # the same initial weights wherever a check builds twice
    return build_model(opt)


def random_batch(batch, size, seed):
    import torch
    from unirain_utils.rain_types import RAIN_TYPES
    gen = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 3, size, size, generator=gen)
    lq = (gt + 0.2 * torch.rand(batch, 3, size, size, generator=gen)).clamp(0, 1)
    return {'lq': lq, 'gt': gt, 'type_id': torch.arange(batch) % len(RAIN_TYPES)}


def photos(size):
    """Four natural photos bundled with scikit-image (no download), (4, 3, size, size) RGB in [0, 1]."""
    import cv2
    import numpy as np
    import torch
    from skimage import data as skdata
    imgs = [cv2.resize(getattr(skdata, n)()[:, :, :3], (size, size), interpolation=cv2.INTER_AREA)
            for n in ('astronaut', 'chelsea', 'coffee', 'rocket')]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def quiet_basicsr():
    """BasicSR logs every network's full structure when a model is built: keep that out of the pack's log."""
    import logging
    from basicsr.utils import get_root_logger
    get_root_logger()
    logging.getLogger('basicsr').setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------------- a: correctness


def stage_a(stage):
    torch = stage.torch
    quiet_basicsr()
    # full fp32 on both sides: TF32 would make the device differ from the CPU by design
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    preset = stage.mode['check_preset']
    stage.attempt('moe_device_equals_cpu', check_moe_device_vs_cpu, preset, stage.mode['moe_size'])
    stage.attempt('host_syncs_per_forward', check_host_syncs)
    for amp in ('bf16', 'fp16'):
        stage.attempt(f'amp_step_{amp}', check_amp_step, preset, amp)
    stage.attempt('tiled_inference', check_tiling, preset)
    for amp in (None, 'fp16'):
        stage.attempt(f'resume_{amp or "fp32"}', check_resume, preset, amp)


def check_moe_device_vs_cpu(stage, preset, size):
    import copy
    torch = stage.torch
    from unirain_arch.unirain_arch import UniRain
    torch.manual_seed(0)
    net = UniRain(preset=preset, top_k=2, router_noise=0.0)
    with torch.no_grad():  # decisive routers, so the four photos spread over the experts (random init is flat)
        for _, layer in net.moe_layers():
            layer.router.proj.weight.mul_(200)
    x = photos(size)
    results = {}
    for where, device in (('cpu', torch.device('cpu')), ('device', stage.device)):
        model = copy.deepcopy(net).to(device).eval()
        with torch.no_grad():
            out = model(x.to(device)).cpu()
        picks = [r['experts'].cpu() for r in model.last_routing if r['mode'] == 'hard']
        model.train()
        (model(x.to(device)) - x.to(device)).abs().mean().backward()
        grads = {n: None if p.grad is None else p.grad.cpu() for n, p in model.named_parameters()}
        results[where] = (out, picks, grads)
    (out_c, picks_c, grads_c), (out_d, picks_d, grads_d) = results['cpu'], results['device']
    same_unused = all((grads_c[n] is None) == (grads_d[n] is None) for n in grads_c)
    rel = max(float((grads_d[n] - g).abs().max() / (g.abs().max() + 1e-12)) for n, g in grads_c.items()
              if g is not None and grads_d[n] is not None)
    picks_equal = all(torch.equal(a, b) for a, b in zip(picks_c, picks_d))
    max_abs = float((out_d - out_c).abs().max())
    return {'pass': picks_equal and same_unused and max_abs <= 1e-4 and rel <= 1e-3, 'preset': preset,
            'input': list(x.shape), 'max_abs_output_diff': max_abs, 'expert_picks_equal': picks_equal,
            'distinct_picks_per_hard_layer': [len(p.unique()) for p in picks_c],
            'unused_experts_agree': same_unused, 'max_rel_grad_diff': rel}


def check_host_syncs(stage):
    import warnings
    torch = stage.torch
    if not stage.cuda:
        return {'pass': None, 'skipped': 'needs CUDA (CPU work never waits on a device)'}
    from unirain_arch.moe import HardMoE
    from unirain_arch.unirain_arch import UniRain
    torch.manual_seed(0)
    net = UniRain(preset='paper').to(stage.device).eval()
    hard = [m for m in net.modules() if isinstance(m, HardMoE)]
    x = torch.rand(2, 3, 64, 64, device=stage.device)

    def count_syncs(fn):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode('default')
        return sum('synchroniz' in str(w.message).lower() for w in caught)

    with torch.no_grad():
        net(x)  # warm-up: kernels and allocator
        stage.sync()
        control = count_syncs(lambda: [x.sum().item() for _ in range(3)])  # the counter sees every sync
        syncs = count_syncs(lambda: net(x))
    return {'pass': control == 3 and syncs <= len(hard), 'preset': 'paper', 'syncs_per_forward': syncs,
            'hard_moe_layers': len(hard), 'nonzero_calls_of_the_former_dispatch': len(hard) * hard[0].num_experts,
            'control_three_item_calls_counted': control}


def check_amp_step(stage, preset, amp):
    torch = stage.torch
    model = build(model_options(stage, {'type': 'UniRain', 'preset': preset}, {'type': 'UniformTypeLoss'}, amp=amp))
    model.feed_data(random_batch(*stage.mode['amp_batch'], seed=1))
    model.optimize_parameters(1)
    loss = float(model.log_dict['l_pix'])
    finite = all(bool(torch.isfinite(p).all()) for p in model.net_g.parameters())
    scaler = model.amp.scaler
    return {'pass': bool(torch.isfinite(torch.tensor(loss))) and finite, 'preset': preset, 'loss': loss,
            'params_finite': finite, 'loss_scale': None if scaler is None else scaler.get_scale()}


def check_tiling(stage, preset):
    import copy
    torch = stage.torch
    from unirain_arch.inference import derain_tensor, load_model
    size, tile, overlap = stage.mode['tiling']
    net = load_model(network={'type': 'UniRain', 'preset': preset}, allow_untrained=True)
    x = photos(size)[:1]
    cpu_tiled = derain_tensor(net, x, tile_size=tile, tile_overlap=overlap)
    device_net = copy.deepcopy(net).to(stage.device)
    tiled = derain_tensor(device_net, x, tile_size=tile, tile_overlap=overlap)
    whole = derain_tensor(device_net, x)
    psnr = float(-10 * torch.log10(((tiled - whole) ** 2).mean()))
    max_abs = float((tiled - cpu_tiled).abs().max())
    # per-tile attention and routing statistics make tiled output close to, not equal to, the whole (tiling.py)
    return {'pass': max_abs <= 1e-4 and psnr >= 35, 'preset': preset, 'image': [size, size], 'tile': tile,
            'overlap': overlap, 'max_abs_device_vs_cpu_tiled': max_abs, 'psnr_tiled_vs_whole_db': psnr}


def check_resume(stage, preset, amp):
    import collections
    import tempfile
    import warnings
    torch = stage.torch
    network = {'type': 'UniRain', 'preset': preset}
    batch, size, count = stage.mode['resume_batches']
    batches = [random_batch(batch, size, seed=10 + i) for i in range(count)]
    stop = len(batches) // 2
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            opt = model_options(stage, network, {'type': 'TURLoss', 'lr': 5e-3}, amp=amp, root=root)
            opt['train']['ema_decay'] = 0.9
            full = build(opt)
            first = build(opt)
            for step, batch in enumerate(batches, start=1):
                for model in ((full, first) if step <= stop else (full,)):
                    model.update_learning_rate(step)
                    model.feed_data(batch)
                    model.optimize_parameters(step)
            first.rng_states = first.gather_host_rng_states()
            first.save_training_state(epoch=0, current_iter=stop)
            with torch.serialization.safe_globals([collections.Counter]):  # CoBa-style histories
                state = torch.load(os.path.join(root, f'{stop}.state'), map_location='cpu', weights_only=True)
            second = build(opt)
            second.net_g.load_state_dict(first.net_g.state_dict())
            second.net_g_ema.load_state_dict(first.net_g_ema.state_dict())
            second.resume_training(state)
            for step, batch in enumerate(batches[stop:], start=stop + 1):
                second.update_learning_rate(step)
                second.feed_data(batch)
                second.optimize_parameters(step)
        finally:
            torch.use_deterministic_algorithms(False)
    diffs = [float((a.float() - b.float()).abs().max()) for a, b in
             zip(full.net_g.state_dict().values(), second.net_g.state_dict().values())]
    nondeterministic = sorted({str(w.message)[:120] for w in caught if 'deterministic' in str(w.message)})
    return {'pass': max(diffs) == 0.0, 'preset': preset, 'amp': amp, 'bit_exact': max(diffs) == 0.0,
            'max_abs_weight_diff': max(diffs), 'scaler_state_saved': 'amp_scaler' in state,
            'nondeterministic_op_warnings': nondeterministic}


# -------------------------------------------------------------------------------------------- b: throughput


def stage_b(stage):
    quiet_basicsr()
    mode = stage.mode
    preset = mode['bench_preset']
    nets = ('UniRain', 'UniRainDense')
    # eager first: they are the numbers that matter most if the budget runs out
    items = [('train', net, preset, amp, False, False) for net in nets for amp in (None, 'bf16')]
    items += [('train', net, preset, 'bf16', False, True) for net in nets]
    items += [('infer', 'UniRain', preset, dtype, decoder) for decoder in ('hard', 'soft')
              for dtype in ('fp32', 'bf16', 'fp16')]
    # compiled last: compiling the paper nets takes minutes
    amps = ('bf16', None) if mode['compile'] is True else (None,)
    items += [('train', net, preset, amp, mode['compile'], False) for amp in amps for net in mode['compile_nets']]
    for item in items:
        label = _label(item)
        needed = mode['needed_s']['compiled' if item[0] == 'train' and item[4] else 'eager']
        if stage.left() < needed:
            stage.add({'check': label, 'skipped': f'{stage.left():.0f} s left of the stage budget'})
            continue
        if item[0] == 'train':
            stage.attempt(label, measure_training, *item[1:])
        else:
            stage.attempt(label, measure_inference, *item[1:])
        free_memory(stage)


def _label(item):
    if item[0] == 'train':
        _, net, preset, amp, compile_opt, ckpt = item
        return (f'train {net} {preset} {amp or "fp32"} {"compiled" if compile_opt else "eager"}'
                + (' checkpointing' if ckpt else ''))
    _, net, preset, dtype, decoder = item
    return f'infer {net} {preset} {dtype} {decoder} decoder'


def free_memory(stage):
    import gc
    torch = stage.torch
    gc.collect()
    torch._dynamo.reset()
    if stage.cuda:
        torch.cuda.empty_cache()


def peak_mib(stage):
    return stage.torch.cuda.max_memory_allocated() / 2 ** 20 if stage.cuda else None


def measure_training(stage, net, preset, amp, compile_opt, checkpointing):
    torch = stage.torch
    (batch, size), steps, warmup = stage.mode['train_batch'], stage.mode['steps'], stage.mode['warmup']
    network = {'type': net, 'preset': preset, 'checkpointing': checkpointing}
    model = build(model_options(stage, network, {'type': 'UniformTypeLoss'}, amp=amp, compile_opt=compile_opt))
    data = random_batch(batch, size, seed=0)
    start = time.perf_counter()
    model.feed_data(data)
    model.optimize_parameters(1)
    stage.sync()
    first = time.perf_counter() - start
    for step in range(2, 2 + warmup):  # allocator, kernels, (re)compilation
        model.feed_data(data)
        model.optimize_parameters(step)
    stage.sync()
    if stage.cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for step in range(2 + warmup, 2 + warmup + steps):
        model.feed_data(data)
        model.optimize_parameters(step)
    stage.sync()
    seconds = time.perf_counter() - start
    return {'pass': bool(torch.isfinite(torch.tensor(model.log_dict['l_pix']))), 'batch': [batch, 3, size, size],
            'it_per_s': steps / seconds, 'peak_mem_MiB': peak_mib(stage), 'first_step_s': first,
            'compiled_fell_back_to_eager': bool(compile_opt) and model.compiled_g is None}


def measure_inference(stage, net, preset, dtype, decoder):
    import statistics
    torch = stage.torch
    from unirain_arch.inference import InferenceError, derain_tensor, load_model
    dtypes = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
    model = load_model(network={'type': net, 'preset': preset, 'decoder_mode': decoder}, device=stage.device,
                       allow_untrained=True)
    size = stage.mode['infer_size']
    x = torch.rand(1, 3, size, size)
    try:
        derain_tensor(model, x, dtype=dtypes[dtype])  # warm-up
    except InferenceError as exc:
        return {'pass': None, 'skipped': str(exc)}
    if stage.cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(stage.mode['infer_repeats']):
        start = time.perf_counter()
        derain_tensor(model, x, dtype=dtypes[dtype])
        times.append(time.perf_counter() - start)
    return {'pass': True, 'image': [size, size], 'ms_per_MP': 1000 * statistics.median(times) / (size * size / 1e6),
            'peak_mem_MiB': peak_mib(stage), 'note': 'derain_tensor end to end: CPU image in, CPU result out'}


# ---------------------------------------------------------------------------------------------- c: learning


def endless(loader, sampler):
    """Batches epoch after epoch, reshuffled each time as BasicSR's loop does."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def stage_c(stage):
    torch = stage.torch
    from basicsr.data import build_dataloader, build_dataset
    from basicsr.data.data_sampler import EnlargedSampler
    from basicsr.utils import get_root_logger
    from unirain_utils.rain_types import RAIN_TYPES
    mode, out = stage.mode, stage.out
    type_names = [name.lower() for name in RAIN_TYPES]
    for name in ('progress.json', 'progress.png', 'net_g.pth', 'train.log'):
        (out / name).unlink(missing_ok=True)
    logger = get_root_logger(log_file=str(out / 'train.log'))
    workers = 0 if stage.quick else max(1, min(14, (os.cpu_count() or 2) - 2))  # synthesis is CPU work
    crop, batch = mode['learn_crop'], mode['learn_batch']
    train_set_opt = {
        'name': 'bundled_photos_rain', 'type': 'DistilledRainDataset', 'phase': 'train',
        'synthesize': {'bundled': ['astronaut', 'coffee', 'motorcycle_left', 'motorcycle_right']},
        'types': type_names, 'gt_size': crop, 'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': workers,
        'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 2000, 'prefetch_mode': None, 'pin_memory': stage.cuda}
    datasets = {'train': train_set_opt}
    for i, name in enumerate(type_names, start=1):  # held-out photos, fixed rain
        datasets[f'val_{i}'] = {'name': f'val_{name.upper()}', 'type': 'DistilledRainDataset', 'phase': 'val',
                                'synthesize': {'bundled': mode['held_out'], 'seed': 7}, 'types': [name]}
    coba = mode['coba']
    val = {'val_freq': 10 ** 9, 'coba_freq': coba['coba_freq'], 'coba_crop': coba['coba_crop'], 'save_img': False,
           'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}}
    pixel_opt = {'type': 'CoBaLoss', 'mode': 'paper', 'window': coba['window'],
                 'warmup_updates': coba['warmup_updates']}
    preset, amp = mode['learn_preset'], 'bf16' if stage.cuda else None
    opt = model_options(stage, {'type': 'UniRain', 'preset': preset}, pixel_opt, amp=amp, datasets=datasets,
                        val=val)
    opt['train']['optim_g'] = {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 1e-4, 'betas': [0.9, 0.999]}

    train_set = build_dataset(train_set_opt)
    sampler = EnlargedSampler(train_set, 1, 0, train_set_opt['dataset_enlarge_ratio'])
    train_loader = build_dataloader(train_set, train_set_opt, num_gpu=opt['num_gpu'], dist=False, sampler=sampler,
                                    seed=0)
    val_sets = [build_dataset(datasets[f'val_{i}']) for i in range(1, 5)]
    val_loaders = [build_dataloader(s, datasets[f'val_{i}'], num_gpu=opt['num_gpu'], dist=False, sampler=None,
                                    seed=0) for i, s in enumerate(val_sets, start=1)]
    model = build(opt)
    model.use_validation_datasets(val_sets)
    # the rest of the budget, less a reserve for the validations and the weights
    train_seconds = mode.get('learn_seconds') or max(10.0, stage.left() - mode['reserve_s'])
    validations = list(mode['validations'])
    logger.info(f'gpu_check learning: UniRain {preset}, CoBa, amp {amp}, {train_seconds:.0f} s of training, '
                f'{workers} loader workers')
    trained, waited, current_iter = 0.0, 0.0, 0
    batches = endless(train_loader, sampler)
    while validations:
        start = time.perf_counter()
        data = next(batches)
        fetched = time.perf_counter()
        current_iter += 1
        model.update_learning_rate(current_iter, warmup_iter=-1)
        model.feed_data(data)
        model.optimize_parameters(current_iter)
        stage.sync()
        waited += fetched - start
        trained += time.perf_counter() - start
        if current_iter % 200 == 0:
            logger.info(f'iter {current_iter}: l_pix {model.log_dict["l_pix"]:.4f}, {current_iter / trained:.1f} it/s')
        if trained >= validations[0] * train_seconds:  # validation time is not training time
            validations.pop(0)
            for loader in val_loaders:
                model.validation(loader, current_iter, None, False)
    progress = json.loads((out / 'progress.json').read_text())['validations']
    last = progress[-1]
    torch.save({'params': model.get_bare_model(model.net_g).state_dict()}, out / 'net_g.pth')
    per_type = {name: {'output': last['output'][name], 'input': last['input'][name],
                       'gain': last['output'][name] - last['input'][name]} for name in type_names}
    finite = all(math.isfinite(v['output']) and math.isfinite(v['input']) for v in per_type.values())
    stage.add({'check': 'learning', 'pass': finite, 'preset': preset, 'strategy': 'CoBaLoss', 'amp': amp,
               'iterations': current_iter, 'train_seconds': trained, 'it_per_s': current_iter / trained,
               'data_wait_fraction': waited / trained, 'batch': [batch, 3, crop, crop],
               'held_out_photos': mode['held_out'], 'psnr_db_per_type': per_type,
               'psnr_db_avg': {'output': last['output']['avg'], 'input': last['input']['avg']},
               'loss_weights': last['weights'], 'validations_at_iter': [r['iter'] for r in progress],
               'weights_MiB': (out / 'net_g.pth').stat().st_size / 2 ** 20})


if __name__ == '__main__':
    sys.exit(main())
