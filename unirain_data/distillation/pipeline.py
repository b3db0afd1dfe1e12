"""Scoring candidates in bounded memory, sharded and resumable, and merging the shards into the distilled manifest.

Work layout (``pipeline.work_dir``)::

    run.json                                  what the results depend on (config, models, inputs)
    shard-RRRRR-of-WWWWW/chunk-CCCCCCCC.jsonl one finished chunk of this shard's candidates
    shard-RRRRR-of-WWWWW/DONE.json            written when the shard is complete

Sharding: rank r of w takes the candidates whose manifest position i has i % w == r (RANK / WORLD_SIZE under
torchrun, or ``shard=(r, w)``). Each shard's candidates are cut into chunks of ``chunk_size``; a chunk is
processed as a whole and written under a temporary name, fsync-ed and renamed, so a chunk file exists only
when complete. A restart with the same settings skips the chunks that exist: nothing is recomputed or
duplicated, and the batches are the same as in an uninterrupted run (so are the numbers). Different settings
in the same work_dir are refused (run.json), since the results would mix.

Merging reads the candidate manifest and the shards' chunks in lockstep (streaming, in manifest order),
votes (``vote.min_yes`` and the answer parsing apply at merge time, so changing them needs no rescoring)
and writes the manifest atomically with ``unirain_data.manifest.write_manifest``.
"""
import json
import os
import re
import time
from dataclasses import dataclass
from typing import List

import numpy as np

from unirain_data.distillation.config import ConfigError, require
from unirain_data.distillation.images import load_images
from unirain_data.distillation.progress import StageBars
from unirain_data.distillation.prompt import build_prompt, parse_answer
from unirain_data.distillation.reference_db import ReferenceDB, ReferenceDBError, model_signature
from unirain_data.distillation.retrieval import Retriever
from unirain_data.distillation.vote import majority_vote
from unirain_data.manifest import ManifestEntry, iter_manifest, resolve_path, write_manifest
from unirain_utils.files import atomic_open, atomic_write
from unirain_utils.image_io import BadImageError

WORK_FORMAT = 1
_SHARD_DIR = re.compile(r'shard-(\d{5})-of-(\d{5})$')
_DIGITS = 6


class WorkDirError(RuntimeError):
    """A work directory that holds results of other settings, or is incomplete for a merge."""


@dataclass
class Models:
    captioner: object
    embedder: object
    judges: List[object]


@dataclass
class ScoreResult:
    status: str  # 'done' (the shard is complete) or 'stopped' (max_chunks reached)
    rank: int
    world: int
    candidates: int  # in this shard
    scored: int  # by this call
    skipped: int  # already done by an earlier run
    rates: dict  # stage -> candidates per second in this call


# ----- shards and chunks -------------------------------------------------------------------------------------
def shard_from_env():
    """(rank, world) from torchrun's RANK / WORLD_SIZE, (0, 1) without them."""
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    if not 0 <= rank < world:
        raise ConfigError(f'RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})')
    return rank, world


def parse_shard(text):
    """'r/w' -> (r, w)."""
    match = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', str(text))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise ConfigError(f'--shard must be RANK/WORLD with 0 <= RANK < WORLD, got {text!r}')
    return int(match.group(1)), int(match.group(2))


def shard_dir(work_dir, rank, world):
    return os.path.join(work_dir, f'shard-{rank:05d}-of-{world:05d}')


def chunk_path(folder, chunk):
    return os.path.join(folder, f'chunk-{chunk:08d}.jsonl')


def shard_size(total, rank, world):
    return len(range(rank, total, world))


def count_entries(manifest):
    """Non-blank lines of a manifest (cheap: no JSON parsing), for progress bars."""
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f'candidates.manifest: file not found: {manifest}')
    with open(manifest, 'rb') as f:
        return sum(1 for line in f if line.strip())


def iter_chunks(manifest, rank, world, chunk_size):
    """(chunk number, [(manifest position, entry), ...]) for this shard, streaming."""
    chunk, items = 0, []
    for position, entry in enumerate(iter_manifest(manifest)):
        if position % world != rank:
            continue
        items.append((position, entry))
        if len(items) == chunk_size:
            yield chunk, items
            chunk, items = chunk + 1, []
    if items:
        yield chunk, items


