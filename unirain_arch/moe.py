"""Mixture-of-experts replacements for a block's FFN: soft (every expert, weighted) and hard (top-k only).

Both hold the same ``router`` and ``experts`` sub-modules, so a checkpoint trained with one routing mode
loads into the other. After each forward the layer keeps its routing (logits, gates, picks) for logging
and for the auxiliary losses; see ``routing()``. ``keep_routing(module)`` stops its MoE layers from
recording, for the recomputation of an activation checkpoint (the forward's routing must stay).
"""
import contextlib

import torch
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
        self.recording = True

    def _route(self, x):
        logits = self.router(x)
        probs = logits.float().softmax(dim=1)
        if self.recording:
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

    Each expert runs once per forward on exactly the samples that picked it, so at k=1 the layer costs
    about one expert. The batch is grouped once per layer: the (sample, slot) picks are sorted by expert
    and split by the per-expert counts, read in one device-to-host copy (on CUDA the layer's only host
    synchronisation). A sample's result depends only on that sample: routing uses its own pooled feature
    and no batch statistics. Experts no sample picked do not run and get no gradient in that step.
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
        if self.recording:
            self.last_weights, self.last_experts = weights, experts
        # A sample's k picks in increasing expert order: its k results are then summed in that order,
        # the order of a loop over experts (same floats).
        picks = experts.sort(dim=1).values.flatten()
        gates = weights.to(x.dtype).gather(1, picks.view(-1, self.top_k)).flatten()
        # stable: within one expert's group the samples keep their batch order
        order = picks.argsort(stable=True)
        # counted by comparison: CUDA's bincount would read its input's maximum on the host first
        expert_ids = torch.arange(self.num_experts, device=picks.device)
        counts = (picks[:, None] == expert_ids).sum(dim=0).tolist()
        grouped = x.index_select(0, order // self.top_k).split(counts)
        grouped_gates = gates.index_select(0, order).split(counts)
        results = [expert(xs) * g[:, None, None, None]
                   for expert, xs, g, n in zip(self.experts, grouped, grouped_gates, counts) if n]
        # back to (sample, slot) order with a permutation (no atomics: deterministic on CUDA too)
        slots = torch.cat(results).index_select(0, order.argsort())
        slots = slots.view(x.shape[0], self.top_k, *slots.shape[1:])
        out = slots[:, 0]
        for slot in range(1, self.top_k):
            out = out + slots[:, slot]
        return out


@contextlib.contextmanager
def keep_routing(module):
    """Inside the ``with``, ``module``'s MoE layers compute as usual but keep the routing they recorded before."""
    layers = [m for m in module.modules() if isinstance(m, MixtureOfExperts)]
    states = [m.recording for m in layers]
    for m in layers:
        m.recording = False
    try:
        yield
    finally:
        for m, state in zip(layers, states):
            m.recording = state
