"""Mixture-of-experts replacements for a block's FFN: soft (every expert, weighted) and hard (top-k only).

Both hold the same ``router`` and ``experts`` sub-modules, so a checkpoint trained with one routing mode
loads into the other. After each forward the layer keeps its routing (logits, gates, picks) for logging
and for the auxiliary losses; see ``routing()``.
"""
from torch import nn

from unirain_arch.ffn import GatedFFN
from unirain_arch.router import Router, top_k_gates


class MixtureOfExperts(nn.Module):
    mode = None

    def __init__(self, dim, num_experts, expansion, bias=False, noise_std=None):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f'num_experts must be >= 1, got {num_experts}')
        self.num_experts = num_experts
        self.router = Router(dim, num_experts, 1.0 / num_experts if noise_std is None else noise_std)
        self.experts = nn.ModuleList(GatedFFN(dim, expansion, bias) for _ in range(num_experts))
        self.last_logits = self.last_probs = self.last_weights = self.last_experts = None

    def _route(self, x):
        logits = self.router(x)
        probs = logits.float().softmax(dim=1)
        self.last_logits, self.last_probs = logits, probs
        return probs

    def routing(self):
        """The last forward's routing: mode, gates (B, N) softmax probabilities, experts (B, k) or None."""
        if self.last_probs is None:
            return None
        return {'mode': self.mode, 'gates': self.last_probs.detach(),
                'experts': None if self.last_experts is None else self.last_experts.detach()}


class SoftMoE(MixtureOfExperts):
    """``sum_i g_i * expert_i(x)`` over all N experts (the encoder's routing, paper Eq. 12)."""

    mode = 'soft'

    def forward(self, x):
        probs = self._route(x).to(x.dtype)
        out = 0
        for i, expert in enumerate(self.experts):
            out = out + probs[:, i, None, None, None] * expert(x)
        return out


class HardMoE(MixtureOfExperts):
    """Top-k routing with grouped dispatch (paper Eqs. 13-14).

    Each expert runs once per forward on exactly the samples that picked it (gathered with
    ``index_select``, scattered back with ``index_add_``), so at k=1 the layer costs about one expert.
    A sample's result depends only on that sample: routing uses its own pooled feature and no batch
    statistics. Experts no sample picked get no gradient in that step.
    """

    mode = 'hard'

    def __init__(self, dim, num_experts, expansion, bias=False, noise_std=None, top_k=1, renormalize=False):
        super().__init__(dim, num_experts, expansion, bias, noise_std)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f'top_k must be in 1..num_experts={num_experts}, got {top_k}')
        self.top_k = top_k
        self.renormalize = renormalize

    def forward(self, x):
        weights, experts = top_k_gates(self._route(x), self.top_k, self.renormalize)
        self.last_weights, self.last_experts = weights, experts
        weights = weights.to(x.dtype)
        batch = x.shape[0]
        out = None
        for i, expert in enumerate(self.experts):
            idx = (experts == i).any(dim=1).nonzero().flatten()
            if idx.numel() == 0:
                continue
            if idx.numel() == batch:  # every sample picked it: no gather needed
                y = expert(x) * weights[:, i, None, None, None]
            else:
                y = expert(x.index_select(0, idx)) * weights.index_select(0, idx)[:, i, None, None, None]
            if out is None:
                out = y.new_zeros((batch, *y.shape[1:]))
            # unique indices within one call: deterministic even with CUDA atomics
            out = out.index_add(0, idx, y)
        return out
