"""Statistics that characterise rain in a rainy/clean pair, computed the same way on real and synthetic pairs.

Images follow BasicSR: (H, W, 3) float BGR in [0, 1]. Intensities are reported in 1/255 units (what one reads
off an 8-bit image), sizes in pixels, angles in degrees from vertical (positive leans right going down, as in
``rain_streaks.StreakConfig``). ``tools/rain_realism.py`` puts real and synthetic values side by side.

- raindrops: ``align_pair`` (real pairs are shot twice, so the camera moved a little), then ``drop_statistics``:
  the covered fraction, drop sizes (connected components of the difference mask), how much detail survives
  inside drops, and how drops brighten and flatten the scene behind them;
- streaks: ``streak_statistics``: how much of the frame streaks cover, their direction and its spread, width,
  length and brightness;
- night: ``night_statistics``: the streak statistics on the dark part of the scene, sensor noise, lamps.
"""
import cv2
import numpy as np

DIFFERENCE_THRESHOLD = 20 / 255  # a pixel "changed by rain": mean over channels of |rainy - clean| above this
STREAK_THRESHOLD = 12 / 255      # a pixel on a streak: rain lifted its luminance by more than this
DARK_LEVEL = 0.1                 # night: a scene pixel darker than this (luminance) is "dark"
LAMP_LEVEL = 0.95                # night: a lamp core is a blob at least this bright (luminance)
_BGR_TO_Y = np.array([0.114, 0.587, 0.299], np.float32)  # BT.601 weights, BGR order


def luminance(image):
    """BT.601 luma of a BGR image, same range as the image."""
    return np.asarray(image, np.float32) @ _BGR_TO_Y


def psnr(rainy, clean, valid=None):
    """PSNR (dB) of ``rainy`` against ``clean`` (peak 1), over the pixels of ``valid`` when given (nan if none)."""
    if valid is not None and not valid.any():
        return float('nan')
    error = (np.asarray(rainy, np.float64) - np.asarray(clean, np.float64)) ** 2
    mse = error[valid].mean() if valid is not None else error.mean()
    return float(10 * np.log10(1 / max(mse, 1e-12)))


