"""The one image reader and writer of unirain: datasets, LMDB, distillation, tools and derain all use it.

Images follow BasicSR: numpy HxWx3 float32 BGR in [0, 1]. Rules, in one place:

- bytes OpenCV cannot decode (empty, corrupt, truncated): BadImageError naming the file or LMDB key;
- 8-bit images are divided by 255, 16-bit ones by 65535; any other pixel type is refused;
- training data (``decode_image``) drops an alpha channel and keeps grayscale 1-channel until ``match_pair``;
- photos (``read_image``) are turned as their EXIF orientation says, keep their alpha channel and bit depth in
  an ``ImageMeta`` so that ``write_image`` saves the result in the input's format;
- a truncated JPEG is refused (OpenCV would decode it with a grey bottom and only a warning);
- an image whose header declares more than ``max_pixels`` pixels (default DEFAULT_MAX_PIXELS) is refused with
  ImageTooLargeError before anything is decoded: a small compressed file can expand to gigabytes.
"""
import contextlib
import io
import os
import threading
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from unirain_utils.files import atomic_write

IMAGE_EXTENSIONS = ('.bmp', '.jpeg', '.jpg', '.png', '.tif', '.tiff', '.webp')
_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_EXIF_ORIENTATION = 0x0112
# 100 megapixels: a 10000x10000 photo; tiled derain holds about 30 bytes per pixel of it (3 GB)
DEFAULT_MAX_PIXELS = 100_000_000
_PIL_LIMIT_LOCK = threading.Lock()


class BadImageError(ValueError):
    """An image that cannot be used; the message names it."""


class ImageTooLargeError(BadImageError):
    """An image with more pixels than the caller's limit, refused from its header before decoding."""


def is_image_file(name):
    """True for a file name with one of the IMAGE_EXTENSIONS (any case)."""
    return os.path.splitext(str(name))[1].lower() in IMAGE_EXTENSIONS


@contextlib.contextmanager
def _pil_open(source):
    """PIL's lazy Image.open (header only), without PIL's own pixel limit: the callers apply ``max_pixels``.

    PIL refuses images above 2 * Image.MAX_IMAGE_PIXELS (179 MP) inside ``open``, before the size can be
    read, which would turn a limit raised above that into "unreadable". The module-wide setting is lifted
    only for the open (the header parse), under a lock.
    """
    from PIL import Image
    with _PIL_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(source)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        yield im


def image_size(source):
    """(width, height) read from the header of an image file (path) or its bytes, without decoding pixels.

    None when PIL does not recognise the header (a format it lacks, or a damaged file: OpenCV decides).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    try:
        with _pil_open(source) as im:
            return im.size
    except Exception:  # PIL raises many types for headers it cannot parse
        return None


def check_pixels(name, width, height, max_pixels):
    """ImageTooLargeError naming ``name`` and its size when width * height is above ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f'{name}: {width}x{height} = {width * height:,} pixels, above the limit of '
                                 f'{max_pixels:,} pixels (refused before decoding, to bound memory)')


def _check_header(source, name, max_pixels):
    if max_pixels is None:
        return None
    size = image_size(source)
    if size is not None:
        check_pixels(name, *size, max_pixels)
    return size


def _decode_raw(content, name, max_pixels=DEFAULT_MAX_PIXELS):
    """Bytes -> HxWxC uint8/uint16 array (C = 1, 3 or 4) as stored, or BadImageError (ImageTooLargeError above
    ``max_pixels``)."""
    if content is None:
        raise BadImageError(f'{name}: no data')
    if len(content) == 0:
        raise BadImageError(f'{name}: empty file (0 bytes)')
    header = _check_header(content, name, max_pixels)
    try:
        img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise BadImageError(f'{name}: cannot be decoded ({exc})') from exc
    if img is None:
        raise BadImageError(f'{name}: not a decodable image, corrupt or truncated ({len(content)} bytes)')
    if header is None and max_pixels is not None:  # a header only OpenCV reads: checked after decoding
        check_pixels(name, img.shape[1], img.shape[0], max_pixels)
    if img.dtype not in _SCALES:
        raise BadImageError(f'{name}: unsupported pixel type {img.dtype}; expected 8-bit or 16-bit integers')
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] not in (1, 3, 4):
        raise BadImageError(f'{name}: unsupported channel count {img.shape[2]}; expected 1 (gray), 3 or 4 (with alpha)')
    return img


def _to_float(img):
    out = np.array(img, dtype=np.float32, order='C')
    out /= _SCALES[img.dtype]  # in place: one full-size float array, not two
    return out


# ---------------------------------------------------------------------------------------------- training data

class Decoded(NamedTuple):
    pixels: np.ndarray  # HxWxC float32 in [0, 1], C = 1 (grayscale) or 3 (BGR)
    alpha_dropped: bool


def decode_image(content, name, max_pixels=DEFAULT_MAX_PIXELS) -> Decoded:
    """Bytes of one image file -> Decoded; ``name`` (path or LMDB key) goes into every error message.

    Above ``max_pixels`` (None: no limit) ImageTooLargeError is raised from the header, before decoding.
    """
    img = _decode_raw(content, name, max_pixels)
    alpha_dropped = img.shape[2] == 4
    if alpha_dropped:
        img = img[..., :3]
    return Decoded(_to_float(img), alpha_dropped)


