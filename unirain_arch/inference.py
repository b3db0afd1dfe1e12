"""Derain photos with any registered network: load weights, run whole or tiled, keep names and formats.

    net = load_model('experiments/x/models/net_g_latest.pth', {'type': 'UniRain', 'preset': 'small'})
    net = load_model(network='options/test_PReNet_Rain100L.yml')          # weights from path.pretrain_network_g
    out = derain_image(net, img, tile_size=512, tile_overlap=32)          # HxWx3 BGR float32 in [0, 1]
    report = derain_paths(net, ['photos/'], 'derained/', tile_size=512)

Images follow BasicSR: numpy HxWx3 float32 BGR in [0, 1]; tensors (B,3,H,W) RGB in [0, 1].
"""
import contextlib
import glob
import json
import os
import tempfile
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.tif', '.tiff')
_EXIF_ORIENTATION = 0x0112
# Archs registered by BasicSR that only accept sizes divisible by a window and do not pad themselves.
_SIZE_MULTIPLE = {'SwinIR': lambda opt: int(opt.get('window_size', 7))}


class InferenceError(RuntimeError):
    """A model or image that cannot be used; the message names the file, key or value."""


class UnreadableImage(InferenceError):
    """An input file that is missing, not an image, truncated or in an unsupported pixel format."""


# ----------------------------------------------------------------------------------------------- model


class PadToMultiple(nn.Module):
    """Reflect-pad the input to a multiple of ``multiple`` and crop the output back: never crop the image."""

    def __init__(self, net, multiple):
        super().__init__()
        self.net = net
        self.multiple = int(multiple)

    def forward(self, x):
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.multiple, (-w) % self.multiple
        if pad_h or pad_w:
            # reflect needs the pad to be smaller than the side; tiny images fall back to edge replication
            mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return self.net(x)[..., :h, :w]


def _read_structured(path):
    from unirain_arch.compat import load_options
    if str(path).lower().endswith('.json'):
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    return load_options(path)


def resolve_network(network):
    """(network options, checkpoint from the options or None, param key, strict) from any accepted form.

    ``network`` is a ``network_g``-style dict (``{'type': 'UniRain', 'preset': 'small'}``), a whole BasicSR
    option dict, or the path of a YAML/JSON file holding either. A BasicSR option file also gives
    ``path.pretrain_network_g`` / ``param_key_g`` / ``strict_load_g``; relative paths in it are relative to
    the current directory, as for ``basicsr test``.
    """
    source = network
    if isinstance(network, (str, os.PathLike)):
        if not os.path.isfile(network):
            raise InferenceError(f'network options not found: {network}')
        network = _read_structured(network)
    if not isinstance(network, dict):
        raise InferenceError(f'network options {source!r}: expected a mapping, got {type(network).__name__}')
    path_opt = network.get('path') or {}
    if 'network_g' in network:
        net_opt = dict(network['network_g'])
    elif 'type' in network:
        net_opt = dict(network)
    else:
        raise InferenceError(f'network options {source!r}: no `network_g` block and no `type` key')
    if 'type' not in net_opt:
        raise InferenceError(f'network options {source!r}: `network_g` has no `type` (the registered arch name)')
    return (net_opt, path_opt.get('pretrain_network_g'), path_opt.get('param_key_g', 'auto'),
            path_opt.get('strict_load_g', True))


