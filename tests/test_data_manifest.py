"""Manifest format: round trip, line-level errors, the folder-layout helpers."""
import json
import os

import numpy as np
import pytest
from data_fixtures import build, make_layout, write_lines, write_pair

from unirain_data.manifest import (ManifestEntry, ManifestError, entries_from_layout, pair_folders, read_manifest,
                                   resolve_path, scan_manifest, write_manifest)


def test_round_trip_keeps_every_field_and_extra(tmp_path):
    entries = [
        ManifestEntry('a/rain.png', 'a/clean.png', 'drs', source='Rain100L', split='train', verdict='real'),
        ManifestEntry('k0000001_x', 'k0000001_x', 'NRD', source='synthetic-kodak24', split='val', verdict='kept',
                      score=2 / 3, extra={'votes': [1, 1, 0], 'references': ['r1', 'r2'], 'caption': 'rain, night'}),
        ManifestEntry('/abs/r.jpg', '/abs/c.jpg', 'DRD', split='test', verdict='rejected', score=0.0),
        ManifestEntry('b.png', 'c.png', 'nrs'),
    ]
    path = tmp_path / 'm.jsonl'
    assert write_manifest(path, entries) == 4
    back = read_manifest(path)
    assert [e.to_dict() for e in back] == [e.to_dict() for e in entries]
    assert [e.type for e in back] == ['DRS', 'NRD', 'DRD', 'NRS']
    assert back[1].extra == {'votes': [1, 1, 0], 'references': ['r1', 'r2'], 'caption': 'rain, night'}
    lines = path.read_text(encoding='utf-8').splitlines()
    assert len(lines) == 4 and json.loads(lines[0])['verdict'] == 'real' and json.loads(lines[3])['verdict'] is None
    rewritten = tmp_path / 'again.jsonl'
    write_manifest(rewritten, back)
    assert rewritten.read_text(encoding='utf-8') == path.read_text(encoding='utf-8')


def test_bad_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / 'm.jsonl', [
        {'lq': 'a.png', 'gt': 'b.png', 'type': 'DRS'},
        '',
        {'lq': 'a.png', 'gt': 'b.png', 'type': 'snow'},
        '{not json',
        {'lq': 'a.png', 'type': 'DRD'},
        {'lq': 'c.png', 'gt': 'd.png', 'type': 'nrd', 'split': 'train'},
    ])
    with pytest.raises(ManifestError, match=r"m\.jsonl:3: unknown rain type 'SNOW'"):
        read_manifest(path)
    entries, problems = scan_manifest(path)
    assert [origin for origin, _ in entries] == [f'{path}:1', f'{path}:6']
    assert [e.type for _, e in entries] == ['DRS', 'NRD']
    assert [str(p).split(': ')[0] for p in problems] == [f'{path}:3', f'{path}:4', f'{path}:5']
    assert "missing required key(s) gt" in str(problems[2])


def test_empty_manifest_is_an_error(tmp_path):
    path = write_lines(tmp_path / 'empty.jsonl', ['', '   '])
    with pytest.raises(ManifestError, match='no entries'):
        read_manifest(path)


def test_relative_paths_are_relative_to_the_manifest(tmp_path, monkeypatch):
    folder = tmp_path / 'data'
    write_pair(folder / 'r' / '1.png', folder / 'c' / '1.png', np.random.default_rng(0))
    manifest = write_lines(folder / 'm.jsonl', [{'lq': 'r/1.png', 'gt': 'c/1.png', 'type': 'drs'}])
    assert resolve_path(manifest, 'r/1.png') == str(folder / 'r' / '1.png')
    assert resolve_path(manifest, '/x/y.png') == '/x/y.png'
    monkeypatch.chdir(tmp_path)
    sample = build(manifest='data/m.jsonl')[0]
    assert os.path.samefile(sample['lq_path'], folder / 'r' / '1.png')


def test_layout_pairs_by_stem(tmp_path):
    root = make_layout(tmp_path / 'set', {'drs': 2, 'nrd': 1})
    rng = np.random.default_rng(1)
    write_pair(tmp_path / 'set/drs/input/jpeg_pair.png', tmp_path / 'set/drs/target/jpeg_pair.jpg', rng)
    write_pair(tmp_path / 'set/drs/input/orphan.png', tmp_path / 'elsewhere/orphan.png', rng)
    write_pair(tmp_path / 'elsewhere/x.png', tmp_path / 'set/nrd/target/lonely.png', rng)
    pairing = entries_from_layout(root)
    pairs = sorted((os.path.relpath(e.lq, root), os.path.relpath(e.gt, root), e.type) for e in pairing.entries)
    assert pairs == [('drs/input/0.png', 'drs/target/0.png', 'DRS'), ('drs/input/1.png', 'drs/target/1.png', 'DRS'),
                     ('drs/input/jpeg_pair.png', 'drs/target/jpeg_pair.jpg', 'DRS'),
                     ('nrd/input/0.png', 'nrd/target/0.png', 'NRD')]
    assert all(e.source == 'set' and e.split == 'train' for e in pairing.entries)
    assert [os.path.basename(p) for p in pairing.unmatched_lq] == ['orphan.png']
    assert [os.path.basename(p) for p in pairing.unused_gt] == ['lonely.png']
    assert {e.type for e in entries_from_layout(root, ['nrd']).entries} == {'NRD'}
    with pytest.raises(FileNotFoundError, match='drd'):
        entries_from_layout(root, ['drs', 'drd'])
    with pytest.raises(FileNotFoundError, match='none of the type folders'):
        entries_from_layout(tmp_path / 'elsewhere')


def test_two_clean_images_with_one_key_are_ambiguous(tmp_path):
    rng = np.random.default_rng(0)
    write_pair(tmp_path / 'lq/1.png', tmp_path / 'gt/1.png', rng)
    write_pair(tmp_path / 'lq/2.png', tmp_path / 'gt/1.jpg', rng)
    with pytest.raises(ValueError, match=r'1\.(png|jpg) and .*1\.(png|jpg) both match key'):
        pair_folders(tmp_path / 'lq', tmp_path / 'gt', 'DRS')
