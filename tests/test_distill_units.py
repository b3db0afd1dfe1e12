"""Distillation pieces without models: prompt and answer parsing, voting, SSIM, faiss indexes, config, shards."""
import json
import os

import numpy as np
import pytest

from unirain_data.distillation import faiss_index
from unirain_data.distillation.config import DEFAULTS, ConfigError, apply_overrides, config_from_dict
from unirain_data.distillation.pipeline import atomic_write_lines, iter_chunks, parse_shard
from unirain_data.distillation.prompt import DEFAULT_PROMPT, PromptError, build_prompt, check_template, parse_answer
from unirain_data.distillation.ssim import _ssim_torch, ssim_to_references
from unirain_data.distillation.vote import default_min_yes, majority_vote


@pytest.mark.parametrize('text, expected', [
    ('yes', 'yes'), ('Yes.', 'yes'), ('YES', 'yes'), ('  yes, the rain looks real', 'yes'), ('**Yes**', 'yes'),
    ('"Yes"', 'yes'), ('Answer: yes', 'yes'), ('final answer - Yes', 'yes'), ('(yes)', 'yes'),
    ('no', 'no'), ('No.', 'no'), ('NO, it is synthetic', 'no'), ('Answer: No', 'no'), ('`no`', 'no'),
    ('', None), ('   ', None), ('Maybe', None), ('The rain looks real, so yes.', None), ('yesyes', None),
    ('noise', None), ('Nope', None), ('y', None), ('1', None), (None, None), ('Not sure', None),
])
def test_parse_answer_reads_the_first_word(text, expected):
    assert parse_answer(text) == expected


def test_prompt_fills_fields_and_rejects_bad_templates():
    text = build_prompt(DEFAULT_PROMPT, 5, 'nrd')
    assert 'The first 5 images' in text and 'nighttime raindrops' in text and '{' not in text
    assert build_prompt('{rain_code}: {num_references}', 3, 'drs') == 'DRS: 3'
    with pytest.raises(PromptError, match='rain_kind'):
        check_template('Is {rain_kind} real?', 5)
    with pytest.raises(PromptError, match='k3 is 0'):
        check_template(DEFAULT_PROMPT, 0)
    check_template('Does the {rain_type} in this image look real? yes or no', 0)
    with pytest.raises(PromptError, match='valid template'):
        check_template('unbalanced {', 5)


@pytest.mark.parametrize('answers, min_yes, verdict, score, abstain', [
    (['yes', 'yes', 'no'], 2, 'kept', 2 / 3, 0),
    (['yes', 'no', 'no'], 2, 'rejected', 1 / 3, 0),
    (['yes', None, 'no'], 2, 'rejected', 0.5, 1),  # an abstention is never a yes
    (['yes', 'yes', None], 2, 'kept', 1.0, 1),
    ([None, None, None], 2, 'rejected', None, 3),
    (['yes', 'no', 'no'], 1, 'kept', 1 / 3, 0),
    (['yes'], 1, 'kept', 1.0, 0),
])
def test_majority_vote(answers, min_yes, verdict, score, abstain):
    vote = majority_vote(answers, min_yes)
    assert (vote.verdict, vote.abstain) == (verdict, abstain)
    assert vote.score == (None if score is None else pytest.approx(score))
    assert vote.yes + vote.no + vote.abstain == len(answers)