def atomic_write_lines(path, lines):
    """Write, fsync, rename: ``path`` appears complete or not at all."""
    with atomic_open(path, 'w', encoding='utf-8') as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + '\n')


# ----- what the results depend on -----------------------------------------------------------------------------
def fingerprint(cfg):
    manifest = os.path.abspath(require(cfg, 'candidates.manifest', 'the manifest of candidate pairs to score'))
    if not os.path.isfile(manifest):
        raise FileNotFoundError(f'candidates.manifest: file not found: {manifest}')
    db_dir = os.path.abspath(require(cfg, 'references.db_dir', 'the reference database folder'))
    meta_path = os.path.join(db_dir, 'meta.json')
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f'reference database not found: {db_dir} (build it with tools/distill.py build-refs)')
    with open(meta_path, encoding='utf-8') as f:
        meta = json.load(f)
    stat = os.stat(manifest)
    return {
        'format': WORK_FORMAT,
        'candidates': {'path': manifest, 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns},
        'reference_db': {'folder': db_dir, 'created': meta.get('created'), 'count': meta.get('count')},
        'models': model_signature(cfg),
        'index': {k: v for k, v in cfg['index'].items() if k != 'use_gpu'},
        'retrieval': dict(cfg['retrieval']),
        'judges': [{k: j[k] for k in ('name', 'type', 'model', 'dtype', 'max_new_tokens', 'min_pixels', 'max_pixels')}
                   for j in cfg['judges']],
        'prompt': cfg['prompt'],
        'pipeline': {k: cfg['pipeline'][k] for k in ('chunk_size', 'on_bad_image')},
        'retrieval_detail': cfg['output']['retrieval_detail'],
    }


def _differences(old, new, where=''):
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f'{where}.{key}' if where else key)
        return out
    return [] if old == new else [f'{where}: {old!r} -> {new!r}']


def prepare_work_dir(work_dir, current):
    """Create work_dir with run.json, or check that its run.json matches ``current``."""
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, 'run.json')
    if os.path.isfile(path):
        check_work_dir(work_dir, current)
        return
    atomic_write(path, json.dumps(current, indent=2))


def check_work_dir(work_dir, current):
    path = os.path.join(work_dir, 'run.json')
    if not os.path.isfile(path):
        raise WorkDirError(f'{work_dir} holds no scoring run (run.json missing); run the score command first')
    with open(path, encoding='utf-8') as f:
        stored = json.load(f)
    differ = _differences(stored, current)
    if differ:
        shown = '; '.join(differ[:6]) + (f'; and {len(differ) - 6} more' if len(differ) > 6 else '')
        raise WorkDirError(f'work_dir {work_dir} holds results computed with other settings or inputs ({shown}). '
                           'Mixing them would corrupt the output: use another pipeline.work_dir, or delete this '
                           'one to start over.')


# ----- scoring --------------------------------------------------------------------------------------------------
def load_models(cfg, device):
    from unirain_data.distillation.captioner import Captioner
    from unirain_data.distillation.embedder import Embedder
    from unirain_data.distillation.judges import build_judges
    offline = cfg['offline']
    captioner = Captioner(device=device, offline=offline, **cfg['captioner'])
    embedder = Embedder(device=device, offline=offline, **cfg['embedder'])
    return Models(captioner, embedder, build_judges(cfg['judges'], device, offline))


def _rounded(values):
    return [None if v is None or not np.isfinite(v) else round(float(v), _DIGITS) for v in values]


def retrieval_record(found, detail):
    """The retrieval part of a result: the references S(q) with every level's score, and the full lists."""
    l2 = dict(zip(found.semantic_ids.tolist(), found.text_l2.tolist()))
    cos = dict(zip(found.visual_ids.tolist(), found.cosine.tolist()))
    ids = found.structural_ids.tolist()
    record = {'references': {'ids': ids, 'text_l2': _rounded([l2.get(i) for i in ids]),
                             'cosine': _rounded([cos.get(i) for i in ids]), 'ssim': _rounded(found.ssim)}}
    if detail == 'full':
        record['visual'] = {'ids': found.visual_ids.tolist(), 'cosine': _rounded(found.cosine)}
        record['semantic'] = {'ids': found.semantic_ids.tolist(), 'text_l2': _rounded(found.text_l2)}
    return record


