"""Size, cost and speed of the networks: UniRain presets, UniRainDense presets and PReNet.

For each network: parameters, multiply-adds on 1x3x256x256 (ptflops/thop convention, see
unirain_arch/flops.py; UniRain also "if every expert ran", the figure a mask-based MoE would count), eval
forward latency per megapixel and the forward's peak memory. Then the CPU training speed of the small nets
(batch 4x3x64x64: forward, L1 backward, AdamW step) in fp32 and under bf16 autocast (train.amp), the peak
memory of one training step with and without activation checkpointing (``checkpointing: true``), and the
cost of one decoder MoE layer of the paper preset with hard top-1 routing against the same layer with soft
routing (all experts).

    python tools/benchmark_arch.py                      # CPU, every section, table + benchmark_arch.json
    python tools/benchmark_arch.py --device cuda --out gpu.json
    python tools/benchmark_arch.py --nets UniRain:tiny UniRain:small --size 128
    python tools/benchmark_arch.py --sections training memory --train-nets UniRain:tiny UniRain:small

Each network is measured in a fresh process. Peak memory is what one warm forward needs beyond the
weights: on CUDA torch's peak allocation; on CPU the peak of glibc's in-use heap sampled after every op
(the growth of the peak resident size over the first forward, which includes allocator caching, is in
the JSON too). Timings on a shared machine vary: the JSON records the load average next to them.
"""
import argparse
import json
import multiprocessing as mp
import os
import ctypes
import platform
import resource
import statistics
import sys
import time

DEFAULT_NETS = ['UniRain:tiny', 'UniRain:small', 'UniRain:paper',
                'UniRainDense:tiny', 'UniRainDense:small', 'UniRainDense:paper', 'PReNet']
SECTIONS = ('networks', 'training', 'memory', 'layer')


def _build(spec, **options):
    import unirain_arch  # noqa: F401  (registers the archs)
    from basicsr.utils.registry import ARCH_REGISTRY
    name, _, preset = spec.partition(':')
    return ARCH_REGISTRY.get(name)(**({'preset': preset} if preset else {}), **options)


def _sync(device):
    import torch
    if device == 'cuda':
        torch.cuda.synchronize()


def _max_rss_bytes():
    scale = 1 if platform.system() == 'Darwin' else 1024  # Linux reports KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


def _live_heap_reader():
    """Bytes currently malloc'ed (glibc mallinfo2), or None where unavailable.

    Unlike the resident size it ignores memory the allocator keeps after a free, so it measures what the
    tensors need rather than how the allocator behaved.
    """
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def live():
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd
    return live


def _peak_live_bytes(net, x, live):
    """Peak of malloc'ed bytes after each aten op of ``net(x)``, above the level before it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class PeakLive(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.peak = live()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, live())
            return out

    base = live()
    mode = PeakLive()
    with mode:
        net(x)
    return mode.peak - base


def _measure(spec, device, size, repeats, threads, queue):
    """Runs in its own process; puts one result row on ``queue``."""
    import torch
    from unirain_arch.flops import count_macs, count_parameters
    from unirain_arch.moe import HardMoE
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _build(spec).eval()
    row = {'net': spec, 'params_M': count_parameters(net) / 1e6}
    net = net.to(device)
    x = torch.rand(1, 3, size, size, device=device)
    with torch.no_grad():
        rss_before = _max_rss_bytes()
        net(x)  # warm-up: kernels, caches, one-time allocations
        _sync(device)
        row['peak_rss_growth_MiB'] = (_max_rss_bytes() - rss_before) / 2 ** 20
        if device == 'cuda':
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            net(x)
            _sync(device)
            row['peak_mem_MiB'] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        else:
            live = _live_heap_reader()
            row['peak_mem_MiB'] = None if live is None else _peak_live_bytes(net, x, live) / 2 ** 20
        row['latency_s'] = _median_seconds(net, x, repeats, device)
    row['ms_per_MP'] = 1000 * row['latency_s'] / (size * size / 1e6)
    # counted after the timing so the counting forward does not set the memory peak
    macs = count_macs(net, (1, 3, 256, 256), device)
    row['gmacs_256'] = macs['layers'] / 1e9
    row['gmacs_256_with_attention_matmul'] = macs['total'] / 1e9
    hard = [m for m in net.modules() if isinstance(m, HardMoE)]
    if hard:
        for m in hard:
            m.top_k = m.num_experts
        row['gmacs_256_every_expert'] = count_macs(net, (1, 3, 256, 256), device)['layers'] / 1e9
    queue.put(row)


def _seconds(fn, x, repeats, device):
    """Wall times of ``repeats`` calls of ``fn(x)`` (already warmed up), device work included."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _median_seconds(fn, x, repeats, device):
    return statistics.median(_seconds(fn, x, repeats, device))


