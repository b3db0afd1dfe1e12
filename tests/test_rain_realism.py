"""Rain statistics on drawn cases with known answers, the realism tool end to end, and the real pairs' floor."""
import json

import cv2
import numpy as np
import pytest

from tool_loader import load_tool
from unirain_data import rain_statistics as stats
from unirain_data.rain_synthesis import synthesize_pair
from unirain_utils.image_io import imread_bgr


def grey(height, width, level=0.4):
    return np.full((height, width, 3), level, np.float32)


def textured(size, seed=0, low=0.1, high=0.5):
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, (size, size, 3)).astype(np.float32)


def draw_lines(shape, lines, width):
    """Opacity image of bars ``width`` px wide, square ends: ``lines`` of (cx, cy, length, degrees from vertical)."""
    ys, xs = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    canvas = np.zeros(shape, np.float32)
    for cx, cy, length, angle in lines:
        rad = np.radians(angle)
        along = (xs - cx) * np.sin(rad) + (ys - cy) * np.cos(rad)
        across = (xs - cx) * np.cos(rad) - (ys - cy) * np.sin(rad)
        canvas[(np.abs(along) < length / 2) & (np.abs(across) < width / 2)] = 1
    return canvas


# --------------------------------------------------------------------------------------------------- drops

def test_drop_mask_of_known_coverage_count_and_sizes():
    """Ten drops of radius 6 and five of radius 14 brighten a flat grey by 0.3: every answer is known."""
    clean = grey(300, 400)
    mask = np.zeros((300, 400), np.uint8)
    centres6 = [(30 + 36 * i, 40) for i in range(10)]
    centres14 = [(50 + 75 * i, 200) for i in range(5)]
    for (x, y), radius in [(c, 6) for c in centres6] + [(c, 14) for c in centres14]:
        cv2.circle(mask, (x, y), radius, 1, -1)
    rainy = clean + 0.3 * mask[..., None]
    result = stats.drop_statistics(rainy, clean)
    assert result['coverage'] == pytest.approx(mask.mean(), rel=0.05)
    assert result['coverage_raw'] == pytest.approx(mask.mean(), rel=1e-6)
    assert result['drops_per_mp'] == pytest.approx(15 / 0.12)
    radii = stats.equivalent_radii(stats.drop_mask(rainy, clean))
    assert sorted(np.round(radii)) == [6] * 10 + [14] * 5
    assert result['radius_p50'] == pytest.approx(6, abs=0.5)
    assert result['radius_p90'] == pytest.approx(14, abs=0.5)
    assert result['brightness'] == pytest.approx(0.3 * 255, abs=0.5)
    # the error is 0.3 on the drops, 0 elsewhere
    assert result['psnr'] == pytest.approx(10 * np.log10(1 / (0.09 * mask.mean())), abs=0.01)


def test_translucent_veil_keeps_a_known_share_of_detail_and_contrast():
    """A drop that lets half the scene through under a veil keeps (1/2)^2 of its Laplacian energy, 1/2 its contrast."""
    clean = textured(128)
    rainy = 0.5 * clean + 0.4  # changes every pixel by more than 20/255: the whole frame is one drop
    result = stats.drop_statistics(rainy, clean)
    assert result['coverage'] == 1.0
    assert result['detail_ratio'] == pytest.approx(0.25, rel=1e-3)
    assert result['contrast_ratio'] == pytest.approx(0.5, rel=1e-3)
    assert result['brightness'] == pytest.approx(255 * (0.4 - 0.5 * stats.luminance(clean)).mean(), rel=1e-4)
    blurred = cv2.GaussianBlur(clean, (0, 0), 2.0) + 0.2
    assert stats.drop_statistics(blurred, clean)['detail_ratio'] < 0.05  # blur removes detail