class ChunkScorer:
    """Scores one chunk of candidates: load, caption, embed, retrieve, ask every judge."""

    def __init__(self, cfg, db, models, device, bars):
        self.cfg, self.db, self.models, self.bars = cfg, db, models, bars
        r = cfg['retrieval']
        self.retriever = Retriever(db, r['k1'], r['k2'], r['k3'], device, cfg['pipeline']['io_workers'])

    def _load(self, paths):
        p = self.cfg['pipeline']
        return load_images(paths, p['max_side'], self.cfg['retrieval']['ssim_size'], p['io_workers'], errors='return')

    def __call__(self, manifest, items):
        cfg, bars, models = self.cfg, self.bars, self.models
        paths = [resolve_path(manifest, entry.lq) for _, entry in items]
        with bars.stage('load', len(items)):
            loaded = self._load(paths)
        bad = {i: img for i, img in enumerate(loaded) if isinstance(img, BadImageError)}
        if bad and cfg['pipeline']['on_bad_image'] == 'error':
            i, exc = next(iter(bad.items()))
            raise BadImageError(f'candidate {items[i][0] + 1} of {manifest}: {exc} (set pipeline.on_bad_image: skip '
                                'to record unreadable candidates as rejected and go on)')
        good = [i for i in range(len(items)) if i not in bad]
        images = [loaded[i] for i in good]
        rgb = [im.rgb for im in images]
        with bars.stage('caption', len(items)):
            captions = models.captioner(rgb)
        with bars.stage('embed', len(items)):
            text_q, image_q = models.embedder.texts(captions), models.embedder.images(rgb)
        with bars.stage('retrieve', len(items)):
            found = self.retriever(text_q, image_q, np.stack([im.thumb for im in images]) if images else
                                   np.zeros((0, 1, 1), np.uint8))
            ref_ids = sorted({i for f in found for i in f.structural_ids.tolist()})
            ref_images = dict(zip(ref_ids, load_images([self.db.records[i]['path'] for i in ref_ids],
                                                       cfg['pipeline']['max_side'], cfg['retrieval']['ssim_size'],
                                                       cfg['pipeline']['io_workers'])))
        answers = [{} for _ in good]
        for judge in models.judges:
            with bars.stage(f'judge {judge.name}', len(items)):
                for slot, i in enumerate(good):
                    refs = [ref_images[r].rgb for r in found[slot].structural_ids.tolist()]
                    prompt = build_prompt(cfg['prompt'], len(refs), items[i][1].type)
                    answers[slot][judge.name] = judge(rgb[slot], refs, prompt)
        records = [{'index': position, 'lq': entry.lq, 'error': str(bad[i])} if i in bad else None
                   for i, (position, entry) in enumerate(items)]
        for slot, i in enumerate(good):
            ids = found[slot].structural_ids.tolist()
            records[i] = {'index': items[i][0], 'lq': items[i][1].lq, 'caption': captions[slot],
                          'answers': answers[slot], 'retrieval': retrieval_record(found[slot],
                                                                                  cfg['output']['retrieval_detail']),
                          'references': [self.db.records[r]['path'] for r in ids]}
        return records


def stage_names(judge_names):
    return ['load', 'caption', 'embed', 'retrieve'] + [f'judge {name}' for name in judge_names]