def load_state_dict(checkpoint, param_key='auto'):
    """(state dict, key used) from a BasicSR checkpoint or a plain state dict.

    ``param_key='auto'`` takes ``params_ema`` (the EMA weights BasicSR validates), then ``params``, then the
    whole file when every value is a tensor (official releases such as PReNet's). ``None`` means the whole
    file; any other key must exist, except that ``params`` stands in for a missing one (as in BasicSR).
    A ``module.`` prefix left by (Distributed)DataParallel is removed.
    """
    if not os.path.isfile(checkpoint):
        raise InferenceError(f'checkpoint not found: {checkpoint}')
    try:
        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    except Exception as exc:  # torch raises several types for a non-checkpoint file
        raise InferenceError(f'cannot load checkpoint {checkpoint}: {type(exc).__name__}: {exc}') from exc
    if not isinstance(state, dict):
        raise InferenceError(f'checkpoint {checkpoint}: expected a dict of tensors, got {type(state).__name__}')
    if param_key == 'auto':
        param_key = next((k for k in ('params_ema', 'params') if isinstance(state.get(k), dict)), None)
    if param_key is not None:
        if param_key not in state and isinstance(state.get('params'), dict):
            param_key = 'params'  # as BasicSR's load_network: a run without EMA saves params only
        if param_key not in state:
            raise InferenceError(f'checkpoint {checkpoint}: no key {param_key!r}; it has {sorted(state)[:8]}')
        state = state[param_key]
    not_tensors = [k for k, v in state.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise InferenceError(f'checkpoint {checkpoint}: {not_tensors[:5]} are not tensors; pass the key that '
                             'holds the weights (BasicSR saves them under params / params_ema)')
    return {(k[7:] if k.startswith('module.') else k): v for k, v in state.items()}, param_key


def load_model(checkpoint=None, network=None, device='cpu', param_key=None, strict=None, allow_untrained=False):
    """Build a registered arch, load its weights and return it in eval mode on ``device``.

    ``network``: see :func:`resolve_network`. ``checkpoint`` overrides the option file's
    ``path.pretrain_network_g``; with neither, the call fails unless ``allow_untrained`` (random weights,
    for smoke tests and latency only). Archs that need a size multiple (BasicSR's SwinIR) are wrapped in
    :class:`PadToMultiple`, so every returned net maps any HxW to HxW.
    """
    import unirain_arch  # noqa: F401  (registers the unirain archs after the basicsr compat patches)
    from basicsr.archs import build_network

    if network is None:
        raise InferenceError('load_model needs `network`: an option file or a network_g dict with `type`')
    net_opt, opt_ckpt, opt_key, opt_strict = resolve_network(network)
    checkpoint = checkpoint or opt_ckpt
    param_key = opt_key if param_key is None else param_key
    strict = opt_strict if strict is None else strict
    try:
        net = build_network(dict(net_opt))
    except KeyError as exc:
        raise InferenceError(f'unknown arch {net_opt["type"]!r}: {exc}; `basicsr list --registry arch` '
                             'shows the registered names') from exc
    if checkpoint is not None:
        state, _ = load_state_dict(checkpoint, param_key)
        try:
            net.load_state_dict(state, strict=strict)
        except RuntimeError as exc:
            raise InferenceError(f'checkpoint {checkpoint} does not fit arch {net_opt}: {exc}') from exc
    elif not allow_untrained:
        raise InferenceError(f'no weights for {net_opt["type"]}: give a checkpoint or an option file with '
                             'path.pretrain_network_g')
    multiple = _SIZE_MULTIPLE.get(net_opt['type'], lambda _: 1)(net_opt)
    if multiple > 1:
        net = PadToMultiple(net, multiple)
    return net.to(torch.device(device)).eval()


# ------------------------------------------------------------------------------------------- inference


def _autocast(device, dtype):
    if dtype in (None, torch.float32):
        return contextlib.nullcontext()
    if dtype not in (torch.float16, torch.bfloat16):
        raise InferenceError(f'dtype {dtype}: use float32, float16 or bfloat16')
    if dtype == torch.float16 and device.type != 'cuda':
        raise InferenceError('float16 inference needs a CUDA device; on CPU use float32 or bfloat16')
    return torch.autocast(device_type=device.type, dtype=dtype)


def _device_of(net):
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device('cpu')


class _FloatOutput(nn.Module):
    """Return float32 from an autocast net, so tiles are blended in full precision."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).float()


def derain_tensor(net, x, tile_size=None, tile_overlap=32, dtype=None, progress=False):
    """Restore a (B,3,H,W) RGB batch in [0, 1]; float32 output of the same size, clamped to [0, 1], on CPU.

    ``tile_size`` (pixels) runs ``unirain_arch.tiling.tiled_forward`` with ``tile_overlap``: the whole
    image stays on the CPU and only one tile at a time goes to the network's device, so memory is bounded
    by the tile. ``None`` or 0 runs the whole image at once. ``dtype`` float16/bfloat16 uses autocast.
    """
    device = _device_of(net)
    with torch.no_grad(), _autocast(device, dtype):
        if tile_size:
            from unirain_arch.tiling import tiled_forward
            out = tiled_forward(_FloatOutput(net), x.cpu(), tile_size, tile_overlap, progress=progress)
        else:
            out = net(x.to(device))
    if out.shape != x.shape:
        raise InferenceError(f'the network returned {tuple(out.shape)} for an input of {tuple(x.shape)}')
    return out.float().clamp_(0, 1).cpu()


def derain_image(net, img, tile_size=None, tile_overlap=32, dtype=None, progress=False):
    """Restore one HxWx3 BGR float32 image in [0, 1] (BasicSR's numpy convention); same size and convention."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise InferenceError(f'expected an HxWx3 BGR image, got shape {img.shape}')
    x = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1), dtype=np.float32))[None]
    out = derain_tensor(net, x, tile_size, tile_overlap, dtype, progress)[0]
    return np.ascontiguousarray(out.numpy().transpose(1, 2, 0)[..., ::-1])


