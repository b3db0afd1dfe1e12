"""Raindrops on the lens or a window: many small, defocused, translucent drops that haze and brighten the scene.

Calibrated against real pairs shot through a wet and a dry pane (``tools/rain_realism.py``): drops cover a
quarter to a half of the frame, most of them small; inside a drop part of the scene still shows through,
dimmed and softened, mixed with a blurred, upside-down view refracted by the drop (a drop is a tiny fisheye
lens), and the drop scatters diffuse light towards the camera, so on average it is brighter than the scene
behind it. The camera focuses on the scene, so the whole drop layer is out of focus. Sizes are in pixels
(see rain_streaks.py for why).
"""
from dataclasses import dataclass

import cv2
import numpy as np

from unirain_data.night import smooth_blur

AMBIENT_SIGMA = 40.0  # pixels: the neighbourhood whose light a drop scatters (much wider than a drop)


@dataclass(frozen=True)
class DropConfig:
    """Ranges ``(low, high)`` one rain scene's raindrop parameters are drawn from."""
    coverage: tuple = (0.5, 0.9)        # summed area of the drops over the image area (overlaps make it less)
    radius: tuple = (2.0, 16.0)         # drop radii; drawn log-uniform so small drops far outnumber large ones
    aspect: tuple = (0.6, 1.0)          # minor / major axis of a drop
    irregularity: tuple = (0.03, 0.2)   # amplitude of the boundary wobble, fraction of the radius
    opacity: tuple = (0.2, 0.6)         # per drop: how much of the scene behind it is replaced (1 - transmission)
    zoom: tuple = (1.5, 3.0)            # how much wider than itself the field a drop refracts is
    content_blur: tuple = (2.0, 4.5)    # blur of the scene refracted through a drop, pixels
    defocus: tuple = (0.5, 1.5)         # Gaussian sigma of the drop layer (edges, refraction, haze), pixels
    haze: tuple = (0.25, 0.6)           # per drop: diffuse light it scatters towards the camera (a veil)
    rim: tuple = (0.05, 0.3)            # darkening at the rim (light leaving the drop at grazing angles)
    highlight: tuple = (0.0, 0.35)      # specular highlight of the sky / lights on the drop
    max_drops: int = 50000              # cap on the drops of one image (a 12 MP photo takes ~30,000)


