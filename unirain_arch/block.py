"""The transformer block of the U-Net: ``x + Attn(Norm(x))`` then ``x + FFN(Norm(x))``."""
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from unirain_arch.attention import ChannelAttention
from unirain_arch.moe import keep_routing
from unirain_arch.norm import ChannelLayerNorm


class TransformerBlock(nn.Module):
    """Pre-norm block; ``ffn`` is any (B, C, H, W) -> (B, C, H, W) module: a GatedFFN or an MoE of them.

    ``checkpointing``: when gradients are on, keep only the block's input and recompute its activations
    in the backward pass (less memory, one more forward of the block).
    """

    def __init__(self, dim, heads, ffn, bias=False, norm_bias=True, checkpointing=False):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, bias=norm_bias)
        self.attn = ChannelAttention(dim, heads, bias=bias)
        self.norm2 = ChannelLayerNorm(dim, bias=norm_bias)
        self.ffn = ffn
        self.checkpointing = checkpointing

    def forward(self, x):
        if not (self.checkpointing and torch.is_grad_enabled()):
            return self._body(x)
        runs = []

        def body(t):
            # The second run is the recomputation in backward: the routing the forward recorded (for
            # last_routing and the auxiliary losses) must stay. checkpoint restores the RNG state, so the
            # router noise, and with it every expert pick, repeats exactly.
            recompute = bool(runs)
            runs.append(None)
            if recompute:
                with keep_routing(self.ffn):
                    return self._body(t)
            return self._body(t)

        return checkpoint(body, x, use_reentrant=False)

    def _body(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))
