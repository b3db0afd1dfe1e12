"""Decoding image bytes (from disk or LMDB) into BasicSR's HxWx3 float32 BGR [0, 1] arrays, or a clear error.

Decoding is always ``cv2.IMREAD_UNCHANGED`` followed by our own normalisation, the same for both backends,
so that an LMDB (which stores lossless PNG re-encodings of the decoded pixels) yields identical arrays:

- empty bytes, or bytes OpenCV cannot decode (corrupt, truncated): BadImageError naming the image;
- 8-bit images are divided by 255, 16-bit ones by 65535; any other pixel type is refused;
- an alpha channel is dropped (the colour channels are used as stored, as ``cv2.IMREAD_COLOR`` would);
- grayscale stays 1-channel here; ``match_pair`` / ``to_bgr`` expand it to 3 channels.
"""
from typing import NamedTuple

import cv2
import numpy as np

_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class BadImageError(ValueError):
    """An image that cannot be used; the message names it."""


class Decoded(NamedTuple):
    pixels: np.ndarray  # HxWxC float32 in [0, 1], C = 1 (grayscale) or 3 (BGR)
    alpha_dropped: bool


def decode_image(content, name) -> Decoded:
    """Bytes of one image file -> Decoded; ``name`` (path or LMDB key) goes into every error message."""
    if content is None:
        raise BadImageError(f'{name}: no data')
    if len(content) == 0:
        raise BadImageError(f'{name}: empty file (0 bytes)')
    try:
        img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise BadImageError(f'{name}: cannot be decoded ({exc})') from exc
    if img is None:
        raise BadImageError(f'{name}: not a decodable image, corrupt or truncated ({len(content)} bytes)')
    scale = _SCALES.get(img.dtype)
    if scale is None:
        raise BadImageError(f'{name}: unsupported pixel type {img.dtype}; expected 8-bit or 16-bit integers')
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[2]
    if channels not in (1, 3, 4):
        raise BadImageError(f'{name}: unsupported channel count {channels}; expected 1 (gray), 3 or 4 (with alpha)')
    alpha_dropped = channels == 4
    if alpha_dropped:
        img = img[..., :3]
    return Decoded(np.ascontiguousarray(img, dtype=np.float32) / np.float32(scale), alpha_dropped)


def is_grayscale(pixels):
    """1-channel, or 3 equal channels (a grayscale picture saved as colour)."""
    return pixels.shape[2] == 1 or (np.array_equal(pixels[..., 0], pixels[..., 1])
                                    and np.array_equal(pixels[..., 0], pixels[..., 2]))


def to_bgr(pixels):
    """HxWx1 -> HxWx3 (channels repeated); HxWx3 unchanged."""
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def match_pair(lq, gt, lq_name, gt_name):
    """A rainy/clean pair as two HxWx3 arrays of one size; a mismatch raises BadImageError naming both images.

    A grayscale image is expanded to 3 channels; pairing a grayscale image with a truly coloured one is refused
    (the network would learn to add or remove colour, not rain).
    """
    if lq.shape[:2] != gt.shape[:2]:
        raise BadImageError(f'rainy and clean images differ in size: {lq_name} is {lq.shape[1]}x{lq.shape[0]}, '
                            f'{gt_name} is {gt.shape[1]}x{gt.shape[0]} (width x height)')
    if lq.shape[2] != gt.shape[2]:
        colour, colour_name = (lq, lq_name) if lq.shape[2] == 3 else (gt, gt_name)
        if not is_grayscale(colour):
            gray_name = gt_name if colour is lq else lq_name
            raise BadImageError(f'{gray_name} is grayscale but {colour_name} is in colour; a pair must share '
                                'one colour mode')
    return to_bgr(lq), to_bgr(gt)
