"""The distillation pipeline end to end on tiny random models: CLI, manifest, exact retrieval, voting with a
scripted judge, shards, and kill-and-resume."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_distill_tiny_models import assets, single_thread, tiny_config, write_config  # noqa: F401  (fixtures)
from tool_loader import load_tool
from unirain_data.distillation import pipeline
from unirain_data.distillation.config import config_from_dict
from unirain_data.distillation.images import load_images
from unirain_data.distillation.prompt import build_prompt
from unirain_data.distillation.reference_db import ReferenceDB
from unirain_data.manifest import read_manifest, resolve_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILL = os.path.join(ROOT, 'tools', 'distill.py')


def _lines(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def e2e(assets, tmp_path_factory):  # noqa: F811
    """build-refs + score (+ merge + report) through the CLI with the tiny real judges."""
    work = str(tmp_path_factory.mktemp('distill-e2e'))
    cfg = tiny_config(assets, work)
    cfg['output']['manifest'] = os.path.join(work, 'runs', 'plain', 'out', 'distilled.jsonl')
    cfg['pipeline']['work_dir'] = os.path.join(work, 'runs', 'plain', 'work')
    opt = write_config(cfg, os.path.join(work, 'distill.yml'))
    cli = load_tool('distill')
    assert cli.main(['build-refs', '-opt', opt, '--no-progress']) == 0
    assert cli.main(['score', '-opt', opt, '--no-progress']) == 0
    return {'work': work, 'opt': opt, 'cfg': config_from_dict(cfg), 'raw': cfg, 'cli': cli}


def test_cli_writes_a_manifest_the_dataset_loads(e2e, assets):  # noqa: F811
    from unirain_data.distilled_dataset import DistilledRainDataset
    path = e2e['cfg']['output']['manifest']
    entries = read_manifest(path)
    candidates = read_manifest(assets['candidates'])
    assert len(entries) == len(candidates) == 24
    kept = [e for e in entries if e.verdict == 'kept']
    assert 0 < len(kept) < 24  # the tiny judges disagree between images: both outcomes occur
    for entry, cand in zip(entries, candidates):
        assert os.path.samefile(resolve_path(path, entry.lq), resolve_path(assets['candidates'], cand.lq))
        assert (entry.type, entry.source) == (cand.type, cand.source)
        votes = entry.extra['votes']
        assert set(votes) == {'qwen', 'chat'} and all(v['vote'] in ('yes', 'no') for v in votes.values())
        yes = sum(v['vote'] == 'yes' for v in votes.values())
        assert entry.verdict == ('kept' if yes >= 2 else 'rejected') and entry.score == yes / 2
        assert len(entry.extra['references']) == 2 and all(os.path.isfile(p) for p in entry.extra['references'])
    dataset = DistilledRainDataset({'name': 'distilled', 'type': 'DistilledRainDataset', 'manifest': path,
                                    'phase': 'test', 'io_backend': {'type': 'disk'}})
    assert len(dataset) == len(kept)
    sample = dataset[0]
    assert sample['rain_type'] == kept[0].type and os.path.samefile(sample['lq_path'], resolve_path(path, kept[0].lq))
    assert sample['lq'].shape == (3, 48, 48)
    report = os.path.join(os.path.dirname(path), 'distilled_report')
    with open(os.path.join(report, 'summary.json')) as f:
        summary = json.load(f)
    assert summary['total']['kept'] == len(kept) and summary['total']['rejected'] == 24 - len(kept)
    assert sum(r['kept'] for r in summary['by_type'].values()) == len(kept)
    assert set(summary['by_source']) == {'synth-a', 'synth-b'}
    assert set(summary['throughput']) == {'load', 'caption', 'embed', 'retrieve', 'judge qwen', 'judge chat'}
    assert os.path.getsize(os.path.join(report, 'examples.png')) > 0


def _brute_force(db, text_q, image_q, thumb_q, k1, k2, k3):
    """The three levels by exhaustive numpy search over every reference (skimage SSIM)."""
    from skimage.metrics import structural_similarity
    ids = np.arange(len(db))
    dist = np.sqrt(((db.text_emb[db.caption_of].astype(np.float64) - text_q.astype(np.float64)) ** 2).sum(1))
    cos = np.asarray(db.image_emb, np.float64) @ image_q.astype(np.float64)
    level1 = np.lexsort((ids, -cos, dist))[:k1]
    level2 = level1[np.lexsort((level1, -cos[level1]))][:k2]
    ssim = np.array([structural_similarity(thumb_q, db.thumbs[i], data_range=255, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False) for i in level2])
    level3 = level2[np.lexsort((level2, -ssim))][:k3]
    return level1, dist[level1], level2, cos[level2], level3, ssim[np.lexsort((level2, -ssim))][:k3]


def test_retrieval_equals_brute_force(e2e, assets):  # noqa: F811
    from unirain_data.distillation.captioner import Captioner
    from unirain_data.distillation.embedder import Embedder
    cfg = e2e['cfg']
    db = ReferenceDB.load(cfg['references']['db_dir'], cfg)
    captioner = Captioner(offline=True, **cfg['captioner'])
    embedder = Embedder(**cfg['embedder'])
    refs = load_images([r['path'] for r in db.records], 64, 32, 1)
    # the database reloads what was computed at build time: embeddings and thumbnails of the reference photos
    np.testing.assert_allclose(db.image_emb, embedder.images([r.rgb for r in refs]), atol=1e-5)
    np.testing.assert_array_equal(db.thumbs, np.stack([r.thumb for r in refs]))
    assert [db.captions[c] for c in db.caption_of] == captioner([r.rgb for r in refs])
    entries = read_manifest(cfg['output']['manifest'])
    cands = load_images([resolve_path(assets['candidates'], e.lq) for e in read_manifest(assets['candidates'])],
                        64, 32, 1)
    for start in range(0, len(cands), 5):  # the pipeline's chunks
        chunk = cands[start:start + 5]
        text_q = embedder.texts(captioner([c.rgb for c in chunk]))
        image_q = embedder.images([c.rgb for c in chunk])
        for i, cand in enumerate(chunk):
            l1, d1, l2, c2, l3, s3 = _brute_force(db, text_q[i], image_q[i], cand.thumb, 8, 4, 2)
            got = entries[start + i].extra['retrieval']
            assert got['semantic']['ids'] == l1.tolist()
            assert got['visual']['ids'] == l2.tolist()
            assert got['references']['ids'] == l3.tolist()
            np.testing.assert_allclose(got['semantic']['text_l2'], d1, atol=2e-6)
            np.testing.assert_allclose(got['visual']['cosine'], c2, atol=2e-6)
            np.testing.assert_allclose(got['references']['ssim'], s3, atol=2e-6)
            assert entries[start + i].extra['references'] == [db.records[j]['path'] for j in l3]


def test_retrieval_ties_and_visual_only_mode_equal_brute_force():
    """Many references sharing captions (as BLIP's do): ties are broken by image cosine, then id, exactly."""
    from unirain_data.distillation.faiss_index import build_index
    from unirain_data.distillation.retrieval import Retriever
    from unirain_data.distillation.config import DEFAULTS
    rng = np.random.default_rng(0)
    n, c, d, s = 300, 12, 16, 16

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    text_emb, image_emb = unit(rng.normal(size=(c, d))), unit(rng.normal(size=(n, d)))
    caption_of = rng.integers(0, c, n)
    thumbs = rng.integers(0, 256, (n, s, s)).astype(np.uint8)
    records = [{'path': f'r{i}.png', 'caption': int(caption_of[i])} for i in range(n)]
    db = ReferenceDB('mem', {}, records, [f'caption {i}' for i in range(c)], text_emb, image_emb, thumbs,
                     build_index(text_emb, 'l2', DEFAULTS['index']), build_index(image_emb, 'ip', DEFAULTS['index']))
    queries = 12
    text_q, image_q = unit(rng.normal(size=(queries, d))), unit(rng.normal(size=(queries, d)))
    thumb_q = rng.integers(0, 256, (queries, s, s)).astype(np.uint8)
    for k1, k2, k3 in ((40, 10, 3), (5, 5, 5), (300, 50, 1)):
        found = Retriever(db, k1, k2, k3)(text_q, image_q, thumb_q)
        for q in range(queries):
            l1, d1, l2, _, l3, s3 = _brute_force(db, text_q[q], image_q[q], thumb_q[q], k1, k2, k3)
            assert found[q].semantic_ids.tolist() == l1.tolist()
            assert found[q].visual_ids.tolist() == l2.tolist()
            assert found[q].structural_ids.tolist() == l3.tolist()
            np.testing.assert_allclose(found[q].text_l2, d1, atol=1e-9)
            np.testing.assert_allclose(found[q].ssim, s3, atol=1e-9)
    found = Retriever(db, None, 7, 3)(text_q, image_q, thumb_q)  # k1 null: visual level over the whole database
    for q in range(queries):
        cos = np.asarray(image_emb, np.float64) @ image_q[q].astype(np.float64)
        assert found[q].visual_ids.tolist() == np.lexsort((np.arange(n), -cos))[:7].tolist()
        assert len(found[q].semantic_ids) == 0


# ----- scripted judges -------------------------------------------------------------------------------------------
def _pixel_key(image):
    return hashlib.sha1(np.asarray(image).tobytes()).hexdigest()


class ScriptedJudge:
    """Answers from a table keyed by the candidate's pixels; records every call."""

    def __init__(self, name, table, keys):
        self.name, self.table, self.keys, self.calls = name, table, keys, []

    def __call__(self, candidate_image, reference_images, prompt):
        stem = self.keys[_pixel_key(candidate_image)]
        self.calls.append({'stem': stem, 'refs': [_pixel_key(im) for im in reference_images], 'prompt': prompt})
        return self.table[stem]


# (raw answer, how it must be read) per judge, by candidate number i
SCRIPTS = {
    'a': lambda i: ('Yes.', 'yes') if i % 2 == 0 else ('No', 'no'),
    'b': lambda i: ('no, it looks synthetic', 'no') if i % 3 == 0 else ('**yes**', 'yes'),
    'c': lambda i: [('Answer: YES', 'yes'), ('I cannot tell', None), ('no', 'no'), ('', None)][i % 4],
}


@pytest.fixture(scope='module')
def scripted(e2e, assets):  # noqa: F811
    """Scripted judges a, b, c over the e2e reference database; one unsharded run."""
    from unirain_data.distillation.captioner import Captioner
    from unirain_data.distillation.embedder import Embedder
    raw = json.loads(json.dumps(e2e['raw']))
    raw['judges'] = [{'name': n, 'model': f'scripted/{n}'} for n in SCRIPTS]
    raw['vote'] = {'min_yes': 2}
    cands = read_manifest(assets['candidates'])
    paths = [resolve_path(assets['candidates'], e.lq) for e in cands]
    keys = {_pixel_key(im.rgb): os.path.basename(p) for im, p in zip(load_images(paths, 64, 32, 1), paths)}
    stems = [os.path.basename(p) for p in paths]
    tables = {n: {stem: script(i)[0] for i, stem in enumerate(stems)} for n, script in SCRIPTS.items()}
    cfg0 = config_from_dict(raw)
    captioner, embedder = Captioner(offline=True, **cfg0['captioner']), Embedder(**cfg0['embedder'])

    def run(name, shards=((0, 1),), **changes):
        r = json.loads(json.dumps({**raw, **changes}))
        r['pipeline']['work_dir'] = os.path.join(e2e['work'], 'runs', name, 'work')
        r['output']['manifest'] = os.path.join(e2e['work'], 'runs', name, 'out', 'distilled.jsonl')
        cfg = config_from_dict(r)
        judges = [ScriptedJudge(n, tables[n], keys) for n in SCRIPTS]
        for shard in shards:
            pipeline.score(cfg, shard, models=pipeline.Models(captioner, embedder, judges), progress=False)
        return cfg, judges

    cfg, judges = run('scripted')
    pipeline.merge(cfg, progress=False)
    return {'cfg': cfg, 'judges': judges, 'run': run, 'stems': stems, 'cands': cands, 'keys': keys}


def test_scripted_votes_prompts_and_references(scripted):
    cfg, judges = scripted['cfg'], scripted['judges']
    entries = read_manifest(cfg['output']['manifest'])
    db = ReferenceDB.load(cfg['references']['db_dir'], cfg)
    ref_keys = [_pixel_key(im.rgb) for im in load_images([r['path'] for r in db.records], 64, 32, 1)]
    for i, (entry, cand) in enumerate(zip(entries, scripted['cands'])):
        expected = {n: SCRIPTS[n](i)[1] for n in SCRIPTS}
        assert {n: v['vote'] for n, v in entry.extra['votes'].items()} == expected
        assert {n: v['answer'] for n, v in entry.extra['votes'].items()} == {n: SCRIPTS[n](i)[0] for n in SCRIPTS}
        yes, no = sum(v == 'yes' for v in expected.values()), sum(v == 'no' for v in expected.values())
        assert entry.verdict == ('kept' if yes >= 2 else 'rejected')
        assert entry.score == (yes / (yes + no) if yes + no else None)
        assert entry.extra['abstain'] == 3 - yes - no
        for judge in judges:  # each judge saw this candidate once, with its references and its prompt
            call = [c for c in judge.calls if c['stem'] == scripted['stems'][i]]
            assert len(call) == 1
            assert call[0]['refs'] == [ref_keys[j] for j in entry.extra['retrieval']['references']['ids']]
            assert call[0]['prompt'] == build_prompt(cfg['prompt'], 2, cand.type)
    from unirain_data.distillation.report import write_report
    summary = write_report(cfg['output']['manifest'], os.path.join(os.path.dirname(cfg['output']['manifest']), 'rep'))
    assert summary['judges']['c'] == {'yes': 6, 'no': 6, 'abstain': 12}
    assert summary['all_judges_abstained'] == 0


def test_vote_threshold_applies_at_merge_without_rescoring(scripted):
    cfg = json.loads(json.dumps(scripted['cfg']))
    cfg['vote']['min_yes'] = 1
    before = {f: os.path.getmtime(f) for f in _chunk_files(cfg)}
    path, count = pipeline.merge(cfg, output=cfg['output']['manifest'] + '.any.jsonl', progress=False)
    assert {f: os.path.getmtime(f) for f in _chunk_files(cfg)} == before
    for entry in read_manifest(path):
        yes = sum(v['vote'] == 'yes' for v in entry.extra['votes'].values())
        assert entry.verdict == ('kept' if yes >= 1 else 'rejected')


def _chunk_files(cfg):
    folder = pipeline.shard_dir(cfg['pipeline']['work_dir'], 0, 1)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.startswith('chunk-'))