def score(cfg, shard=None, models=None, max_chunks=None, progress=True):
    """Score this shard's candidates not scored yet. ``models``: loaded Models (default: load from cfg)."""
    from unirain_data.distillation.weights import resolve_device
    rank, world = shard or shard_from_env()
    work_dir = require(cfg, 'pipeline.work_dir', 'the folder for resumable per-shard results')
    manifest = require(cfg, 'candidates.manifest', 'the manifest of candidate pairs to score')
    current = fingerprint(cfg)
    prepare_work_dir(work_dir, current)
    folder = shard_dir(work_dir, rank, world)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # a chunk being written when a run was killed (never a finished one)
        if name.startswith('.tmp-'):
            os.unlink(os.path.join(folder, name))
    total = shard_size(count_entries(manifest), rank, world)
    chunk_size = cfg['pipeline']['chunk_size']
    num_chunks = -(-total // chunk_size)
    done = {c for c in range(num_chunks) if os.path.isfile(chunk_path(folder, c))}
    skipped = sum(min(chunk_size, total - c * chunk_size) for c in done)
    if len(done) == num_chunks:
        _mark_done(folder, num_chunks, total)
        return ScoreResult('done', rank, world, total, 0, total, {})
    device = resolve_device(cfg['device'])
    db = ReferenceDB.load(require(cfg, 'references.db_dir', 'the reference database folder'), cfg)
    models = models or load_models(cfg, device)
    names, configured = [j.name for j in models.judges], [j['name'] for j in cfg['judges']]
    if names != configured:
        raise ConfigError(f'the judges given ({names}) are not the configured ones ({configured})')
    bars = StageBars(stage_names(names), total, 'cand', enabled=progress, initial=skipped)
    scorer = ChunkScorer(cfg, db, models, device, bars)
    scored, processed = 0, 0
    try:
        for chunk, items in iter_chunks(manifest, rank, world, chunk_size):
            if chunk in done:
                continue
            if max_chunks is not None and processed >= max_chunks:
                return ScoreResult('stopped', rank, world, total, scored, skipped, bars.rates())
            before = dict(bars.seconds)
            records = scorer(manifest, items)
            header = {'chunk': chunk, 'count': len(items),
                      'seconds': {s: round(bars.seconds[s] - before[s], 6) for s in bars.seconds}}
            atomic_write_lines(chunk_path(folder, chunk), [header] + records)
            scored += len(items)
            processed += 1
    finally:
        bars.close()
    _mark_done(folder, num_chunks, total)
    return ScoreResult('done', rank, world, total, scored, skipped, bars.rates())


def _mark_done(folder, chunks, candidates):
    atomic_write_lines(os.path.join(folder, 'DONE.json'), [{'chunks': chunks, 'candidates': candidates,
                                                            'finished': time.strftime('%Y-%m-%dT%H:%M:%S')}])


def shard_done(work_dir, rank, world):
    return os.path.isfile(os.path.join(shard_dir(work_dir, rank, world), 'DONE.json'))


def wait_for_shards(work_dir, world, poll_seconds=10, report=print):
    """Block until every shard of ``world`` is complete (rank 0 of a torchrun job merges after the others)."""
    waiting = None
    while True:
        missing = [r for r in range(world) if not shard_done(work_dir, r, world)]
        if not missing:
            return
        if missing != waiting:
            report(f'waiting for shard(s) {", ".join(map(str, missing))} of {world} to finish...')
            waiting = missing
        time.sleep(poll_seconds)


# ----- reading results back -----------------------------------------------------------------------------------
def iter_shard(folder):
    """(header, records) per chunk of a finished shard, in chunk order."""
    with open(os.path.join(folder, 'DONE.json'), encoding='utf-8') as f:
        done = json.loads(f.readline())
    for chunk in range(done['chunks']):
        path = chunk_path(folder, chunk)
        if not os.path.isfile(path):
            raise WorkDirError(f'{path} is missing although the shard is marked done; rerun the score command')
        with open(path, encoding='utf-8') as f:
            lines = [json.loads(line) for line in f if line.strip()]
        yield lines[0], lines[1:]


def iter_shard_records(folder):
    for _, records in iter_shard(folder):
        yield from records


def finished_world(work_dir, world=None):
    """The world size whose shards are all finished (the only one, or ``world``); a clear error otherwise."""
    found = {}
    for name in sorted(os.listdir(work_dir)) if os.path.isdir(work_dir) else []:
        match = _SHARD_DIR.match(name)
        if match:
            found.setdefault(int(match.group(2)), []).append(int(match.group(1)))
    sizes = [world] if world else sorted(found)
    complete = [w for w in sizes if all(shard_done(work_dir, r, w) for r in range(w))]
    if world and not complete:
        missing = [r for r in range(world) if not shard_done(work_dir, r, world)]
        raise WorkDirError(f'{work_dir}: shard(s) {", ".join(map(str, missing))} of {world} are not finished; run the '
                           'score command for them (the same command resumes)')
    if not complete:
        raise WorkDirError(f'{work_dir}: no finished set of shards (found {found or "none"}); run the score command')
    if len(complete) > 1:
        raise WorkDirError(f'{work_dir} holds finished runs for world sizes {complete}; pass --world to pick one')
    return complete[0]


def stage_throughput(work_dir, world):
    """{stage: candidates per second} summed over every shard's chunks (time inside each stage only)."""
    seconds, counts = {}, {}
    for rank in range(world):
        for header, _ in iter_shard(shard_dir(work_dir, rank, world)):
            for stage, s in header['seconds'].items():
                seconds[stage] = seconds.get(stage, 0.0) + s
                counts[stage] = counts.get(stage, 0) + header['count']
    return {stage: {'candidates': counts[stage], 'seconds': round(seconds[stage], 3),
                    'per_second': round(counts[stage] / seconds[stage], 3) if seconds[stage] > 0 else None}
            for stage in seconds}


# ----- the distilled manifest -----------------------------------------------------------------------------------
def _rebase(manifest, path, out_dir):
    """A manifest path as seen from the output manifest's folder (absolute paths stay absolute)."""
    return path if os.path.isabs(path) else os.path.relpath(resolve_path(manifest, path), out_dir)


def distilled_entry(entry, record, manifest, out_dir, judge_names, min_yes):
    """The output line of one scored candidate."""
    common = dict(lq=_rebase(manifest, entry.lq, out_dir), gt=_rebase(manifest, entry.gt, out_dir), type=entry.type,
                  source=entry.source, split=entry.split)
    if 'error' in record:
        return ManifestEntry(**common, verdict='rejected', score=None, extra={**entry.extra, 'error': record['error']})
    parsed = {name: parse_answer(record['answers'][name]) for name in judge_names}
    vote = majority_vote([parsed[name] for name in judge_names], min_yes)
    extra = {**entry.extra,
             'caption': record['caption'],
             'votes': {name: {'answer': record['answers'][name], 'vote': parsed[name]} for name in judge_names},
             'yes': vote.yes, 'no': vote.no, 'abstain': vote.abstain,
             'retrieval': record['retrieval'],
             'references': record['references']}
    return ManifestEntry(**common, verdict=vote.verdict, score=vote.score, extra=extra)


def reference_entries(db_dir, out_dir):
    """The real reference pairs as 'real' entries (references built from a manifest of pairs only)."""
    with open(os.path.join(db_dir, 'references.jsonl'), encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            record = json.loads(line)
            if not record.get('gt') or not record.get('type'):
                raise ReferenceDBError(f'--include-references needs references built from a manifest of real pairs '
                                 f'(references.manifest: clean images and rain types); {db_dir} reference {number} '
                                 f'({record["path"]}) has no clean image or type')
            yield ManifestEntry(lq=record['path'], gt=record['gt'], type=record['type'], source=record['source'],
                                split='train', verdict='real')


def merge(cfg, output=None, world=None, include_references=None, progress=True):
    """Join the finished shards into the distilled manifest (manifest order). Returns (path, number of lines)."""
    from tqdm import tqdm
    work_dir = require(cfg, 'pipeline.work_dir', 'the folder holding the per-shard results')
    manifest = require(cfg, 'candidates.manifest', 'the manifest of candidate pairs that was scored')
    output = output or require(cfg, 'output.manifest', 'where to write the distilled manifest')
    include = cfg['output']['include_references'] if include_references is None else include_references
    check_work_dir(work_dir, fingerprint(cfg))
    world = finished_world(work_dir, world)
    out_dir = os.path.dirname(os.path.abspath(output))
    names = [j['name'] for j in cfg['judges']]
    readers = [iter_shard_records(shard_dir(work_dir, r, world)) for r in range(world)]

    def entries():
        if include:
            yield from reference_entries(cfg['references']['db_dir'], out_dir)
        bar = tqdm(total=count_entries(manifest), desc='merge', unit='cand', disable=not progress)
        for position, entry in enumerate(iter_manifest(manifest)):
            record = next(readers[position % world], None)
            if record is None or record['index'] != position or record['lq'] != entry.lq:
                raise WorkDirError(f'shard results do not line up with {manifest} at candidate {position + 1} '
                                   f'({entry.lq}); the work_dir is damaged: delete it and score again')
            yield distilled_entry(entry, record, manifest, out_dir, names, cfg['vote']['min_yes'])
            bar.update(1)
        bar.close()
        leftover = [r for r, reader in enumerate(readers) if next(reader, None) is not None]
        if leftover:
            raise WorkDirError(f'shard(s) {leftover} hold more results than {manifest} has candidates; the work_dir '
                               'does not belong to this manifest')

    return output, write_manifest(output, entries())
