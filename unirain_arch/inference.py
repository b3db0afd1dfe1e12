"""Run any registered network on images: load weights, run whole or tiled.

    net = load_model('experiments/x/models/net_g_latest.pth', {'type': 'UniRain', 'preset': 'small'})
    net = load_model(network='options/test_PReNet_Rain100L.yml')          # weights from path.pretrain_network_g
    net = load_model_spec('net_g_5000.pth:UniRain,preset=small')          # the command-line form of the tools
    out = derain_image(net, img, tile_size=512, tile_overlap=32)          # HxWx3 BGR float32 in [0, 1]

Images follow BasicSR: numpy HxWx3 float32 BGR in [0, 1]; tensors (B,3,H,W) RGB in [0, 1]. Reading and writing
photo files is ``unirain_utils.image_io``; folders of photos are ``unirain_utils.photo_batch``.
"""
import contextlib
import json
import os

import numpy as np
import torch
import yaml
from torch import nn

from unirain_arch.padding import PadToMultiple
from unirain_utils.checkpoints import CheckpointError, load_checkpoint

# Archs registered by BasicSR that only accept sizes divisible by a window and do not pad themselves.
_SIZE_MULTIPLE = {'SwinIR': lambda opt: int(opt.get('window_size', 7))}
MODEL_SPEC_HELP = ('OPTION.yml (network_g and path.pretrain_network_g), CKPT:ARCH (ARCH: an option/network YAML or '
                   'JSON file, or a registered name with arguments, e.g. net_g.pth:UniRain,preset=small), or '
                   'untrained:ARCH (random weights, seed 0)')


class InferenceError(RuntimeError):
    """A model or image that cannot be used; the message names the file, key or value."""


# ----------------------------------------------------------------------------------------------- model


def _read_structured(path):
    from unirain_utils.options import OptionError, load_options
    try:
        if str(path).lower().endswith('.json'):
            with open(path, encoding='utf-8') as f:
                return json.load(f)
        return load_options(path)
    except (OptionError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InferenceError(f'network options {path}: {exc}') from exc


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
        state = load_checkpoint(checkpoint, map_location='cpu')
    except CheckpointError as exc:
        raise InferenceError(f'cannot load checkpoint {exc}') from exc
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
    import unirain_arch  # noqa: F401  (registers the unirain archs)
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


def parse_arch(text):
    """An arch from a YAML/JSON file, or inline ``Name,key=value,...`` (values parsed as YAML scalars)."""
    if os.path.isfile(text):
        return text
    name, *args = text.split(',')
    arch = {'type': name.strip()}
    for arg in args:
        if '=' not in arg:
            raise InferenceError(f'arch {text!r}: {arg!r} is not key=value')
        key, value = arg.split('=', 1)
        arch[key.strip()] = yaml.safe_load(value)
    return arch


def parse_model_spec(spec):
    """(checkpoint or None, network) of a model named on a command line; see MODEL_SPEC_HELP."""
    if spec.lower().endswith(('.yml', '.yaml', '.json')) and os.path.isfile(spec):
        return None, spec
    if ':' in spec:
        checkpoint, arch = spec.rsplit(':', 1)
        return (None if checkpoint == 'untrained' else checkpoint), parse_arch(arch)
    raise InferenceError(f'model {spec!r}: expected {MODEL_SPEC_HELP}')


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


