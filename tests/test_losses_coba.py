"""CoBaLoss: the paper and official formulas on small hand-computed histories, warm-up, floor, edge cases, state."""
import io
import math

import pytest
import torch

import unirain_losses  # noqa: F401  (registers the strategies)
from basicsr.losses import build_loss
from unirain_losses.coba_loss import CoBaLoss, least_squares_slope


def second_of_softmax(a, b):
    """softmax([a, b])[1] in closed form."""
    return 1.0 / (1.0 + math.exp(a - b))


def two_type_loss(mode):
    return CoBaLoss(num_types=2, mode=mode, window=3, tau=1.0, warmup_updates=2, min_weight=0.1)


# Two types, three updates past a two-update warm-up. Type 0 converges twice as fast as type 1.
HISTORY = [[1.0, 1.0], [0.8, 0.9], [0.6, 0.8], [0.5, 0.75]]


def test_slope_is_the_least_squares_line():
    assert least_squares_slope(torch.tensor([1.0, 0.8, 0.6], dtype=torch.float64)).item() == pytest.approx(-0.2)
    # (y3 - y1) / 2 for three points; a line through noise-free points gives its slope exactly
    assert least_squares_slope(torch.tensor([0.8, 0.6, 0.5], dtype=torch.float64)).item() == pytest.approx(-0.15)
    cols = least_squares_slope(torch.tensor([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0], [6.0, 5.0]], dtype=torch.float64))
    assert cols.tolist() == pytest.approx([2.0, 0.0])
    assert least_squares_slope(torch.tensor([3.0], dtype=torch.float64)).item() == 0.0


def test_paper_mode_matches_hand_computation():
    loss = two_type_loss('paper')
    for row in HISTORY[:2]:
        assert loss.update(row)
        assert loss.weights().tolist() == [0.5, 0.5]

    # update 3: alpha = [-0.2, -0.1], sum |alpha| = 0.3 -> TBS = softmax(2 * alpha / 0.3) = softmax([-4/3, -2/3]);
    # TSS over one slope each: softmax([1, 1]) = uniform; AF: m = 1, x = [1] -> min(1 * 1, 1) = 1 -> w = TBS.
    tbs_slow = second_of_softmax(-4 / 3, -2 / 3)
    assert tbs_slow == pytest.approx(0.6607564, abs=1e-7)
    loss.update(HISTORY[2])
    expected = [(1 - tbs_slow) * 0.8 + 0.1, tbs_slow * 0.8 + 0.1]  # floor: w * (1 - 0.1 * 2) + 0.1
    assert loss.weights().tolist() == pytest.approx(expected, abs=1e-6)
    assert loss.weights().tolist() == pytest.approx([0.3713949, 0.6286051], abs=1e-6)

    # update 4: window [0.8, 0.6, 0.5] / [0.9, 0.8, 0.75] -> alpha = [-0.15, -0.075] (same TBS);
    # TSS: -2 * alpha / [0.35, 0.175] = [0.857, 0.857] -> uniform;
    # amax: worst curve [0.9, 0.8, 0.75] -> -0.075; history [-0.1, -0.075], sum 0.175, m = 2,
    # x = -1 * 2 * [-0.1, -0.075] / 0.175 = [8/7, 6/7] -> AF = min(2 * softmax(x)[1], 1).
    af = min(2 * second_of_softmax(8 / 7, 6 / 7), 1.0)
    assert af == pytest.approx(0.8581068, abs=1e-7)
    w_slow = af * tbs_slow + (1 - af) * 0.5
    loss.update(HISTORY[3])
    assert loss.weights().tolist() == pytest.approx([(1 - w_slow) * 0.8 + 0.1, w_slow * 0.8 + 0.1], abs=1e-6)
    assert loss.weights().tolist() == pytest.approx([0.3896431, 0.6103569], abs=1e-6)
    assert loss.alpha_history.flatten().tolist() == pytest.approx([-0.2, -0.1, -0.15, -0.075])
    assert loss.amax_history.tolist() == pytest.approx([-0.1, -0.075])


