"""DistilledRainDataset: values, aligned crops, filters, type ids through basicsr's loader, balancing, synthesis."""
import os
from collections import Counter

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from data_fixtures import basicsr_log  # noqa: F401  (a fixture)
from data_fixtures import as_bgr01, build, make_layout, make_manifest, write_image, write_lines

from basicsr.data import build_dataloader
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.utils import set_random_seed


def test_layout_gives_exact_pixels_and_keys(tmp_path):
    root = make_layout(tmp_path / 'set', {'drs': 2, 'drd': 1, 'nrs': 1, 'nrd': 1})
    dataset = build(dataroot=root)
    assert len(dataset) == 5
    seen = Counter()
    for i in range(len(dataset)):
        sample = dataset[i]
        assert set(sample) == {'lq', 'gt', 'lq_path', 'gt_path', 'type_id', 'rain_type'}
        folder = os.path.basename(os.path.dirname(os.path.dirname(sample['lq_path'])))
        assert sample['rain_type'] == folder.upper()
        assert sample['type_id'] == ['drs', 'drd', 'nrs', 'nrd'].index(folder)
        np.testing.assert_array_equal(sample['lq'].numpy(), as_bgr01(sample['lq_path']))
        np.testing.assert_array_equal(sample['gt'].numpy(), as_bgr01(sample['gt_path']))
        assert sample['lq'].dtype == torch.float32 and sample['lq'].shape == (3, 40, 48)
        seen[sample['rain_type']] += 1
    assert seen == {'DRS': 2, 'DRD': 1, 'NRS': 1, 'NRD': 1}
    assert {build(dataroot=root, types=['nrs', 'NRD'])[i]['rain_type'] for i in range(2)} == {'NRS', 'NRD'}


def test_exactly_one_source_of_pairs(tmp_path):
    root = make_layout(tmp_path / 'set', {'drs': 1})
    manifest = make_manifest(tmp_path / 'm', [{'type': 'drs'}])
    with pytest.raises(ValueError, match='exactly one of dataroot, manifest.*got dataroot, manifest'):
        build(dataroot=root, manifest=manifest)
    with pytest.raises(ValueError, match='exactly one of .*got none'):
        build()
    with pytest.raises(ValueError, match="unknown rain type 'snow'"):
        build(dataroot=root, types=['snow'])
    with pytest.raises(ValueError, match='phase'):
        build(dataroot=root, phase='training')
    with pytest.raises(ValueError, match='sources filter manifest entries'):
        build(dataroot=root, sources=['x'])


def test_a_requested_type_without_data_is_a_warning(tmp_path, basicsr_log):
    root = make_layout(tmp_path / 'set', {'drs': 2})
    assert len(build(dataroot=root, types=['drs', 'drd', 'nrs', 'nrd'])) == 2
    assert any('types asks for DRD, NRS, NRD but dataroot' in line for line in basicsr_log)
    manifest = make_manifest(tmp_path / 'm', [{'type': 'drs'}])
    assert len(build(manifest=manifest, types=['drs', 'nrd'])) == 1
    assert any('types asks for NRD but the manifest(s) hold none' in line for line in basicsr_log)
    with pytest.raises(ValueError, match='no rainy/clean pairs of types nrd'):
        build(dataroot=root, types=['nrd'])


def _dihedral(crop):
    """The 8 flips/rotations of a CHW crop."""
    for k in range(4):
        turned = np.rot90(crop, k, axes=(1, 2))
        yield turned
        yield turned[:, :, ::-1]


def _where(whole, crop):
    """(transform index, top, left) of every way ``crop`` is a flipped/rotated window of ``whole``."""
    windows = sliding_window_view(whole, crop.shape)[0]
    return [(n, int(t), int(l)) for n, candidate in enumerate(_dihedral(crop))
            for t, l in zip(*np.nonzero(np.all(windows == candidate, axis=(2, 3, 4))))]


@pytest.mark.parametrize('augment', [False, True])
def test_train_crops_are_aligned_and_from_one_place(tmp_path, augment):
    root = make_layout(tmp_path / 'set', {'drs': 2, 'nrd': 2}, height=37, width=53)
    set_random_seed(3)
    train = build(dataroot=root, phase='train', gt_size=16, use_hflip=augment, use_rot=augment)
    full = build(dataroot=root)
    transforms = set()
    for i in range(4):
        whole = full[i]
        for _ in range(3):
            sample = train[i]
            assert sample['lq'].shape == sample['gt'].shape == (3, 16, 16)
            # the files hold lq = 255 - gt: only the same window, flipped/rotated alike, sums to 1 everywhere
            torch.testing.assert_close(sample['lq'] + sample['gt'], torch.ones(3, 16, 16), atol=1e-6, rtol=0)
            places = _where(whole['gt'].numpy(), sample['gt'].numpy())
            assert len(places) == 1
            assert _where(whole['lq'].numpy(), sample['lq'].numpy()) == places
            transforms.add(places[0][0])
    assert len(transforms) >= 4 if augment else transforms == {0}  # 12 draws meet most of the 8 transforms


