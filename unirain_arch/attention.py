"""Transposed (channel) self-attention: attention maps are C x C per head, so cost is linear in pixels."""
import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    """Multi-head attention across channels (Restormer's MDTA, written from its description).

    q, k, v come from a 1x1 conv followed by a 3x3 depthwise conv (local context); q and k are
    L2-normalised along the pixels so the C x C logits are cosine similarities, scaled by a learnable
    per-head temperature.
    """

    def __init__(self, dim, heads, bias=False):
        super().__init__()
        if dim % heads:
            raise ValueError(f'attention: {dim} channels cannot be split into {heads} heads')
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        out = attn.softmax(dim=-1) @ v
        return self.project_out(out.reshape(b, c, h, w))
