"""Night rendering of a daytime photo: low light, street lights with a colour cast, glow, and sensor noise.

The scene is relit in linear light: a dim ambient (sky glow / moonlight) plus pools of light from a few
street lamps, some visible as small saturated cores that bloom. A lamp stands on the scene: one drawn over the
sky of the day photo moves down to the skyline, so none floats in the sky. Noise is a separate step because it
is a degradation of the rainy input, not part of the clean night target. Sizes are in pixels (see
rain_streaks.py). Calibrated against real night rain with tools/rain_realism.py (docs/realism.md).
"""
from dataclasses import dataclass

import cv2
import numpy as np

from unirain_data.rain_statistics import sky_mask

DISPLAY_GAMMA = 2.2
# BGR colours of the light sources a night scene mixes
LAMP_COLOURS = {
    'sodium': (0.25, 0.62, 1.0),
    'warm': (0.62, 0.85, 1.0),
    'cool': (1.0, 0.92, 0.78),
}
# (ambient colour, lamp colours to draw from) per colour cast
CASTS = {
    'sodium': ((0.45, 0.7, 1.0), ('sodium', 'sodium', 'warm')),
    'blue': ((1.0, 0.72, 0.45), ('cool', 'warm')),
    'mixed': ((1.0, 0.75, 0.5), ('sodium', 'warm')),
}


@dataclass(frozen=True)
class NightConfig:
    """Ranges ``(low, high)`` one night scene's parameters are drawn from."""
    ambient: tuple = (0.004, 0.015)      # sky glow / moonlight illuminance, linear (1 = daylight)
    lights_per_area: tuple = (1.5, 4.0)  # street lights per 256 x 256 pixels in and around the frame (>= 1)
    light_reach: tuple = (30.0, 110.0)   # Gaussian sigma of a lamp's pool of light, pixels
    light_strength: tuple = (0.2, 0.7)   # peak illuminance of a pool, linear
    max_mean_light: float = 0.025        # lamps are dimmed together so their mean illuminance stays below this
    rain_scatter: tuple = (1.0, 2.0)     # how much brighter falling rain is than a white wall under the same lamp
    rain_ambient: tuple = (0.2, 0.5)     # how much of the diffuse ambient light falling rain returns (wall = 1)
    lamp_radius: tuple = (1.5, 4.5)      # radius of a lamp seen in the image, pixels
    casts: tuple = ('sodium', 'blue', 'mixed')  # colour casts to choose from (keys of CASTS)
    tone: tuple = (1.1, 1.4)             # extra power of the tone curve; above 1 crushes the shadows
    glow_threshold: tuple = (0.3, 0.6)   # linear level above which light blooms
    glow_sigma: tuple = (8.0, 24.0)      # size of the glow around lights, pixels (a wider halo is 3x this)
    glow_strength: tuple = (0.4, 1.0)    # glow brightness
    shot_noise: tuple = (0.0, 0.0001)    # Poisson part: noise variance per unit of linear signal
    read_noise: tuple = (0.0, 0.0001)    # Gaussian part: noise standard deviation, linear


@dataclass
class NightScene:
    """A rendered night scene: ``image`` (H, W, 3) display values in [0, 1], ``light`` (H, W, 3) in [0, 1] the
    colour and strength of the light at each pixel (what lights falling rain), ``exponent`` the display encoding
    (display = linear ** exponent)."""
    image: np.ndarray
    light: np.ndarray
    exponent: float


def _gaussian_pool(height, width, cx, cy, sigma):
    gx = np.exp(-(np.arange(width, dtype=np.float32) - cx) ** 2 / (2 * sigma ** 2))
    gy = np.exp(-(np.arange(height, dtype=np.float32) - cy) ** 2 / (2 * sigma ** 2))
    return np.outer(gy, gx)


def _add_core(emitted, cx, cy, radius, colour):
    """Add a lamp's saturated core (a Gaussian of sigma ``radius`` at 1.6x, clipped to 1, times ``colour``) in
    place; only the window where it is visible is computed, so many lamps on a large photo stay cheap."""
    height, width = emitted.shape[:2]
    reach = int(np.ceil(4 * radius))
    x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, width)
    y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, height)
    if x0 >= x1 or y0 >= y1:
        return
    gx = np.exp(-(np.arange(x0, x1, dtype=np.float32) - cx) ** 2 / (2 * radius ** 2))
    gy = np.exp(-(np.arange(y0, y1, dtype=np.float32) - cy) ** 2 / (2 * radius ** 2))
    emitted[y0:y1, x0:x1] += np.clip(np.outer(gy, gx) * 1.6, 0, 1)[..., None] * colour