def test_validation_returns_whole_images_of_any_size(tmp_path):
    first = make_manifest(tmp_path / 'a', [{'type': 'drs'}], height=33, width=71)
    second = make_manifest(tmp_path / 'b', [{'type': 'nrs'}], seed=1, height=20, width=24)
    for phase in ('val', 'test'):
        dataset = build(manifest=[first, second], phase=phase)
        loader = build_dataloader(dataset, {'phase': phase})
        assert [tuple(batch['lq'].shape) for batch in loader] == [(1, 3, 33, 71), (1, 3, 20, 24)]


def test_type_ids_survive_batching_with_workers(tmp_path):
    root = make_layout(tmp_path / 'set', {'drs': 3, 'drd': 2, 'nrs': 2, 'nrd': 1})
    opt = {'name': 't', 'type': 'DistilledRainDataset', 'phase': 'train', 'dataroot': root, 'gt_size': 16,
           'use_hflip': True, 'use_rot': True, 'batch_size_per_gpu': 4, 'num_worker_per_gpu': 2}
    dataset = build(**opt)
    sampler = EnlargedSampler(dataset, num_replicas=1, rank=0, ratio=3)
    loader = build_dataloader(dataset, opt, num_gpu=0, sampler=sampler, seed=0)
    batches = list(loader)
    assert len(batches) == 3 * 8 // 4
    names = ['DRS', 'DRD', 'NRS', 'NRD']
    for batch in batches:
        assert batch['type_id'].dtype == torch.int64 and batch['type_id'].shape == (4,)
        assert [names[t] for t in batch['type_id'].tolist()] == batch['rain_type']
        assert [p.split(os.sep)[-3].upper() for p in batch['lq_path']] == batch['rain_type']
    counts = Counter(t for batch in batches for t in batch['rain_type'])
    assert counts == {'DRS': 9, 'DRD': 6, 'NRS': 6, 'NRD': 3}  # every sample of 3 enlarged epochs


def test_filters_by_type_source_verdict_split(tmp_path):
    manifest = make_manifest(tmp_path, [
        {'type': 'drs', 'source': 'Rain100L', 'verdict': 'real'},
        {'type': 'drs', 'source': 'synth', 'verdict': 'kept', 'score': 1.0},
        {'type': 'drd', 'source': 'synth', 'verdict': 'rejected', 'score': 0.0},
        {'type': 'nrs', 'source': 'synth', 'split': 'val'},
        {'type': 'nrd', 'source': 'RainDS', 'verdict': 'real', 'split': 'test'},
    ])

    def kept(**opt):
        dataset = build(manifest=manifest, **opt)
        return sorted(int(os.path.basename(dataset[i]['lq_path']).split('_')[0]) for i in range(len(dataset)))

    assert kept() == [0, 1, 3, 4]  # all but rejected
    assert kept(verdicts=['real', 'kept', 'rejected', 'unjudged']) == [0, 1, 2, 3, 4]
    assert kept(verdicts=['unjudged']) == [3]
    assert kept(verdicts=['real']) == [0, 4]
    assert kept(types=['drs', 'nrd']) == [0, 1, 4]
    assert kept(sources=['synth']) == [1, 3]
    assert kept(splits=['val', 'test']) == [3, 4]
    assert kept(sources=['synth'], types=['drs']) == [1]
    with pytest.raises(ValueError, match=r"sources: no manifest entry has source Rain100H.*'Rain100L': 1"):
        kept(sources=['Rain100H'])
    with pytest.raises(ValueError, match="verdicts: 'maybe' is not one of"):
        kept(verdicts=['maybe'])
    with pytest.raises(ValueError, match='no manifest entry passes the filters'):
        kept(types=['drd'])  # its only entry is rejected


def _epoch(dataset, sampler):
    return [dataset[i] for i in sampler]


