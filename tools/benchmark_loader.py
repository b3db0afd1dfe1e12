"""Loader throughput (samples/s) of DistilledRainDataset, disk vs LMDB, at BasicSR's usual training settings.

Settings: phase train, gt_size 128, flips and rotations, batch_size_per_gpu 8, num_worker_per_gpu 2,
EnlargedSampler + basicsr.data.build_dataloader (no prefetcher). Each run starts fresh workers, skips
--warmup batches (worker start-up, page cache) and times the next --batches; the median of --repeats runs is
reported. Prints a table and writes JSON.

Example:
    python tools/benchmark_loader.py --manifest rain100l.jsonl --lmdb-manifest rain100l_lmdb/manifest.jsonl \
        --json benchmark_loader.json
"""
import argparse
import json
import math
import os
import platform
import statistics
import time

import unirain_data  # noqa: F401  (registers DistilledRainDataset; applies the basicsr compat patches)
from basicsr.data import build_dataloader, build_dataset
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.utils import get_root_logger

SETTINGS = {'gt_size': 128, 'use_hflip': True, 'use_rot': True, 'batch_size_per_gpu': 8, 'num_worker_per_gpu': 2}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--manifest', help='manifest of image files (disk backend)')
    parser.add_argument('--lmdb-manifest', help='key manifest written by tools/make_lmdb.py (LMDB backend; the '
                                                'LMDBs beside it)')
    parser.add_argument('--clean-root', help='also time on-the-fly synthesis of all four types from these clean images')
    parser.add_argument('--batches', type=int, default=40, help='timed batches per run (default 40)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed batches first (default 5)')
    parser.add_argument('--repeats', type=int, default=3, help='runs per backend; the median is reported (default 3)')
    parser.add_argument('--num-workers', type=int, default=SETTINGS['num_worker_per_gpu'],
                        help=f'num_worker_per_gpu (default {SETTINGS["num_worker_per_gpu"]})')
    parser.add_argument('--json', default='benchmark_loader.json', help='where to write the results')
    args = parser.parse_args(argv)
    if not (args.manifest or args.lmdb_manifest or args.clean_root):
        parser.error('give at least one of --manifest, --lmdb-manifest, --clean-root')
    return args


def dataset_options(name, num_workers, **source):
    return {'name': name, 'type': 'DistilledRainDataset', 'phase': 'train', **SETTINGS,
            'num_worker_per_gpu': num_workers, **source}


def time_loader(opt, batches, warmup, seed=0):
    """Samples per second over ``batches`` batches after ``warmup`` ones, fresh workers."""
    dataset = build_dataset(opt)
    needed = (batches + warmup) * opt['batch_size_per_gpu']
    ratio = max(1, math.ceil(needed / len(dataset)))
    sampler = EnlargedSampler(dataset, num_replicas=1, rank=0, ratio=ratio)
    loader = build_dataloader(dataset, opt, num_gpu=0, dist=False, sampler=sampler, seed=seed)
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    samples = 0
    for _ in range(batches):
        samples += next(iterator)['lq'].shape[0]
    elapsed = time.perf_counter() - start
    del iterator
    return samples / elapsed


def main(argv=None):
    args = parse_args(argv)
    get_root_logger().setLevel('WARNING')
    runs = []
    if args.manifest:
        runs.append(('disk', dataset_options('disk', args.num_workers, manifest=args.manifest)))
    if args.lmdb_manifest:
        runs.append(('lmdb', dataset_options('lmdb', args.num_workers, manifest=args.lmdb_manifest,
                                             io_backend={'type': 'lmdb'})))
    if args.clean_root:
        runs.append(('synthesis (4 types)', dataset_options('synthesis', args.num_workers,
                                                            synthesize={'clean_root': args.clean_root})))
    results = []
    for name, opt in runs:
        rates = [time_loader(opt, args.batches, args.warmup, seed=repeat) for repeat in range(args.repeats)]
        results.append({'backend': name, 'samples_per_s': statistics.median(rates), 'min': min(rates),
                        'max': max(rates), 'runs': rates})
    settings = {**SETTINGS, 'num_worker_per_gpu': args.num_workers, 'batches': args.batches, 'warmup': args.warmup,
                'repeats': args.repeats, 'cpu_count': os.cpu_count(), 'machine': platform.platform(),
                'manifest': args.manifest, 'lmdb_manifest': args.lmdb_manifest, 'clean_root': args.clean_root}
    print(f'DistilledRainDataset loader, gt_size {SETTINGS["gt_size"]}, batch {SETTINGS["batch_size_per_gpu"]}, '
          f'{args.num_workers} workers, {os.cpu_count()} CPUs; median of {args.repeats} runs x {args.batches} batches')
    print(f'{"backend":22s} {"samples/s":>10s} {"min":>8s} {"max":>8s}')
    for row in results:
        print(f'{row["backend"]:22s} {row["samples_per_s"]:10.1f} {row["min"]:8.1f} {row["max"]:8.1f}')
    with open(args.json, 'w', encoding='utf-8') as f:
        json.dump({'settings': settings, 'results': results}, f, indent=2)
    print(f'wrote {args.json}')
    return results


if __name__ == '__main__':
    main()
