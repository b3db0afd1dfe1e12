"""LMDB backend: the builder's output, and identical tensors from disk and from LMDB."""
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from data_fixtures import build, random_pixels, write_image, write_lines

from basicsr.data import build_dataloader
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.utils import set_random_seed
from unirain_data import lmdb_clients
from unirain_data.lmdb_builder import build_lmdb
from unirain_data.manifest import read_manifest, resolve_path, scan_manifest


def _entries(manifest):
    entries, _ = scan_manifest(manifest)
    for _, entry in entries:
        entry.lq, entry.gt = resolve_path(manifest, entry.lq), resolve_path(manifest, entry.gt)
    return entries


@pytest.fixture
def odd_images(tmp_path):
    """A manifest mixing 8-bit, 16-bit, grayscale, RGBA and JPEG pairs, two rainy images sharing a clean one."""
    rng = np.random.default_rng(0)
    folder = tmp_path / 'data'
    records = []

    def pair(name, lq, gt, ext='.png', **fields):
        lq_path = write_image(folder / f'{name}_rain{ext}', lq)
        gt_path = write_image(folder / f'{name}_clean{ext}', gt)
        records.append({'lq': os.path.relpath(lq_path, folder), 'gt': os.path.relpath(gt_path, folder), **fields})

    pair('rgb', random_pixels(rng), random_pixels(rng), type='drs', source='a', verdict='real')
    pair('deep', random_pixels(rng, dtype=np.uint16), random_pixels(rng, dtype=np.uint16), type='drd',
         source='b', verdict='kept', score=0.67, votes=[1, 1, 0])
    pair('gray', random_pixels(rng, channels=1), random_pixels(rng, channels=1), type='nrs', split='val')
    pair('alpha', random_pixels(rng, channels=4), random_pixels(rng, channels=4), type='nrd')
    pair('photo', random_pixels(rng, 24, 24), random_pixels(rng, 24, 24), ext='.jpg', type='drs')
    records.append({**records[0], 'lq': 'second_rain.png'})
    write_image(folder / 'second_rain.png', random_pixels(rng))
    return write_lines(folder / 'manifest.jsonl', records)


def test_builder_writes_lmdbs_meta_info_and_a_key_manifest(tmp_path, odd_images):
    result = build_lmdb(_entries(odd_images), str(tmp_path / 'out'))
    assert result.pairs == 6 and result.skipped == []
    keys = read_manifest(result.manifest)
    source = read_manifest(odd_images)
    for key_entry, entry in zip(keys, source):
        assert (key_entry.type, key_entry.source, key_entry.split, key_entry.verdict, key_entry.score) == (
            entry.type, entry.source, entry.split, entry.verdict, entry.score)
        assert key_entry.extra['lq_file'] == resolve_path(odd_images, entry.lq)
        assert key_entry.extra['gt_file'] == resolve_path(odd_images, entry.gt)
    assert keys[1].extra['votes'] == [1, 1, 0]
    assert keys[5].gt == keys[0].gt and keys[5].lq != keys[0].lq  # a shared clean image is stored once
    meta = {side: open(os.path.join(result.lmdb_paths[side], 'meta_info.txt')).read().split('\n')[:-1]
            for side in ('lq', 'gt')}
    assert len(meta['lq']) == 6 and len(meta['gt']) == 5
    assert meta['gt'][2] == f'{keys[2].gt}.png (40,48,1) 1'
    assert meta['lq'][3] == f'{keys[3].lq}.png (40,48,4) 1'
    assert not any(name.startswith('.partial') for name in os.listdir(tmp_path / 'out'))
    with pytest.raises(FileExistsError, match='refusing to overwrite'):
        build_lmdb(_entries(odd_images), str(tmp_path / 'out'))


def test_disk_and_lmdb_give_identical_tensors(tmp_path, odd_images):
    result = build_lmdb(_entries(odd_images), str(tmp_path / 'out'))
    for phase in ('val', 'train'):
        extra = {'gt_size': 16, 'use_hflip': True, 'use_rot': True} if phase == 'train' else {}
        disk = build(manifest=odd_images, phase=phase, verdicts=['real', 'kept', 'unjudged'], **extra)
        lmdb = build(manifest=result.manifest, phase=phase, io_backend={'type': 'lmdb'}, **extra)
        assert len(disk) == len(lmdb) == 6
        for i in range(6):
            set_random_seed(i)
            a = disk[i]
            set_random_seed(i)
            b = lmdb[i]
            assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt']), (phase, a['lq_path'])
            assert (a['type_id'], a['rain_type']) == (b['type_id'], b['rain_type'])
            assert b['lq_path'] == read_manifest(result.manifest)[i].lq
    explicit = build(manifest=result.manifest, io_backend={
        'type': 'lmdb', 'db_paths': [result.lmdb_paths['lq'], result.lmdb_paths['gt']], 'client_keys': ['lq', 'gt']})
    assert torch.equal(explicit[1]['gt'], build(manifest=odd_images)[1]['gt'])


