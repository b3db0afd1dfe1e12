"""Layer normalisation over the channels of an NCHW feature map (each pixel normalised on its own)."""
import torch
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm across C at every pixel of a (B, C, H, W) map.

    Normalising per pixel (not over the whole map) keeps a sample's features independent of the image size
    and of the other samples in the batch. ``bias=False`` gives the scale-only variant.
    """

    def __init__(self, channels, bias=True, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.eps = eps

    def forward(self, x):
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        if self.bias is None:
            # the scale-only variant does not re-centre: only the variance is normalised
            y = x / torch.sqrt(var + self.eps)
            return y * self.weight[:, None, None]
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight[:, None, None] + self.bias[:, None, None]
