"""train.amp (bf16 / fp16 mixed precision) and train.compile in UniRainModel, on CPU."""
import collections
import copy

import pytest
import torch

import unirain_arch  # noqa: F401  (registers the archs)
import unirain_losses  # noqa: F401  (registers the strategies and the model)
from basicsr.models import build_model
from basicsr.utils import get_root_logger
from log_capture import captured
from unirain_losses.mixed_precision import amp_dtype

OPTIONS = {
    'name': 'amp_check', 'model_type': 'UniRainModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 5,
    'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'datasets': {},
    'network_g': {'type': 'UniRain', 'preset': 'tiny'},
    'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
    'train': {'ema_decay': 0.9, 'optim_g': {'type': 'AdamW', 'lr': 2e-3},
              'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [40], 'restart_weights': [1]},
              'total_iter': 40, 'pixel_opt': {'type': 'TURLoss', 'lr': 5e-3}},
}


def options(tmp_path, amp=None, **train):
    opt = copy.deepcopy(OPTIONS)
    opt['path']['training_states'] = str(tmp_path)
    opt['train'].update(amp=amp, **train)
    return opt


def batches(count, size=16, seed=0):
    """Rainy = clean + a fixed pattern per type, so a network can learn to remove it."""
    gen = torch.Generator().manual_seed(seed)
    pattern = torch.rand(4, 3, size, size, generator=gen) * 0.3
    out = []
    for _ in range(count):
        gt = torch.rand(4, 3, size, size, generator=gen)
        out.append({'lq': (gt + pattern).clamp(0, 1), 'gt': gt, 'type_id': torch.tensor([0, 1, 2, 3])})
    return out


def build(opt):
    torch.manual_seed(0)  # the same initial weights in every model of a test
    return build_model(opt)


def run(model, data, first_iter=1):
    losses = []
    for step, batch in enumerate(data, start=first_iter):
        model.update_learning_rate(step)
        model.feed_data(batch)
        model.optimize_parameters(step)
        losses.append(model.get_current_log()['l_pix_drs'])
    return losses


def load_state(path):
    with torch.serialization.safe_globals([collections.Counter]):
        return torch.load(path, map_location='cpu', weights_only=True)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize('value, expected', [(None, None), ('bf16', torch.bfloat16), ('fp16', torch.float16)])
def test_amp_values(value, expected):
    assert amp_dtype(value) is expected


@pytest.mark.parametrize('train, words', [
    ({'amp': 'fp32'}, ['train.amp', "'fp32'", 'bf16', 'fp16']),
    ({'amp': True}, ['train.amp', 'True']),
    ({'compile': 'yes'}, ['train.compile', "'yes'"]),
    ({'compile': {'mod': 'max-autotune'}}, ['train.compile', 'mod', 'mode']),
])
def test_bad_values_are_named(tmp_path, train, words):
    opt = options(tmp_path)
    opt['train'].update(train)
    with pytest.raises(ValueError) as err:
        build_model(opt)
    for word in words:
        assert word in str(err.value)


def test_bf16_training_is_finite_learns_and_keeps_the_statistics_in_fp32(tmp_path):
    model = build(options(tmp_path, 'bf16'))
    assert model.amp.scaler is None  # bf16 needs no loss scaling
    dtypes = set()
    model.net_g.patch_embed.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    losses = run(model, batches(30))
    assert dtypes == {torch.bfloat16}  # the forward really ran under autocast
    assert all(torch.isfinite(p).all() for p in model.net_g.parameters())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    sigmas = model.cri_pix.log_sigma
    assert sigmas.dtype == sigmas.grad.dtype == torch.float32
    assert model.log_dict['l_pix'] == model.log_dict['l_pix']  # finite, not nan
    assert torch.isfinite(model.cri_pix.weights()).all()


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_resume_with_amp_is_bit_exact(tmp_path, amp):
    data = batches(6, seed=1)
    first = build(options(tmp_path, amp))
    run(first, data[:3])
    first.rng_states = first.gather_host_rng_states()
    first.save_training_state(epoch=0, current_iter=3)
    state = load_state(tmp_path / '3.state')
    if amp == 'fp16':
        scaler = state['amp_scaler']
        # the scaler's state after 3 steps is not a fresh scaler's, so the round trip is tested for real
        assert scaler != torch.amp.GradScaler('cpu').state_dict()
    else:
        assert 'amp_scaler' not in state

    second = build(options(tmp_path, amp))
    second.net_g.load_state_dict(first.net_g.state_dict())
    second.net_g_ema.load_state_dict(first.net_g_ema.state_dict())
    second.resume_training(state)
    assert second.amp.state_dict() == first.amp.state_dict()
    run(first, data[3:], first_iter=4)
    run(second, data[3:], first_iter=4)
    assert_same(second.net_g.state_dict(), first.net_g.state_dict())
    assert_same(second.cri_pix.state_dict(), first.cri_pix.state_dict())
    assert second.amp.state_dict() == first.amp.state_dict()


def test_fp16_scaler_state_missing_from_an_old_state_is_reported(tmp_path):
    model = build(options(tmp_path, 'fp16'))
    with captured(get_root_logger()) as records:
        model.resume_training({'optimizers': [model.optimizer_g.state_dict()],
                               'schedulers': [model.schedulers[0].state_dict()],
                               'reweighting': model.cri_pix.state_dict()})
    assert any('gradient scaler' in r.getMessage() for r in records)


def test_compile_trains_like_eager(tmp_path):
    """train.compile with torch.compile arguments (dynamo without code generation here, for speed) gives the
    eager result and leaves net_g and its state_dict keys as they are."""
    data = batches(2, seed=2)
    opt = options(tmp_path)
    opt['network_g']['type'] = 'UniRainDense'  # one graph, quick to trace (the MoE under compile: test_moe_dispatch)
    eager = build(opt)
    run(eager, data)
    opt['train']['compile'] = {'backend': 'eager'}
    compiled = build(opt)
    run(compiled, data)
    assert compiled.compiled_g is not None and compiled.net_g is not compiled.compiled_g
    assert compiled.net_g.state_dict().keys() == eager.net_g.state_dict().keys()
    for key, value in eager.net_g.state_dict().items():
        torch.testing.assert_close(compiled.net_g.state_dict()[key], value, rtol=1e-4, atol=1e-6)


def test_compile_failure_warns_and_trains_eagerly(tmp_path, monkeypatch):
    def broken_compile(net):
        def forward(x):
            raise RuntimeError('no compiler for this platform')
        return forward

    data = batches(2, seed=3)
    eager = build(options(tmp_path))
    run(eager, data)
    monkeypatch.setattr(torch, 'compile', broken_compile)
    model = build(options(tmp_path, compile=True))
    with captured(get_root_logger()) as records:
        run(model, data)
    warnings = [r.getMessage() for r in records if 'train.compile' in r.getMessage()]
    assert len(warnings) == 1 and 'no compiler for this platform' in warnings[0] and 'eagerly' in warnings[0]
    assert model.compiled_g is None
    assert_same(model.net_g.state_dict(), eager.net_g.state_dict())
