"""tools/convert_dataset.py, tools/make_lmdb.py, tools/benchmark_loader.py; real-data checks on ../shared."""
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import build, make_layout, random_pixels, write_image, write_pair

from basicsr.data import build_dataloader
from basicsr.data.data_sampler import EnlargedSampler
from tool_loader import TOOLS, load_tool
from unirain_data.manifest import read_manifest, resolve_path
from unirain_data.public_layouts import convert_layout



def _files(root, names):
    rng = np.random.default_rng(len(names))
    for name in names:
        write_image(os.path.join(root, name), random_pixels(rng, 20, 24))
    return str(root)


def _pairs(pairing, root):
    return sorted((os.path.relpath(e.lq, root), os.path.relpath(e.gt, root), e.type, e.split, e.source, e.verdict)
                  for e in pairing.entries)


def test_rain100_jorder_layout(tmp_path):
    root = _files(tmp_path / 'Rain100L_test', ['rain/X2/norain-1x2.png', 'rain/X2/norain-2x2.png',
                                               'norain/norain-1.png', 'norain/norain-2.png', 'norain/norain-3.png'])
    pairing = convert_layout('rain100', root, source='Rain100L')
    assert _pairs(pairing, root) == [
        ('rain/X2/norain-1x2.png', 'norain/norain-1.png', 'DRS', 'test', 'Rain100L', None),
        ('rain/X2/norain-2x2.png', 'norain/norain-2.png', 'DRS', 'test', 'Rain100L', None)]
    assert [os.path.basename(p) for p in pairing.unused_gt] == ['norain-3.png']


def test_rain100_folders_and_mixed_layouts(tmp_path):
    root = _files(tmp_path / 'r100', ['rainy/1.png', 'rainy/10.png', 'clean/1.png', 'clean/10.png'])
    assert [p[:2] for p in _pairs(convert_layout('rain100', root), root)] == [
        ('rainy/1.png', 'clean/1.png'), ('rainy/10.png', 'clean/10.png')]
    mixed = _files(tmp_path / 'Rain200H', ['train/rain-1.png', 'train/norain-1.png', 'train/rain-2.png',
                                           'test/rain-5.png', 'test/norain-5.png'])
    pairing = convert_layout('rain100', mixed, source='Rain200H')
    assert [p[:4] for p in _pairs(pairing, mixed)] == [
        ('test/rain-5.png', 'test/norain-5.png', 'DRS', 'test'),
        ('train/rain-1.png', 'train/norain-1.png', 'DRS', 'train')]
    assert [os.path.basename(p) for p in pairing.unmatched_lq] == ['rain-2.png']


def test_rain1400_rain12_raindrop_gtav(tmp_path):
    root = _files(tmp_path / 'ddn', ['training/rainy_image/901_1.jpg', 'training/rainy_image/901_14.jpg',
                                     'training/ground_truth/901.jpg', 'testing/rainy_image/1_3.jpg',
                                     'testing/ground_truth/1.jpg'])
    assert [p[:4] for p in _pairs(convert_layout('rain1400', root), root)] == [
        ('testing/rainy_image/1_3.jpg', 'testing/ground_truth/1.jpg', 'DRS', 'test'),
        ('training/rainy_image/901_1.jpg', 'training/ground_truth/901.jpg', 'DRS', 'train'),
        ('training/rainy_image/901_14.jpg', 'training/ground_truth/901.jpg', 'DRS', 'train')]
    root = _files(tmp_path / 'rain12', ['1_in.png', '1_GT.png', '12_in.png', '12_GT.png'])
    assert [p[:4] for p in _pairs(convert_layout('rain12', root), root)] == [
        ('12_in.png', '12_GT.png', 'DRS', 'test'), ('1_in.png', '1_GT.png', 'DRS', 'test')]
    root = _files(tmp_path / 'RainDrop', ['train/data/0_rain.png', 'train/gt/0_clean.png',
                                          'test_a/data/3_rain.png', 'test_a/gt/3_clean.png'])
    assert _pairs(convert_layout('raindrop', root), root) == [
        ('test_a/data/3_rain.png', 'test_a/gt/3_clean.png', 'DRD', 'test', 'RainDrop', 'real'),
        ('train/data/0_rain.png', 'train/gt/0_clean.png', 'DRD', 'train', 'RainDrop', 'real')]
    root = _files(tmp_path / 'gtav', ['train/rainy/0000_00.png', 'train/rainy/0000_01.png', 'train/gt/0000.png',
                                      'test/rainy/0007.png', 'test/gt/0007.png'])
    assert [p[:4] for p in _pairs(convert_layout('gtav-nightrain', root), root)] == [
        ('test/rainy/0007.png', 'test/gt/0007.png', 'NRS', 'test'),
        ('train/rainy/0000_00.png', 'train/gt/0000.png', 'NRS', 'train'),
        ('train/rainy/0000_01.png', 'train/gt/0000.png', 'NRS', 'train')]


