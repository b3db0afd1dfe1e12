"""faiss indexes over the reference embeddings: exact (flat) for small sets, IVF or HNSW above a size threshold.

Metrics: 'l2' (squared Euclidean distance, smaller is nearer) for caption text embeddings and 'ip' (inner
product = cosine on unit vectors, larger is nearer) for image embeddings. Indexes are built and saved on
the CPU; search may run on GPUs (flat and IVF; faiss has no GPU HNSW) when faiss sees one.
"""
import math

import numpy as np

METRICS = ('l2', 'ip')


def import_faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError('faiss is not installed: pip install faiss-cpu (or faiss-gpu on a CUDA machine; '
                          'pip install -e ".[cpu]" / ".[gpu]" in this repository)') from exc
    return faiss


def choose_type(num_vectors, cfg):
    """The index type for ``num_vectors`` under ``cfg`` (the config's ``index`` block)."""
    if cfg['type'] != 'auto':
        return cfg['type']
    return 'flat' if num_vectors <= cfg['flat_max'] else 'ivf'


def auto_nlist(num_vectors):
    """About 4 sqrt(N) lists, and never fewer than 39 training vectors per list (faiss's k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(num_vectors)), num_vectors // 39))


def training_sample(vectors, nlist, per_list=64):
    """At most ``per_list`` vectors per IVF list for k-means (a fixed random subset): training on all of a
    million vectors costs minutes and gains nothing measurable."""
    if len(vectors) <= per_list * nlist:
        return vectors
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), per_list * nlist, replace=False))
    return vectors[rows]


def _faiss_metric(faiss, metric):
    if metric not in METRICS:
        raise ValueError(f'metric must be one of {METRICS}, got {metric!r}')
    return faiss.METRIC_L2 if metric == 'l2' else faiss.METRIC_INNER_PRODUCT


def build_index(vectors, metric, cfg):
    """A CPU index holding ``vectors`` ((N, D) float32) in their order: id i is row i."""
    faiss = import_faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    num, dim = vectors.shape
    kind = choose_type(num, cfg)
    faiss_metric = _faiss_metric(faiss, metric)
    if kind == 'flat':
        index = faiss.IndexFlatL2(dim) if metric == 'l2' else faiss.IndexFlatIP(dim)
    elif kind == 'ivf':
        nlist = min(cfg['ivf_nlist'] or auto_nlist(num), num)
        quantizer = faiss.IndexFlatL2(dim) if metric == 'l2' else faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric)
        index.train(training_sample(vectors, nlist))
    elif kind == 'hnsw':
        index = faiss.IndexHNSWFlat(dim, cfg['hnsw_m'], faiss_metric)
        index.hnsw.efConstruction = cfg['hnsw_ef_construction']
    else:
        raise ValueError(f'index.type must be one of auto, flat, ivf, hnsw, got {kind!r}')
    index.add(vectors)
    configure_search(index, cfg)
    return index


def index_kind(index):
    faiss = import_faiss()
    if isinstance(index, faiss.IndexHNSW):
        return 'hnsw'
    if faiss.try_extract_index_ivf(index) is not None:
        return 'ivf'
    return 'flat'


def configure_search(index, cfg):
    """Search-time knobs (IVF nprobe, HNSW efSearch) can change without rebuilding the index."""
    faiss = import_faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(cfg['ivf_nprobe'], ivf.nlist)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg['hnsw_ef_search']


def searchable(index, use_gpu):
    """The index to search with: a GPU copy when asked for (True) or possible ('auto'), else ``index`` itself."""
    faiss = import_faiss()
    gpus = faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0
    if use_gpu is True and gpus == 0:
        raise RuntimeError('index.use_gpu is true but faiss sees no GPU (faiss-cpu installed, or no CUDA device); '
                           'set index.use_gpu: auto or false')
    if use_gpu is False or gpus == 0 or index_kind(index) == 'hnsw':
        return index
    # faiss-gpu without a GPU returns an empty index here; get_num_gpus() > 0 guards against that
    return faiss.index_cpu_to_all_gpus(index)


def search(index, queries, k):
    """(distances, ids), each (Q, k'), k' = min(k, ntotal); rows sorted nearest first as faiss returns them."""
    k = min(int(k), index.ntotal)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
    distances, ids = index.search(queries, k)
    return distances, ids


def save_index(index, path):
    import_faiss().write_index(index, path)


def load_index(path):
    return import_faiss().read_index(path)