# ----------------------------------------------------------------------------------------------- files


@dataclass
class ImageMeta:
    """What is needed to write a result in its input's format."""
    bit_depth: int              # 8 or 16
    gray: bool                  # the file had one channel
    alpha: np.ndarray = None    # the untouched alpha channel (input dtype), or None


def _exif_orientation(path):
    try:
        from PIL import Image
        with Image.open(path) as im:
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
    # OpenCV decodes a truncated JPEG with a grey bottom and only a warning; Pillow refuses it.
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as exc:
        raise UnreadableImage(f'{path}: damaged JPEG ({exc})') from exc


def read_image(path):
    """(HxWx3 BGR float32 in [0, 1], ImageMeta) for 8/16-bit gray, BGR or BGRA files; UnreadableImage else."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise UnreadableImage(f'{path}: {exc.strerror or exc}') from exc
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if raw is None:
        raise UnreadableImage(f'{path}: not a readable image (empty, damaged or unsupported format)')
    if os.path.splitext(path)[1].lower() in ('.jpg', '.jpeg'):
        _check_jpeg_complete(path)
    if raw.dtype not in (np.uint8, np.uint16):
        raise UnreadableImage(f'{path}: {raw.dtype} pixels are not supported (8-bit or 16-bit images only)')
    raw = _apply_orientation(raw, _exif_orientation(path))
    bit_depth = 8 if raw.dtype == np.uint8 else 16
    alpha = None
    gray = raw.ndim == 2 or raw.shape[2] == 1
    if gray:
        raw = cv2.cvtColor(raw.reshape(raw.shape[:2]), cv2.COLOR_GRAY2BGR)
    elif raw.shape[2] == 4:
        raw, alpha = raw[..., :3], raw[..., 3].copy()
    elif raw.shape[2] != 3:
        raise UnreadableImage(f'{path}: {raw.shape[2]} channels are not supported')
    img = raw.astype(np.float32) / (255. if bit_depth == 8 else 65535.)
    return np.ascontiguousarray(img), ImageMeta(bit_depth=bit_depth, gray=gray, alpha=alpha)


def to_integer(img, bit_depth=8, rounding='round'):
    """Float [0, 1] -> uint8/uint16. 'round' is BasicSR's tensor2img; 'trunc' is PReNet's official uint8(255*x)."""
    peak = 255. if bit_depth == 8 else 65535.
    scaled = np.clip(img, 0, 1) * peak
    scaled = np.floor(scaled) if rounding == 'trunc' else np.round(scaled)
    return scaled.astype(np.uint8 if bit_depth == 8 else np.uint16)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(path, img, meta=None, quality=95):
    """Write a float BGR result in ``meta``'s format (bit depth, gray, alpha), atomically (no half files)."""
    meta = meta or ImageMeta(bit_depth=8, gray=False)
    ext = os.path.splitext(path)[1].lower()
    bit_depth = meta.bit_depth if ext in ('.png', '.tif', '.tiff') else 8
    out = to_integer(img, bit_depth)
    if meta.gray:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)
    elif meta.alpha is not None:
        alpha = meta.alpha
        if alpha.dtype != out.dtype:  # 16-bit alpha into an 8-bit format
            alpha = to_integer(alpha.astype(np.float32) / 65535., bit_depth)
        out = np.dstack([out, alpha])
    params = {'.jpg': [cv2.IMWRITE_JPEG_QUALITY, quality], '.jpeg': [cv2.IMWRITE_JPEG_QUALITY, quality],
              '.webp': [cv2.IMWRITE_WEBP_QUALITY, quality]}.get(ext, [])
    ok, buf = cv2.imencode(ext, out, params)
    if not ok:
        raise InferenceError(f'{path}: OpenCV cannot encode {ext} images')
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.derain-', suffix=ext)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(buf.tobytes())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def collect_inputs(inputs, recursive=False, output_dir=None):
    """[(file, path relative to the output folder)] for files, folders and glob patterns, in a stable order.

    A folder keeps its inner layout (with ``recursive``); files and glob matches keep their names. An
    ``output_dir`` inside a recursively scanned folder is not scanned: earlier results are not inputs.
    """
    found = []
    skip = os.path.join(os.path.realpath(output_dir), '') if output_dir else None
    for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            pattern = os.path.join(glob.escape(item), '**', '*') if recursive else os.path.join(glob.escape(item), '*')
            files = [p for p in sorted(glob.glob(pattern, recursive=recursive))
                     if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]
            if recursive and skip and skip != os.path.join(os.path.realpath(item), ''):
                files = [p for p in files if not os.path.realpath(p).startswith(skip)]
            found += [(p, os.path.relpath(p, item)) for p in files]
        elif os.path.isfile(item):
            found.append((item, os.path.basename(item)))
        else:
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InferenceError(f'input {item!r}: no such file or folder, and no file matches it as a pattern')
            found += [(p, os.path.basename(p)) for p in matches if p.lower().endswith(IMAGE_EXTENSIONS)]
    return found


