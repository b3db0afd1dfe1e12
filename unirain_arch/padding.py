"""Pad an image batch so a U-Net can halve it repeatedly, and crop the result back."""
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x, multiple):
    """Pad the bottom and right of (B, C, H, W) up to multiples of ``multiple``.

    Reflection keeps image statistics at the border (zeros would look like a dark frame to the router and
    the attention); a side shorter than its pad cannot be reflected and is replicated instead.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def crop_to(x, size):
    """Crop (B, C, H', W') back to the top-left ``size = (H, W)``."""
    h, w = size
    return x[..., :h, :w]


class PadToMultiple(nn.Module):
    """Wrap a net that needs sizes divisible by ``multiple`` (BasicSR's SwinIR): pad, run, crop back."""

    def __init__(self, net, multiple):
        super().__init__()
        self.net = net
        self.multiple = int(multiple)

    def forward(self, x):
        return crop_to(self.net(pad_to_multiple(x, self.multiple)), x.shape[-2:])
