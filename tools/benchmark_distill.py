"""Benchmark of the distillation pipeline: candidates/s per stage, and faiss retrieval at a million references.

    python tools/benchmark_distill.py                              # both parts, JSON to results/benchmark_distill.json
    python tools/benchmark_distill.py --skip-pipeline --dim 512    # only the index part, CLIP ViT-B-32 width

Part 1 runs build-refs and score on TINY RANDOM STAND-IN MODELS (unirain_data.distillation.tiny_models: a
64-d open_clip, a 2-layer BLIP, 2-layer Qwen2.5-VL judges) with the paper's K1/K2/K3 = 100/20/5 and 256 px
SSIM thumbnails. Its rates show the pipeline's own overhead and the load / retrieve stages at real settings;
with real models the caption, embed and judge stages are far slower (they are the models' speed).
Part 2 builds the faiss index the pipeline would choose for a large database (and optionally others) over
synthetic clustered unit vectors, and measures build time, query latency and recall@K against exact search.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Distillation benchmark: per-stage throughput (tiny stand-in '
                                                 'models) and faiss retrieval at scale.')
    parser.add_argument('--out', default='results/benchmark_distill.json', help='JSON results file')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads for part 1 (default 1: on a shared machine more threads only contend)')
    pipe = parser.add_argument_group('part 1: pipeline stages')
    pipe.add_argument('--skip-pipeline', action='store_true')
    pipe.add_argument('--references', type=int, default=200, help='reference photos (default 200)')
    pipe.add_argument('--candidates', type=int, default=96, help='candidates scored (default 96)')
    pipe.add_argument('--image-size', type=int, default=64, help='side of the toy photos in pixels (default 64)')
    index = parser.add_argument_group('part 2: faiss at scale')
    index.add_argument('--skip-index', action='store_true')
    index.add_argument('--num-refs', type=int, default=1_000_000, help='synthetic references (default 1 M)')
    index.add_argument('--dim', type=int, default=64, help='embedding width (tiny CLIP 64; ViT-B-32 512)')
    index.add_argument('--queries', type=int, default=1000, help='queries for recall and latency (default 1000)')
    index.add_argument('--k', type=int, default=100, help='neighbours per query: K1 (default 100)')
    index.add_argument('--faiss-threads', type=int, default=os.cpu_count(), help='faiss OpenMP threads (default: all)')
    index.add_argument('--data', default='clustered,uniform', help='synthetic distributions: clustered, uniform')
    index.add_argument('--indexes', default='ivf', help='comma list of ivf, hnsw (default ivf: the auto choice)')
    index.add_argument('--nprobe', default='16,64,256,1024', help='IVF nprobe values to sweep')
    index.add_argument('--ef-search', default='64,128,256', help='HNSW efSearch values to sweep')
    return parser.parse_args(argv)


# ----- part 1 -------------------------------------------------------------------------------------------------
def bench_pipeline(args):
    import torch

    from unirain_data.distillation import pipeline
    from unirain_data.distillation.captioner import Captioner
    from unirain_data.distillation.config import config_from_dict
    from unirain_data.distillation.embedder import Embedder
    from unirain_data.distillation.reference_db import build_reference_db, list_reference_entries
    from unirain_data.distillation.tiny_models import build_tiny_assets, tiny_config
    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix='bench-distill-')
    assets = build_tiny_assets(os.path.join(work, 'assets'), args.references, args.candidates, args.image_size)
    raw = tiny_config(assets, work)
    raw['retrieval'] = {'k1': 100, 'k2': 20, 'k3': 5, 'ssim_size': 256}
    raw['judges'].append(dict(raw['judges'][0], name='qwen-2'))  # three judges, as in the paper
    raw['pipeline'].update(chunk_size=32, max_side=256)
    raw['captioner']['batch_size'] = raw['embedder']['batch_size'] = raw['references']['batch_size'] = 32
    cfg = config_from_dict(raw)
    captioner = Captioner(offline=True, **cfg['captioner'])
    embedder = Embedder(**cfg['embedder'])
    start = time.perf_counter()
    build_reference_db(list_reference_entries(cfg['references']['manifest']), cfg['references']['db_dir'], captioner,
                       embedder, cfg, workers=cfg['pipeline']['io_workers'], progress=False)
    build_seconds = time.perf_counter() - start
    models = pipeline.load_models(cfg, torch.device('cpu'))
    start = time.perf_counter()
    result = pipeline.score(cfg, (0, 1), models=models, progress=False)
    score_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pipeline.merge(cfg, progress=False)
    merge_seconds = time.perf_counter() - start
    return {'models': 'tiny random stand-ins (not real weights)', 'torch_threads': args.threads,
            'references': args.references, 'candidates': args.candidates, 'image_size': args.image_size,
            'k': [100, 20, 5], 'ssim_size': 256, 'judges': len(cfg['judges']),
            'build_refs_per_second': round(args.references / build_seconds, 2),
            'stages_candidates_per_second': {s: round(r, 2) for s, r in result.rates.items() if r},
            'end_to_end_candidates_per_second': round(args.candidates / score_seconds, 2),
            'merge_candidates_per_second': round(args.candidates / merge_seconds, 1)}


# ----- part 2 -------------------------------------------------------------------------------------------------
def synthetic(data, num, dim, seed, block=100_000):
    """Unit vectors. 'clustered': around 4096 random centres (like embeddings of many similar photos);
    'uniform': uniform on the sphere, the hardest case for any approximate index."""
    centers = np.random.default_rng(0).standard_normal((4096, dim)) / np.sqrt(dim)
    rng = np.random.default_rng(seed)
    out = np.empty((num, dim), np.float32)
    for start in range(0, num, block):
        n = min(block, num - start)
        noise = rng.standard_normal((n, dim))
        x = noise if data == 'uniform' else centers[rng.integers(0, len(centers), n)] + 0.7 / np.sqrt(dim) * noise
        out[start:start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall(found, exact):
    k = exact.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / k for f, e in zip(found, exact)]))


def latency(index, queries, k):
    """(ms per query in batches of 128 (a chunk), ms for one query alone), medians over the queries."""
    start = time.perf_counter()
    for s in range(0, len(queries), 128):
        index.search(queries[s:s + 128], k)
    batched = (time.perf_counter() - start) / len(queries) * 1e3
    singles = []
    for q in queries[:100]:
        t = time.perf_counter()
        index.search(q[None], k)
        singles.append(time.perf_counter() - t)
    return batched, float(np.median(singles)) * 1e3


def bench_index(args):
    from unirain_data.distillation import faiss_index
    from unirain_data.distillation.config import DEFAULTS
    faiss = faiss_index.import_faiss()
    faiss.omp_set_num_threads(args.faiss_threads)
    results = {'num_refs': args.num_refs, 'dim': args.dim, 'queries': args.queries, 'k': args.k,
               'faiss_threads': faiss.omp_get_max_threads(), 'gpus': faiss.get_num_gpus(),
               'auto_choice': faiss_index.choose_type(args.num_refs, DEFAULTS['index']),
               'vectors_mb': round(args.num_refs * args.dim * 4 / 2 ** 20), 'exact_ms_per_query_batched': {},
               'indexes': []}
    for data in [d.strip() for d in args.data.split(',') if d.strip()]:
        base = synthetic(data, args.num_refs, args.dim, 1)
        queries = synthetic(data, args.queries, args.dim, 2)
        exact_index = faiss.IndexFlatL2(args.dim)
        exact_index.add(base)
        start = time.perf_counter()
        _, exact = exact_index.search(queries, args.k)
        results['exact_ms_per_query_batched'][data] = round((time.perf_counter() - start) / args.queries * 1e3, 3)
        del exact_index
        for kind in [k.strip() for k in args.indexes.split(',') if k.strip()]:
            cfg = dict(DEFAULTS['index'], type=kind)
            start = time.perf_counter()
            index = faiss_index.build_index(base, 'l2', cfg)
            build = time.perf_counter() - start
            knob = 'ivf_nprobe' if kind == 'ivf' else 'hnsw_ef_search'
            for value in [int(v) for v in (args.nprobe if kind == 'ivf' else args.ef_search).split(',')]:
                faiss_index.configure_search(index, dict(cfg, **{knob: value}))
                _, found = index.search(queries, args.k)
                batched, single = latency(index, queries, args.k)
                results['indexes'].append({
                    'data': data, 'index': kind, 'build_seconds': round(build, 1), knob: value,
                    'nlist': faiss.extract_index_ivf(index).nlist if kind == 'ivf' else None,
                    f'recall@{args.k}': round(recall(found, exact), 4),
                    'recall@10': round(recall(found[:, :10], exact[:, :10]), 4),
                    'ms_per_query_batched': round(batched, 3), 'ms_single_query': round(single, 3),
                    'default': value == DEFAULTS['index'][knob]})
            del index
    return results


def print_tables(results):
    if 'pipeline' in results:
        p = results['pipeline']
        print(f'\nPart 1: pipeline stages on {p["models"]}, {p["candidates"]} candidates, {p["references"]} '
              f'references, K={p["k"]}, SSIM {p["ssim_size"]} px, {p["judges"]} judges, {p["torch_threads"]} thread(s)')
        print(f'{"stage":<18}{"candidates/s":>14}')
        for stage, rate in p['stages_candidates_per_second'].items():
            print(f'{stage:<18}{rate:>14.2f}')
        print(f'{"end to end":<18}{p["end_to_end_candidates_per_second"]:>14.2f}')
        print(f'build-refs: {p["build_refs_per_second"]:.2f} references/s; merge: '
              f'{p["merge_candidates_per_second"]:.0f} candidates/s')
    if 'index' in results:
        r = results['index']
        exact = ', '.join(f'{d} {ms:.2f}' for d, ms in r['exact_ms_per_query_batched'].items())
        print(f'\nPart 2: faiss, {r["num_refs"]:,} synthetic references, {r["dim"]}-d, {r["queries"]} queries, '
              f'K={r["k"]}, {r["faiss_threads"]} faiss thread(s), auto choice: {r["auto_choice"]}; exact search '
              f'ms/query (batched): {exact}')
        k = r['k']
        print(f'{"data":<11}{"index":<7}{"knob":>14}{"build s":>9}{f"recall@{k}":>12}{"recall@10":>11}'
              f'{"ms/q batch":>12}{"ms single":>11}')
        for row in r['indexes']:
            knob = f'nprobe={row["ivf_nprobe"]}' if row['index'] == 'ivf' else f'ef={row["hnsw_ef_search"]}'
            knob += '*' if row['default'] else ''
            print(f'{row["data"]:<11}{row["index"]:<7}{knob:>14}{row["build_seconds"]:>9.1f}'
                  f'{row[f"recall@{k}"]:>12.4f}{row["recall@10"]:>11.4f}{row["ms_per_query_batched"]:>12.3f}'
                  f'{row["ms_single_query"]:>11.3f}')
        print('(* the config default; batch = 128 queries, as in a chunk)')


def main(argv=None):
    args = parse_args(argv)
    results = {'machine': {'cpus': os.cpu_count()}}
    if not args.skip_pipeline:
        results['pipeline'] = bench_pipeline(args)
    if not args.skip_index:
        results['index'] = bench_index(args)
    print_tables(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=2)
    print(f'\nresults: {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