def test_align_pair_undoes_a_camera_shift():
    clean = cv2.GaussianBlur(textured(160, 1, 0, 1), (0, 0), 1.5)
    shift = np.float32([[1, 0, 3.0], [0, 1, -2.0]])
    rainy = cv2.warpAffine(clean, shift, (160, 160), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    aligned, valid, correlation = stats.align_pair(rainy, clean)
    assert correlation > 0.99
    assert not valid[:, :3].any() and not valid[-3:, :].any() and valid.mean() > 0.7  # the empty border is out
    assert stats.psnr(rainy, aligned, valid) > 35
    assert stats.psnr(rainy, clean, valid) < 25  # unaligned, the same pair is far apart


# -------------------------------------------------------------------------------------------------- streaks

@pytest.mark.parametrize('angle', [-20.0, 0.0, 15.0])
def test_drawn_streaks_of_known_angle_width_and_length(angle):
    shape = (240, 320)
    lines = [(40 + 60 * i, 60 + 110 * j, 40, angle) for i in range(5) for j in range(2)]
    opacity = draw_lines(shape, lines, 3)
    clean = grey(*shape, 0.3)
    rainy = clean + 0.4 * opacity[..., None]
    result = stats.streak_statistics(rainy, clean)
    assert result['segments'] == 10
    assert result['angle'] == pytest.approx(angle, abs=1.5)
    assert result['angle_spread'] < 1.0
    assert result['width'] == pytest.approx(3, abs=0.5)
    assert result['length'] == pytest.approx(40, rel=0.05)
    assert result['intensity'] == pytest.approx(0.4 * 255, abs=0.5)
    assert result['coverage'] == pytest.approx(opacity.mean(), rel=1e-6)


def test_orientation_spread_of_two_directions():
    """Streaks at -10 and +10 degrees, equally many: mean 0, axial circular std sqrt(-2 ln cos 20deg) / 2 = 10.1 deg."""
    shape = (240, 320)
    lines = [(40 + 60 * i, 60 + 110 * j, 40, 10.0 * (-1) ** (i + j)) for i in range(5) for j in range(2)]
    clean = grey(*shape, 0.3)
    rainy = clean + 0.4 * draw_lines(shape, lines, 2)[..., None]
    result = stats.streak_statistics(rainy, clean)
    assert result['angle'] == pytest.approx(0, abs=1.0)
    assert result['angle_spread'] == pytest.approx(np.degrees(np.sqrt(-2 * np.log(np.cos(np.radians(20)))) / 2),
                                                   abs=1.0)
    spread, mean = stats.axial_spread([30.0, 210.0, -150.0])  # one line, three ways of writing its direction
    assert spread < 1e-3 and mean == pytest.approx(30.0)


def test_blobs_are_not_streaks():
    mask = np.zeros((100, 100), np.uint8)
    cv2.circle(mask, (50, 50), 10, 1, -1)
    assert len(stats.segment_shapes(mask > 0)) == 0


# ---------------------------------------------------------------------------------------------------- night

def test_noise_estimate_of_known_sigma_on_a_smooth_scene():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.1, 0.6, 256, dtype=np.float32)
    clean = np.repeat(np.repeat(ramp[None, :, None], 256, 0), 3, 2)
    noisy = clean + rng.normal(0, 4 / 255, (256, 256, 1)).astype(np.float32)  # the same noise in every channel
    assert stats.noise_sigma(noisy) == pytest.approx(4.0, rel=0.1)
    assert stats.noise_sigma(clean) < 0.05


def test_lamps_night_scene_and_streaks_in_the_dark():
    clean = grey(200, 300, 0.03)
    for x, y in ((50, 100), (150, 120), (250, 140)):
        cv2.circle(clean, (x, y), 3, (1.0, 1.0, 1.0), -1)
    np.testing.assert_allclose(sorted(stats.lamp_cores(clean).tolist()), [[50, 100], [150, 120], [250, 140]],
                               atol=0.01)
    opacity = draw_lines((200, 300), [(60 + 90 * i, 60, 30, 5.0) for i in range(3)], 2)
    rainy = clean + 0.1 * opacity[..., None]
    result = stats.night_statistics(np.clip(rainy, 0, 1), clean)
    assert result['lamps_per_mp'] == pytest.approx(3 / 0.06)
    assert result['lamp_height'] == pytest.approx(120 / 200)
    assert result['scene_mean'] == pytest.approx(255 * stats.luminance(clean).mean(), rel=1e-4)
    assert result['dark_intensity'] == pytest.approx(0.1 * 255, abs=0.5)
    assert result['dark_coverage'] > 0 and result['segments'] == 3


def test_sky_is_bright_smooth_bluish_and_touches_the_top():
    day = textured(120, 2, 0.0, 0.6)
    day[:40] = (0.9, 0.75, 0.6)  # BGR: a light blue sky over a textured scene
    sky = stats.sky_mask(day)
    assert sky[:32].mean() > 0.99 and sky[45:].mean() < 0.01
    warm = day.copy()
    warm[:40] = (0.5, 0.6, 0.9)  # a smooth warm backdrop is not sky
    assert not stats.sky_mask(warm).any()
    assert not stats.sky_mask(day[::-1]).any()  # smooth and bright, but at the bottom


# ---------------------------------------------------------------------------------------------------- tool

def _pair_folder(root, images):
    for side in ('rainy', 'clean'):
        (root / side).mkdir(parents=True)
    for name, (rainy, clean) in images.items():
        cv2.imwrite(str(root / 'rainy' / f'{name}.png'), np.round(rainy * 255).astype(np.uint8))
        cv2.imwrite(str(root / 'clean' / f'{name}.png'), np.round(clean * 255).astype(np.uint8))


