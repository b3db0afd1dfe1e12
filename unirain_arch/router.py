"""Image-level router of an MoE layer, top-k selection and the two optional auxiliary losses.

The router scores experts from the globally pooled feature (paper Eq. 11): ``g = softmax(W(GAP(x) + eps))``
with ``eps ~ N(0, sigma^2)`` only while training, so the choice in eval is a deterministic function of the
sample alone. It never sees the rain-type label; the label only enters the optional router-label loss.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Router(nn.Module):
    """GAP -> (+ Gaussian noise in training) -> linear -> logits over ``num_experts``."""

    def __init__(self, dim, num_experts, noise_std):
        super().__init__()
        if noise_std < 0:
            raise ValueError(f'router_noise must be >= 0, got {noise_std}')
        self.noise_std = float(noise_std)
        self.proj = nn.Linear(dim, num_experts)

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))
        if self.training and self.noise_std > 0:
            pooled = pooled + torch.randn_like(pooled) * self.noise_std
        return self.proj(pooled)


def top_k_gates(probs, k, renormalize=False):
    """Keep the k largest gates per sample, zero the rest.

    Returns ``(weights, experts)``: weights (B, N) with exactly k non-zero entries per row (renormalised to
    sum 1 when asked), experts (B, k) the chosen indices, largest gate first.
    """
    top, experts = probs.topk(k, dim=1)
    if renormalize:
        top = top / top.sum(dim=1, keepdim=True)
    weights = torch.zeros_like(probs).scatter(1, experts, top)
    return weights, experts


def cv_squared(v, eps=1e-10):
    """Squared coefficient of variation across experts: 0 when perfectly balanced."""
    if v.numel() < 2:
        return v.new_zeros(())
    return v.float().var(unbiased=False) / (v.float().mean() ** 2 + eps)


def load_balance_loss(probs, weights=None):
    """Importance/load balance (Shazeer et al. 2017, as used by MoCE-IR).

    importance_i = sum over the batch of gate i; for a hard layer, load_i = sum of the gates that were
    actually kept for expert i (a differentiable stand-in for the count of samples it received).
    """
    loss = cv_squared(probs.sum(dim=0))
    if weights is not None:
        loss = loss + cv_squared(weights.sum(dim=0))
    return loss


def router_label_loss(logits, type_ids):
    """Cross-entropy pushing rain type t towards expert ``t mod N`` (an opt-in prior, off by default)."""
    return F.cross_entropy(logits.float(), type_ids.to(logits.device).long() % logits.shape[1])
