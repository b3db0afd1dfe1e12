"""UniRain's multi-objective reweighting (paper Eqs. 6-10), which is CoBa (Gong et al., EMNLP 2024)."""
import torch
from torch.nn import functional as F

from basicsr.utils.registry import LOSS_REGISTRY
from unirain_losses.reweighting import TypeReweightedLoss, as_loss_vector, uniform_weights

MODES = ('paper', 'official')
# validation losses are clipped to this magnitude so slopes and their sums stay finite in float64
LOSS_LIMIT = 1e6
# the official script's guards: denominators get +1e-8 and slopes are clamped to +-1e3
OFFICIAL_EPS = 1e-8
OFFICIAL_SLOPE_LIMIT = 1e3


def least_squares_slope(values):
    """Slope of the least-squares line through (s, values[s]), s = 0..n-1, per column; 0 for n < 2.

    values: (n,) or (n, K) float64.
    """
    n = values.shape[0]
    if n < 2:
        return torch.zeros(values.shape[1:], dtype=values.dtype)
    x = torch.arange(n, dtype=values.dtype)
    x = x - x.mean()
    x = x.reshape((n,) + (1,) * (values.dim() - 1))
    centred = values - values.mean(dim=0, keepdim=True)
    return (x * centred).sum(dim=0) / (x * x).sum(dim=0)


