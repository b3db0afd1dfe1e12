"""Hard MoE dispatch: one grouping per layer gives the values and gradients of a loop over experts."""
import pytest
import torch

import unirain_arch  # noqa: F401  (registers the archs)
from unirain_arch.moe import HardMoE
from unirain_arch.router import top_k_gates
from unirain_arch.unirain_arch import UniRain


def loop_over_experts(layer, x):
    """The dispatch this layer replaced: ``nonzero()`` per expert (a host sync each on CUDA), kept as reference."""
    weights, experts = top_k_gates(layer._route(x), layer.top_k, layer.renormalize)
    layer.last_weights, layer.last_experts = weights, experts
    weights = weights.to(x.dtype)
    batch = x.shape[0]
    out = None
    for i, expert in enumerate(layer.experts):
        idx = (experts == i).any(dim=1).nonzero().flatten()
        if idx.numel() == 0:
            continue
        if idx.numel() == batch:
            y = expert(x) * weights[:, i, None, None, None]
        else:
            y = expert(x.index_select(0, idx)) * weights.index_select(0, idx)[:, i, None, None, None]
        if out is None:
            out = y.new_zeros((batch, *y.shape[1:]))
        out = out.index_add(0, idx, y)
    return out


def steered_layer(top_k, picks, dim=8, num_experts=4):
    """A hard layer and a batch whose sample b picks ``picks[b]`` (its gates ordered as listed)."""
    torch.manual_seed(0)
    layer = HardMoE(dim, num_experts, 1.0, top_k=top_k, noise_std=0.0)
    x = torch.randn(len(picks), dim, 6, 5)
    with torch.no_grad():
        layer.router.proj.weight.zero_()
        layer.router.proj.weight[:, :num_experts].copy_(torch.eye(num_experts))
        layer.router.proj.bias.zero_()
        x[:, :num_experts] -= x[:, :num_experts].mean(dim=(2, 3), keepdim=True)  # pooled channel = 0
        for b, chosen in enumerate(picks):
            for rank, e in enumerate(chosen):
                x[b, e] += 3.0 - rank  # pooled logit of expert e: 3, 2, ... in the listed order
    return layer, x


def values_and_grads(layer, x, forward):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = forward(x)
    # a loss that weighs every output element differently, so a misplaced row cannot cancel out
    (out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum().backward()
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in layer.named_parameters()}
    return out.detach(), x.grad.clone(), grads


CASES = {
    'top-1, expert 2 and 3 unused': (1, [[0], [1], [0], [1], [0]]),
    'top-1, every sample to one expert': (1, [[3], [3], [3]]),
    'top-1, all four experts': (1, [[2], [0], [3], [1], [2], [0]]),
    'top-2, expert 3 unused': (2, [[0, 1], [2, 0], [1, 2], [0, 2]]),
    'top-2, gate order reversed': (2, [[3, 0], [0, 3], [1, 0]]),
    'top-2, one sample': (2, [[2, 1]]),
}


@pytest.mark.parametrize('case', list(CASES))
def test_grouped_dispatch_equals_the_loop_over_experts(case):
    top_k, picks = CASES[case]
    layer, x = steered_layer(top_k, picks)
    new = values_and_grads(layer, x, layer)
    assert [sorted(row) for row in layer.last_experts.tolist()] == [sorted(row) for row in picks]
    old = values_and_grads(layer, x, lambda t: loop_over_experts(layer, t))
    assert torch.equal(new[0], old[0]), 'outputs differ'
    assert torch.equal(new[1], old[1]), 'input gradients differ'
    assert new[2].keys() == old[2].keys()
    used = {e for row in picks for e in row}
    for name, grad in new[2].items():
        reference = old[2][name]
        if name.startswith('experts.') and int(name.split('.')[1]) not in used:
            assert grad is None and reference is None, f'{name}: an unused expert must get no gradient'
        else:
            assert torch.equal(grad, reference), f'{name}: gradients differ'


@pytest.mark.parametrize('top_k', [1, 2])
def test_a_whole_network_trains_identically_with_either_dispatch(top_k, monkeypatch):
    """Router noise on, random routing over a batch of 5: same loss and same gradient for every parameter."""
    torch.manual_seed(1)
    net = UniRain(preset='tiny', top_k=top_k).train()
    x = torch.rand(5, 3, 24, 20)
    results = []
    for forward in (HardMoE.forward, loop_over_experts):
        monkeypatch.setattr(HardMoE, 'forward', forward)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(2)
        out = net(x)
        picks = [r['experts'].clone() for r in net.last_routing if r['mode'] == 'hard']
        (out - x).abs().mean().backward()
        grads = {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
        results.append((out.detach(), picks, grads))
    (out_new, picks_new, grads_new), (out_old, picks_old, grads_old) = results
    assert all(torch.equal(a, b) for a, b in zip(picks_new, picks_old))
    assert any(len(p.unique()) > 1 for p in picks_new), 'the batch should split across experts somewhere'
    assert torch.equal(out_new, out_old)
    for name, grad in grads_new.items():
        if grad is None:
            assert grads_old[name] is None, name
        else:
            assert torch.equal(grad, grads_old[name]), name


# aten ops that make the host wait for a CUDA device: data-dependent output sizes or a value read back
HOST_SYNCING_OPS = {'nonzero', 'bincount', '_local_scalar_dense', 'masked_select', 'unique', '_unique2',
                    'unique_consecutive', 'repeat_interleave', 'item'}


def test_dispatch_reads_the_counts_from_the_device_once(monkeypatch):
    """No op that syncs on CUDA, and one ``tolist()`` of the counts: at most one host sync per hard layer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    layer, x = steered_layer(2, [[0, 1], [2, 0], [1, 2]])
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, 'tolist', lambda t: reads.append(t.shape) or real_tolist(t))
    ops = Ops()
    with ops:
        layer(x)
    assert not ops.names & HOST_SYNCING_OPS, ops.names & HOST_SYNCING_OPS
    assert reads == [torch.Size([4])]  # the per-expert counts, once
    with Ops() as reference:
        loop_over_experts(layer, x)
    assert 'nonzero' in reference.names  # the check sees what the replaced dispatch did


def test_compiled_layer_matches_eager_values_and_gradients():
    """torch.compile traces the dispatch (a graph break only at the counts) and computes the same thing."""
    layer, x = steered_layer(2, [[0, 1], [2, 0], [1, 2], [0, 2]])
    eager = values_and_grads(layer, x, layer)
    compiled = values_and_grads(layer, x, torch.compile(layer, backend='aot_eager'))
    for got, expected in zip(compiled[:2], eager[:2]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for name, grad in eager[2].items():
        if grad is None:
            assert compiled[2][name] is None, name
        else:
            torch.testing.assert_close(compiled[2][name], grad, rtol=1e-5, atol=1e-6)
