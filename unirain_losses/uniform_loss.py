"""Fixed per-type weights: the baseline the learned strategies are compared against."""
import math

import torch

from basicsr.utils.registry import LOSS_REGISTRY
from unirain_losses.reweighting import TypeReweightedLoss, uniform_weights


@LOSS_REGISTRY.register()
class UniformTypeLoss(TypeReweightedLoss):
    """``L = sum_t w_t * C_t * n_t / B`` with fixed weights.

    The default 1/K per type matches CoBa's warm-up and keeps the loss on the same scale as CoBaLoss, so
    an ablation changes only the strategy; ``weights: [1, 1, 1, 1]`` gives the plain batch-mean criterion.

    Args:
        num_types (int): K. Default: 4.
        criterion (dict | nn.Module | None): base pixel loss; default L1Loss.
        weights (list[float] | None): K finite, non-negative weights; default 1/K each.
        type_names (list[str] | None): log names; default drs, drd, nrs, nrd.
    """

    def __init__(self, num_types=4, criterion=None, weights=None, type_names=None):
        super().__init__(num_types, criterion, type_names)
        if weights is None:
            fixed = uniform_weights(self.num_types)
        else:
            values = [float(w) for w in weights]
            if len(values) != self.num_types:
                raise ValueError(f'UniformTypeLoss weights has {len(values)} values for num_types={self.num_types}')
            if not all(math.isfinite(w) and w >= 0 for w in values):
                raise ValueError(f'UniformTypeLoss weights must be finite and >= 0, got {values}')
            fixed = torch.tensor(values, dtype=torch.float32)
        self.register_buffer('type_weights', fixed)

    def weights(self):
        return self.type_weights.clone()
