"""Task uncertainty regularization (Wu et al., AAAI 2025) as a per-rain-type strategy (docs/method.md section 3)."""
import math

import torch
from torch import nn

from basicsr.utils.registry import LOSS_REGISTRY
from unirain_losses.reweighting import TypeReweightedLoss

SOURCES = ('per_type', 'input_head', 'arch')
# softplus(SOFTPLUS_ONE) = 1: the input head starts at sigma = 1 like the per-type scales
SOFTPLUS_ONE = math.log(math.e - 1)


class InputUncertaintyHead(nn.Module):
    """A few 3x3 convs on the rainy input, softplus: a positive (B, C, H, W) map for any H, W."""

    def __init__(self, channels=3, width=16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.constant_(self.body[-1].bias, SOFTPLUS_ONE)

    def forward(self, x):
        return nn.functional.softplus(self.body(x))


@LOSS_REGISTRY.register()
class TURLoss(TypeReweightedLoss):
    """Each type's criterion divided by a learned uncertainty sigma_k, plus 2 log sigma_k (Laplace likelihood).

    For every type k present in the batch, from its own samples only:
    ``L_k = C(pred_k / s_k, gt_k / s_k) + 2 * log(mean(s_k))`` with s_k = sigma_k + eps; for L1,
    C(pred / s, gt / s) = mean(|pred - gt| / s). The total is the mean of L_k over the types present
    (TUR's own reduction, not the sample-count weighting of the other strategies). Nothing is detached.
    With s = 1 the loss is the mean of the per-type criteria; with one scalar per type the optimum is
    sigma_k = L1_k / 2, so at equilibrium the effective weight 1 / sigma_k balances the types' log losses.

    Where sigma comes from (``uncertainty``):
      * ``per_type`` (default): one learnable log sigma per type, initialised to sigma = 1; any arch.
      * ``input_head``: a small conv head owned by this loss predicts a per-pixel map from the rainy input
        (call with ``lq=``), initialised to sigma = 1; sigma_k = mean of the type's sample maps.
      * ``arch``: the arch's own map (call with ``uncertainty=``, e.g. ``net.last_uncertainty`` of an arch
        built with ``uncertainty_head: true``), averaged per type the same way.
    The learnable parameters (log sigmas or head) belong to this module: train them with the network
    (UniRainModel gives them their own optimizer param group) and they travel in ``state_dict()``.

    ``weights()`` reports the effective weight 1 / s_k (the mean of 1 / s_k over the map for map sources;
    a type keeps its last value while absent). ``last_log`` adds ``l_wpix_<type>`` (the weighted term) and
    ``l_unc_<type>`` (2 log mean s_k) to the plain ``l_pix_<type>`` and ``w_<type>``.

    Args:
        num_types (int): K. Default: 4.
        criterion (dict | nn.Module | None): base pixel loss; default L1Loss.
        uncertainty (str): 'per_type' (default), 'input_head' or 'arch'.
        eps (float): added to sigma so the division cannot explode. Default: 1e-6.
        channels (int): image channels (input_head). Default: 3.
        head_width (int): feature width of the input head. Default: 16.
        type_names (list[str] | None): log names; default drs, drd, nrs, nrd.
    """

    def __init__(self, num_types=4, criterion=None, uncertainty='per_type', eps=1e-6, channels=3, head_width=16,
                 type_names=None):
        super().__init__(num_types, criterion, type_names)
        if uncertainty not in SOURCES:
            raise ValueError(f'TURLoss uncertainty must be one of {", ".join(SOURCES)}, got {uncertainty!r}')
        if not eps > 0:
            raise ValueError(f'TURLoss eps must be > 0, got {eps!r}')
        self.uncertainty = uncertainty
        self.eps = float(eps)
        if uncertainty == 'per_type':
            self.log_sigma = nn.Parameter(torch.zeros(self.num_types))
        elif uncertainty == 'input_head':
            self.head = InputUncertaintyHead(channels, head_width)
        self.register_buffer('type_weights', torch.ones(self.num_types))
        self.register_buffer('last_weighted', torch.zeros(self.num_types))
        self.register_buffer('last_unc', torch.zeros(self.num_types))

    def weights(self):
        if self.uncertainty == 'per_type':
            weights = 1.0 / (torch.exp(self.log_sigma.detach()) + self.eps)
            return torch.nan_to_num(weights, nan=1.0, posinf=1.0 / self.eps)
        return self.type_weights.clone()

    def sigma_map(self, pred, lq, uncertainty):
        if self.uncertainty == 'input_head':
            if lq is None:
                raise ValueError("TURLoss(uncertainty='input_head') needs the rainy input: call it with lq=...")
            if lq.shape[0] != pred.shape[0] or lq.shape[2:] != pred.shape[2:]:
                raise ValueError(f'TURLoss: lq {tuple(lq.shape)} does not match pred {tuple(pred.shape)}')
            return self.head(lq)
        if uncertainty is None:
            raise ValueError("TURLoss(uncertainty='arch') needs the arch's uncertainty map: the arch must expose "
                             '`last_uncertainty` (build it with uncertainty_head: true) and the caller pass '
                             'uncertainty=net.last_uncertainty')
        if uncertainty.shape != pred.shape:
            raise ValueError(f'TURLoss: uncertainty map {tuple(uncertainty.shape)} does not match pred '
                             f'{tuple(pred.shape)}')
        if not bool((uncertainty > 0).all()):
            raise ValueError('TURLoss: the arch\'s uncertainty map must be positive everywhere (softplus output)')
        return uncertainty

    def forward(self, pred, target, type_ids, lq=None, uncertainty=None, **context):
        ids = self.check_inputs(pred, target, type_ids)
        maps = None if self.uncertainty == 'per_type' else self.sigma_map(pred, lq, uncertainty)
        counts = torch.bincount(ids, minlength=self.num_types).tolist()
        zeros = torch.zeros(self.num_types, device=pred.device)
        plain, weighted, unc, inverse = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
        terms = []
        for t in range(self.num_types):
            if not counts[t]:
                continue
            mask = ids == t
            pred_t, target_t = pred[mask], target[mask]
            if maps is None:
                scale = torch.exp(self.log_sigma[t]) + self.eps
                mean_scale = scale
            else:
                scale = maps[mask].mean(dim=0, keepdim=True) + self.eps
                mean_scale = scale.mean()
            term_weighted = self.criterion_value(pred_t / scale, target_t / scale)
            term_unc = 2 * torch.log(mean_scale)
            terms.append(term_weighted + term_unc)
            with torch.no_grad():
                plain[t] = self.criterion_value(pred_t, target_t)
                weighted[t], unc[t] = term_weighted, term_unc
                inverse[t] = (1.0 / scale).mean()
        present = torch.tensor([c > 0 for c in counts], device=self.last_weighted.device)
        self.last_weighted.copy_(torch.where(present, weighted.to(self.last_weighted), self.last_weighted))
        self.last_unc.copy_(torch.where(present, unc.to(self.last_unc), self.last_unc))
        self.type_weights.copy_(torch.where(present, inverse.to(self.type_weights), self.type_weights))
        extra = {}
        for t, name in enumerate(self.type_names):
            extra[f'l_wpix_{name}'] = self.last_weighted[t].clone()
            extra[f'l_unc_{name}'] = self.last_unc[t].clone()
        self.record(plain, present, self.weights(), extra)
        return torch.stack(terms).mean()
