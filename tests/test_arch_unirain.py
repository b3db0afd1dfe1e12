"""UniRain / UniRainDense: options, routing invariants, batch independence, any input size, counts."""
import numpy as np
import pytest
import torch
from skimage import data as skdata

import unirain_arch  # noqa: F401  (registers the archs)
from basicsr.utils.registry import ARCH_REGISTRY
from unirain_arch.flops import count_macs, count_parameters
from unirain_arch.moe import HardMoE, SoftMoE
from unirain_arch.unirain_arch import UniRain, UniRainDense




def photos(n, h=48, w=64):
    """n different natural photos (bundled with scikit-image, no download), RGB in [0, 1]."""
    names = ['astronaut', 'chelsea', 'coffee', 'rocket'][:n]
    imgs = []
    for name in names:
        img = getattr(skdata, name)()[:, :, :3]
        step_h, step_w = img.shape[0] // h, img.shape[1] // w
        imgs.append(torch.from_numpy(np.ascontiguousarray(img[::step_h, ::step_w][:h, :w])).permute(2, 0, 1))
    return torch.stack(imgs).float() / 255


def sharpen_routers(net, scale=200.0, modes=('soft', 'hard')):
    """Make routers decisive so that different photos pick different experts (random init is too flat)."""
    with torch.no_grad():
        for _, layer in net.moe_layers():
            if layer.mode in modes:
                layer.router.proj.weight.mul_(scale)
    return net


def tiny(**options):
    torch.manual_seed(0)
    return UniRain(preset='tiny', **options)


def test_registered_and_built_from_option_dict():
    for name in ('UniRain', 'UniRainDense', 'PReNet'):
        assert ARCH_REGISTRY.get(name) is not None
    net = ARCH_REGISTRY.get('UniRain')(**{'preset': 'tiny', 'top_k': 2, 'decoder_mode': 'soft'})
    assert net.options['top_k'] == 2
    modes = {name.split('.')[0]: layer.mode for name, layer in net.moe_layers()}
    assert modes == {'encoder_level1': 'soft', 'encoder_level2': 'soft', 'encoder_level3': 'soft',
                     'latent': 'hard', 'decoder_level3': 'soft', 'decoder_level2': 'soft',
                     'decoder_level1': 'soft', 'refinement': 'hard'}
    assert all(layer.top_k == 2 for _, layer in net.moe_layers() if isinstance(layer, HardMoE))


@pytest.mark.parametrize('cls, options, words', [
    (UniRain, {'preset': 'huge'}, ['huge', 'paper', 'small', 'tiny']),
    (UniRain, {'preset': 'tiny', 'num_expert': 4}, ['num_expert', 'num_experts']),
    (UniRain, {'preset': 'tiny', 'decoder_mode': 'sparse'}, ['decoder_mode', 'sparse']),
    (UniRain, {'preset': 'tiny', 'top_k': 5}, ['top_k']),
    (UniRain, {'preset': 'tiny', 'heads': [3, 1, 1, 1]}, ['heads[0]=3']),
    (UniRain, {'preset': 'tiny', 'num_blocks': [1, 1]}, ['num_blocks']),
    (UniRain, {'preset': 'tiny', 'router_noise': -1}, ['router_noise']),
    (UniRain, {'preset': 'tiny', 'dim': 7}, ['dim']),
    (UniRainDense, {'preset': 'tiny', 'top_k': 1}, ['top_k', 'UniRainDense']),
])
def test_bad_options_are_named(cls, options, words):
    with pytest.raises(ValueError) as err:
        cls(**options)
    for word in words:
        assert word in str(err.value)


def test_soft_gates_sum_to_one_and_soft_layer_is_the_gate_weighted_sum():
    net = tiny().train()
    net(photos(4))
    soft = [r for r in net.last_routing if r['mode'] == 'soft']
    assert len(soft) == 3 and all(r['experts'] is None for r in soft)
    for r in soft:
        assert r['gates'].shape == (4, 4)
        torch.testing.assert_close(r['gates'].sum(1), torch.ones(4))
        assert (r['gates'] > 0).all()
    layer = SoftMoE(8, 3, 1.0).eval()
    x = torch.randn(2, 8, 6, 6)
    out = layer(x)
    gates = layer.last_probs
    expected = sum(gates[:, i, None, None, None] * layer.experts[i](x) for i in range(3))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize('top_k, renormalize', [(1, False), (2, False), (2, True)])
