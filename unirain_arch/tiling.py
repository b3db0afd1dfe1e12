"""Tiled inference for images too big to restore in one pass: overlapping tiles, blended back.

Works for any network mapping a (B, C, H, W) image to an image of the same height and width. The
network only ever sees one tile, so its memory is bounded by the tile; the full-size input and output
stay where the input is (e.g. on the CPU while the network runs on a GPU).

Blending: inside the strip two neighbouring tiles share, each tile's weight is 0 on the quarter of the
strip nearest its own edge, ramps linearly across the middle half and is 1 beyond. So every pixel comes
from tiles that see at least ``tile_overlap / 4`` pixels of context around it: a network whose receptive
field radius is below that gives exactly the untiled result, and seams fade smoothly for the others.
Networks with global operations (UniRain's channel attention and image-level router) see per-tile
statistics, so their tiled output is close to, not equal to, the untiled one.
"""
import torch
from tqdm import tqdm

DEFAULT_OVERLAP = 32


def check_tile_options(tile_opt):
    """Validate an option file's ``tile:`` block; returns ``(tile_size, tile_overlap)``."""
    if not isinstance(tile_opt, dict):
        raise ValueError(f'tile: expected a mapping like {{tile_size: 256, tile_overlap: 32}}, got {tile_opt!r}')
    unknown = sorted(set(tile_opt) - {'tile_size', 'tile_overlap'})
    if unknown:
        raise ValueError(f'tile: unknown key(s) {", ".join(unknown)}; valid keys: tile_size, tile_overlap')
    if 'tile_size' not in tile_opt:
        raise ValueError('tile: tile_size is required (e.g. 256)')
    tile_size, tile_overlap = tile_opt['tile_size'], tile_opt.get('tile_overlap', DEFAULT_OVERLAP)
    _check(tile_size, tile_overlap)
    return tile_size, tile_overlap


def _check(tile_size, tile_overlap):
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f'tile_size must be a positive integer, got {tile_size!r}')
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or not 0 <= tile_overlap < tile_size:
        raise ValueError(f'tile_overlap must be an integer in [0, tile_size={tile_size}), got {tile_overlap!r}')


def _starts(size, tile, stride):
    """Tile origins along one axis; the last tile is moved back to end on the border (all tiles equal)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length, start, size, overlap, device):
    """1-D blending weight of one tile; no ramp on a side that is the image border."""
    w = torch.ones(length, device=device)
    if overlap == 0:
        return w
    d = torch.arange(length, device=device, dtype=torch.float32)
    ramp = ((d + 0.5 - overlap / 4) / (overlap / 2)).clamp(0, 1)
    if start > 0:
        w = torch.minimum(w, ramp)
    if start + length < size:
        w = torch.minimum(w, ramp.flip(0))
    return w


def tiled_forward(net, x, tile_size, tile_overlap=DEFAULT_OVERLAP, progress=False):
    """Run ``net`` on overlapping ``tile_size`` tiles of ``x`` (B, C, H, W) and blend the results.

    Tiles step by ``tile_size - tile_overlap``; an image no bigger than one tile runs in one pass.
    Each tile is moved to the network's device and its result back to ``x``'s device.
    """
    _check(tile_size, tile_overlap)
    h, w = x.shape[-2:]
    param = next(net.parameters(), None)
    net_device = x.device if param is None else param.device
    if h <= tile_size and w <= tile_size:
        return net(x.to(net_device)).to(x.device)
    th, tw = min(tile_size, h), min(tile_size, w)
    stride = tile_size - tile_overlap
    origins = [(y0, x0) for y0 in _starts(h, th, stride) for x0 in _starts(w, tw, stride)]
    out = None
    total = torch.zeros(1, 1, h, w, device=x.device)
    for y0, x0 in tqdm(origins, desc='tiles', unit='tile', disable=not progress, leave=False):
        result = net(x[..., y0:y0 + th, x0:x0 + tw].to(net_device)).to(x.device)
        if result.shape[-2:] != (th, tw):
            raise ValueError(f'tiled_forward: the network returned {tuple(result.shape[-2:])} for a '
                             f'{th}x{tw} tile; it must keep the image size')
        weight = _ramp(th, y0, h, tile_overlap, x.device)[:, None] * _ramp(tw, x0, w, tile_overlap, x.device)
        if out is None:
            out = result.new_zeros((result.shape[0], result.shape[1], h, w))
        out[..., y0:y0 + th, x0:x0 + tw] += result * weight
        total[..., y0:y0 + th, x0:x0 + tw] += weight
    return out.div_(total.to(out.dtype))  # in place: no third full-size array