def safe_ratio(num, den):
    """num / den, and 0 where den is 0 (all slopes zero: nothing to prefer)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


@LOSS_REGISTRY.register()
class CoBaLoss(TypeReweightedLoss):
    """Per-type weights from the convergence slopes of per-type validation losses (UniRain Eqs. 6-10).

    Each ``update(val_losses)`` appends one row of K per-type validation losses to the history. During the
    first ``warmup_updates`` updates the weights stay uniform (1/K). Afterwards, with the last W = ``window``
    losses of each type (fewer while the history is shorter):

    * alpha_i: least-squares slope of type i's losses against 0..W-1 (negative: converging);
      amax: slope of the worst curve, the element-wise max over types of those losses. Both are appended
      to slope histories that start at the first post-warm-up update.
    * TBS_i = softmax_i(K * alpha_i / sum_j |alpha_j|): types that converge slowly gain weight.
    * TSS_i = softmax_i(-N * alpha_i / sum of |alpha_i| over its last N slopes), N = min(W, slopes so far):
      types whose slope is large against their own recent history (unstable) lose weight.
    * AF, ``mode: paper``: with the m amax values so far, x_s = -tau * m * amax_s / sum_r |amax_r|
      (s = 1..m) and AF = min(m * softmax(x)[m], 1) -- the reading of CoBa's reference implementation:
      one normaliser and one factor m for the whole softmax over time. AF is 1 while the worst curve keeps
      falling as fast as before, and drops when it flattens or rises (divergence), handing the weights to
      TSS.
    * w_i = AF * TBS_i + (1 - AF) * TSS_i, then the floor ``w * (1 - min_weight * K) + min_weight``
      (weights stay summing to 1 and never fall below min_weight).

    ``mode: official`` reproduces the authors' training script (docs/method.md section 2) where it differs:

    * AF = softmax(tau * x)[-1] over only the last N amax values, x_s = -N * amax_s / (sum |amax| + 1e-8)
      with N = min(W, amax values so far): no factor m and no min(., 1), so AF stays near 1/N and TSS
      dominates;
    * the combined w goes through softmax(K * w) twice before the floor;
    * denominators get +1e-8 instead of the zero guard, and slopes are clamped to [-1e3, 1e3].
    Shared by both modes, as in the script: the history of losses is kept from the first update, slope
    histories start after warm-up, N counts the entries actually present. Not reproduced: the script
    loses the whole history on resume (here it is training state) and may add Lightning's sanity-check
    validation to the history.

    Missing or non-finite validation losses: such a type carries its last finite value (its curve is flat
    for that update); while a type has never had a finite value the update is skipped entirely (it does
    not count toward warm-up) and ``update`` returns False. Values are clipped to +-1e6. All-equal or
    zero losses give zero slopes and uniform weights. Weights are therefore always finite, >= min_weight
    and sum to 1.

    Args:
        num_types (int): K. Default: 4.
        criterion (dict | nn.Module | None): base pixel loss; default L1Loss.
        mode (str): 'paper' (default) or 'official'.
        window (int): W, losses per slope fit and slopes per TSS window. Default: 10.
        tau (float): AF temperature. Default: 5.
        warmup_updates (int): updates with uniform weights (validation rounds, not iterations). Default: 20.
        min_weight (float): floor of every weight; min_weight * K must not exceed 1. Default: 0.1.
        type_names (list[str] | None): log names; default drs, drd, nrs, nrd.
    """

    needs_val_losses = True

    def __init__(self, num_types=4, criterion=None, mode='paper', window=10, tau=5.0, warmup_updates=20,
                 min_weight=0.1, type_names=None):
        super().__init__(num_types, criterion, type_names)
        if mode not in MODES:
            raise ValueError(f'CoBaLoss mode must be one of {", ".join(MODES)}, got {mode!r}')
        if int(window) != window or window < 2:
            raise ValueError(f'CoBaLoss window must be an integer >= 2, got {window!r}')
        if int(warmup_updates) != warmup_updates or warmup_updates < 0:
            raise ValueError(f'CoBaLoss warmup_updates must be an integer >= 0, got {warmup_updates!r}')
        if not 0 <= min_weight * self.num_types <= 1:
            raise ValueError(f'CoBaLoss min_weight * num_types must be within [0, 1], got '
                             f'{min_weight} * {self.num_types}')
        if not tau > 0:
            raise ValueError(f'CoBaLoss tau must be > 0, got {tau!r}')
        self.mode = mode
        self.window = int(window)
        self.tau = float(tau)
        self.warmup_updates = int(warmup_updates)
        self.min_weight = float(min_weight)
        self.register_buffer('type_weights', uniform_weights(self.num_types))
        self.loss_history = torch.zeros(0, self.num_types, dtype=torch.float64)
        self.alpha_history = torch.zeros(0, self.num_types, dtype=torch.float64)
        self.amax_history = torch.zeros(0, dtype=torch.float64)

    def weights(self):
        return self.type_weights.clone()

    def update(self, val_losses):
        """Append one row of per-type validation losses and recompute the weights (see the class doc)."""
        values = as_loss_vector(val_losses, self.type_names)
        missing = torch.isnan(values)
        if missing.any():
            if not len(self.loss_history):
                return False
            values = torch.where(missing, self.loss_history[-1], values)
        values = values.clamp(-LOSS_LIMIT, LOSS_LIMIT)
        self.loss_history = torch.cat([self.loss_history, values[None]])
        if len(self.loss_history) <= self.warmup_updates:
            self.type_weights.copy_(uniform_weights(self.num_types))
            return True
        weights = self.compute_weights()
        self.type_weights.copy_(weights.to(self.type_weights))
        return True

    def slope(self, values):
        slope = least_squares_slope(values)
        if self.mode == 'official':
            slope = slope.clamp(-OFFICIAL_SLOPE_LIMIT, OFFICIAL_SLOPE_LIMIT)
        return slope

    def ratio(self, num, den):
        if self.mode == 'official':
            return num / (den + OFFICIAL_EPS)
        return safe_ratio(num, den)

    def compute_weights(self):
        k = self.num_types
        window = self.loss_history[-self.window:]
        alpha = self.slope(window)
        amax = self.slope(window.max(dim=1).values)
        self.alpha_history = torch.cat([self.alpha_history, alpha[None]])
        self.amax_history = torch.cat([self.amax_history, amax[None]])

        tbs = F.softmax(k * self.ratio(alpha, alpha.abs().sum()), dim=0)
        recent = self.alpha_history[-self.window:]
        tss = F.softmax(-len(recent) * self.ratio(alpha, recent.abs().sum(dim=0)), dim=0)
        af = self.adjustment_factor()
        weights = af * tbs + (1 - af) * tss
        if self.mode == 'official':
            weights = F.softmax(k * F.softmax(k * weights, dim=0), dim=0)
        return weights * (1 - self.min_weight * k) + self.min_weight

    def adjustment_factor(self):
        if self.mode == 'official':
            recent = self.amax_history[-self.window:]
            x = -len(recent) * self.ratio(recent, recent.abs().sum())
            return F.softmax(self.tau * x, dim=0)[-1]
        m = len(self.amax_history)
        x = -self.tau * m * self.ratio(self.amax_history, self.amax_history.abs().sum())
        return torch.clamp(m * F.softmax(x, dim=0)[-1], max=1.0)

    def get_extra_state(self):
        return {'loss_history': self.loss_history.clone(), 'alpha_history': self.alpha_history.clone(),
                'amax_history': self.amax_history.clone()}

    def set_extra_state(self, state):
        for key in ('loss_history', 'alpha_history', 'amax_history'):
            if key not in state:
                raise KeyError(f'CoBaLoss state has no {key!r} (saved by another version?)')
        loss_history = state['loss_history'].detach().to('cpu', torch.float64)
        alpha_history = state['alpha_history'].detach().to('cpu', torch.float64)
        if loss_history.dim() != 2 or loss_history.shape[1] != self.num_types or \
                alpha_history.dim() != 2 or alpha_history.shape[1] != self.num_types:
            raise ValueError(f'CoBaLoss state holds histories for {loss_history.shape[-1]} types; this loss has '
                             f'num_types={self.num_types}')
        self.loss_history = loss_history
        self.alpha_history = alpha_history
        self.amax_history = state['amax_history'].detach().to('cpu', torch.float64)