@dataclass
class DerainReport:
    """What :func:`derain_paths` did: written outputs, skipped existing ones, and failures with reasons."""
    written: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (input path, reason)


def plan_outputs(inputs, output_dir, recursive=False):
    """[(input, output)] or InferenceError before anything runs: never overwrite an input, never collide."""
    pairs = [(src, os.path.join(output_dir, rel)) for src, rel in collect_inputs(inputs, recursive, output_dir)]
    if not pairs:
        raise InferenceError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {inputs}')
    sources = {os.path.realpath(src) for src, _ in pairs}
    clash = [dst for _, dst in pairs if os.path.realpath(dst) in sources]
    if clash:
        raise InferenceError(f'output {clash[0]} would overwrite an input; choose another --output folder')
    seen = {}
    for src, dst in pairs:
        key = os.path.normcase(os.path.realpath(dst))
        if key in seen:
            raise InferenceError(f'{seen[key]} and {src} would both be written to {dst}; derain them separately')
        seen[key] = src
    return pairs


def derain_paths(net, inputs, output_dir, tile_size=None, tile_overlap=32, dtype=None, recursive=False,
                 skip_existing=False, quality=95, progress=True):
    """Derain files / folders / globs into ``output_dir`` keeping names and formats.

    An unreadable file is recorded in the report and the run goes on; the caller decides what a failure
    means. Inputs are never overwritten (checked for every file before the first one runs).
    """
    from tqdm import tqdm

    pairs = plan_outputs(inputs, output_dir, recursive)
    report = DerainReport()
    bar = tqdm(pairs, unit='img', disable=not progress, desc='derain')
    for src, dst in bar:
        bar.set_postfix_str(os.path.basename(src))
        if skip_existing and os.path.exists(dst):
            report.skipped.append(dst)
            continue
        try:
            img, meta = read_image(src)
        except UnreadableImage as exc:
            report.failed.append((src, str(exc)))
            continue
        out = derain_image(net, img, tile_size, tile_overlap, dtype, progress)
        write_image(dst, out, meta, quality)
        report.written.append(dst)
    return report