def smooth_blur(image, sigma):
    """Gaussian blur for large sigmas: a glow is smooth, so blurring a downscaled copy looks the same, faster."""
    factor = max(1, min(int(sigma // 4), min(image.shape[:2]) // 8))
    if factor == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma)
    small = cv2.resize(image, (image.shape[1] // factor, image.shape[0] // factor), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    return cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def _below_the_sky(lx, ly, radius, sky):
    """The height of a lamp whose core (``radius``) would show over the sky: moved down its column until the
    whole core sits on the scene, or out of the frame where the column is all sky. Other lamps stay."""
    height, width = sky.shape
    seen = 4 * radius  # _add_core draws this far
    if not (-seen <= lx < width + seen and -seen <= ly < height + seen):
        return ly
    column, row = int(np.clip(lx, 0, width - 1)), int(np.clip(ly, 0, height - 1))
    if not sky[row, column]:
        return ly
    rows = np.flatnonzero(~sky[row:, column])
    return float(row + rows[0] + radius) if len(rows) else float(height + seen)


def render_night(clean, config, rng):
    """Relight ``clean`` (H, W, 3) BGR in [0, 1] as a night scene drawn from ``config``."""
    cfg = config
    height, width = clean.shape[:2]
    sky = sky_mask(clean)
    ambient_colour, lamp_choices = CASTS[cfg.casts[int(rng.integers(len(cfg.casts)))]]
    lamps = np.zeros((height, width, 3), np.float32)
    emitted = np.zeros_like(lamps)
    # lamps stand anywhere within their reach of the frame, so a small crop rarely has one inside it
    margin = cfg.light_reach[1]
    area = (height + 2 * margin) * (width + 2 * margin)
    for _ in range(max(1, rng.poisson(rng.uniform(*cfg.lights_per_area) * area / 256 ** 2))):
        colour = np.asarray(LAMP_COLOURS[lamp_choices[int(rng.integers(len(lamp_choices)))]], np.float32)
        lx, ly = rng.uniform(-margin, width + margin), rng.uniform(-margin, height + margin)
        reach, strength, radius = (rng.uniform(*cfg.light_reach), rng.uniform(*cfg.light_strength),
                                   rng.uniform(*cfg.lamp_radius))
        ly = _below_the_sky(lx, ly, radius, sky)
        pool = _gaussian_pool(height, width, lx, ly + 0.5 * reach, reach)  # lamps hang above what they light
        lamps += strength * pool[..., None] * colour
        _add_core(emitted, lx, ly, radius, 6.0 * colour)
    # many lamps would light the scene like day, so they are dimmed together
    lamps = lamps * min(1.0, cfg.max_mean_light / max(float(lamps.mean()), 1e-6))
    ambient = rng.uniform(*cfg.ambient) * np.asarray(ambient_colour, np.float32)
    illuminance = lamps + ambient
    linear = clean.astype(np.float32) ** DISPLAY_GAMMA * illuminance + emitted
    bright = np.maximum(linear - rng.uniform(*cfg.glow_threshold), 0)
    sigma = rng.uniform(*cfg.glow_sigma)
    glow = smooth_blur(bright, sigma) + 0.5 * smooth_blur(bright, 3 * sigma)
    linear = linear + rng.uniform(*cfg.glow_strength) * glow
    exponent = rng.uniform(*cfg.tone) / DISPLAY_GAMMA
    image = np.clip(linear, 0, 1) ** exponent
    # falling drops scatter the direct light of lamps and glows forwards; of the diffuse sky light they return
    # less than a wall would (they are clear): in the dark, streaks are faint
    scatter = rng.uniform(*cfg.rain_scatter) * (lamps + glow) + rng.uniform(*cfg.rain_ambient) * ambient
    light = np.clip(scatter, 0, 1) ** exponent
    return NightScene(image.astype(np.float32), light.astype(np.float32), float(exponent))


def add_sensor_noise(image, exponent, config, rng):
    """Poisson-Gaussian sensor noise added in linear light to a display image encoded with ``exponent``."""
    linear = np.clip(image, 0, 1) ** (1 / exponent)
    variance = rng.uniform(*config.shot_noise) * linear + rng.uniform(*config.read_noise) ** 2
    noisy = linear + np.sqrt(variance) * rng.standard_normal(image.shape, dtype=np.float32)
    return (np.clip(noisy, 0, 1) ** exponent).astype(np.float32)
