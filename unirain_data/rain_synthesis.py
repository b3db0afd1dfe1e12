"""Rain synthesis for the four UniRain rain types from a clean image, deterministic for a seed.

    DRS  daytime rain streaks   streaks (rain_streaks.py) on the clean photo
    DRD  daytime raindrops      drops on the lens (raindrops.py) over the clean photo
    NRS  nighttime rain streaks the photo relit as night (night.py), streaks lit by the lamps, sensor noise
    NRD  nighttime raindrops    the photo relit as night, drops on the lens, sensor noise

For the night types the clean target is the night scene WITHOUT rain and without noise: deraining removes rain
and noise, it does not turn night into day. Images follow BasicSR: (H, W, 3) float32 BGR in [0, 1].

Streak lengths, drop radii, lamp reach and glow are in pixels, not fractions of the image: synthesising on a
128 px training crop gives the rain a full image would get there, so crop first, then synthesise.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from unirain_data.night import NightConfig, add_sensor_noise, render_night
from unirain_data.rain_streaks import StreakConfig, composite_streaks, render_streaks
from unirain_utils.rain_types import type_id, type_name
from unirain_data.raindrops import DropConfig, composite_drops

MIN_SIZE = 16


@dataclass(frozen=True)
class RainTypeConfig:
    """What one rain type is made of; a part left None is not applied."""
    streaks: Optional[StreakConfig] = None
    drops: Optional[DropConfig] = None
    night: Optional[NightConfig] = None


DEFAULT_CONFIGS = {
    'DRS': RainTypeConfig(streaks=StreakConfig()),
    'DRD': RainTypeConfig(drops=DropConfig()),
    # streaks lit by lamps stand out more than daylight ones, so they are fainter in themselves; sparser and wider,
    # as in real night rain (tools/rain_realism.py)
    'NRS': RainTypeConfig(streaks=StreakConfig(density=(0.00015, 0.0012), width=(2.0, 3.2), intensity=(0.45, 0.85)),
                          night=NightConfig()),
    # drops on a dark scene show little but their highlights and the lamps they refract and scatter
    'NRD': RainTypeConfig(drops=DropConfig(highlight=(0.2, 0.6)), night=NightConfig()),
}


def _generator(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer, np.random.SeedSequence)) and not isinstance(seed, bool):
        return np.random.default_rng(seed)
    raise TypeError(f'seed must be an int or a numpy Generator, got {type(seed).__name__} {seed!r}')


def _check_image(clean):
    if not isinstance(clean, np.ndarray) or clean.ndim != 3 or clean.shape[2] != 3:
        shape = getattr(clean, 'shape', None)
        raise ValueError(f'clean must be an (H, W, 3) numpy array, got {type(clean).__name__} of shape {shape}')
    if not np.issubdtype(clean.dtype, np.floating):
        raise ValueError(f'clean must be a float image in [0, 1] (BasicSR convention), got dtype {clean.dtype}')
    if min(clean.shape[:2]) < MIN_SIZE:
        raise ValueError(f'clean must be at least {MIN_SIZE} x {MIN_SIZE} pixels, got {clean.shape[:2]}')
    # resizing with cubic interpolation overshoots [0, 1] slightly; that is not an error
    return np.clip(clean, 0, 1).astype(np.float32)


def synthesize_pair(clean, rain_type, seed, config: Optional[RainTypeConfig] = None):
    """A training pair ``(rainy, target)`` of ``rain_type`` made from the clean image ``clean``.

    Args:
        clean: (H, W, 3) float BGR image in [0, 1], H and W at least 16.
        rain_type: 'DRS' | 'DRD' | 'NRS' | 'NRD' (any case); anything else raises ValueError naming it.
        seed: int or numpy Generator. The same int gives the same pair; a Generator is advanced.
        config: the parts and parameter ranges of the type; DEFAULT_CONFIGS[rain_type] when None.

    Returns:
        (rainy, target), both (H, W, 3) float32 in [0, 1]; ``clean`` is not modified. For DRS/DRD the target
        equals ``clean`` (as float32, clipped to [0, 1]). For NRS/NRD it is the night rendering of the scene
        (low light, colour cast, lamps and their glow) without rain and without sensor noise; the rainy image
        is that same night scene (the same darkening) with rain and sensor noise added.
    """
    name = type_name(type_id(rain_type))
    cfg = DEFAULT_CONFIGS[name] if config is None else config
    image = _check_image(clean)
    rng = _generator(seed)
    height, width = image.shape[:2]
    night = render_night(image, cfg.night, rng) if cfg.night is not None else None
    target = night.image if night is not None else image
    light = night.light if night is not None else None
    rainy = target
    if cfg.streaks is not None:
        opacity, haze = render_streaks(height, width, cfg.streaks, rng)
        rainy = composite_streaks(rainy, opacity, haze, light)
    if cfg.drops is not None:
        rainy = composite_drops(rainy, cfg.drops, rng, light)
    if night is not None:
        rainy = add_sensor_noise(rainy, night.exponent, cfg.night, rng)
    return rainy.astype(np.float32), target.astype(np.float32)


def synthesize(clean, rain_type, seed, config: Optional[RainTypeConfig] = None):
    """The rainy image of ``synthesize_pair(clean, rain_type, seed, config)`` (see there)."""
    return synthesize_pair(clean, rain_type, seed, config)[0]