def test_shards_merge_to_the_unsharded_manifest(scripted, monkeypatch):
    cfg, _ = scripted['run']('sharded', shards=[(0, 3), (2, 3)])
    monkeypatch.setenv('RANK', '1')  # the third shard the way torchrun names it
    monkeypatch.setenv('WORLD_SIZE', '3')
    cfg, _ = scripted['run']('sharded', shards=[None])
    assert pipeline.finished_world(cfg['pipeline']['work_dir']) == 3
    path, count = pipeline.merge(cfg, progress=False)
    assert count == 24
    # other shards batch other candidates together: the floats may differ in the last digit, nothing else
    for got, want in zip(_lines(path), _lines(scripted['cfg']['output']['manifest'])):
        assert _floats_apart(got, want) < 1e-5


def _floats_apart(a, b):
    """Largest difference between matching floats of two JSON values; raises if anything else differs."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b)
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys()
        return max([_floats_apart(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b)
        return max([_floats_apart(x, y) for x, y in zip(a, b)] or [0.0])
    assert a == b
    return 0.0


def test_other_settings_in_the_same_work_dir_are_refused(scripted):
    raw = json.loads(json.dumps(scripted['cfg']))
    raw['retrieval']['k3'] = 1
    with pytest.raises(pipeline.WorkDirError, match='retrieval.k3'):
        pipeline.score(raw, (0, 1), models=pipeline.Models(None, None, []), progress=False)
    with pytest.raises(pipeline.WorkDirError, match='retrieval.k3'):
        pipeline.merge(raw, progress=False)


def test_unreadable_candidate_error_or_skip(scripted, e2e, tmp_path):
    entries = [json.loads(line) for line in open(scripted['cfg']['candidates']['manifest'])][:3]
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'not a png')
    folder = os.path.dirname(scripted['cfg']['candidates']['manifest'])
    for e in entries:
        e['lq'], e['gt'] = os.path.join(folder, e['lq']), os.path.join(folder, e['gt'])
    entries[1]['lq'] = str(bad)
    manifest = tmp_path / 'cands.jsonl'
    manifest.write_text(''.join(json.dumps(e) + '\n' for e in entries))
    from unirain_utils.image_io import BadImageError
    with pytest.raises(BadImageError, match='broken.png'):
        scripted['run']('bad-error', candidates={'manifest': str(manifest)})
    cfg, _ = scripted['run']('bad-skip', candidates={'manifest': str(manifest)},
                             pipeline=dict(scripted['cfg']['pipeline'], on_bad_image='skip'))
    path, _ = pipeline.merge(cfg, progress=False)
    out = read_manifest(path)
    assert out[1].verdict == 'rejected' and 'broken.png' in out[1].extra['error'] and out[1].score is None
    assert all('votes' in out[i].extra for i in (0, 2))


def test_include_references_puts_the_real_pairs_first(e2e, assets):  # noqa: F811
    from unirain_data.distilled_dataset import DistilledRainDataset
    cfg = e2e['cfg']
    path, count = pipeline.merge(cfg, output=cfg['output']['manifest'] + '.refs.jsonl', include_references=True,
                                 progress=False)
    entries = read_manifest(path)
    real = read_manifest(assets['references'])
    assert count == 48 and [e.verdict for e in entries[:24]] == ['real'] * 24
    assert all(os.path.samefile(e.gt, resolve_path(assets['references'], r.gt)) for e, r in zip(entries, real))
    dataset = DistilledRainDataset({'name': 'd', 'type': 'DistilledRainDataset', 'manifest': path, 'phase': 'test'})
    assert len(dataset) == 24 + sum(e.verdict == 'kept' for e in entries)


# ----- kill and resume -------------------------------------------------------------------------------------------
def test_killed_run_resumes_to_the_uninterrupted_result(e2e):
    raw = json.loads(json.dumps(e2e['raw']))
    raw['pipeline']['work_dir'] = os.path.join(e2e['work'], 'runs', 'resumed', 'work')
    raw['output']['manifest'] = os.path.join(e2e['work'], 'runs', 'resumed', 'out', 'distilled.jsonl')
    opt = write_config(raw, os.path.join(e2e['work'], 'resumed.yml'))
    cli, shard = e2e['cli'], pipeline.shard_dir(raw['pipeline']['work_dir'], 0, 1)
    # 1. a session limit: stop after one chunk (in-process)
    assert cli.main(['score', '-opt', opt, '--no-progress', '--max-chunks', '1']) == 0
    assert sorted(os.listdir(shard)) == ['chunk-00000000.jsonl']
    assert not os.path.exists(raw['output']['manifest'])
    first = open(os.path.join(shard, 'chunk-00000000.jsonl'), 'rb').read()
    # 2. a crash: SIGKILL the command line as soon as it has finished one more chunk
    process = subprocess.Popen([sys.executable, DISTILL, 'score', '-opt', opt, '--no-progress'], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))  # as single_thread, same numbers
    deadline = time.time() + 120
    while len([n for n in os.listdir(shard) if n.startswith('chunk-')]) < 2 and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, 'the run finished before it could be killed'
    chunks = sorted(n for n in os.listdir(shard) if n.startswith('chunk-'))
    assert 2 <= len(chunks) < 5 and not os.path.exists(os.path.join(shard, 'DONE.json'))
    assert open(os.path.join(shard, 'chunk-00000000.jsonl'), 'rb').read() == first  # finished work is kept
    # 3. the same command again: continues, then merges
    assert cli.main(['score', '-opt', opt, '--no-progress']) == 0
    assert not [n for n in os.listdir(shard) if n.startswith('.tmp-')]
    headers = [_lines(os.path.join(shard, n))[0] for n in sorted(os.listdir(shard)) if n.startswith('chunk-')]
    assert [h['chunk'] for h in headers] == [0, 1, 2, 3, 4] and sum(h['count'] for h in headers) == 24
    with open(raw['output']['manifest'], 'rb') as a, open(e2e['cfg']['output']['manifest'], 'rb') as b:
        assert a.read() == b.read()
