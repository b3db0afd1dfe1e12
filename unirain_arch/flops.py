"""Count a network's multiply-adds with torch's own FlopCounterMode.

Convention: one multiply-add counts once (ptflops / thop "MACs"), i.e. FlopCounterMode's FLOPs / 2.
``layers`` counts convolutions (depthwise included) and linear layers: what ptflops' module hooks see,
the convention of Restormer's published 140.99 G and UniRain's 126.5 G (our Restormer configuration
counts 141.0 G this way). ``matmul`` adds the attention products (q k^T and attn v) that such hooks miss.
Not counted at all: biases, normalisation, activations, softmax, pixel (un)shuffle, padding, indexing.
Only what executes is counted: a hard-routed MoE layer contributes its chosen experts only.
"""
import torch
from torch.utils.flop_counter import FlopCounterMode

CONVENTION = ('multiply-adds, ptflops/thop convention (torch FlopCounterMode FLOPs / 2): convolutions and '
              'linear layers; attention matmuls reported apart')
_LAYER_OPS = ('convolution', 'addmm', 'mm')  # a bias-free linear is an mm; attention uses bmm


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def count_macs(net, input_shape=(1, 3, 256, 256), device='cpu'):
    """Multiply-adds of one eval-mode forward on a random input: {'layers', 'matmul', 'total'}."""
    was_training = net.training
    net.eval()
    x = torch.rand(*input_shape, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        net(x)
    net.train(was_training)
    layers = matmul = 0
    for op, flops in counter.get_flop_counts()['Global'].items():
        if str(op).split('.')[1] in _LAYER_OPS:
            layers += flops // 2
        else:
            matmul += flops // 2
    return {'layers': layers, 'matmul': matmul, 'total': layers + matmul}