def test_tool_writes_table_json_and_sheets_and_compares_with_an_earlier_run(tmp_path):
    scenes = [cv2.GaussianBlur(textured(96, seed, 0.1, 0.9), (0, 0), 1.0) for seed in range(3)]
    _pair_folder(tmp_path / 'drops', {str(i): synthesize_pair(s, 'DRD', 10 + i) for i, s in enumerate(scenes)})
    _pair_folder(tmp_path / 'streaks', {str(i): synthesize_pair(s, 'DRS', 20 + i) for i, s in enumerate(scenes)})
    _pair_folder(tmp_path / 'night', {f'n{i}': synthesize_pair(s, 'NRS', 30 + i) for i, s in enumerate(scenes)})
    (tmp_path / 'day').mkdir()
    cv2.imwrite(str(tmp_path / 'day' / 'a.png'), np.round(scenes[0] * 255).astype(np.uint8))
    tool = load_tool('rain_realism')
    common = ['measure', '--drop-pairs', str(tmp_path / 'drops'), '--streak-pairs', str(tmp_path / 'streaks'),
              '--night-pairs', str(tmp_path / 'night'), '--day-photos', str(tmp_path / 'day'), '--variants', '1']
    tool.main(common + ['--out', str(tmp_path / 'old')])
    tool.main(common + ['--out', str(tmp_path / 'new'), '--before', str(tmp_path / 'old')])
    report = json.loads((tmp_path / 'new' / 'realism.json').read_text())
    assert set(report['sections']) == {'drops', 'streaks', 'night'}
    drops = report['sections']['drops']
    assert [r['image'] for r in drops['real']] == ['0', '1', '2']
    assert len(drops['synthetic']['DRD']) == 3 and len(drops['synthetic']['NRD']) == 3
    assert report['summary']['streaks']['real']['psnr']['n'] == 3 and report['machine'] and report['date']
    # the same seeds give the same synthetic statistics: the earlier run is the "before" column
    old = json.loads((tmp_path / 'old' / 'realism.json').read_text())
    assert old['summary'] == report['summary']
    table = (tmp_path / 'new' / 'realism.md').read_text()
    assert '| statistic | real (3 pairs) | DRD before | DRD synthetic | inside real range |' in table
    assert 'noise sigma of the input (1/255)' in table
    for section in ('drops', 'streaks', 'night'):
        sheet = imread_bgr(str(tmp_path / 'new' / f'sheet_{section}.jpg'))
        assert sheet.shape[1] >= 3 * 480  # real | before | after


def test_tool_errors_name_the_folder(tmp_path):
    tool = load_tool('rain_realism')
    (tmp_path / 'pairs' / 'rainy').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='clean'):
        tool.image_pairs(tmp_path / 'pairs')
    (tmp_path / 'pairs' / 'clean').mkdir()
    cv2.imwrite(str(tmp_path / 'pairs' / 'rainy' / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match='without a partner.*a'):
        tool.image_pairs(tmp_path / 'pairs')
    with pytest.raises(SystemExit):
        tool.main(['measure', '--night-pairs', str(tmp_path / 'pairs'), '--out', str(tmp_path / 'o')])


def test_sheet_puts_matching_files_side_by_side(tmp_path):
    tool = load_tool('rain_realism')
    for side, level in (('left', 50), ('right', 200)):
        (tmp_path / side).mkdir()
        for name in ('case1', 'case2'):
            cv2.imwrite(str(tmp_path / side / f'{name}.png'), np.full((60, 90, 3), level, np.uint8))
    tool.main(['sheet', '--left', str(tmp_path / 'left'), '--right', str(tmp_path / 'right'),
               '--out', str(tmp_path / 'sheet.png')])
    sheet = cv2.imread(str(tmp_path / 'sheet.png'))
    assert sheet.shape[1] == 2 * (480 + 4)
    row = sheet[tool.LABEL_HEIGHT + 10, :, 0]
    assert abs(int(row[100]) - 50) <= 1 and abs(int(row[600]) - 200) <= 1


# ------------------------------------------------------------------------------------------------ real data

def test_real_raindrop_pairs_are_the_floor_our_drops_meet(shared_data):
    """The issue's measure on the real pairs (24-42 % of pixels changed by > 20/255 before alignment), and our
    DRD on the same clean photos at the same resolution reaches that range and is no milder in PSNR."""
    root = shared_data / 'real_rain' / 'raindrop_pairs'
    real, ours = [], []
    for name in ('0', '1', '2', '3'):
        rainy, clean = imread_bgr(str(root / 'rainy' / f'{name}.png')), imread_bgr(str(root / 'clean' / f'{name}.png'))
        aligned, valid, _ = stats.align_pair(rainy, clean)
        real.append((stats.coverage_raw(rainy, clean), stats.psnr(rainy, aligned, valid)))
        synthetic, target = synthesize_pair(clean, 'DRD', int(name))
        ours.append(stats.drop_statistics(synthetic, target))
    coverage = [c for c, _ in real]
    assert 0.23 < min(coverage) and max(coverage) < 0.43
    assert min(coverage) <= np.median([r['coverage_raw'] for r in ours]) <= max(coverage)
    assert np.median([r['psnr'] for r in ours]) <= max(p for _, p in real)
    assert np.median([r['brightness'] for r in ours]) > 10  # drops brighten the scene, as the real ones do
