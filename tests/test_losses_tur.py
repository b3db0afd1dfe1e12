"""TURLoss: per-type terms from own samples, the three uncertainty sources, its optimum, and its state."""
import math

import pytest
import torch

import unirain_losses  # noqa: F401  (registers the strategies)
from basicsr.losses import build_loss
from unirain_losses.tur_loss import TURLoss

EPS = 1e-6


def batch():
    """Four samples, types [0, 2, 0, 3]; |pred - gt| is constant per sample: 0.1, 0.4, 0.3, 0.2."""
    errors = torch.tensor([0.1, 0.4, 0.3, 0.2])
    target = torch.rand(4, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    pred = (target + errors.reshape(4, 1, 1, 1)).requires_grad_(True)
    return pred, target, torch.tensor([0, 2, 0, 3])


def test_per_type_starts_at_sigma_one_as_the_mean_of_per_type_l1():
    pred, target, ids = batch()
    loss = TURLoss()
    value = loss(pred, target, ids)
    # types present: 0 (L1 (0.1 + 0.3) / 2 = 0.2), 2 (0.4), 3 (0.2); mean over the three types
    per_type = [0.2, 0.4, 0.2]
    expected = sum(l1 / (1 + EPS) + 2 * math.log(1 + EPS) for l1 in per_type) / 3
    assert value.item() == pytest.approx(expected, abs=1e-6)
    assert loss.weights().tolist() == pytest.approx([1 / (1 + EPS)] * 4)
    log = loss.last_log
    assert log['l_pix_drs'].item() == pytest.approx(0.2, abs=1e-6)
    assert log['l_pix_nrs'].item() == pytest.approx(0.4, abs=1e-6)
    assert log['l_pix_drd'].item() == 0.0  # never seen yet
    assert set(log) == {f'{k}_{t}' for k in ('l_pix', 'w', 'l_wpix', 'l_unc') for t in ('drs', 'drd', 'nrs', 'nrd')}


def test_per_type_with_learned_scales_matches_hand_computation():
    pred, target, ids = batch()
    loss = TURLoss()
    sigmas = torch.tensor([0.5, 2.0, 0.1, 4.0])
    with torch.no_grad():
        loss.log_sigma.copy_(sigmas.log())
    value = loss(pred, target, ids)
    terms = [l1 / (s + EPS) + 2 * math.log(s + EPS) for l1, s in ((0.2, 0.5), (0.4, 0.1), (0.2, 4.0))]
    assert value.item() == pytest.approx(sum(terms) / 3, rel=1e-5)
    assert loss.last_log['l_wpix_nrs'].item() == pytest.approx(0.4 / (0.1 + EPS), rel=1e-5)
    assert loss.last_log['l_unc_nrd'].item() == pytest.approx(2 * math.log(4.0 + EPS), rel=1e-5)
    assert loss.weights().tolist() == pytest.approx((1 / (sigmas + EPS)).tolist(), rel=1e-5)


def test_each_type_term_uses_only_its_own_samples():
    pred, target, ids = batch()
    loss = TURLoss()
    with torch.no_grad():
        loss.log_sigma.copy_(torch.tensor([0.5, 2.0, 0.1, 4.0]).log())
    loss(pred, target, ids).backward()
    pixels = 3 * 5 * 7
    # d/dpred of mean_k(L1_k / s_k): sign / (s_k * n_k * pixels * types present)
    for sample, (sigma, count) in enumerate([(0.5, 2), (0.1, 1), (0.5, 2), (4.0, 1)]):
        expected = 1 / ((sigma + EPS) * count * pixels * 3)
        assert pred.grad[sample].abs().mean().item() == pytest.approx(expected, rel=1e-4)
    # the unseen type's scale gets no gradient, the seen ones do
    assert loss.log_sigma.grad[1].item() == 0.0
    assert (loss.log_sigma.grad[[0, 2, 3]] != 0).all()


def test_per_type_scale_converges_to_half_the_l1():
    pred, target, ids = batch()
    pred = pred.detach()
    loss = TURLoss()
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(600):
        optimizer.zero_grad()
        loss(pred, target, ids).backward()
        optimizer.step()
    sigma = loss.log_sigma.detach().exp()
    assert sigma[[0, 2, 3]].tolist() == pytest.approx([0.1, 0.2, 0.1], rel=1e-2)  # L1_k / 2
    assert sigma[1].item() == 1.0  # never present: untouched


def test_input_head_starts_at_one_and_works_on_non_square_images():
    pred, target, ids = batch()
    lq = torch.rand(4, 3, 5, 7)
    head_loss = TURLoss(uncertainty='input_head')
    value = head_loss(pred, target, ids, lq=lq)
    assert value.item() == pytest.approx(TURLoss()(pred, target, ids).item(), abs=1e-5)
    value.backward()
    assert all(p.grad is not None for p in head_loss.head.parameters())
    with pytest.raises(ValueError, match='needs the rainy input'):
        head_loss(pred, target, ids)
    with pytest.raises(ValueError, match='does not match'):
        head_loss(pred, target, ids, lq=torch.rand(4, 3, 6, 7))


def test_arch_map_is_averaged_per_type():
    pred, target, ids = batch()
    maps = torch.ones(4, 3, 5, 7)
    maps[0] = 1.0  # type 0: mean of samples 0 and 2 -> (1 + 3) / 2 = 2 everywhere
    maps[2] = 3.0
    maps[1] = 0.5
    maps[3, :, :, :3] = 2.0  # type 3: half-ish the pixels at 2, the rest at 1
    loss = TURLoss(uncertainty='arch')
    value = loss(pred, target, ids, uncertainty=maps)
    m3 = maps[3] + EPS
    term3 = (0.2 / m3).mean().item() + 2 * math.log(m3.mean().item())
    terms = [0.2 / (2 + EPS) + 2 * math.log(2 + EPS), 0.4 / (0.5 + EPS) + 2 * math.log(0.5 + EPS), term3]
    assert value.item() == pytest.approx(sum(terms) / 3, rel=1e-5)
    assert loss.weights()[0].item() == pytest.approx(1 / (2 + EPS), rel=1e-5)
    assert loss.weights()[1].item() == 1.0  # absent: keeps its initial value
    with pytest.raises(ValueError, match='last_uncertainty'):
        loss(pred, target, ids)
    with pytest.raises(ValueError, match='positive'):
        loss(pred, target, ids, uncertainty=maps - 1.0)


def test_absent_types_keep_their_logged_values():
    pred, target, ids = batch()
    loss = TURLoss(uncertainty='input_head')
    loss(pred, target, ids, lq=torch.rand(4, 3, 5, 7))
    first = {k: v.item() for k, v in loss.last_log.items()}
    loss(pred[:1], target[:1], ids[:1], lq=torch.rand(1, 3, 5, 7))  # only type 0
    second = {k: v.item() for k, v in loss.last_log.items()}
    assert second.keys() == first.keys()
    for name in ('nrs', 'nrd'):
        assert second[f'l_pix_{name}'] == first[f'l_pix_{name}']
        assert second[f'w_{name}'] == first[f'w_{name}']
    assert second['l_pix_drs'] == pytest.approx(0.1, abs=1e-6)


def test_weights_stay_finite_when_the_scale_degenerates():
    loss = TURLoss()
    with torch.no_grad():
        loss.log_sigma.copy_(torch.tensor([-1e4, 1e4, float('nan'), 0.0]))
    weights = loss.weights()
    assert torch.isfinite(weights).all()
    assert weights[0].item() == pytest.approx(1 / EPS)


def test_state_round_trips_learnable_parameters_and_buffers():
    pred, target, ids = batch()
    lq = torch.rand(4, 3, 5, 7)
    for source in ('per_type', 'input_head'):
        loss = TURLoss(uncertainty=source)
        optimizer = torch.optim.Adam(loss.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            loss(pred.detach(), target, ids, lq=lq).backward()
            optimizer.step()
        restored = build_loss({'type': 'TURLoss', 'uncertainty': source})
        restored.load_state_dict(loss.state_dict())
        for (name, a), (_, b) in zip(loss.state_dict().items(), restored.state_dict().items()):
            assert torch.equal(a, b), name
        assert torch.equal(restored.weights(), loss.weights())
        assert restored(pred, target, ids, lq=lq).item() == loss(pred, target, ids, lq=lq).item()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match='uncertainty must be one of'):
        TURLoss(uncertainty='gaussian')
    with pytest.raises(ValueError, match='eps'):
        TURLoss(eps=0)