def test_type_balanced_sampling_is_equal_deterministic_and_ddp_ready(tmp_path):
    root = make_layout(tmp_path / 'set', {'drs': 6, 'drd': 3, 'nrs': 2, 'nrd': 1}, height=20, width=20)
    dataset = build(dataroot=root, phase='train', gt_size=8, type_balanced=True)
    assert len(dataset) == 4 * 6
    epoch = [dataset[i] for i in range(len(dataset))]
    assert Counter(s['rain_type'] for s in epoch) == {'DRS': 6, 'DRD': 6, 'NRS': 6, 'NRD': 6}
    # every entry of the largest type is used once per epoch, smaller types repeat evenly
    assert Counter(s['lq_path'] for s in epoch if s['rain_type'] == 'DRS') == Counter(
        {os.path.join(root, 'drs', 'input', f'{i}.png'): 1 for i in range(6)})
    assert set(Counter(s['lq_path'] for s in epoch if s['rain_type'] == 'DRD').values()) == {2}
    # the sampler's shuffle, enlarged and split over 2 ranks, still gives every type the same share
    shares = Counter()
    for rank in (0, 1):
        sampler = EnlargedSampler(dataset, num_replicas=2, rank=rank, ratio=2)
        sampler.set_epoch(5)
        shares.update(dataset[i]['rain_type'] for i in sampler)
    assert shares == {'DRS': 12, 'DRD': 12, 'NRS': 12, 'NRD': 12}
    set_random_seed(7)
    first = [dataset[i]['gt'] for i in range(8)]
    set_random_seed(7)
    again = [dataset[i]['gt'] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    unbalanced = build(dataroot=root, phase='train', gt_size=8)
    assert len(unbalanced) == 12
    assert len(build(dataroot=root, type_balanced=True)) == 12  # validation is never rebalanced


def test_enlarge_ratio_and_ddp_cover_the_dataset(tmp_path):
    manifest = make_manifest(tmp_path, [{'type': t} for t in ('drs', 'drd', 'nrs', 'nrd', 'drs')])
    dataset = build(manifest=manifest, phase='train', gt_size=8)
    per_rank = []
    for rank in (0, 1):
        sampler = EnlargedSampler(dataset, num_replicas=2, rank=rank, ratio=4)
        per_rank.append([dataset[i]['lq_path'] for i in sampler])
    assert len(per_rank[0]) == len(per_rank[1]) == 10
    assert Counter(per_rank[0] + per_rank[1]) == {dataset[i]['lq_path']: 4 for i in range(5)}


def test_lmdb_option_errors(tmp_path):
    manifest = make_manifest(tmp_path, [{'type': 'drs'}])
    with pytest.raises(FileNotFoundError, match=r'LMDB not found: .*lq\.lmdb'):
        build(manifest=manifest, io_backend={'type': 'lmdb'})
    with pytest.raises(ValueError, match='io_backend lmdb needs a `manifest`'):
        build(dataroot=str(tmp_path), io_backend={'type': 'lmdb'})
    with pytest.raises(ValueError, match="'memcached' is not supported"):
        build(manifest=manifest, io_backend={'type': 'memcached'})


def test_unknown_options_are_reported(tmp_path, basicsr_log):
    build(manifest=make_manifest(tmp_path, [{'type': 'drs'}]), colour='y', batch_size_per_gpu=2)
    assert any('ignores unknown option(s): colour' in line for line in basicsr_log)


@pytest.fixture
def synthesis():
    return pytest.importorskip('unirain_data.rain_synthesis')


def test_on_the_fly_synthesis(tmp_path, synthesis):
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(tmp_path / 'clean' / f'c{i}.png', (rng.random((40, 44, 3)) * 255).astype(np.uint8))
    val = build(synthesize={'clean_root': str(tmp_path / 'clean'), 'seed': 3}, types=['drs', 'nrd'])
    assert len(val) == 4
    samples = [val[i] for i in range(4)]
    assert [s['rain_type'] for s in samples] == ['DRS', 'NRD', 'DRS', 'NRD']
    assert [s['type_id'] for s in samples] == [0, 3, 0, 3]
    clean = as_bgr01(tmp_path / 'clean' / 'c0.png')
    expected_lq, expected_gt = synthesis.synthesize_pair(
        clean[::-1].transpose(1, 2, 0).copy(), 'NRD', 3 + 1)
    np.testing.assert_allclose(samples[1]['lq'].numpy(), expected_lq[..., ::-1].transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(samples[1]['gt'].numpy(), expected_gt[..., ::-1].transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_array_equal(samples[0]['gt'].numpy(), clean)  # day types keep the clean image as target
    assert not torch.equal(samples[0]['lq'], samples[0]['gt'])
    assert torch.equal(val[1]['lq'], samples[1]['lq'])  # validation rain is fixed
    assert len({s['lq_path'] for s in samples}) == 4
    train = build(synthesize={'clean_root': str(tmp_path / 'clean')}, phase='train', gt_size=16, use_rot=True)
    set_random_seed(1)
    first = [train[i] for i in range(len(train))]
    set_random_seed(1)
    again = [train[i] for i in range(len(train))]
    assert [s['rain_type'] for s in first] == ['DRS', 'DRD', 'NRS', 'NRD'] * 2
    assert all(s['lq'].shape == (3, 16, 16) for s in first)
    assert all(torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt']) for a, b in zip(first, again))
    assert not torch.equal(train[0]['lq'], first[0]['lq'])  # a fresh seed per draw


def test_synthesis_from_a_manifest_uses_its_clean_images_once(tmp_path, synthesis):
    manifest = make_manifest(tmp_path, [{'type': 'drs'}, {'type': 'drd'}])
    records = [line for line in open(manifest, encoding='utf-8')]
    write_lines(tmp_path / 'shared_gt.jsonl', records + [records[0].replace('0_rain', '1_rain')])
    dataset = build(manifest=str(tmp_path / 'shared_gt.jsonl'), synthesize={}, types=['nrs'])
    assert len(dataset) == 2
    assert sorted(os.path.basename(dataset[i]['gt_path']) for i in range(2)) == ['0_clean.png', '1_clean.png']
    with pytest.raises(ValueError, match='not from dataroot'):
        build(dataroot=make_layout(tmp_path / 'set', {'drs': 1}), synthesize={})