def test_official_mode_reproduces_the_script_quirks():
    loss = two_type_loss('official')
    for row in HISTORY[:2]:
        loss.update(row)
        assert loss.weights().tolist() == [0.5, 0.5]

    def twice_softmax_then_floor(w_slow):
        # softmax(K * w) applied twice (K = 2), then the floor
        for _ in range(2):
            w_slow = second_of_softmax(2 * (1 - w_slow), 2 * w_slow)
        return [(1 - w_slow) * 0.8 + 0.1, w_slow * 0.8 + 0.1]

    tbs_slow = second_of_softmax(-4 / 3, -2 / 3)
    loss.update(HISTORY[2])  # AF = softmax over one value = 1 -> w = TBS, then the double softmax
    assert loss.weights().tolist() == pytest.approx(twice_softmax_then_floor(tbs_slow), abs=1e-6)
    assert loss.weights().tolist() == pytest.approx([0.3795072, 0.6204928], abs=1e-6)

    # AF without the factor m and without min(., 1): softmax(tau * x)[-1] over the amax window only
    af = second_of_softmax(8 / 7, 6 / 7)
    assert af == pytest.approx(0.4290534, abs=1e-7)
    loss.update(HISTORY[3])
    expected = twice_softmax_then_floor(af * tbs_slow + (1 - af) * 0.5)
    assert loss.weights().tolist() == pytest.approx(expected, abs=1e-6)
    paper = two_type_loss('paper')
    for row in HISTORY:
        paper.update(row)
    assert not torch.allclose(paper.weights(), loss.weights(), atol=1e-3)


def test_official_windows_cover_only_the_last_w_slopes():
    """After more than W post-warm-up updates the official AF sees only the last W amax values."""
    loss = CoBaLoss(num_types=2, mode='official', window=3, tau=1.0, warmup_updates=0, min_weight=0.1)
    rows = [[1.0, 1.0], [0.9, 0.95], [0.7, 0.9], [0.6, 0.88], [0.55, 0.8], [0.5, 0.79]]
    for row in rows:
        loss.update(row)
    assert len(loss.amax_history) == len(rows)
    recent = loss.amax_history[-3:]
    x = -3 * recent / (recent.abs().sum() + 1e-8)
    assert loss.adjustment_factor().item() == pytest.approx(torch.softmax(x, 0)[-1].item(), abs=1e-12)
    paper = CoBaLoss(num_types=2, mode='paper', window=3, tau=1.0, warmup_updates=0, min_weight=0.1)
    for row in rows:
        paper.update(row)
    full = paper.amax_history
    x = -len(full) * full / full.abs().sum()
    assert paper.adjustment_factor().item() == pytest.approx(min(len(full) * torch.softmax(x, 0)[-1].item(), 1))


def test_warmup_is_uniform_for_exactly_warmup_updates():
    loss = CoBaLoss(warmup_updates=20)
    for i in range(20):
        assert loss.update([1.0 - 0.04 * i, 1.0 - 0.001 * i, 1.0 - 0.02 * i, 1.0 - 0.03 * i])
        assert torch.equal(loss.weights(), torch.full((4,), 0.25))
    assert len(loss.alpha_history) == 0  # slope histories start after warm-up
    loss.update([0.18, 0.979, 0.58, 0.37])
    weights = loss.weights()
    assert not torch.allclose(weights, torch.full((4,), 0.25))
    assert int(weights.argmax()) == 1  # the type that barely converges gains weight
    assert int(weights.argmin()) == 0  # the fastest loses it
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize('mode', ['paper', 'official'])
def test_floor_keeps_every_weight_above_min_weight(mode):
    loss = CoBaLoss(mode=mode, warmup_updates=0, window=4)
    # type 0 collapses quickly, the others barely move: unconstrained weights would starve type 0
    for i in range(12):
        loss.update([1.0 / (i + 1) ** 3, 1.0 - 1e-4 * i, 1.0 - 2e-4 * i, 1.0 - 1e-4 * i])
        weights = loss.weights()
        assert torch.isfinite(weights).all()
        assert weights.min().item() >= 0.1 - 1e-7
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert int(loss.weights().argmin()) == 0  # the type that converges fastest gets the least


def test_min_weight_zero_and_too_large_are_handled():
    loss = CoBaLoss(num_types=2, warmup_updates=0, min_weight=0.0)
    loss.update([1.0, 1.0])
    loss.update([0.5, 0.99])
    assert loss.weights().sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match='min_weight'):
        CoBaLoss(num_types=4, min_weight=0.3)


@pytest.mark.parametrize('mode', ['paper', 'official'])
def test_zero_and_equal_losses_give_uniform_finite_weights(mode):
    for value in (0.0, 0.37):
        loss = CoBaLoss(mode=mode, warmup_updates=1, window=3)
        for _ in range(6):
            loss.update([value] * 4)
            weights = loss.weights()
            assert torch.isfinite(weights).all()
            assert weights.tolist() == pytest.approx([0.25] * 4, abs=1e-6)


