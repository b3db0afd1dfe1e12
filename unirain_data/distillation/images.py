"""Images as the distillation stages see them: decoded once, shrunk to a bounded size, kept as RGB PIL images
(for the captioner, open_clip and the judges) plus a grayscale thumbnail for SSIM.

Shrinking on load bounds the memory of a chunk of candidates whatever the photo sizes; every model shrinks
further anyway (CLIP 224 px, BLIP 384 px, the judges' max_pixels, SSIM ``ssim_size``).
"""
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from unirain_utils.image_io import BadImageError, decode_image, to_bgr


class LoadedImage(NamedTuple):
    rgb: Image.Image  # shrunk so that the longer side is at most max_side
    thumb: np.ndarray  # (ssim_size, ssim_size) uint8 grayscale


def read_bgr(path):
    """HxWx3 float32 BGR in [0, 1] (BasicSR's convention); BadImageError naming the file otherwise."""
    try:
        with open(path, 'rb') as f:
            content = f.read()
    except OSError as exc:
        raise BadImageError(f'{path}: cannot be read ({exc.strerror or exc})') from exc
    return to_bgr(decode_image(content, path).pixels)


def shrink(bgr, max_side):
    height, width = bgr.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return bgr
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)


def ssim_thumbnail(bgr, size):
    """Grayscale (ITU-R BT.601 luma), resized to size x size with area averaging, rounded to uint8."""
    gray = cv2.cvtColor(np.ascontiguousarray(bgr, dtype=np.float32), cv2.COLOR_BGR2GRAY)
    gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)


def to_pil(bgr):
    rgb = np.clip(np.rint(bgr[..., ::-1] * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb))


def load_image(path, max_side, ssim_size):
    bgr = read_bgr(path)
    return LoadedImage(to_pil(shrink(bgr, max_side)), ssim_thumbnail(bgr, ssim_size))


def load_images(paths, max_side, ssim_size, workers, errors='raise'):
    """LoadedImage per path, in order; decoding runs in ``workers`` threads (OpenCV releases the GIL).

    ``errors='return'`` puts the BadImageError of an unreadable file in its place instead of raising it.
    """
    def load(path):
        try:
            return load_image(path, max_side, ssim_size)
        except BadImageError as exc:
            if errors == 'raise':
                raise
            return exc

    if workers <= 1 or len(paths) <= 1:
        return [load(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(load, paths))