def _drop_radii(height, width, cfg, rng):
    """Log-uniform radii until the summed area reaches the drawn coverage (at least one drop)."""
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
    """Drop geometry for an image: where each pixel samples the scene, drop opacity, rim shading, scattered light.

    Returns ``(map_x, map_y, mask, shade, highlight)``, each (H, W) float32: ``map_x``/``map_y`` where the drop
    over a pixel looks (inverted and widened around the drop's centre), ``mask`` the drop's opacity (0 outside
    drops, the drop's ``opacity`` inside: the rest of the scene behind shows through), ``shade`` the rim
    darkening (1 outside drops), ``highlight`` the light the drop scatters towards the camera (diffuse haze
    plus a specular spot; 0 outside). Where drops overlap the thicker one wins, as the nearer water would.
    """
    cfg = config
    map_x, map_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    thickness = np.zeros((height, width), np.float32)
    mask = np.zeros((height, width), np.float32)
    shade = np.ones((height, width), np.float32)
    highlight = np.zeros((height, width), np.float32)
    zoom = rng.uniform(*cfg.zoom)
    rim = rng.uniform(*cfg.rim)
    shine = rng.uniform(*cfg.highlight)
    radii = np.asarray(_drop_radii(height, width, cfg, rng), np.float32)
    count = len(radii)
    # every drop's parameters in one draw per kind: a Python loop over thousands of drops must stay lean
    centres = rng.uniform((0, 0), (width, height), (count, 2)).astype(np.float32)
    aspects = rng.uniform(*cfg.aspect, count)
    tilts = rng.uniform(0, np.pi, count)
    harmonics = np.arange(2, 5, dtype=np.float32)[:, None, None]
    wobbles = (rng.uniform(*cfg.irregularity, (count, 1)) * rng.uniform(-1, 1, (count, 3))
               / np.sqrt(harmonics[:, 0, 0])).astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, (count, 3)).astype(np.float32)
    opacities = rng.uniform(*cfg.opacity, count).astype(np.float32)
    hazes = rng.uniform(*cfg.haze, count).astype(np.float32)
    for radius, (cx, cy), aspect, tilt, wobble, phase, opacity, haze in zip(
            radii, centres, aspects, tilts, wobbles, phases, opacities, hazes):
        reach = radius * (1 + np.abs(wobble).sum())
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, width)
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, height)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        cos, sin = np.float32(np.cos(tilt)), np.float32(np.sin(tilt))
        u = dx * cos + dy * sin
        v = (dy * cos - dx * sin) / np.float32(aspect)
        phi = np.arctan2(v, u)
        boundary = radius * (1 + (wobble[:, None, None] * np.cos(harmonics * phi + phase[:, None, None])).sum(0))
        rho = np.sqrt(u * u + v * v) / boundary
        cap = np.sqrt(np.clip(1 - rho * rho, 0, 1)) * radius  # a spherical cap's thickness
        win = (rho < 1) & (cap > thickness[y0:y1, x0:x1])
        if not win.any():
            continue
        # inverted and squeezed towards the rim, like a fisheye: the offset grows faster than linearly
        spread = zoom * (1 + 0.8 * rho * rho)
        # diffuse haze over the whole drop, strongest where the water is thickest; a specular spot up top
        spot = ((dx + 0.25 * radius) ** 2 + (dy + 0.45 * radius) ** 2) / (0.22 * radius) ** 2
        scattered = np.clip(haze * (0.6 + 0.4 * cap / radius) + shine * np.exp(-spot), 0, 1)
        for target, value in ((map_x, cx - dx * spread), (map_y, cy - dy * spread), (thickness, cap),
                              (mask, opacity), (shade, 1 - rim * rho ** 4), (highlight, scattered)):
            np.copyto(target[y0:y1, x0:x1], value, where=win, casting='unsafe')
    return map_x, map_y, mask, shade, highlight


def ambient_light(image):
    """The diffuse light around each pixel that a drop there scatters: the image blurred over AMBIENT_SIGMA pixels,
    lifted towards the brightest part of the image (drops catch the sky, not only what lies right behind them)."""
    local = smooth_blur(image, AMBIENT_SIGMA)
    bright = np.percentile(local.reshape(-1, 3), 90, axis=0).astype(np.float32)
    return np.maximum(local, bright)


def composite_drops(image, config, rng, light=None):
    """Raindrops on the lens over ``image`` (H, W, 3) in [0, 1].

    ``light`` (H, W, 3) in [0, 1] is the light the drops scatter (at night: bright only near lamps); in daylight
    (None) it is ``ambient_light(image)``.
    """
    height, width = image.shape[:2]
    map_x, map_y, mask, shade, highlight = render_drops(height, width, config, rng)
    defocus = rng.uniform(*config.defocus)
    seen = cv2.GaussianBlur(image, (0, 0), rng.uniform(*config.content_blur))
    refracted = cv2.remap(seen, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    light = ambient_light(image) if light is None else light
    # the lens-side water is out of focus: its edges, what it refracts and the light it scatters are blurred;
    # the part of the scene a drop lets through stays as sharp as the scene
    opacity = cv2.GaussianBlur(mask, (0, 0), defocus)[..., None]
    scattered = cv2.GaussianBlur(highlight, (0, 0), defocus)[..., None]
    content = cv2.GaussianBlur(np.where(mask[..., None] > 0, refracted * shade[..., None], image), (0, 0), defocus)
    through = image * (1 - opacity) + content * opacity
    return np.clip(1 - (1 - through) * (1 - scattered * light), 0.0, 1.0).astype(np.float32)
