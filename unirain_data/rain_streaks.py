"""Rain streaks: depth layers of motion-blurred sparse noise, screen-blended onto an image.

Every length and width is in pixels, not a fraction of the image, so a 128 px training crop and a full test
image see streaks of the same pixel size (the restoration network works at pixel scale).
"""
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class StreakConfig:
    """Ranges ``(low, high)`` one rain scene's streak parameters are drawn from."""
    layers: tuple = (2, 4)            # depth layers: far ones short, thin, dim and dense; near ones long and bright
    density: tuple = (0.0006, 0.004)  # fraction of pixels that start a streak, in the farthest layer
    length: tuple = (14.0, 45.0)      # streak length of the nearest layer
    angle: tuple = (-25.0, 25.0)      # fall direction, degrees from vertical (positive leans right going down)
    angle_jitter: float = 1.0         # standard deviation (degrees) of each layer's angle around the global one
    width: tuple = (0.8, 1.8)         # streak width of the nearest layer
    blur: tuple = (0.3, 1.0)          # Gaussian sigma of the nearest layer (drops near the lens are defocused)
    intensity: tuple = (0.5, 0.9)     # peak opacity of the nearest layer
    haze: tuple = (0.0, 0.08)         # veil of unresolved far rain, opacity


def line_kernel(length, angle, width):
    """A streak of peak 1: a line of ``length`` and ``width`` pixels, ``angle`` degrees from vertical.

    The profile along the line falls off towards both ends as a falling drop's trail does; across it is
    Gaussian, which anti-aliases thin lines and widens thick ones without a separate dilation.
    """
    sigma = max(float(width), 0.5) * 0.45
    half = int(np.ceil(length / 2 + 2.5 * sigma)) + 1
    ys, xs = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    rad = np.deg2rad(angle)
    along = xs * np.sin(rad) + ys * np.cos(rad)
    across = xs * np.cos(rad) - ys * np.sin(rad)
    taper = np.clip(1.0 - (2.0 * along / length) ** 2, 0.0, 1.0)
    return (np.sqrt(taper) * np.exp(-across ** 2 / (2 * sigma ** 2))).astype(np.float32)


def streak_layer(height, width, rng, density, length, angle, streak_width, blur, intensity):
    """One depth layer as an opacity map (H, W) in [0, 1]; streaks may enter from beyond the borders."""
    kernel = line_kernel(length, angle, streak_width)
    pad = kernel.shape[0] // 2
    h, w = height + 2 * pad, width + 2 * pad
    count = rng.binomial(h * w, min(max(density, 0.0), 1.0))
    seeds = np.zeros(h * w, np.float32)
    # drops differ in size and distance, so each streak gets its own brightness
    seeds[rng.integers(0, h * w, count)] = rng.uniform(0.35, 1.0, count).astype(np.float32)
    layer = cv2.filter2D(seeds.reshape(h, w), -1, kernel, borderType=cv2.BORDER_CONSTANT)
    if blur > 0:
        layer = cv2.GaussianBlur(layer, (0, 0), blur)
    return np.clip(layer[pad:pad + height, pad:pad + width] * intensity, 0.0, 1.0)


def render_streaks(height, width, config, rng):
    """Opacity map (H, W) in [0, 1] of all layers, and the haze opacity, drawn from ``config``."""
    cfg = config
    layers = int(rng.integers(cfg.layers[0], cfg.layers[1] + 1))
    density = rng.uniform(*cfg.density)
    length = rng.uniform(*cfg.length)
    angle = rng.uniform(*cfg.angle)
    streak_width = rng.uniform(*cfg.width)
    blur = rng.uniform(*cfg.blur)
    intensity = rng.uniform(*cfg.intensity)
    haze = rng.uniform(*cfg.haze)
    transmitted = np.ones((height, width), np.float32)
    for i in range(layers):
        near = (i + 1) / layers  # 1 for the layer closest to the camera
        layer = streak_layer(
            height, width, rng,
            density=density * (1.6 - near),
            length=length * (0.35 + 0.65 * near),
            angle=angle + rng.normal(0.0, cfg.angle_jitter),
            streak_width=streak_width * (0.45 + 0.55 * near),
            blur=blur * (0.4 + 0.6 * near),
            intensity=intensity * (0.4 + 0.6 * near))
        transmitted *= 1.0 - layer  # screen blend of the layers
    return 1.0 - transmitted, haze


def composite_streaks(image, opacity, haze=0.0, light=None):
    """Screen-blend streaks onto ``image`` (H, W, 3) in [0, 1].

    ``light`` (H, W, 3) in [0, 1] is the colour and strength of the light falling on the rain (1 in daylight);
    at night it makes streaks bright near lamps and nearly invisible in the dark, as real night rain looks.
    """
    light = np.ones_like(image) if light is None else light
    rain = opacity[..., None] * light
    out = 1.0 - (1.0 - image) * (1.0 - rain)
    if haze > 0:
        out = out * (1.0 - haze) + haze * np.maximum(out, 0.85 * light)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
