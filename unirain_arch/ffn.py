"""Gated depthwise feed-forward network (Restormer's GDFN, written from its description)."""
import torch.nn.functional as F
from torch import nn


class GatedFFN(nn.Module):
    """1x1 conv to 2*hidden, 3x3 depthwise conv, GELU(x1) * x2, 1x1 conv back to ``dim``.

    ``hidden = int(dim * expansion)``; an MoE expert is the same module with a smaller expansion.
    """

    def __init__(self, dim, expansion, bias=False):
        super().__init__()
        hidden = int(dim * expansion)
        if hidden < 1:
            raise ValueError(f'FFN: expansion {expansion} on {dim} channels leaves no hidden channel')
        self.hidden = hidden
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)