def test_hard_routing_runs_exactly_k_experts_per_sample(top_k, renormalize):
    net = sharpen_routers(tiny(top_k=top_k, renormalize_topk=renormalize)).eval()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = seen.get(name, 0) + inputs[0].shape[0]
        return hook

    for name, layer in net.moe_layers():
        for i, expert in enumerate(layer.experts):
            expert.register_forward_hook(record((name, i)))
    with torch.no_grad():
        net(photos(4))
    hard = [r for r in net.last_routing if r['mode'] == 'hard']
    assert len(hard) == 5  # latent, decoder 3/2/1, refinement (one block each in tiny)
    distinct = 0
    for r in hard:
        experts = r['experts']
        assert experts.shape == (4, top_k)
        assert all(len(set(row.tolist())) == top_k for row in experts)
        assert torch.equal(experts, r['gates'].topk(top_k, dim=1).indices)
        for i in range(4):  # expert i ran on exactly the samples that picked it
            assert seen.get((r['name'], i), 0) == int((experts == i).sum())
        distinct += len(set(experts.flatten().tolist())) > top_k
    assert distinct, 'the photos should not all share the same experts in every layer'
    # the layer output is the gate-weighted sum over the kept experts only
    layer = next(m for _, m in net.moe_layers() if isinstance(m, HardMoE))
    x = torch.randn(4, layer.router.proj.in_features, 8, 8)
    with torch.no_grad():
        out = layer(x)
        weights = layer.last_weights
        assert ((weights > 0).sum(1) == top_k).all()
        if renormalize:
            torch.testing.assert_close(weights.sum(1), torch.ones(4))
        expected = sum(weights[:, i, None, None, None] * e(x) for i, e in enumerate(layer.experts))
    torch.testing.assert_close(out, expected)


def test_gradients_reach_exactly_the_chosen_experts():
    net = sharpen_routers(tiny(router_noise=0.0), modes=('hard',)).train()
    net(photos(2)).sum().backward()
    for name, layer in net.moe_layers():
        chosen = set() if layer.mode == 'soft' else set(layer.last_experts.flatten().tolist())
        for i, expert in enumerate(layer.experts):
            grads = [p.grad for p in expert.parameters()]
            if layer.mode == 'soft' or i in chosen:
                assert all(g is not None for g in grads), (name, i)
                assert any(g.abs().sum() > 0 for g in grads), (name, i)
            else:
                assert all(g is None for g in grads), (name, i)
        assert layer.router.proj.weight.grad is not None, name
    assert net.ddp_find_unused_parameters


def test_eval_output_of_a_sample_does_not_depend_on_the_batch():
    net = sharpen_routers(tiny(top_k=2)).eval()
    batch = photos(4)
    with torch.no_grad():
        together = net(batch)
        picks = [r['experts'] for r in net.last_routing if r['mode'] == 'hard']
        assert any(len(set(p[:, 0].tolist())) > 1 for p in picks), 'need a batch that splits across experts'
        for i in range(4):
            alone = net(batch[i:i + 1])
            torch.testing.assert_close(alone, together[i:i + 1], rtol=0, atol=1e-5)
            alone_picks = [r['experts'] for r in net.last_routing if r['mode'] == 'hard']
            assert all(torch.equal(a[0], p[i]) for a, p in zip(alone_picks, picks))


def test_router_noise_only_in_training():
    net = tiny(router_noise=0.5)
    x = photos(1)
    net.eval()
    with torch.no_grad():
        net(x)
        gates_a = net.last_routing[0]['gates']
        net(x)
        assert torch.equal(gates_a, net.last_routing[0]['gates'])
        net.train()
        net(x)
        assert not torch.equal(gates_a, net.last_routing[0]['gates'])
    assert net.moe_layers()[0][1].router.noise_std == 0.5
    assert tiny().moe_layers()[0][1].router.noise_std == 0.25  # default 1 / N


@pytest.mark.parametrize('size', [(97, 131), (3, 5), (64, 64)])
def test_any_input_size_keeps_shape_and_pixel_alignment(size):
    net = tiny().eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        assert net(x).shape == x.shape
        # with a zero output conv the net is the identity: the crop puts every pixel back in place
        net.output.weight.zero_()
        torch.testing.assert_close(net(x), x, rtol=0, atol=0)