def test_sixteen_bit_precision_survives_the_lmdb(tmp_path):
    deep = np.arange(40 * 48 * 3, dtype=np.uint16).reshape(40, 48, 3) * 9
    folder = tmp_path / 'data'
    write_image(folder / 'r.png', deep)
    write_image(folder / 'c.png', 65535 - deep)
    manifest = write_lines(folder / 'm.jsonl', [{'lq': 'r.png', 'gt': 'c.png', 'type': 'drs'}])
    result = build_lmdb(_entries(manifest), str(tmp_path / 'out'))
    sample = build(manifest=result.manifest, io_backend={'type': 'lmdb'})[0]
    expected = (deep.astype(np.float32) / 65535)[..., ::-1].transpose(2, 0, 1)
    np.testing.assert_array_equal(sample['lq'].numpy(), expected)
    assert len(np.unique(sample['lq'].numpy())) > 256  # more levels than 8 bits could hold


def test_missing_lmdb_key_is_named_or_skipped(tmp_path, odd_images):
    result = build_lmdb(_entries(odd_images), str(tmp_path / 'out'))
    records = [entry.to_dict() for entry in read_manifest(result.manifest)]
    broken = write_lines(tmp_path / 'out' / 'broken.jsonl', records + [{**records[0], 'gt': 'nothere'}])
    with pytest.raises(FileNotFoundError, match=r"broken\.jsonl:7: LMDB key 'nothere' not in .*gt\.lmdb"):
        build(manifest=broken, io_backend={'type': 'lmdb'})
    assert len(build(manifest=broken, io_backend={'type': 'lmdb'}, on_bad_sample='skip')) == 6


def test_lmdb_and_disk_reject_the_same_broken_pair(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'data'
    write_image(folder / 'r.png', random_pixels(rng, 40, 48))
    write_image(folder / 'c.png', random_pixels(rng, 40, 50))
    manifest = write_lines(folder / 'm.jsonl', [{'lq': 'r.png', 'gt': 'c.png', 'type': 'drs'}])
    with pytest.raises(ValueError, match=r'm\.jsonl:1: rainy and clean images differ in size.*r\.png is 48x40.*'
                                         r'c\.png is 50x40'):
        build_lmdb(_entries(manifest), str(tmp_path / 'out'))
    assert not os.path.exists(tmp_path / 'out' / 'lq.lmdb')
    assert cv2.imread(str(folder / 'c.png')).shape == (40, 50, 3)


def test_one_lmdb_serves_train_and_val_sets_and_forked_workers(tmp_path, odd_images):
    """py-lmdb refuses a second open of one LMDB in a process, forked children included."""
    result = build_lmdb(_entries(odd_images), str(tmp_path / 'out'))
    val = build(manifest=result.manifest, io_backend={'type': 'lmdb'}, splits=['val'])
    opt = {'name': 'train', 'type': 'DistilledRainDataset', 'phase': 'train', 'manifest': result.manifest,
           'io_backend': {'type': 'lmdb'}, 'splits': ['train'], 'gt_size': 16, 'batch_size_per_gpu': 2,
           'num_worker_per_gpu': 2}
    train = build(**opt)
    assert len(val) == 1 and len(train) == 5
    before = val[0]['lq']  # the main process now holds the LMDBs open, as after a validation
    loader = build_dataloader(train, opt, num_gpu=0, sampler=EnlargedSampler(train, 1, 0, ratio=2), seed=0)
    for _ in range(2):  # each epoch forks fresh workers
        assert sum(batch['lq'].shape[0] for batch in loader) == 10
    assert torch.equal(val[0]['lq'], before)
    # LMDB forbids using an environment across fork: a forked child starts with none open
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, str(len(lmdb_clients._clients)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert len(lmdb_clients._clients) >= 2 and os.read(read_end, 8) == b'0'
    again = pickle.loads(pickle.dumps(train))  # spawn-started workers get the dataset pickled
    set_random_seed(0)
    expected = train[0]['gt']
    set_random_seed(0)
    assert torch.equal(again[0]['gt'], expected)