def align_pair(rainy, clean, iterations=200, margin=8):
    """Warp ``clean`` onto ``rainy`` (affine, ECC on blurred luminance): ``(aligned_clean, valid, correlation)``.

    Real raindrop pairs are two shots through a wet and a dry pane; the camera moves by a few pixels between
    them. The clean image is the one warped so that the drops keep their shapes. ``valid`` (H, W) bool excludes
    the border the warp leaves empty, plus ``margin`` pixels.
    """
    height, width = rainy.shape[:2]
    # blur first: ECC then follows the scene, not the drops' fine texture
    moving = cv2.GaussianBlur(luminance(clean), (0, 0), 2.0)
    fixed = cv2.GaussianBlur(luminance(rainy), (0, 0), 2.0)
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-6)
    try:
        correlation, warp = cv2.findTransformECC(fixed, moving, warp, cv2.MOTION_AFFINE, criteria, None, 5)
    except cv2.error as exc:
        raise ValueError(f'cannot align the pair: ECC did not converge ({exc.err})') from exc
    flags = cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP
    aligned = cv2.warpAffine(np.asarray(clean, np.float32), warp, (width, height), flags=flags,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=(-1, -1, -1))
    valid = aligned.min(-1) >= 0
    valid = cv2.erode(valid.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
    return np.clip(aligned, 0, 1), valid, float(correlation)


def _components(mask, min_area):
    """Stats rows (x, y, w, h, area) and the label image of the 8-connected components of at least ``min_area``."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1
    return stats[keep], labels, keep


def coverage_raw(rainy, clean):
    """Fraction of pixels whose mean-over-channels |rainy - clean| exceeds 20/255: the plain, unfiltered measure."""
    return float((np.abs(np.asarray(rainy, np.float32) - clean).mean(-1) > DIFFERENCE_THRESHOLD).mean())


def drop_mask(rainy, clean, valid=None):
    """Pixels covered by drops: mean |rainy - clean| over channels, 3x3 median, above 20/255, then opened.

    The median fills single pixels inside a drop where the scene behind happens to match, without moving a
    drop's edge; the 3x3 opening removes the one-pixel edges that a residual misalignment of a real pair leaves
    along every contour.
    """
    difference = cv2.medianBlur(np.abs(np.asarray(rainy, np.float32) - clean).mean(-1), 3)
    mask = (difference > DIFFERENCE_THRESHOLD).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    return mask & valid if valid is not None else mask


def equivalent_radii(mask, min_area=9):
    """sqrt(area / pi) of each 8-connected component of ``mask`` with at least ``min_area`` pixels."""
    stats, _, _ = _components(mask, min_area)
    return np.sqrt(stats[:, cv2.CC_STAT_AREA] / np.pi)


def _local_std(y, sigma):
    mean = cv2.GaussianBlur(y, (0, 0), sigma)
    return np.sqrt(np.maximum(cv2.GaussianBlur(y * y, (0, 0), sigma) - mean * mean, 0))


def drop_statistics(rainy, clean, valid=None):
    """Raindrop statistics of an (aligned) pair; ``valid`` (H, W) bool limits every measure to those pixels.

    Returns a dict:
        coverage_raw     fraction of all pixels changed by more than 20/255 (``coverage_raw``)
        coverage         fraction of valid pixels in ``drop_mask``
        drops_per_mp     components of the drop mask (at least 9 pixels) per megapixel of valid area
        radius_p50/_p90  their equivalent radii (pixels), median and 90th percentile
        detail_ratio     high-frequency energy inside drops, rainy / clean (Laplacian of luminance, squared):
                         1 = as sharp as the scene, 0 = all detail gone
        brightness       mean luminance change inside drops (1/255; positive = drops brighten the scene)
        contrast_ratio   local contrast inside drops, rainy / clean (std of luminance in a sigma-3 window)
        psnr             input PSNR over the valid pixels (dB)
    """
    rainy = np.asarray(rainy, np.float32)
    clean = np.asarray(clean, np.float32)
    valid = np.ones(rainy.shape[:2], bool) if valid is None else valid
    mask = drop_mask(rainy, clean, valid)
    radii = equivalent_radii(mask)
    y_rainy, y_clean = luminance(rainy), luminance(clean)
    inside = mask if mask.any() else valid
    detail = [np.square(cv2.Laplacian(y, cv2.CV_32F))[inside].sum() for y in (y_rainy, y_clean)]
    contrast = [_local_std(y, 3.0)[inside].mean() for y in (y_rainy, y_clean)]
    megapixels = valid.sum() / 1e6
    return {
        'coverage_raw': coverage_raw(rainy, clean),
        'coverage': float(mask[valid].mean()),
        'drops_per_mp': float(len(radii) / megapixels),
        'radius_p50': float(np.median(radii)) if len(radii) else 0.0,
        'radius_p90': float(np.percentile(radii, 90)) if len(radii) else 0.0,
        'detail_ratio': float(detail[0] / max(detail[1], 1e-12)),
        'brightness': float(255 * (y_rainy - y_clean)[inside].mean()),
        'contrast_ratio': float(contrast[0] / max(contrast[1], 1e-12)),
        'psnr': psnr(rainy, clean, valid),
    }


def segment_shapes(mask, min_area=8, min_elongation=3.0):
    """Line-like components of ``mask``: an (N, 4) array of (angle, length, width, area), one row per segment.

    Each component's pixel coordinates have a covariance with eigenvalues l1 >= l2; a bar of length L and width W
    has l1 = L^2 / 12 and l2 = W^2 / 12, so length = sqrt(12 l1) and width = sqrt(12 l2). Components less
    elongated than ``min_elongation`` (length / width) are blobs or crossings of several streaks and are left out.
    """
    stats, labels, keep = _components(mask, min_area)
    rows = []
    for label, stat in zip(keep, stats):
        x, y, w, h = stat[:4]
        ys, xs = np.nonzero(labels[y:y + h, x:x + w] == label)
        cov = np.cov(np.stack([xs, ys]).astype(np.float64)) + np.eye(2) / 12  # + one pixel's own extent
        l2, l1 = np.linalg.eigvalsh(cov)
        length, width = np.sqrt(12 * l1), np.sqrt(12 * l2)
        if length < min_elongation * width:
            continue
        theta = 0.5 * np.degrees(np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1]))  # major axis, from the x axis
        angle = (90.0 - theta + 90.0) % 180.0 - 90.0  # from vertical; y points down, so this leans right
        rows.append((angle, length, width, float(stat[cv2.CC_STAT_AREA])))
    return np.asarray(rows, np.float64).reshape(-1, 4)


def axial_spread(angles, weights=None):
    """Circular standard deviation (degrees) of axial angles (a and a + 180 are the same line), and their mean."""
    doubled = np.exp(2j * np.radians(np.asarray(angles, np.float64)))
    mean = np.average(doubled, weights=weights)
    spread = np.degrees(np.sqrt(-2 * np.log(min(max(abs(mean), 1e-12), 1.0))) / 2)
    return float(spread), float(np.degrees(np.angle(mean)) / 2)


def streak_statistics(rainy, clean, region=None):
    """Rain-streak statistics of a pixel-aligned pair (streaks only add light); ``region`` limits the pixels.

    Returns a dict:
        coverage        fraction of (region) pixels whose luminance rain lifted by more than 12/255
        intensity       mean lift on those pixels (1/255)
        angle           mean direction of the line-like components (degrees from vertical)
        angle_spread    axial circular standard deviation of their directions (degrees), weighted by area
        width, length   medians over the line-like components (pixels)
        segments        how many line-like components were measured
        psnr            input PSNR (dB)
    """
    rainy = np.asarray(rainy, np.float32)
    clean = np.asarray(clean, np.float32)
    region = np.ones(rainy.shape[:2], bool) if region is None else region
    lift = luminance(rainy) - luminance(clean)
    mask = (lift > STREAK_THRESHOLD) & region
    shapes = segment_shapes(mask)
    spread, angle = axial_spread(shapes[:, 0], shapes[:, 3]) if len(shapes) else (float('nan'), float('nan'))
    return {
        'coverage': float(mask[region].mean()) if region.any() else 0.0,
        'intensity': float(255 * lift[mask].mean()) if mask.any() else 0.0,
        'angle': angle,
        'angle_spread': spread,
        'width': float(np.median(shapes[:, 2])) if len(shapes) else float('nan'),
        'length': float(np.median(shapes[:, 1])) if len(shapes) else float('nan'),
        'segments': int(len(shapes)),
        'psnr': psnr(rainy, clean, region),
    }


def noise_sigma(image, exclude=None):
    """Standard deviation (1/255) of white noise in an image, from its flat parts (Immerkaer's estimator).

    The 3x3 kernel below cancels planes and ramps, so on flat areas its response is the noise alone; edges
    (the strongest third of the gradients) and the ``exclude`` pixels (e.g. rain) are left out.
    """
    y = luminance(image)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = np.abs(cv2.filter2D(y, -1, kernel, borderType=cv2.BORDER_REFLECT))
    gradient = np.hypot(cv2.Sobel(y, cv2.CV_32F, 1, 0), cv2.Sobel(y, cv2.CV_32F, 0, 1))
    flat = gradient <= np.percentile(gradient, 66)
    if exclude is not None:
        flat &= ~exclude
    flat[[0, -1], :] = flat[:, [0, -1]] = False
    if not flat.any():
        return float('nan')
    return float(255 * np.sqrt(np.pi / 2) * response[flat].mean() / 6)


def sky_mask(day, level=0.4, texture=0.03):
    """Sky of a daytime photo: bright, smooth, blue-to-grey pixels connected to the top border (H, W) bool.

    Bright: luminance above ``level`` after a light blur; smooth: local standard deviation (sigma 3) below
    ``texture``; sky-coloured: blue at least as strong as red. Clouds and haze qualify; roofs, trees, walls and
    warm backdrops have texture, are dark or are red.
    """
    smooth = cv2.GaussianBlur(np.asarray(day, np.float32), (0, 0), 1.5)
    y = luminance(smooth)
    candidate = ((y > level) & (_local_std(y, 3.0) < texture) & (smooth[..., 0] >= smooth[..., 2])).astype(np.uint8)
    _, labels = cv2.connectedComponents(candidate, connectivity=4)
    top = np.unique(labels[0][candidate[0] > 0])
    return np.isin(labels, top) if len(top) else np.zeros(y.shape, bool)


def lamp_cores(clean, min_area=4):
    """(N, 2) centres (x, y) of the lamp cores of a night image: blobs of ``min_area`` pixels at LAMP_LEVEL."""
    stats, labels, keep = _components(luminance(clean) >= LAMP_LEVEL, min_area)
    centres = [np.nonzero(labels == label)[::-1] for label in keep]
    return np.asarray([(xs.mean(), ys.mean()) for xs, ys in centres], np.float64).reshape(-1, 2)


def night_statistics(rainy, clean):
    """Night-rain statistics of a pixel-aligned pair (a night scene and the same scene with rain and noise).

    Returns a dict:
        scene_mean      mean luminance of the clean night scene (1/255)
        dark_fraction   fraction of the scene darker than DARK_LEVEL
        coverage, intensity, angle, angle_spread, width, length, segments, psnr: ``streak_statistics``
        dark_coverage, dark_intensity: the same two on the dark pixels only (rain against the dark scene)
        noise           noise standard deviation of the rainy input (1/255), off the streaks
        lamps_per_mp    lamp cores (``lamp_cores``) per megapixel
        lamp_height     median height of the lamp cores, 0 = top, 1 = bottom of the frame (nan: no lamp)
    """
    rainy = np.asarray(rainy, np.float32)
    clean = np.asarray(clean, np.float32)
    y_clean = luminance(clean)
    dark = y_clean < DARK_LEVEL
    streaks = streak_statistics(rainy, clean)
    in_dark = streak_statistics(rainy, clean, dark)
    rain = cv2.dilate(((luminance(rainy) - y_clean) > STREAK_THRESHOLD).astype(np.uint8), np.ones((3, 3), np.uint8))
    lamps = lamp_cores(clean)
    height = rainy.shape[0]
    return {
        'scene_mean': float(255 * y_clean.mean()),
        'dark_fraction': float(dark.mean()),
        **streaks,
        'dark_coverage': in_dark['coverage'],
        'dark_intensity': in_dark['intensity'],
        'noise': noise_sigma(rainy, rain > 0),
        'lamps_per_mp': float(len(lamps) / (rainy.shape[0] * rainy.shape[1] / 1e6)),
        'lamp_height': float(np.median(lamps[:, 1]) / height) if len(lamps) else float('nan'),
    }
