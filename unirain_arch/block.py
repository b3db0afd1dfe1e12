"""The transformer block of the U-Net: ``x + Attn(Norm(x))`` then ``x + FFN(Norm(x))``."""
from torch import nn

from unirain_arch.attention import ChannelAttention
from unirain_arch.norm import ChannelLayerNorm


class TransformerBlock(nn.Module):
    """Pre-norm block; ``ffn`` is any (B, C, H, W) -> (B, C, H, W) module: a GatedFFN or an MoE of them."""

    def __init__(self, dim, heads, ffn, bias=False, norm_bias=True):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, bias=norm_bias)
        self.attn = ChannelAttention(dim, heads, bias=bias)
        self.norm2 = ChannelLayerNorm(dim, bias=norm_bias)
        self.ffn = ffn

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))