def test_rainds_real_and_syn(tmp_path):
    real = _files(tmp_path / 'RainDS_real', ['train_set/gt/pie-norain-7.png', 'train_set/raindrop/pie-rd-7.png',
                                             'train_set/rainstreak/pie-rain-7.png',
                                             'train_set/rainstreak_raindrop/pie-rd-rain-7.png'])
    assert _pairs(convert_layout('rainds', real), real) == [
        ('train_set/raindrop/pie-rd-7.png', 'train_set/gt/pie-norain-7.png', 'DRD', 'train', 'RainDS-real', 'real'),
        ('train_set/rainstreak/pie-rain-7.png', 'train_set/gt/pie-norain-7.png', 'DRS', 'train', 'RainDS-real',
         'real'),
        ('train_set/rainstreak_raindrop/pie-rd-rain-7.png', 'train_set/gt/pie-norain-7.png', 'DRD', 'train',
         'RainDS-real', 'real')]
    syn = _files(tmp_path / 'RainDS_syn', ['test/gt/norain-3.png', 'test/rainstreak_raindrop/rd-rain-3.png'])
    assert _pairs(convert_layout('rainds', syn, rds_type='drs'), syn) == [
        ('test/rainstreak_raindrop/rd-rain-3.png', 'test/gt/norain-3.png', 'DRS', 'test', 'RainDS-syn', None)]
    with pytest.raises(ValueError, match='--rds-type'):
        convert_layout('rainds', syn, rain_type='drs')


def test_layout_errors(tmp_path):
    with pytest.raises(ValueError, match='unknown layout .*supported: rain100, rain1400, rain12, raindrop, rainds'):
        convert_layout('rain800', str(tmp_path))
    with pytest.raises(FileNotFoundError, match='does not look like RainDrop'):
        convert_layout('raindrop', _files(tmp_path / 'x', ['a.png']))
    with pytest.raises(ValueError, match="unknown rain type 'HAIL'"):
        convert_layout('rain100', str(tmp_path), rain_type='hail')
    with pytest.raises(ValueError, match='needs --lq DIR, --gt DIR and --type'):
        convert_layout('folders', lq=str(tmp_path))


