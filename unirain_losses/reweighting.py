"""The interface every per-type reweighting strategy implements (LibMTL style: one base class, many strategies).

A strategy is a pixel loss that knows the rain type of each sample. It wraps a base pixel criterion (any
loss in BasicSR's LOSS_REGISTRY that reduces to a mean, L1Loss by default), computes that criterion on
each type's own samples and combines the per-type values with its weights. It is a plain
``torch.nn.Module``: another project can import and call it without BasicSR's training loop.

    loss = strategy(pred, target, type_ids, lq=lq)   # scalar, differentiable
    strategy.weights()                               # (K,) current per-type weights, always finite
    strategy.update(val_losses)                      # per-type validation losses (CoBa uses them)
    strategy.last_log                                # {'l_pix_drs': ..., 'w_drs': ...} of the last call
    strategy.state_dict()                            # weights, histories, learnable parameters
"""
import math

import torch
from torch import nn

from basicsr.losses import build_loss
from unirain_utils.rain_types import RAIN_TYPES


def default_type_names(num_types):
    """Lower-case log names: the four rain types when K = 4, ``type0``... otherwise."""
    if num_types == len(RAIN_TYPES):
        return [name.lower() for name in RAIN_TYPES]
    return [f'type{i}' for i in range(num_types)]


def build_criterion(criterion):
    """The base pixel criterion: an option dict (``{type: L1Loss, ...}``), a module, or None for L1Loss."""
    if criterion is None:
        criterion = {'type': 'L1Loss'}
    if isinstance(criterion, nn.Module):
        module = criterion
    elif isinstance(criterion, dict):
        if 'type' not in criterion:
            raise ValueError(f'criterion {dict(criterion)!r} has no "type" (a loss name such as L1Loss)')
        reduction = criterion.get('reduction', 'mean')
        if reduction != 'mean':
            raise ValueError(f'criterion {criterion["type"]}: reduction must be "mean" (the strategy takes the '
                             f'mean over each type\'s samples), got {reduction!r}')
        module = build_loss(dict(criterion))
    else:
        raise TypeError(f'criterion must be an option dict or an nn.Module, got {type(criterion).__name__}')
    if isinstance(module, TypeReweightedLoss):
        raise ValueError(f'criterion {type(module).__name__} is itself a per-type strategy; give a pixel loss '
                         '(L1Loss, CharbonnierLoss, MSELoss, ...)')
    return module


