"""Rain synthesis: determinism, the contract the dataset relies on, and what each rain type does to an image."""
import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from tool_loader import load_tool
from unirain_data.manifest import read_manifest, resolve_path
from unirain_data.night import NightConfig, render_night
from unirain_data.rain_streaks import StreakConfig, composite_streaks, render_streaks
from unirain_data.rain_synthesis import DEFAULT_CONFIGS, synthesize, synthesize_pair
from unirain_data.rain_statistics import drop_statistics, lamp_cores, sky_mask
from unirain_data.raindrops import DropConfig

TYPES = ('DRS', 'DRD', 'NRS', 'NRD')
NOISELESS_NIGHT = NightConfig(shot_noise=(0.0, 0.0), read_noise=(0.0, 0.0))


def textured(size=96, seed=0):
    """A mid-grey photo stand-in with detail at every scale (refraction and blur must visibly change it)."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.uniform(0.25, 0.65, (8, 8, 3)).astype(np.float32), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.uniform(-0.15, 0.15, (size, size, 3)).astype(np.float32), (0, 0), 0.8)
    return np.clip(coarse + fine, 0, 1).astype(np.float32)


def luminance(image):
    return image @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR


def streak_orientation(signal):
    """Structure tensor of a 2-D signal: (coherence in [0, 1], line direction in degrees from vertical)."""
    # derivatives of a smoothed signal: raw differences of one-pixel lines are biased towards the axes
    gy, gx = np.gradient(cv2.GaussianBlur(signal.astype(np.float64), (0, 0), 1.5))
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    coherence = np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy)
    gradient_angle = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))  # from the x axis, image coordinates
    # lines run across the gradient; a line at a degrees from vertical has its gradient at -a from the x axis
    return coherence, (-gradient_angle + 90) % 180 - 90


@pytest.mark.parametrize('rain_type', TYPES)
def test_same_seed_same_pair_and_other_seeds_differ(rain_type):
    clean = textured(64)
    rainy, target = synthesize_pair(clean, rain_type, 7)
    again_rainy, again_target = synthesize_pair(clean.copy(), rain_type.lower(), 7)
    assert np.array_equal(rainy, again_rainy) and np.array_equal(target, again_target)
    from_generator, _ = synthesize_pair(clean, rain_type, np.random.default_rng(7))
    assert np.array_equal(rainy, from_generator)
    assert not np.array_equal(rainy, synthesize(clean, rain_type, 8))
    assert np.array_equal(synthesize(clean, rain_type, 7), rainy)


@pytest.mark.parametrize('rain_type', TYPES)
@pytest.mark.parametrize('shape', [(16, 16), (17, 45), (64, 96)])
def test_output_contract(rain_type, shape):
    clean = textured(max(shape))[:shape[0], :shape[1]]
    before = clean.copy()
    rainy, target = synthesize_pair(clean, rain_type, 3)
    assert np.array_equal(clean, before)  # the caller's image is not modified
    for image in (rainy, target):
        assert image.shape == clean.shape and image.dtype == np.float32
        assert image.min() >= 0 and image.max() <= 1 and np.isfinite(image).all()
    assert not np.allclose(rainy, target, atol=1e-3)  # rain was added


def test_day_target_is_the_clean_image():
    clean = textured(64)
    for rain_type in ('DRS', 'DRD'):
        assert np.array_equal(synthesize_pair(clean, rain_type, 1)[1], clean)
    # float64 and values a resize pushed slightly out of [0, 1] are accepted and brought to the contract
    rainy, target = synthesize_pair(clean.astype(np.float64) * 1.02 - 0.01, 'drs', 1)
    assert rainy.dtype == target.dtype == np.float32 and 0 <= target.min() and target.max() <= 1


def test_bad_input_is_named():
    clean = textured(32)
    with pytest.raises(ValueError, match='SNOW'):
        synthesize(clean, 'SNOW', 0)
    with pytest.raises(ValueError, match='dtype uint8'):
        synthesize((clean * 255).astype(np.uint8), 'DRS', 0)
    with pytest.raises(ValueError, match=r'\(H, W, 3\)'):
        synthesize(clean[..., 0], 'DRS', 0)
    with pytest.raises(ValueError, match='at least 16'):
        synthesize(clean[:15], 'DRS', 0)
    with pytest.raises(TypeError, match='seed'):
        synthesize(clean, 'DRS', 1.5)


def test_streaks_add_thin_bright_lines_along_the_rain_direction():
    clean = textured(128)
    for angle in (-20.0, 0.0, 20.0):
        config = dataclasses.replace(DEFAULT_CONFIGS['DRS'], streaks=StreakConfig(angle=(angle, angle)))
        rainy, _ = synthesize_pair(clean, 'DRS', 5, config)
        added = luminance(rainy) - luminance(clean)
        assert added.min() > -1e-5  # rain only brightens in daylight
        assert 0.01 < added.mean() < 0.2  # mildly brighter on average
        coherence, direction = streak_orientation(added)
        assert coherence > 0.5, coherence  # random texture would give about 0
        assert abs(direction - angle) < 6, (direction, angle)
        # thin: an opening wider than a streak removes most of them; drops would survive it
        changed = (added > 0.05).astype(np.uint8)
        opened = cv2.morphologyEx(changed, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
        assert opened.sum() < 0.5 * changed.sum()


def _drop_blobs(clean, rainy):
    changed = (np.abs(rainy - clean).max(-1) > 0.04).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(changed, connectivity=8)
    return changed, stats[1:]  # without the background


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_drops_change_the_image_in_localised_blobs(seed):
    clean = textured(128, seed)
    rainy, _ = synthesize_pair(clean, 'DRD', seed)
    changed, blobs = _drop_blobs(clean, rainy)
    assert 0.03 < changed.mean() < 0.6  # most of the image is untouched
    big = blobs[blobs[:, cv2.CC_STAT_AREA] >= np.pi * 4 ** 2]
    assert len(big) >= 1
    # blobs, not lines: the drop-sized components fill a good part of their bounding box
    fill = big[:, cv2.CC_STAT_AREA] / (big[:, cv2.CC_STAT_WIDTH] * big[:, cv2.CC_STAT_HEIGHT])
    assert np.median(fill) > 0.4
    # and they survive an opening that erases streaks
    opened = cv2.morphologyEx(changed, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    assert opened.sum() > 0.6 * changed.sum()


def test_drops_show_the_scene_upside_down():
    """Over a top-to-bottom ramp, what a drop refracts is a bottom-to-top ramp: it is a small inverting lens.

    Opaque drops that scatter no light show the refracted view alone."""
    clean = np.repeat(np.linspace(0, 1, 128, dtype=np.float32)[:, None, None], 128, 1).repeat(3, 2)
    drops = DropConfig(rim=(0.0, 0.0), highlight=(0.0, 0.0), haze=(0.0, 0.0), opacity=(1.0, 1.0))
    config = dataclasses.replace(DEFAULT_CONFIGS['DRD'], drops=drops)
    rainy, _ = synthesize_pair(clean, 'DRD', 6, config)
    inside = cv2.erode((np.abs(rainy - clean).max(-1) > 0.05).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert inside.sum() > 100
    slope = np.gradient(luminance(rainy), axis=0)
    assert slope[inside].mean() < 0 < slope[~inside].mean()



@pytest.mark.parametrize('seed', [0, 1, 2])
def test_drops_haze_and_brighten_the_scene_and_let_part_of_it_through(seed):
    """Real drops on glass (tools/rain_realism.py): translucent, brighter than the scene, many of them small."""
    clean = textured(256, seed)
    rainy, _ = synthesize_pair(clean, 'DRD', seed)
    drops = drop_statistics(rainy, clean)
    assert 0.2 < drops['coverage'] < 0.5  # a quarter to a half of the frame, as on the real pairs
    assert drops['brightness'] > 10  # on average a drop brightens what lies behind it (1/255)
    assert 0.1 < drops['detail_ratio'] < 0.6  # the scene shows through, softened: neither sharp nor wiped out
    assert drops['radius_p50'] < 8  # small drops outnumber large ones


def test_scattered_light_only_brightens():
    """Drops that replace nothing of the scene (opacity 0) only add the light they scatter: never darker, and
    unchanged away from the drops."""
    clean = textured(128)
    config = dataclasses.replace(DEFAULT_CONFIGS['DRD'], drops=DropConfig(opacity=(0.0, 0.0), coverage=(0.2, 0.2)))
    rainy, _ = synthesize_pair(clean, 'DRD', 4, config)
    lift = rainy - clean
    assert lift.min() > -1e-6 and lift.max() > 0.1
    assert (np.abs(lift).max(-1) < 1e-6).mean() > 0.3


def test_night_lamps_stand_on_the_scene_not_in_the_sky():
    """A day photo with a bright sky over a textured street: across many nights no lamp core is in the sky."""
    day = textured(160, 3)
    day[:60] = (0.92, 0.8, 0.65)  # BGR: light blue sky
    sky = sky_mask(day)
    assert sky[:48].all()
    config = NightConfig(lights_per_area=(6.0, 6.0), max_mean_light=0.2)  # many lamps: some fall in the frame
    cores = [lamp_cores(render_night(day, config, np.random.default_rng(seed)).image) for seed in range(6)]
    cores = np.concatenate(cores)
    assert len(cores) >= 5
    assert not sky[cores[:, 1].astype(int), cores[:, 0].astype(int)].any()

@pytest.mark.parametrize('rain_type', ['NRS', 'NRD'])
def test_night_is_dark_and_its_target_has_no_rain(rain_type):
    clean = textured(128)
    day = luminance(clean).mean()
    pairs = [synthesize_pair(clean, rain_type, seed) for seed in range(8)]
    night = np.array([luminance(target).mean() / day for _, target in pairs])
    rainy_night = np.array([luminance(rainy).mean() / day for rainy, _ in pairs])
    # a crop right next to a lamp is bright, a typical night frame is several times darker than the day
    assert np.median(night) < 0.35 and night.max() < 0.75
    assert np.median(rainy_night) < 0.5 and rainy_night.max() < 0.9
    rainy, target = pairs[4]
    # the same seed gives the same night scene whatever the rain: NRS and NRD share the darkening
    other = {'NRS': 'NRD', 'NRD': 'NRS'}[rain_type]
    assert np.array_equal(synthesize_pair(clean, other, 4)[1], target)
    # without sensor noise, the rainy image is the target plus rain only
    config = dataclasses.replace(DEFAULT_CONFIGS[rain_type], night=NOISELESS_NIGHT)
    noiseless, same_target = synthesize_pair(clean, rain_type, 4, config)
    assert np.array_equal(same_target, target)
    difference = luminance(noiseless) - luminance(target)
    if rain_type == 'NRS':
        assert difference.min() > -1e-5  # streaks are light, they never darken
        coherence, _ = streak_orientation(difference)
        assert coherence > 0.5  # and the difference is the oriented streaks
    else:
        changed, blobs = _drop_blobs(target, noiseless)
        assert 0.01 < changed.mean() < 0.7 and len(blobs) >= 1


@pytest.mark.parametrize('rain_type', ['NRS', 'NRD'])
def test_sensor_noise_is_in_the_input_only(rain_type):
    clean = np.full((64, 64, 3), 0.6, np.float32)
    config = dataclasses.replace(DEFAULT_CONFIGS[rain_type], streaks=None, drops=None)
    rainy, target = synthesize_pair(clean, rain_type, 2, config)

    def high_frequency(image):
        return np.abs(cv2.Laplacian(luminance(image), cv2.CV_32F)).mean()

    assert high_frequency(target) < 1e-3  # a flat wall under smooth lamp light stays smooth
    assert high_frequency(rainy) > 10 * max(high_frequency(target), 1e-4)
    assert abs(luminance(rainy).mean() - luminance(target).mean()) < 0.02  # noise is zero-mean


def test_night_streaks_are_lit_by_the_scene_light():
    """Streaks are the same opacity times the light falling on them: bright near lamps, faint in the dark."""
    clean = np.full((96, 96, 3), 0.2, np.float32)
    config = dataclasses.replace(DEFAULT_CONFIGS['NRS'], night=NOISELESS_NIGHT,
                                 streaks=StreakConfig(haze=(0.0, 0.0)))
    scene = render_night(clean, config.night, np.random.default_rng(3))  # synthesize_pair draws the night first
    rainy, target = synthesize_pair(clean, 'NRS', 3, config)
    assert np.array_equal(scene.image, target)
    denominator = scene.light * (1 - target)
    usable = (denominator.min(-1) > 0.05) & (rainy.max(-1) < 1)
    opacity = (rainy - target)[usable] / denominator[usable]  # per channel
    assert opacity.max() > 0.3 and opacity.min() > -1e-4
    assert np.abs(opacity - opacity.mean(-1, keepdims=True)).max() < 1e-3  # one opacity, tinted by the light

    # the same streaks under a bright and a dim light
    streaks = render_streaks(64, 32, StreakConfig(), np.random.default_rng(0))[0]
    background = np.full((64, 64, 3), 0.05, np.float32)
    light = np.full((64, 64, 3), 0.15, np.float32)
    light[:, :32] = 0.9
    added = composite_streaks(background, np.concatenate([streaks, streaks], 1), 0.0, light) - background
    assert np.isclose(added[:, :32].sum() / added[:, 32:].sum(), 0.9 / 0.15, rtol=1e-3)


def test_cli_makes_a_four_type_split_set(tmp_path):
    cli = load_tool('synthesize_rain')
    clean_dir = tmp_path / 'clean'
    clean_dir.mkdir()
    for i in range(5):
        cv2.imwrite(str(clean_dir / f'img{i}.png'), (textured(48, i) * 255).astype(np.uint8))
    out = tmp_path / 'set'
    cli.main(['--input', str(clean_dir), '--out', str(out), '--val', '1', '--test', '1', '--variants', '2',
              '--crop', '32', '--seed', '3'])
    images, night_means, clean_means = {}, [], []
    for split, expected_images in (('train', 3), ('val', 1), ('test', 1)):
        entries = read_manifest(out / f'{split}.jsonl')
        assert len(entries) == expected_images * 2 * 4
        assert {e.type for e in entries} == set(TYPES)
        assert {e.source for e in entries} == {'synthetic-clean'}
        images[split] = {e.extra['clean'] for e in entries}
        for entry in entries:
            assert not Path(entry.lq).is_absolute()
            lq = cv2.imread(resolve_path(out / f'{split}.jsonl', entry.lq))
            gt = cv2.imread(resolve_path(out / f'{split}.jsonl', entry.gt))
            assert lq.shape == gt.shape == (32, 32, 3)
            assert entry.lq.startswith(f'{split}/{entry.type.lower()}/input/')
            assert Path(entry.lq).name == Path(entry.gt).name
            if entry.type.startswith('N'):
                night_means.append(gt.mean())
                clean_means.append(cv2.imread(str(clean_dir / entry.extra['clean'])).mean())
    assert np.mean(night_means) < 0.6 * np.mean(clean_means)  # night targets are night scenes
    assert len(set.union(*images.values())) == 5  # every image in exactly one split
    assert sum(len(v) for v in images.values()) == 5
    first = sorted((out / 'train/nrd/input').iterdir())[0]
    again = tmp_path / 'again'
    cli.main(['--input', str(clean_dir), '--out', str(again), '--val', '1', '--test', '1', '--variants', '2',
              '--crop', '32', '--seed', '3'])
    assert np.array_equal(cv2.imread(str(first)), cv2.imread(str(again / 'train/nrd/input' / first.name)))


def test_cli_single_image_and_errors(tmp_path, capsys):
    cli = load_tool('synthesize_rain')
    folder = tmp_path / 'clean'
    folder.mkdir()
    source = folder / 'photo.png'
    cv2.imwrite(str(source), (textured(40) * 255).astype(np.uint8))
    cv2.imwrite(str(folder / 'other.jpg'), (textured(40, 1) * 255).astype(np.uint8))
    cli.main(['--image', str(source), '--type', 'nrs', '--out', str(tmp_path / 'rainy.png'),
              '--target-out', str(tmp_path / 'target.png')])
    rainy, target = cv2.imread(str(tmp_path / 'rainy.png')), cv2.imread(str(tmp_path / 'target.png'))
    assert rainy.shape == target.shape == (40, 40, 3) and not np.array_equal(rainy, target)
    with pytest.raises(SystemExit):
        cli.main(['--image', str(source), '--type', 'hail', '--out', str(tmp_path / 'x.png')])
    assert 'hail' in capsys.readouterr().err
    with pytest.raises(ValueError, match='still leave'):
        cli.main(['--input', str(folder), '--out', str(tmp_path / 'set'), '--val', '1', '--test', '1'])
    with pytest.raises(ValueError, match='smaller than --crop 64'):
        cli.main(['--input', str(folder), '--out', str(tmp_path / 'set'), '--val', '0', '--test', '0',
                  '--crop', '64'])