def _decoder_layer_ratio(device, size, batch, repeats, threads, queue):
    """Hard top-1 vs soft routing of one paper-preset decoder level-1 MoE layer (96 channels)."""
    import torch
    from unirain_arch.flops import count_macs
    from unirain_arch.moe import HardMoE, SoftMoE
    from unirain_arch.presets import MOE_DEFAULTS
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dim, n, expansion = 96, MOE_DEFAULTS['num_experts'], MOE_DEFAULTS['expert_expansion_factor'][0]
    hard = HardMoE(dim, n, expansion, top_k=1).eval().to(device)
    soft = SoftMoE(dim, n, expansion).eval().to(device)
    soft.load_state_dict(hard.state_dict())
    # send sample b to expert b mod N, as a trained router spreads a mixed batch (a random one sends
    # nearly all samples to one expert)
    x = torch.randn(batch, dim, size, size, device=device)
    for b in range(batch):
        x[b, b % n] += 5
    with torch.no_grad():
        hard.router.proj.weight.zero_()
        hard.router.proj.weight[:, :n].copy_(torch.eye(n))
        hard.router.proj.bias.zero_()
    result = {'layer': f'decoder level 1 MoE ({dim} ch, N={n}, expert expansion {expansion})',
              'input': [batch, dim, size, size]}
    for name, layer in (('hard_top1', hard), ('soft', soft)):
        result[f'{name}_gmacs'] = count_macs(layer, (batch, dim, size, size), device)['layers'] / 1e9
        with torch.no_grad():
            layer(x)
            _sync(device)
            times = _seconds(layer, x, repeats, device)
        # the minimum is the least disturbed by other work on a shared machine
        result[f'{name}_s'], result[f'{name}_min_s'] = statistics.median(times), min(times)
    result['experts_used_by_hard'] = sorted(set(hard.last_experts.flatten().tolist()))
    result['macs_ratio_hard_over_soft'] = result['hard_top1_gmacs'] / result['soft_gmacs']
    result['time_ratio_hard_over_soft'] = result['hard_top1_s'] / result['soft_s']
    queue.put(result)


def _train_speed(spec, amp, batch, size, steps, threads, queue):
    """CPU training iterations per second: forward and L1 (autocast as ``train.amp``), backward, AdamW step."""
    import torch
    from unirain_losses.mixed_precision import MixedPrecision, amp_dtype
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _build(spec).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4)
    precision = MixedPrecision(amp_dtype(None if amp == 'fp32' else amp, '--train-amp'), 'cpu')
    x, y = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad()
        with precision.autocast():
            loss = (net(x).float() - y).abs().mean()
        precision.backward(loss)
        precision.step(optimizer)
        if step >= 2:  # the first steps allocate the optimiser state and warm the kernels
            times.append(time.perf_counter() - start)
    queue.put({'net': spec, 'amp': amp, 'batch': [batch, 3, size, size], 'it_per_s': 1 / statistics.median(times)})