def test_missing_and_non_finite_losses_carry_the_last_value():
    loss = CoBaLoss(warmup_updates=0, window=3)
    # no finite value yet for type 2: the update is skipped and does not count
    assert not loss.update([1.0, 1.0, float('nan'), 1.0])
    assert len(loss.loss_history) == 0
    assert loss.weights().tolist() == [0.25] * 4
    assert loss.update([1.0, 1.0, 1.0, 1.0])
    assert loss.update({'drs': 0.9, 'DRD': float('inf'), 'nrs': None, 'nrd': 0.8})  # nrs given as None
    assert loss.loss_history[-1].tolist() == [0.9, 1.0, 1.0, 0.8]
    assert loss.update({0: 0.8, 3: 0.7})  # types 1 and 2 missing from the dict
    assert loss.loss_history[-1].tolist() == [0.8, 1.0, 1.0, 0.7]
    assert loss.update(torch.tensor([float('-inf'), 0.95, 0.9, 0.6], dtype=torch.float64))
    assert loss.loss_history[-1].tolist() == [0.8, 0.95, 0.9, 0.6]
    assert torch.isfinite(loss.weights()).all()
    assert loss.weights().sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize('mode', ['paper', 'official'])
def test_huge_and_tiny_losses_stay_finite(mode):
    loss = CoBaLoss(mode=mode, warmup_updates=0, window=3)
    for row in ([1e300, 1e-300, 5e-324, 1.0], [1e308, 0.0, 1e-310, 2.0], [-1e308, 1e-320, 0.0, 1e30]):
        loss.update(row)
        assert torch.isfinite(loss.weights()).all()
        assert loss.weights().min().item() >= 0.1 - 1e-7
    assert loss.loss_history.abs().max().item() <= 1e6


def test_bad_inputs_are_named():
    loss = CoBaLoss()
    with pytest.raises(ValueError, match='3 validation losses for 4 types'):
        loss.update([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown type 'rain'"):
        loss.update({'rain': 1.0})
    with pytest.raises(ValueError, match='mode'):
        CoBaLoss(mode='lightning')
    with pytest.raises(ValueError, match='window'):
        CoBaLoss(window=1)


def test_batch_loss_uses_the_current_weights():
    loss = CoBaLoss(num_types=2, warmup_updates=0, window=3)
    for row in HISTORY:
        loss.update(row)
    w = loss.weights()
    pred = torch.zeros(3, 1, 2, 2, requires_grad=True)
    target = torch.tensor([0.2, 0.4, 0.3]).reshape(3, 1, 1, 1).expand(3, 1, 2, 2)
    value = loss(pred, target, torch.tensor([0, 1, 0]))
    # L1 of type 0 = (0.2 + 0.3) / 2 over its 2 samples, type 1 = 0.4 over 1; L = sum w_t L1_t n_t / B
    expected = (w[0] * 0.25 * 2 + w[1] * 0.4 * 1) / 3
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    value.backward()
    assert pred.grad is not None
    assert loss.last_log['w_type0'].item() == pytest.approx(w[0].item())
    assert loss.last_log['l_pix_type1'].item() == pytest.approx(0.4)


def test_state_round_trips_through_state_dict_and_torch_save():
    loss = CoBaLoss(warmup_updates=2, window=4)
    rows = [[1.0 - 0.05 * i, 1.0 - 0.01 * i * i, 0.9 - 0.02 * i, 1.0 / (i + 1)] for i in range(9)]
    for row in rows[:6]:
        loss.update(row)
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, map_location='cpu', weights_only=True)

    restored = build_loss({'type': 'CoBaLoss', 'warmup_updates': 2, 'window': 4})
    restored.load_state_dict(state)
    assert torch.equal(restored.weights(), loss.weights())
    for key in ('loss_history', 'alpha_history', 'amax_history'):
        assert torch.equal(getattr(restored, key), getattr(loss, key))
    for row in rows[6:]:
        loss.update(row)
        restored.update(row)
        assert torch.equal(restored.weights(), loss.weights())

    with pytest.raises(ValueError, match='num_types'):
        CoBaLoss(num_types=3, type_names=['a', 'b', 'c']).set_extra_state(loss.get_extra_state())