def test_auxiliary_losses_off_by_default_and_correct_when_on():
    x = photos(4)
    net = tiny()
    net(x)
    assert net.auxiliary_losses(torch.arange(4)) == {}
    net = tiny(balance_loss_weight=0.01, router_label_loss_weight=0.1)
    net(x)
    with pytest.raises(ValueError, match='type_ids'):
        net.auxiliary_losses()
    type_ids = torch.tensor([0, 1, 2, 3])
    losses = net.auxiliary_losses(type_ids)
    assert set(losses) == {'l_moe_balance', 'l_router_label'}
    layers = [m for _, m in net.moe_layers()]
    label = torch.stack([torch.nn.functional.cross_entropy(m.last_logits, type_ids) for m in layers]).mean()
    torch.testing.assert_close(losses['l_router_label'], 0.1 * label)
    assert losses['l_moe_balance'] >= 0
    sum(losses.values()).backward()
    assert all(m.router.proj.weight.grad.abs().sum() > 0 for m in layers)


def test_balance_loss_is_zero_when_balanced_and_positive_when_collapsed():
    from unirain_arch.router import load_balance_loss
    balanced = torch.eye(4)
    assert load_balance_loss(balanced, balanced) == 0
    collapsed = torch.tensor([[1.0, 0, 0, 0]] * 4)
    assert load_balance_loss(collapsed, collapsed) > 1


def test_uncertainty_head_starts_at_one_and_is_positive():
    net = tiny(uncertainty_head=True)
    out = net(torch.rand(2, 3, 37, 45))
    assert net.last_uncertainty.shape == out.shape
    torch.testing.assert_close(net.last_uncertainty, torch.ones_like(out))
    (out.mean() + net.last_uncertainty.mean()).backward()
    assert net.uncertainty[2].weight.grad.abs().sum() > 0
    plain = tiny()
    plain(torch.rand(1, 3, 16, 16))
    assert plain.last_uncertainty is None


def test_routing_modes_share_checkpoints():
    soft_everywhere = tiny(latent_mode='soft', decoder_mode='soft', refinement_mode='soft')
    hard_everywhere = tiny(encoder_mode='hard')
    assert not soft_everywhere.ddp_find_unused_parameters
    hard_everywhere.load_state_dict(soft_everywhere.state_dict(), strict=True)


def test_dense_variant_has_no_routing():
    net = UniRainDense(preset='tiny')
    out = net(torch.rand(1, 3, 20, 20))
    assert out.shape == (1, 3, 20, 20)
    assert net.moe_layers() == [] and net.last_routing == [] and net.auxiliary_losses() == {}
    assert not net.ddp_find_unused_parameters


def test_hard_layer_costs_k_experts_soft_layer_all():
    torch.manual_seed(0)
    hard = HardMoE(16, 4, 1.0, top_k=1)
    soft = SoftMoE(16, 4, 1.0)
    soft.load_state_dict(hard.state_dict())
    with torch.no_grad():
        hard.router.proj.weight.mul_(100)
    x = torch.randn(4, 16, 8, 8)
    expert_macs = count_macs(hard.experts[0], (1, 16, 8, 8))['layers']
    router_macs = 16 * 4 * 4
    assert count_macs(hard, x.shape)['layers'] - router_macs == 4 * 1 * expert_macs
    assert count_macs(soft, x.shape)['layers'] - router_macs == 4 * 4 * expert_macs


def test_macs_scale_with_pixels():
    """Justifies counting the paper preset at 32x32 and scaling by 64 (the routers' few MACs excepted)."""
    net = tiny()
    small, big = count_macs(net, (1, 3, 32, 32)), count_macs(net, (1, 3, 256, 256))
    assert abs(big['total'] - 64 * small['total']) < 1e-3 * big['total']


def test_paper_preset_matches_table_3():
    torch.manual_seed(0)
    net = UniRain(preset='paper')
    assert abs(count_parameters(net) - 24.4e6) < 0.03 * 24.4e6
    macs = 64 * count_macs(net, (1, 3, 32, 32))['layers']  # = the count at 1x3x256x256
    assert abs(macs - 126.5e9) < 0.10 * 126.5e9
    with torch.device('meta'):  # parameters only: no need to initialise them
        dense = UniRainDense(preset='paper')
    assert abs(count_parameters(dense) - 26.13e6) < 0.01e6  # Restormer's configuration