def test_vote_threshold_checks():
    assert [default_min_yes(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match='min_yes'):
            majority_vote(['yes', 'no', 'yes'], bad)
    with pytest.raises(ValueError, match='maybe'):
        majority_vote(['yes', 'maybe'], 1)


def test_ssim_matches_scikit_image():
    """Both implementations (OpenCV on the CPU, torch convolutions for GPUs, here run on the CPU)."""
    import torch
    from skimage.metrics import structural_similarity
    rng = np.random.default_rng(0)
    query = rng.integers(0, 256, (40, 40)).astype(np.uint8)
    noisy = np.clip(query.astype(int) + rng.integers(-40, 40, (3, 40, 40)), 0, 255).astype(np.uint8)
    refs = np.concatenate([noisy, rng.integers(0, 256, (3, 40, 40)).astype(np.uint8), query[None]])
    expected = [structural_similarity(query, r, data_range=255, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False) for r in refs]
    for ours in (ssim_to_references(query, refs), _ssim_torch(query, refs, torch.device('cpu'))):
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert expected[-1] == pytest.approx(1.0) and min(expected[:3]) > max(expected[3:6])
    assert ssim_to_references(query, refs[:0]).shape == (0,)
    with pytest.raises(ValueError, match='S >= 11'):
        ssim_to_references(query[:8, :8], refs[:, :8, :8])


INDEX_CFG = dict(DEFAULTS['index'])


def _clustered(n, d, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(32, d))
    x = centers[rng.integers(0, 32, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_indexes_equal_brute_force_and_reload(tmp_path):
    x, q = _clustered(500, 16, 0), _clustered(20, 16, 1)
    for metric in ('l2', 'ip'):
        index = faiss_index.build_index(x, metric, INDEX_CFG)
        assert faiss_index.index_kind(index) == 'flat'
        dist, ids = faiss_index.search(index, q, 7)
        exact = ((q[:, None] - x[None]) ** 2).sum(-1) if metric == 'l2' else -(q @ x.T)
        np.testing.assert_array_equal(ids, np.argsort(exact, axis=1, kind='stable')[:, :7])
        path = str(tmp_path / f'{metric}.index')
        faiss_index.save_index(index, path)
        np.testing.assert_array_equal(faiss_index.search(faiss_index.load_index(path), q, 7)[1], ids)
    assert faiss_index.search(index, q, 10_000)[1].shape == (20, 500)  # k capped at the index size


def test_auto_index_type_and_approximate_indexes():
    x, q = _clustered(4000, 16, 2), _clustered(30, 16, 3)
    cfg = dict(INDEX_CFG, flat_max=1000, ivf_nprobe=10_000)
    assert faiss_index.choose_type(1000, cfg) == 'flat' and faiss_index.choose_type(1001, cfg) == 'ivf'
    exact = np.argsort(((q[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, :5]
    ivf = faiss_index.build_index(x, 'l2', cfg)
    assert faiss_index.index_kind(ivf) == 'ivf'
    np.testing.assert_array_equal(faiss_index.search(ivf, q, 5)[1], exact)  # nprobe = every list: exact
    hnsw = faiss_index.build_index(x, 'l2', dict(cfg, type='hnsw', hnsw_ef_search=256))
    assert faiss_index.index_kind(hnsw) == 'hnsw'
    found = faiss_index.search(hnsw, q, 5)[1]
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found, exact)]) > 0.9


def test_config_defaults_and_errors(tmp_path):
    cfg = config_from_dict({})
    assert (cfg['retrieval']['k1'], cfg['retrieval']['k2'], cfg['retrieval']['k3']) == (100, 20, 5)
    assert len(cfg['judges']) == 3 and cfg['vote']['min_yes'] == 2
    assert cfg['judges'][0]['model'] == 'Qwen/Qwen2.5-VL-7B-Instruct'
    assert cfg['judges'][0]['name'] == 'Qwen2.5-VL-7B-Instruct'
    with pytest.raises(ConfigError, match='retrieval.k4'):
        config_from_dict({'retrieval': {'k4': 1}})
    with pytest.raises(ConfigError, match='k1 >= k2 >= k3'):
        config_from_dict({'retrieval': {'k1': 10, 'k2': 20}})
    with pytest.raises(ConfigError, match=r'judges\[1\].name'):
        config_from_dict({'judges': [{'model': 'a/x'}, {'model': 'b/x'}]})
    with pytest.raises(ConfigError, match='vote.min_yes'):
        config_from_dict({'judges': ['a/x'], 'vote': {'min_yes': 2}})
    with pytest.raises(ConfigError, match=r'judges\[0\].type'):
        config_from_dict({'judges': [{'model': 'a/x', 'type': 'gpt'}]})
    with pytest.raises(ConfigError, match='prompt'):
        config_from_dict({'retrieval': {'k3': 0}})
    one = config_from_dict({'judges': ['org/model-a']})
    assert one['vote']['min_yes'] == 1 and one['judges'][0]['type'] == 'qwen_vl'
    assert config_from_dict({'retrieval': {'k1': None}})['retrieval']['k1'] is None
    given = apply_overrides({'retrieval': {'k1': 50}}, ['retrieval.k2=10', 'offline=true', 'index.type=hnsw'])
    assert given == {'retrieval': {'k1': 50, 'k2': 10}, 'offline': True, 'index': {'type': 'hnsw'}}
    with pytest.raises(ConfigError, match='KEY=VALUE'):
        apply_overrides({}, ['retrieval.k1'])


def test_shipped_config_is_valid():
    from unirain_data.distillation.config import load_config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, 'options', 'distill_UniRain.yml'))
    assert (cfg['retrieval']['k1'], cfg['retrieval']['k2'], cfg['retrieval']['k3']) == (100, 20, 5)
    assert cfg['judges'][0]['model'] == 'Qwen/Qwen2.5-VL-7B-Instruct' and cfg['vote']['min_yes'] == 2


def test_shards_partition_the_manifest_deterministically(tmp_path):
    manifest = tmp_path / 'm.jsonl'
    manifest.write_text(''.join(json.dumps({'lq': f'{i}.png', 'gt': f'g{i}.png', 'type': 'DRS'}) + '\n'
                                for i in range(23)))
    seen = []
    for rank in range(3):
        chunks = list(iter_chunks(str(manifest), rank, 3, 4))
        assert [c for c, _ in chunks] == list(range(len(chunks)))
        positions = [p for _, items in chunks for p, _ in items]
        assert positions == list(range(rank, 23, 3))
        assert all(len(items) == 4 for _, items in chunks[:-1])
        seen += positions
    assert sorted(seen) == list(range(23))
    assert parse_shard('1/4') == (1, 4)
    for bad in ('4/4', '-1/2', 'a/b', '3'):
        with pytest.raises(ValueError, match='RANK/WORLD'):
            parse_shard(bad)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = str(tmp_path / 'chunk.jsonl')

    def lines():
        yield {'a': 1}
        raise KeyboardInterrupt  # killed while writing

    with pytest.raises(KeyboardInterrupt):
        atomic_write_lines(path, lines())
    assert os.listdir(tmp_path) == []
    atomic_write_lines(path, [{'a': 1}, {'b': 2}])
    assert [json.loads(x) for x in open(path)] == [{'a': 1}, {'b': 2}]


def test_reference_folder_listing_and_its_limits(tmp_path):
    import cv2

    from unirain_data.distillation.pipeline import reference_entries
    from unirain_data.distillation.reference_db import ReferenceDBError, list_reference_images
    image = np.full((12, 12, 3), 128, np.uint8)
    for name in ('b/rain-10.png', 'b/rain-2.jpg', 'a.png', 'b/notes.txt'):
        (tmp_path / 'real' / os.path.dirname(name)).mkdir(parents=True, exist_ok=True)
        if name.endswith('.txt'):
            (tmp_path / 'real' / name).write_text('not an image')
        else:
            cv2.imwrite(str(tmp_path / 'real' / name), image)
    records = list_reference_images(str(tmp_path / 'real'))
    assert [os.path.relpath(r['path'], tmp_path / 'real') for r in records] == ['a.png', 'b/rain-2.jpg',
                                                                                  'b/rain-10.png']
    assert all(r['gt'] is None and r['source'] == 'real' for r in records)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no images'):
        list_reference_images(str(tmp_path / 'empty'))
    db = tmp_path / 'db'
    db.mkdir()
    (db / 'references.jsonl').write_text(''.join(json.dumps({**r, 'caption': 0}) + '\n' for r in records))
    with pytest.raises(ReferenceDBError, match='references built from a manifest of real pairs'):
        list(reference_entries(str(db), str(tmp_path)))
