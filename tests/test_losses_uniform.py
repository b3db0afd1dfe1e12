"""UniformTypeLoss and the shared interface: the batch formula, base criteria by name, input checks, state."""
import pytest
import torch

import unirain_losses  # noqa: F401  (registers the strategies)
from basicsr.losses import build_loss
from unirain_losses.reweighting import TypeReweightedLoss
from unirain_losses.uniform_loss import UniformTypeLoss


def constant_error_batch():
    """Five samples of types [0, 1, 1, 3, 0] with |pred - gt| = 0.1, 0.2, 0.4, 0.5, 0.3."""
    target = torch.full((5, 3, 4, 6), 0.5)
    errors = torch.tensor([0.1, -0.2, 0.4, 0.5, -0.3]).reshape(5, 1, 1, 1)
    return (target + errors).requires_grad_(True), target, torch.tensor([0, 1, 1, 3, 0])


def test_default_weights_are_uniform_and_the_formula_holds():
    pred, target, ids = constant_error_batch()
    loss = build_loss({'type': 'UniformTypeLoss'})
    assert isinstance(loss, TypeReweightedLoss)
    assert loss.weights().tolist() == [0.25] * 4
    # per-type L1: t0 (0.1 + 0.3) / 2 = 0.2 (n 2), t1 (0.2 + 0.4) / 2 = 0.3 (n 2), t3 0.5 (n 1); B = 5
    expected = 0.25 * (0.2 * 2 + 0.3 * 2 + 0.5 * 1) / 5
    assert loss(pred, target, ids).item() == pytest.approx(expected, abs=1e-6)
    # weights 1 everywhere: the plain batch-mean L1
    plain = UniformTypeLoss(weights=[1, 1, 1, 1])
    assert plain(pred, target, ids).item() == pytest.approx((pred - target).abs().mean().item(), abs=1e-6)


def test_custom_weights_and_logs():
    pred, target, ids = constant_error_batch()
    loss = UniformTypeLoss(weights=[1.0, 2.0, 3.0, 4.0])
    value = loss(pred, target, ids)
    assert value.item() == pytest.approx((1 * 0.2 * 2 + 2 * 0.3 * 2 + 4 * 0.5) / 5, abs=1e-6)
    log = loss.last_log
    assert [log[f'w_{t}'].item() for t in ('drs', 'drd', 'nrs', 'nrd')] == [1.0, 2.0, 3.0, 4.0]
    assert log['l_pix_drd'].item() == pytest.approx(0.3, abs=1e-6)
    assert log['l_pix_nrs'].item() == 0.0  # absent from every batch so far
    assert not loss.update([0.1, 0.2, 0.3, 0.4])  # fixed weights ignore validation losses
    assert loss.weights().tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize('criterion', [{'type': 'CharbonnierLoss', 'eps': 1e-12}, {'type': 'MSELoss'},
                                       torch.nn.SmoothL1Loss()])
def test_any_registered_pixel_loss_or_module_is_the_base_criterion(criterion):
    pred, target, ids = constant_error_batch()
    loss = UniformTypeLoss(weights=[1, 1, 1, 1], criterion=criterion)
    base = build_loss(criterion) if isinstance(criterion, dict) else criterion
    expected = sum(base(pred[ids == t], target[ids == t]) * (ids == t).sum() for t in (0, 1, 3)) / 5
    assert loss(pred, target, ids).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bad_criterion_and_weights_are_named():
    with pytest.raises(ValueError, match='reduction must be "mean"'):
        UniformTypeLoss(criterion={'type': 'L1Loss', 'reduction': 'sum'})
    with pytest.raises(ValueError, match='itself a per-type strategy'):
        UniformTypeLoss(criterion={'type': 'CoBaLoss'})
    with pytest.raises(KeyError, match='NoSuchLoss'):
        UniformTypeLoss(criterion={'type': 'NoSuchLoss'})
    with pytest.raises(ValueError, match='3 values for num_types=4'):
        UniformTypeLoss(weights=[1, 1, 1])
    with pytest.raises(ValueError, match='finite and >= 0'):
        UniformTypeLoss(weights=[1, -1, 1, 1])
    with pytest.raises(ValueError, match='finite and >= 0'):
        UniformTypeLoss(weights=[1, float('nan'), 1, 1])


def test_bad_type_ids_are_named():
    pred, target, _ = constant_error_batch()
    loss = UniformTypeLoss()
    with pytest.raises(ValueError, match='type id 4 out of range 0..3'):
        loss(pred, target, torch.tensor([0, 1, 4, 3, 0]))
    with pytest.raises(ValueError, match='3 type ids for a batch of 5'):
        loss(pred, target, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match='use DistilledRainDataset'):
        loss(pred, target, None)
    with pytest.raises(ValueError, match='differ in shape'):
        loss(pred, target[:, :, :2], torch.tensor([0, 1, 1, 3, 0]))


def test_other_type_counts_and_names():
    pred, target, ids = constant_error_batch()
    loss = UniformTypeLoss(num_types=5, type_names=['a', 'b', 'c', 'd', 'e'])
    loss(pred, target, ids)
    assert set(loss.last_log) == {f'{k}_{n}' for k in ('l_pix', 'w') for n in 'abcde'}
    assert loss.weights().tolist() == pytest.approx([0.2] * 5)
    assert UniformTypeLoss(num_types=2).type_names == ['type0', 'type1']


def test_state_round_trip():
    pred, target, ids = constant_error_batch()
    loss = UniformTypeLoss(weights=[0.5, 1.5, 2.5, 3.5])
    loss(pred, target, ids)
    restored = UniformTypeLoss()
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.weights(), loss.weights())
    assert torch.equal(restored.last_type_loss, loss.last_type_loss)
