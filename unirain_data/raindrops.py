"""Raindrops on the lens: irregular drops that refract an inverted, wide view of the scene, out of focus.

A drop on the lens is a tiny fisheye lens: it shows the scene around it upside down and squeezed towards its
rim. The camera focuses on the scene, so the drops are defocused: soft edges and blurry content. Sizes are in
pixels (see rain_streaks.py for why).
"""
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DropConfig:
    """Ranges ``(low, high)`` one rain scene's raindrop parameters are drawn from."""
    coverage: tuple = (0.10, 0.30)      # fraction of the image area the drops cover
    radius: tuple = (5.0, 36.0)         # drop radii; drawn log-uniform so small drops outnumber large ones
    aspect: tuple = (0.65, 1.0)         # minor / major axis of a drop
    irregularity: tuple = (0.03, 0.15)  # amplitude of the boundary wobble, fraction of the radius
    zoom: tuple = (1.5, 3.0)            # how much wider than itself the field a drop shows is
    defocus: tuple = (1.0, 2.5)         # Gaussian sigma of the drop layer (edges and content), pixels
    content_blur: tuple = (1.0, 2.5)    # extra blur of the scene seen through a drop, pixels
    rim: tuple = (0.15, 0.45)           # darkening at the rim (light leaving the drop at grazing angles)
    highlight: tuple = (0.15, 0.45)     # specular highlight of the sky / lights on the drop
    max_drops: int = 400                # cap on the number of drops in one image


def _drop_radii(height, width, cfg, rng):
    """Log-uniform radii until the covered area reaches the drawn coverage (at least one drop)."""
    low, high = cfg.radius
    high = min(high, 0.3 * min(height, width))
    low = min(low, high)
    target = rng.uniform(*cfg.coverage) * height * width
    radii, area = [], 0.0
    while (area < target or not radii) and len(radii) < cfg.max_drops:
        radius = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        radii.append(radius)
        area += np.pi * radius ** 2 * rng.uniform(*cfg.aspect)
    return sorted(radii)


def render_drops(height, width, config, rng):
    """Drop geometry for an image: where each pixel samples the scene, the drop mask, rim shading, highlights.

    Returns ``(map_x, map_y, mask, shade, highlight)``; outside drops the maps are the identity, ``mask`` 0,
    ``shade`` 1 and ``highlight`` 0. Where drops overlap the thicker one wins, as the nearer water surface would.
    """
    cfg = config
    map_x, map_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    thickness = np.zeros((height, width), np.float32)
    shade = np.ones((height, width), np.float32)
    highlight = np.zeros((height, width), np.float32)
    zoom = rng.uniform(*cfg.zoom)
    rim = rng.uniform(*cfg.rim)
    shine = rng.uniform(*cfg.highlight)
    harmonics = np.arange(2, 5)
    for radius in _drop_radii(height, width, cfg, rng):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        aspect = rng.uniform(*cfg.aspect)
        tilt = rng.uniform(0, np.pi)
        wobble = rng.uniform(*cfg.irregularity) * rng.uniform(-1, 1, 3) / np.sqrt(harmonics)
        phases = rng.uniform(0, 2 * np.pi, 3)
        reach = radius * (1 + np.abs(wobble).sum())
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, width)
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, height)
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = np.meshgrid(np.arange(x0, x1, dtype=np.float32) - cx, np.arange(y0, y1, dtype=np.float32) - cy)
        u = dx * np.cos(tilt) + dy * np.sin(tilt)
        v = (dy * np.cos(tilt) - dx * np.sin(tilt)) / aspect
        phi = np.arctan2(v, u)
        boundary = radius * (1 + (wobble[:, None, None] * np.cos(
            harmonics[:, None, None] * phi + phases[:, None, None])).sum(0))
        rho = np.sqrt(u ** 2 + v ** 2) / boundary
        cap = np.sqrt(np.clip(1 - rho ** 2, 0, 1)) * radius  # a spherical cap's thickness
        win = (rho < 1) & (cap > thickness[y0:y1, x0:x1])
        if not win.any():
            continue
        # inverted and squeezed towards the rim, like a fisheye: the offset grows faster than linearly
        spread = zoom * (1 + 0.8 * rho ** 2)
        map_x[y0:y1, x0:x1][win] = (cx - dx * spread)[win]
        map_y[y0:y1, x0:x1][win] = (cy - dy * spread)[win]
        thickness[y0:y1, x0:x1][win] = cap[win]
        shade[y0:y1, x0:x1][win] = (1 - rim * rho ** 4)[win]
        # light from above: the highlight sits in the upper part of the drop
        spot = ((dx + 0.25 * radius) ** 2 + (dy + 0.45 * radius) ** 2) / (0.22 * radius) ** 2
        highlight[y0:y1, x0:x1][win] = (shine * np.exp(-spot))[win]
    return map_x, map_y, (thickness > 0).astype(np.float32), shade, highlight


def composite_drops(image, config, rng, light=None):
    """Raindrops on the lens over ``image`` (H, W, 3) in [0, 1].

    ``light`` (H, W, 3) in [0, 1] scales the highlights (1 in daylight; at night only drops near lamps shine).
    """
    height, width = image.shape[:2]
    map_x, map_y, mask, shade, highlight = render_drops(height, width, config, rng)
    defocus = rng.uniform(*config.defocus)
    seen = cv2.GaussianBlur(image, (0, 0), rng.uniform(*config.content_blur))
    refracted = cv2.remap(seen, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    light = np.ones_like(image) if light is None else light
    drops = refracted * shade[..., None]
    drops = 1 - (1 - drops) * (1 - highlight[..., None] * light)
    layer = np.where(mask[..., None] > 0, drops, image)
    # the lens-side water is out of focus: blur the drop layer and its opacity alike
    layer = cv2.GaussianBlur(layer, (0, 0), defocus)
    alpha = cv2.GaussianBlur(mask, (0, 0), defocus)[..., None]
    return np.clip(image * (1 - alpha) + layer * alpha, 0.0, 1.0).astype(np.float32)