def _train_memory(spec, checkpointing, device, batch, size, repeats, threads, queue):
    """Peak memory of one training forward + backward beyond weights and gradients, and its time."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _build(spec, checkpointing=checkpointing).train().to(device)
    x, y = torch.rand(batch, 3, size, size, device=device), torch.rand(batch, 3, size, size, device=device)

    def step(_):
        net.zero_grad(set_to_none=False)  # gradient buffers stay allocated: the peak is the activations
        (net(x) - y).abs().mean().backward()

    step(None)  # allocates the gradients, warms the kernels
    _sync(device)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(None)
        _sync(device)
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        live = _live_heap_reader()
        peak = None if live is None else _peak_live_bytes(step, None, live) / 2 ** 20
    queue.put({'net': spec, 'checkpointing': checkpointing, 'batch': [batch, 3, size, size], 'peak_MiB': peak,
               'step_s': _median_seconds(step, None, repeats, device)})


def _in_subprocess(target, *args):
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu', help='where to run (default cpu)')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS),
                        help='what to measure (default: all): networks (size, cost, latency), training (CPU '
                             'it/s, fp32 / bf16), memory (one training step with / without checkpointing), '
                             'layer (hard vs soft decoder MoE layer)')
    parser.add_argument('--nets', nargs='+', default=DEFAULT_NETS, metavar='ARCH[:PRESET]',
                        help=f'networks to measure (default: {" ".join(DEFAULT_NETS)})')
    parser.add_argument('--size', type=int, default=256, help='side of the square image timed (default 256)')
    parser.add_argument('--repeats', type=int, default=3, help='timed forwards after one warm-up (median)')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0: torch default)')
    parser.add_argument('--layer-size', type=int, default=128, help='side of the MoE layer benchmark input')
    parser.add_argument('--layer-batch', type=int, default=4, help='batch of the MoE layer benchmark')
    parser.add_argument('--train-nets', nargs='*', default=['UniRain:tiny', 'UniRain:small'],
                        metavar='ARCH[:PRESET]', help='networks whose CPU training speed is measured')
    parser.add_argument('--train-amp', nargs='+', choices=['fp32', 'bf16'], default=['fp32', 'bf16'],
                        help='precisions of the training-speed runs (bf16: autocast, as train.amp: bf16)')
    parser.add_argument('--train-batch', type=int, default=4, help='training-speed batch (default 4)')
    parser.add_argument('--train-size', type=int, default=64, help='training-speed crop side (default 64)')
    parser.add_argument('--train-steps', type=int, default=10, help='timed training steps (median)')
    parser.add_argument('--memory-nets', nargs='*', default=['UniRain:small', 'UniRainDense:small'],
                        metavar='ARCH[:PRESET]', help='networks whose training-step memory is measured')
    parser.add_argument('--memory-batch', type=int, default=4, help='batch of the memory measurement')
    parser.add_argument('--memory-size', type=int, default=128, help='crop side of the memory measurement')
    parser.add_argument('--out', default='benchmark_arch.json', help='JSON file to write')
    args = parser.parse_args()
    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            sys.exit('benchmark_arch: --device cuda but torch sees no GPU')

    from tqdm import tqdm
    sections = set(args.sections)
    rows = [_in_subprocess(_measure, spec, args.device, args.size, args.repeats, args.threads)
            for spec in tqdm(args.nets if 'networks' in sections else [], desc='networks', unit='net')]
    runs = [(spec, amp) for spec in args.train_nets for amp in args.train_amp] if 'training' in sections else []
    train = [_in_subprocess(_train_speed, spec, amp, args.train_batch, args.train_size, args.train_steps, args.threads)
             for spec, amp in tqdm(runs, desc='training speed', unit='run')]
    runs = [(spec, c) for spec in args.memory_nets for c in (False, True)] if 'memory' in sections else []
    memory = [_in_subprocess(_train_memory, spec, c, args.device, args.memory_batch, args.memory_size, args.repeats,
                             args.threads) for spec, c in tqdm(runs, desc='training memory', unit='run')]
    ratio = (_in_subprocess(_decoder_layer_ratio, args.device, args.layer_size, args.layer_batch, args.repeats,
                            args.threads) if 'layer' in sections else None)

    from unirain_arch.flops import CONVENTION
    if rows:
        header = (f'{"network":<20} {"params M":>9} {"GMACs@256":>10} {"+attn mm":>9} {"all experts":>12} '
                  f'{"ms/MP":>10} {"peak MiB":>9}')
        print(f'\ndevice: {args.device}, timed on 1x3x{args.size}x{args.size}; MACs: {CONVENTION}')
        print(header)
        print('-' * len(header))
    for r in rows:
        every = f'{r["gmacs_256_every_expert"]:.1f}' if 'gmacs_256_every_expert' in r else '-'
        print(f'{r["net"]:<20} {r["params_M"]:>9.3f} {r["gmacs_256"]:>10.1f} '
              f'{r["gmacs_256_with_attention_matmul"]:>9.1f} {every:>12} {r["ms_per_MP"]:>10.0f} '
              f'{"-" if r["peak_mem_MiB"] is None else format(r["peak_mem_MiB"], ".0f"):>9}')
    for t in train:
        print(f'training {t["net"]} on CPU, {t["amp"]}, batch {"x".join(map(str, t["batch"]))}: '
              f'{t["it_per_s"]:.2f} it/s (forward + L1 backward + AdamW step)')
    for m in memory:
        peak = '-' if m['peak_MiB'] is None else f'{m["peak_MiB"]:.0f} MiB'
        print(f'training step {m["net"]} on {args.device}, checkpointing {str(m["checkpointing"]).lower()}, batch '
              f'{"x".join(map(str, m["batch"]))}: peak {peak} beyond weights and gradients, {m["step_s"]:.2f} s')
    if ratio:
        print(f'\n{ratio["layer"]}, input {ratio["input"]}: hard top-1 {ratio["hard_top1_gmacs"]:.2f} GMACs '
              f'{ratio["hard_top1_s"] * 1000:.1f} ms (min {ratio["hard_top1_min_s"] * 1000:.1f}); soft '
              f'{ratio["soft_gmacs"]:.2f} GMACs {ratio["soft_s"] * 1000:.0f} ms (min {ratio["soft_min_s"] * 1000:.0f})'
              f'\nhard/soft cost ratio: MACs {ratio["macs_ratio_hard_over_soft"]:.3f}, '
              f'time {ratio["time_ratio_hard_over_soft"]:.3f} (experts used: {ratio["experts_used_by_hard"]})')
    import torch
    report = {'device': args.device, 'sections': sorted(sections), 'size': args.size, 'repeats': args.repeats,
              'threads': args.threads or torch.get_num_threads(), 'torch': torch.__version__,
              'cpu_count': os.cpu_count(), 'load_average': os.getloadavg(),
              'gpu': torch.cuda.get_device_name() if args.device == 'cuda' else None,
              'mac_convention': CONVENTION, 'networks': rows, 'training_cpu': train, 'training_memory': memory,
              'decoder_moe_layer': ratio}
    with open(args.out, 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