def test_convert_cli_writes_a_loadable_manifest(tmp_path, capsys):
    convert = load_tool('convert_dataset')
    rng = np.random.default_rng(0)
    for i in range(3):
        write_pair(tmp_path / 'rainy' / f'{i}.png', tmp_path / 'clean' / f'{i}.png', rng)
    write_image(tmp_path / 'rainy' / 'orphan.png', random_pixels(rng))
    out = tmp_path / 'out' / 'm.jsonl'
    with pytest.raises(SystemExit, match=r'1 rainy image\(s\) have no clean partner:\n  .*orphan\.png'):
        convert.main(['folders', '--lq', str(tmp_path / 'rainy'), '--gt', str(tmp_path / 'clean'), '--type', 'nrd',
                      '-o', str(out)])
    assert not out.exists()
    convert.main(['folders', '--lq', str(tmp_path / 'rainy'), '--gt', str(tmp_path / 'clean'), '--type', 'nrd',
                  '--source', 'mine', '--verdict', 'kept', '--relative', '--skip-unmatched', '-o', str(out)])
    assert 'skipped 1 rainy image(s)' in capsys.readouterr().out
    entries = read_manifest(out)
    assert [(e.lq, e.type, e.source, e.verdict) for e in entries] == [
        (f'../rainy/{i}.png', 'NRD', 'mine', 'kept') for i in range(3)]
    dataset = build(manifest=str(out))
    torch.testing.assert_close(dataset[2]['lq'] + dataset[2]['gt'], torch.ones(3, 40, 48), atol=1e-6, rtol=0)
    with pytest.raises(SystemExit):
        convert.main(['rain800', str(tmp_path), '-o', str(out)])
    assert "invalid choice: 'rain800'" in capsys.readouterr().err
    layout = make_layout(tmp_path / 'set', {'drd': 2, 'nrs': 1})
    convert.main(['unirain', layout, '-o', str(tmp_path / 'set.jsonl')])
    assert Counter(e.type for e in read_manifest(tmp_path / 'set.jsonl')) == {'DRD': 2, 'NRS': 1}


def test_make_lmdb_cli(tmp_path, capsys):
    make_lmdb = load_tool('make_lmdb')
    root = make_layout(tmp_path / 'set', {'drs': 2, 'nrd': 2})
    (Path(root) / 'nrd' / 'input' / '1.png').write_bytes(b'broken')
    with pytest.raises(SystemExit, match=r'nrd/input/1\.png: not a decodable image'):
        make_lmdb.main(['--dataroot', root, '--out', str(tmp_path / 'a')])
    assert not (tmp_path / 'a' / 'lq.lmdb').exists()
    result = make_lmdb.main(['--dataroot', root, '--out', str(tmp_path / 'a'), '--on-bad', 'skip'])
    assert 'skipped 1 bad entry in all' in capsys.readouterr().out
    assert result.pairs == 3
    lmdb_set = build(manifest=result.manifest, io_backend={'type': 'lmdb'})
    disk_set = build(dataroot=root, on_bad_sample='skip')
    by_path = {disk_set[i]['lq_path']: disk_set[i] for i in range(len(disk_set)) if disk_set[i]['lq_path']}
    for i, entry in enumerate(read_manifest(result.manifest)):
        assert torch.equal(lmdb_set[i]['lq'], by_path[entry.extra['lq_file']]['lq'])
    manifest = tmp_path / 'set.jsonl'
    load_tool('convert_dataset').main(['unirain', root, '-o', str(manifest), '--relative'])
    result = make_lmdb.main(['--manifest', str(manifest), '--out', str(tmp_path / 'b'), '--on-bad', 'skip',
                             '--compress-level', '9'])
    assert result.pairs == 3 and len(read_manifest(result.manifest)) == 3
    with pytest.raises(SystemExit, match='refusing to overwrite'):
        make_lmdb.main(['--manifest', str(manifest), '--out', str(tmp_path / 'b')])


def test_benchmark_cli_reports_both_backends(tmp_path, capsys):
    root = make_layout(tmp_path / 'set', {'drs': 2, 'drd': 2}, height=130, width=136)
    load_tool('convert_dataset').main(['unirain', root, '-o', str(tmp_path / 'm.jsonl')])
    lmdb = load_tool('make_lmdb').main(['--manifest', str(tmp_path / 'm.jsonl'), '--out', str(tmp_path / 'lmdb')])
    out = tmp_path / 'bench.json'
    load_tool('benchmark_loader').main(['--manifest', str(tmp_path / 'm.jsonl'), '--lmdb-manifest', lmdb.manifest,
                                    '--batches', '2', '--warmup', '1', '--repeats', '1', '--num-workers', '0',
                                    '--json', str(out)])
    report = json.loads(out.read_text())
    assert [row['backend'] for row in report['results']] == ['disk', 'lmdb']
    assert all(row['samples_per_s'] > 0 for row in report['results'])
    assert report['settings']['gt_size'] == 128 and report['settings']['batch_size_per_gpu'] == 8
    assert 'samples/s' in capsys.readouterr().out


