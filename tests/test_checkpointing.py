"""Activation checkpointing (``checkpointing: true``): same outputs, routing and gradients, fewer saved activations."""
import pytest
import torch

import unirain_arch  # noqa: F401  (registers the archs)
from unirain_arch.block import TransformerBlock
from unirain_arch.unirain_arch import UniRain, UniRainDense

NETS = {
    'UniRain top-1': (UniRain, {'balance_loss_weight': 0.01, 'router_label_loss_weight': 0.1}),
    'UniRain top-2': (UniRain, {'top_k': 2, 'router_noise': 0.5, 'balance_loss_weight': 0.01}),
    'UniRainDense': (UniRainDense, {}),
}


def train_step(cls, options, checkpointing, x, type_ids):
    """Output, routing, losses and gradients of one training forward/backward, router noise on."""
    torch.manual_seed(0)
    net = cls(preset='tiny', checkpointing=checkpointing, **options).train()
    torch.manual_seed(1)
    out = net(x)
    losses = net.auxiliary_losses(type_ids)
    routing = net.last_routing
    recorded = [layer.last_probs for _, layer in net.moe_layers()]
    total = (out - x).abs().mean() + sum(losses.values())
    total.backward()
    # the recomputation in backward must not replace what the forward recorded
    assert all(layer.last_probs is probs for (_, layer), probs in zip(net.moe_layers(), recorded))
    grads = {n: None if p.grad is None else p.grad for n, p in net.named_parameters()}
    return out.detach(), routing, {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize('name', list(NETS))
def test_gradients_equal_the_plain_run(name):
    cls, options = NETS[name]
    x = torch.rand(4, 3, 20, 24)
    type_ids = torch.tensor([0, 1, 2, 3])
    plain = train_step(cls, options, False, x, type_ids)
    ckpt = train_step(cls, options, True, x, type_ids)
    assert torch.equal(ckpt[0], plain[0])
    assert len(ckpt[1]) == len(plain[1]) == (8 if cls is UniRain else 0)
    for a, b in zip(ckpt[1], plain[1]):
        assert a['name'] == b['name']
        assert torch.equal(a['gates'], b['gates'])
        assert (a['experts'] is None) == (b['experts'] is None)
        if a['experts'] is not None:
            assert torch.equal(a['experts'], b['experts'])
    assert ckpt[2].keys() == plain[2].keys()
    for key in plain[2]:
        assert torch.equal(ckpt[2][key], plain[2][key]), key
    assert ckpt[3].keys() == plain[3].keys()
    for param, grad in plain[3].items():
        if grad is None:  # an expert no sample picked: no gradient either way
            assert ckpt[3][param] is None, param
        else:
            torch.testing.assert_close(ckpt[3][param], grad, rtol=1e-5, atol=1e-7, msg=param)


def saved_bytes(net, x):
    """Bytes of the tensors autograd keeps for backward after one forward (parameters not counted)."""
    params = {p.data_ptr() for p in net.parameters()}
    total = [0]

    def pack(t):
        if t.data_ptr() not in params:
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).mean().backward()
    return total[0]


@pytest.mark.parametrize('cls', [UniRain, UniRainDense])
def test_keeps_a_fraction_of_the_activations_and_recomputes_each_block_once(cls):
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    plain = saved_bytes(cls(preset='tiny').train(), x)
    torch.manual_seed(0)
    net = cls(preset='tiny', checkpointing=True).train()
    runs = []
    for block in net.modules():
        if isinstance(block, TransformerBlock):
            block.attn.register_forward_hook(lambda *_: runs.append(1))
    blocks = sum(isinstance(m, TransformerBlock) for m in net.modules())
    assert saved_bytes(net, x) < 0.1 * plain
    assert len(runs) == 2 * blocks  # forward + one recomputation per block
    runs.clear()
    with torch.no_grad():  # nothing to recompute without gradients
        net(x)
    assert len(runs) == blocks


def test_bad_value_is_named():
    with pytest.raises(ValueError, match='checkpointing'):
        UniRain(preset='tiny', checkpointing='yes')
