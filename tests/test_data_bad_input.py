"""Every bad input gets its documented behaviour: an error naming the entry, or (on_bad_sample: skip) a logged,
counted skip with a deterministic replacement; never a silent wrong sample."""
import os

import cv2
import numpy as np
import pytest
import torch
from data_fixtures import basicsr_log  # noqa: F401  (a fixture)
from data_fixtures import build, make_manifest, random_pixels, write_image, write_lines

from unirain_utils.image_io import BadImageError, decode_image
from unirain_data.manifest import ManifestError


def _png(pixels):
    return cv2.imencode('.png', pixels)[1].tobytes()


@pytest.fixture
def manifest(tmp_path):
    """Three DRS pairs and one NRD pair (40x48), lq = 255 - gt."""
    return make_manifest(tmp_path, [{'type': 'drs'}, {'type': 'drs'}, {'type': 'drs'}, {'type': 'nrd'}])


def _break(manifest, index, side, content):
    path = os.path.join(os.path.dirname(manifest), 'img', f'{index}_{"rain" if side == "lq" else "clean"}.png')
    with open(path, 'wb') as f:
        f.write(content)
    return path


CORRUPTIONS = {
    'corrupt': lambda good: b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4,
    'truncated': lambda good: good[:len(good) // 2],
    'empty': lambda good: b'',
    'not an image': lambda good: b'rain rain rain',
}


@pytest.mark.parametrize('kind', list(CORRUPTIONS))
def test_unreadable_image_raises_naming_the_entry(manifest, kind):
    good = open(os.path.join(os.path.dirname(manifest), 'img', '1_clean.png'), 'rb').read()
    path = _break(manifest, 1, 'gt', CORRUPTIONS[kind](good))
    dataset = build(manifest=manifest)
    with pytest.raises(BadImageError, match=rf'entry {manifest}:2: {path}: (empty file|not a decodable image)'):
        dataset[1]
    assert torch.equal(dataset[0]['gt'], build(manifest=manifest)[0]['gt'])  # the others still load


def test_truncated_jpeg_is_refused():
    good = cv2.imencode('.jpg', random_pixels(np.random.default_rng(0)))[1].tobytes()
    assert decode_image(good, 'x.jpg').pixels.shape == (40, 48, 3)
    with pytest.raises(BadImageError, match='x.jpg: not a decodable image, corrupt or truncated'):
        decode_image(good[:len(good) * 3 // 4], 'x.jpg')


def test_skip_replaces_with_the_next_entry_of_the_same_type_and_counts(manifest, basicsr_log):
    _break(manifest, 1, 'lq', b'')
    _break(manifest, 3, 'gt', b'garbage')
    dataset = build(manifest=manifest, on_bad_sample='skip')
    sample = dataset[1]
    assert os.path.basename(sample['lq_path']) == '2_rain.png'  # the next DRS entry
    torch.testing.assert_close(sample['lq'] + sample['gt'], torch.ones_like(sample['lq']), atol=1e-6, rtol=0)
    assert dataset.skipped == 1
    assert any('skipped bad sample (1 in this process so far)' in line and f'{manifest}:2' in line
               and '1_rain.png: empty file' in line for line in basicsr_log)
    dataset[1]
    assert dataset.skipped == 1  # a bad entry is counted and logged once
    with pytest.raises(BadImageError, match=rf'no readable sample found in .* tries from index 3.*{manifest}:4'):
        dataset[3]  # the only NRD entry is bad: there is nothing of its type to use instead
    assert dataset.skipped == 2


def test_grayscale_pairs_become_three_equal_channels(tmp_path, basicsr_log):
    rng = np.random.default_rng(0)
    gray = random_pixels(rng, channels=1)
    folder = tmp_path / 'd'
    write_image(folder / 'r.png', 255 - gray)
    write_image(folder / 'c.png', gray)
    write_image(folder / 'c3.png', cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    write_image(folder / 'colour.png', random_pixels(rng))
    m = write_lines(folder / 'm.jsonl', [{'lq': 'r.png', 'gt': 'c.png', 'type': 'drs'},
                                         {'lq': 'r.png', 'gt': 'c3.png', 'type': 'drs'},
                                         {'lq': 'r.png', 'gt': 'colour.png', 'type': 'drs'}])
    dataset = build(manifest=m)
    for i in (0, 1):
        sample = dataset[i]
        assert sample['lq'].shape == (3, 40, 48)
        np.testing.assert_array_equal(sample['gt'].numpy(), np.repeat(gray[None].astype(np.float32) / 255, 3, 0))
        assert torch.equal(sample['lq'][0], sample['lq'][2])
    assert any('grayscale image expanded to 3 channels' in line for line in basicsr_log)
    with pytest.raises(BadImageError, match=r'r\.png is grayscale but .*colour\.png is in colour'):
        dataset[2]


def test_rgba_drops_alpha(tmp_path):
    rng = np.random.default_rng(0)
    bgra = random_pixels(rng, channels=4)
    folder = tmp_path / 'd'
    write_image(folder / 'r.png', bgra)
    write_image(folder / 'c.png', bgra[..., :3])
    m = write_lines(folder / 'm.jsonl', [{'lq': 'r.png', 'gt': 'c.png', 'type': 'drd'}])
    sample = build(manifest=m)[0]
    assert torch.equal(sample['lq'], sample['gt'])


def test_sixteen_bit_is_scaled_by_65535():
    deep = np.array([[[0, 32768, 65535]]], dtype=np.uint16).repeat(20, 0).repeat(20, 1)
    pixels = decode_image(_png(deep), 'deep.png').pixels
    np.testing.assert_array_equal(pixels[0, 0], np.array([0, 32768, 65535], np.float32) / np.float32(65535))
    assert pixels.max() == 1.0
    gray16 = decode_image(_png(np.full((8, 8), 65535, np.uint16)), 'g.png').pixels
    assert gray16.shape == (8, 8, 1) and gray16.max() == 1.0


def test_float_images_are_refused():
    content = cv2.imencode('.tiff', np.random.default_rng(0).random((8, 8, 3)).astype(np.float32))[1].tobytes()
    with pytest.raises(BadImageError, match='f.tiff: unsupported pixel type float32'):
        decode_image(content, 'f.tiff')


@pytest.mark.parametrize('phase', ['train', 'val'])
def test_pair_of_different_sizes_names_both_files(tmp_path, phase):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'd'
    write_image(folder / 'r.png', random_pixels(rng, 40, 48))
    write_image(folder / 'c.png', random_pixels(rng, 41, 48))
    m = write_lines(folder / 'm.jsonl', [{'lq': 'r.png', 'gt': 'c.png', 'type': 'nrs'}])
    with pytest.raises(BadImageError, match=r'm\.jsonl:1: rainy and clean images differ in size: .*r\.png is 48x40, '
                                            r'.*c\.png is 48x41'):
        build(manifest=m, phase=phase, gt_size=16)[0]


def test_image_smaller_than_the_crop_is_named(manifest):
    with pytest.raises(BadImageError, match=r'0_clean\.png: 48x40 is smaller than gt_size 64'):
        build(manifest=manifest, phase='train', gt_size=64)[0]


def test_missing_file_is_found_when_the_dataset_is_built(manifest, basicsr_log):
    os.remove(os.path.join(os.path.dirname(manifest), 'img', '2_clean.png'))
    with pytest.raises(FileNotFoundError, match=rf'1 entry missing data: entry {manifest}:3: file not found: '
                                                r'.*2_clean\.png'):
        build(manifest=manifest)
    dataset = build(manifest=manifest, on_bad_sample='skip')
    assert len(dataset) == 3
    assert any(f'skipped 1 entry missing data: entry {manifest}:3' in line for line in basicsr_log)


def test_file_removed_after_building_is_caught_when_read(manifest):
    dataset = build(manifest=manifest)
    os.remove(os.path.join(os.path.dirname(manifest), 'img', '0_rain.png'))
    with pytest.raises(BadImageError, match=rf'entry {manifest}:1: file not found: .*0_rain\.png'):
        dataset[0]
    assert os.path.basename(build(manifest=manifest, on_bad_sample='skip')[0]['lq_path']) == '1_rain.png'


def test_unknown_type(manifest, tmp_path, basicsr_log):
    lines = open(manifest, encoding='utf-8').read().splitlines()
    bad = write_lines(tmp_path / 'bad.jsonl', lines[:2] + [lines[2].replace('"drs"', '"fog"')])
    with pytest.raises(ManifestError, match=r"bad\.jsonl:3: unknown rain type 'FOG'"):
        build(manifest=bad)
    assert len(build(manifest=bad, on_bad_sample='skip')) == 2
    assert any("skipped manifest line" in line and "bad.jsonl:3" in line for line in basicsr_log)
    with pytest.raises(ValueError, match="unknown rain type 'fog'"):
        build(manifest=manifest, types=['drs', 'fog'])


@pytest.mark.parametrize('on_bad', ['error', 'skip'])
def test_empty_manifest_is_always_an_error(tmp_path, on_bad):
    empty = write_lines(tmp_path / 'empty.jsonl', [])
    with pytest.raises(ManifestError, match=r'empty\.jsonl: the manifest has no entries'):
        build(manifest=empty, on_bad_sample=on_bad)
    junk = write_lines(tmp_path / 'junk.jsonl', ['{"lq": "a"}'])
    with pytest.raises(ManifestError, match=r'junk\.jsonl:1: missing required key' if on_bad == 'error'
                       else r'junk\.jsonl: the manifest has no usable entries'):
        build(manifest=junk, on_bad_sample=on_bad)


def test_missing_manifest_and_bad_option_values(manifest, tmp_path):
    with pytest.raises(FileNotFoundError, match='manifest not found: .*nothing.jsonl'):
        build(manifest=str(tmp_path / 'nothing.jsonl'))
    with pytest.raises(ValueError, match="on_bad_sample: 'ignore' is not one of error, skip"):
        build(manifest=manifest, on_bad_sample='ignore')
    with pytest.raises(ValueError, match='gt_size must be a positive integer'):
        build(manifest=manifest, phase='train')