def test_real_rain100l_to_manifest_lmdb_and_loader(shared_data, tmp_path):
    manifest = tmp_path / 'rain100l.jsonl'
    count = load_tool('convert_dataset').main(['rain100', str(shared_data / 'rain100l_train'), '--source', 'Rain100L',
                                           '-o', str(manifest)])
    entries = read_manifest(manifest)
    assert count == len(entries) == 200
    assert all(e.type == 'DRS' and e.split == 'train' and e.source == 'Rain100L' for e in entries)
    assert all(Path(e.lq).name == Path(e.gt).name and Path(e.lq).parent.name == 'rainy' for e in entries)
    subset = tmp_path / 'subset.jsonl'
    subset.write_text(''.join(manifest.read_text().splitlines(keepends=True)[:8]))
    lmdb = load_tool('make_lmdb').main(['--manifest', str(subset), '--out', str(tmp_path / 'lmdb')])
    opt = {'name': 'rain100l', 'type': 'DistilledRainDataset', 'phase': 'train', 'manifest': lmdb.manifest,
           'io_backend': {'type': 'lmdb'}, 'gt_size': 128, 'use_hflip': True, 'use_rot': True,
           'batch_size_per_gpu': 4, 'num_worker_per_gpu': 2}
    train = build(**opt)
    loader = build_dataloader(train, opt, num_gpu=0, sampler=EnlargedSampler(train, 1, 0, ratio=1), seed=0)
    batches = list(loader)
    assert len(batches) == 2 and all(b['type_id'].tolist() == [0, 0, 0, 0] for b in batches)
    assert all(b['lq'].shape == (4, 3, 128, 128) for b in batches)
    disk, keyed = build(manifest=str(subset)), build(manifest=lmdb.manifest, io_backend={'type': 'lmdb'})
    for i in range(8):
        assert torch.equal(disk[i]['lq'], keyed[i]['lq']) and torch.equal(disk[i]['gt'], keyed[i]['gt'])
        assert sorted(disk[i]['lq'].shape[1:]) == [321, 481]  # whole images, landscape or portrait
        assert float((disk[i]['lq'] - disk[i]['gt']).mean()) > 0  # streaks brighten the scene


def test_real_kodak_four_type_set_through_the_loader(shared_data, tmp_path):
    pytest.importorskip('unirain_data.rain_synthesis')
    if not (TOOLS / 'synthesize_rain.py').is_file():
        pytest.skip('tools/synthesize_rain.py not there yet')
    clean = tmp_path / 'kodak'
    clean.mkdir()
    for name in ('kodim01.png', 'kodim02.png', 'kodim03.png', 'kodim04.png'):
        shutil.copy(shared_data / 'kodak24' / name, clean / name)
    out = tmp_path / 'synthetic'
    load_tool('synthesize_rain').main(['--input', str(clean), '--out', str(out), '--resize', '96', '--val', '1',
                                   '--test', '1'])
    opt = {'name': 'kodak', 'type': 'DistilledRainDataset', 'phase': 'train', 'dataroot': str(out / 'train'),
           'gt_size': 64, 'use_hflip': True, 'use_rot': True, 'batch_size_per_gpu': 4, 'num_worker_per_gpu': 2}
    train = build(**opt)
    assert len(train) == 2 * 4
    batches = list(build_dataloader(train, opt, num_gpu=0, sampler=EnlargedSampler(train, 1, 0, ratio=1), seed=0))
    assert sorted(t for b in batches for t in b['type_id'].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    val = build(manifest=str(out / 'val.jsonl'))
    assert sorted(val[i]['rain_type'] for i in range(len(val))) == ['DRD', 'DRS', 'NRD', 'NRS']
    for i in range(len(val)):
        entry = read_manifest(out / 'val.jsonl')[i]
        assert os.path.samefile(val[i]['lq_path'], resolve_path(str(out / 'val.jsonl'), entry.lq))
        assert not torch.equal(val[i]['lq'], val[i]['gt'])