class TypeReweightedLoss(nn.Module):
    """Base class: ``L = sum_t w_t * C_t * n_t / B`` over the K types (C_t: criterion on type t's n_t samples).

    A type absent from the batch contributes 0. Subclasses choose the weights (``weights()``) and may
    learn from per-type validation losses (``update``; set ``needs_val_losses = True``) or override
    ``forward`` entirely (TUR). ``last_log`` keeps, per type, the plain criterion value of the latest
    batch that held the type (absent types keep their previous value) and the current weight.

    Args:
        num_types (int): K, the number of types; type ids are 0..K-1. Default: 4 (DRS, DRD, NRS, NRD).
        criterion (dict | nn.Module | None): base pixel loss; None means ``{type: L1Loss}``.
        type_names (list[str] | None): names used in log keys; default drs, drd, nrs, nrd.
    """

    needs_val_losses = False

    def __init__(self, num_types=4, criterion=None, type_names=None):
        super().__init__()
        if int(num_types) != num_types or num_types < 1:
            raise ValueError(f'num_types must be a positive integer, got {num_types!r}')
        self.num_types = int(num_types)
        self.type_names = list(type_names) if type_names is not None else default_type_names(self.num_types)
        if len(self.type_names) != self.num_types:
            raise ValueError(f'type_names has {len(self.type_names)} names for num_types={self.num_types}')
        self.criterion = build_criterion(criterion)
        self.register_buffer('last_type_loss', torch.zeros(self.num_types))
        self.last_log = {}

    def weights(self):
        """(K,) float tensor of the current per-type weights."""
        raise NotImplementedError

    def update(self, val_losses):
        """Feed per-type validation losses; returns True when the strategy used them. Default: ignores them."""
        return False

    def check_inputs(self, pred, target, type_ids):
        """Validated (B,) LongTensor of type ids on pred's device."""
        if pred.shape != target.shape:
            raise ValueError(f'pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape')
        if type_ids is None:
            raise ValueError('type_ids is None: the dataset must provide type ids (use DistilledRainDataset)')
        ids = torch.as_tensor(type_ids, device=pred.device).long().reshape(-1)
        if ids.numel() != pred.shape[0]:
            raise ValueError(f'{ids.numel()} type ids for a batch of {pred.shape[0]} samples')
        bad = ((ids < 0) | (ids >= self.num_types)).nonzero()
        if bad.numel():
            raise ValueError(f'type id {int(ids[bad[0, 0]])} out of range 0..{self.num_types - 1} '
                             f'(num_types={self.num_types})')
        return ids

    def criterion_value(self, pred, target):
        value = self.criterion(pred, target)
        if value.dim() != 0:
            raise ValueError(f'criterion {type(self.criterion).__name__} returned shape {tuple(value.shape)}; '
                             'it must reduce to a scalar (reduction: mean)')
        return value

    def per_type_losses(self, pred, target, type_ids):
        """(losses, counts): (K,) criterion per type (0 where absent, differentiable) and (K,) sample counts."""
        counts = torch.bincount(type_ids, minlength=self.num_types)
        present = counts.tolist()
        losses = [self.criterion_value(pred[type_ids == t], target[type_ids == t]) if present[t]
                  else pred.new_zeros(()) for t in range(self.num_types)]
        return torch.stack(losses), counts.to(pred.dtype)

    def forward(self, pred, target, type_ids, **context):
        """Weighted loss of a batch; ``context`` (lq, uncertainty, ...) is for strategies that need it."""
        ids = self.check_inputs(pred, target, type_ids)
        losses, counts = self.per_type_losses(pred, target, ids)
        weights = self.weights().to(device=pred.device, dtype=pred.dtype)
        self.record(losses.detach(), counts > 0, weights)
        return (weights * losses * counts).sum() / pred.shape[0]

    def record(self, losses, present, weights, extra=None):
        """Update ``last_log``: per-type criterion (carried for absent types), weights, and extra entries."""
        losses = losses.to(self.last_type_loss)
        present = present.to(self.last_type_loss.device)
        self.last_type_loss.copy_(torch.where(present, losses, self.last_type_loss))
        log = {}
        for t, name in enumerate(self.type_names):
            log[f'l_pix_{name}'] = self.last_type_loss[t].clone()
        for t, name in enumerate(self.type_names):
            log[f'w_{name}'] = weights[t].detach().clone()
        log.update(extra or {})
        self.last_log = log


def uniform_weights(num_types, dtype=torch.float32):
    return torch.full((num_types,), 1.0 / num_types, dtype=dtype)


def as_loss_vector(values, type_names):
    """(K,) float64 from a sequence / tensor of K values or a {name or id: value} dict; NaN where missing.

    None, NaN and inf all read as missing. Names match in any case (``DRS``, ``drs``).
    """
    num_types = len(type_names)
    out = torch.full((num_types,), math.nan, dtype=torch.float64)
    if isinstance(values, dict):
        index = {name.lower(): t for t, name in enumerate(type_names)}
        for key, value in values.items():
            t = key if isinstance(key, int) else index.get(str(key).lower())
            if t is None or not 0 <= t < num_types:
                raise ValueError(f'validation loss for unknown type {key!r}; types are {", ".join(type_names)}')
            out[t] = math.nan if value is None else float(value)
    else:
        seq = values.detach().cpu().reshape(-1).tolist() if torch.is_tensor(values) else list(values)
        if len(seq) != num_types:
            raise ValueError(f'{len(seq)} validation losses for {num_types} types ({", ".join(type_names)})')
        for t, value in enumerate(seq):
            out[t] = math.nan if value is None else float(value)
    out[~torch.isfinite(out)] = math.nan
    return out