def read_file(path):
    """Bytes of a file, or BadImageError naming it (missing, a folder, unreadable)."""
    if not os.path.isfile(path):
        raise BadImageError(f'{path}: ' + ('is a folder, not an image' if os.path.isdir(path) else 'no such file'))
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as exc:
        raise BadImageError(f'{path}: {exc.strerror or exc}') from exc


def imread_bgr(path):
    """An image file as HxWx3 float32 BGR in [0, 1] (grayscale expanded, alpha dropped): clean photos, tools."""
    return to_bgr(decode_image(read_file(path), path).pixels)


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


# ---------------------------------------------------------------------------------------------------- photos

@dataclass
class ImageMeta:
    """What is needed to write a result in its input's format."""
    bit_depth: int              # 8 or 16
    gray: bool                  # the file had one channel
    alpha: np.ndarray = None    # the untouched alpha channel (input dtype), or None


def _exif_orientation(path):
    try:
        with _pil_open(path) as im:
            return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # no EXIF, or a format PIL does not read: nothing to rotate
        return 1


def _apply_orientation(img, orientation):
    """Turn pixels the way a viewer would (EXIF orientation 1..8), so the saved result looks like its input."""
    ops = {2: [1], 3: [2], 4: [0], 5: ['t'], 6: ['cw'], 7: ['t', 2], 8: ['ccw']}.get(orientation, [])
    for op in ops:
        if op == 't':
            img = cv2.transpose(img)
        elif op == 'cw':
            img = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
        elif op == 'ccw':
            img = cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
        elif op == 2:
            img = cv2.rotate(img, cv2.ROTATE_180)
        else:
            img = cv2.flip(img, op)
    return img


def _check_jpeg_complete(path):
    try:
        with _pil_open(path) as im:
            im.load()
    except Exception as exc:
        raise BadImageError(f'{path}: damaged JPEG ({exc})') from exc


def read_image(path, max_pixels=DEFAULT_MAX_PIXELS):
    """(HxWx3 BGR float32 in [0, 1], ImageMeta) of a photo: 8/16-bit gray, BGR or BGRA; BadImageError else.

    Above ``max_pixels`` (None: no limit) ImageTooLargeError is raised from the header, before the file is read.
    """
    if os.path.isfile(path):
        _check_header(path, path, max_pixels)  # before a possibly huge file is read
    content = read_file(path)
    if os.path.splitext(path)[1].lower() in ('.jpg', '.jpeg'):
        _check_jpeg_complete(path)  # before OpenCV decodes: the two decoded copies never coexist
    raw = _decode_raw(content, path, max_pixels)
    del content
    raw = _apply_orientation(raw, _exif_orientation(path))
    if raw.ndim == 2:  # cv2 drops a size-1 channel axis when it turns an image
        raw = raw[..., None]
    bit_depth = 8 if raw.dtype == np.uint8 else 16
    gray = raw.shape[2] == 1
    alpha = None
    if raw.shape[2] == 4:
        raw, alpha = raw[..., :3], raw[..., 3].copy()
    return to_bgr(_to_float(raw)), ImageMeta(bit_depth=bit_depth, gray=gray, alpha=alpha)


def to_integer(img, bit_depth=8, rounding='round'):
    """Float [0, 1] -> uint8/uint16. 'round' is BasicSR's tensor2img; 'trunc' is PReNet's official uint8(255*x)."""
    peak = 255. if bit_depth == 8 else 65535.
    scaled = np.clip(img, 0, 1)  # the one full-size temporary; the rest works in place
    scaled *= peak
    (np.floor if rounding == 'trunc' else np.round)(scaled, out=scaled)
    return scaled.astype(np.uint8 if bit_depth == 8 else np.uint16)


def encode_image(path, img, meta=None, quality=95):
    """Bytes of a float BGR image in ``path``'s format and ``meta``'s bit depth, gray and alpha."""
    meta = meta or ImageMeta(bit_depth=8, gray=False)
    ext = os.path.splitext(path)[1].lower()
    bit_depth = meta.bit_depth if ext in ('.png', '.tif', '.tiff') else 8
    out = img if img.dtype in (np.uint8, np.uint16) else to_integer(img, bit_depth)
    if meta.gray and out.ndim == 3:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
    elif meta.alpha is not None:
        alpha = meta.alpha
        if alpha.dtype != out.dtype:  # 16-bit alpha into an 8-bit format
            alpha = to_integer(alpha.astype(np.float32) / 65535., bit_depth)
        out = np.dstack([out, alpha])
    params = {'.jpg': [cv2.IMWRITE_JPEG_QUALITY, quality], '.jpeg': [cv2.IMWRITE_JPEG_QUALITY, quality],
              '.webp': [cv2.IMWRITE_WEBP_QUALITY, quality]}.get(ext, [])
    try:
        ok, buf = cv2.imencode(ext, out, params)
    except cv2.error as exc:
        raise BadImageError(f'{path}: OpenCV cannot encode {ext or "extension-less"} images ({exc})') from exc
    if not ok:
        raise BadImageError(f'{path}: OpenCV cannot encode {ext} images')
    return buf.tobytes()


def write_image(path, img, meta=None, quality=95):
    """Write a float [0, 1] (or uint8/uint16) BGR image atomically: a reader never sees half a file."""
    atomic_write(path, encode_image(path, img, meta, quality))
