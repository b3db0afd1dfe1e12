"""PReNet (Ren et al., CVPR 2019), the recurrent deraining baseline of docs/method.md section 8.

Parameter names follow the official release (``conv0.0.*``, ``res_conv{1..5}.{0,2}.*``,
``conv_{i,f,g,o}.0.*``, ``conv.0.*``), so its published weights load unchanged, e.g. with
``path: {pretrain_network_g: .../Rain100L/net_latest.pth, param_key_g: ~}`` (the files are plain state
dicts, hence ``param_key_g: ~``).
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

FEATURES = 32


def _conv(cin, cout):
    return nn.Conv2d(cin, cout, 3, padding=1)


@ARCH_REGISTRY.register()
class PReNet(nn.Module):
    """Progressive recurrent network: ``recurrent_iter`` stages sharing one set of weights.

    Each stage sees the rainy input and the previous estimate, updates a convolutional LSTM state,
    refines it with five residual blocks and predicts the residual to the rainy input. The output is not
    clamped, so training sees the true error; clamp at test time (BasicSR's ``tensor2img`` does).
    """

    def __init__(self, recurrent_iter=6):
        super().__init__()
        if isinstance(recurrent_iter, bool) or not isinstance(recurrent_iter, int) or recurrent_iter < 1:
            raise ValueError(f'PReNet: recurrent_iter must be a positive integer, got {recurrent_iter!r}')
        self.recurrent_iter = recurrent_iter
        self.conv0 = nn.Sequential(_conv(6, FEATURES), nn.ReLU())
        for i in range(1, 6):
            setattr(self, f'res_conv{i}', nn.Sequential(
                _conv(FEATURES, FEATURES), nn.ReLU(), _conv(FEATURES, FEATURES), nn.ReLU()))
        self.conv_i = nn.Sequential(_conv(2 * FEATURES, FEATURES), nn.Sigmoid())
        self.conv_f = nn.Sequential(_conv(2 * FEATURES, FEATURES), nn.Sigmoid())
        self.conv_g = nn.Sequential(_conv(2 * FEATURES, FEATURES), nn.Tanh())
        self.conv_o = nn.Sequential(_conv(2 * FEATURES, FEATURES), nn.Sigmoid())
        self.conv = nn.Sequential(_conv(FEATURES, 3))
        # the arch protocol of unirain_arch: no routing, no auxiliary loss, no uncertainty map
        self.last_routing = []
        self.last_uncertainty = None

    def forward(self, y):
        b, _, height, width = y.shape
        h = y.new_zeros(b, FEATURES, height, width)
        c = y.new_zeros(b, FEATURES, height, width)
        x = y
        for _ in range(self.recurrent_iter):
            x = self.conv0(torch.cat([y, x], 1))
            x = torch.cat([x, h], 1)
            c = self.conv_f(x) * c + self.conv_i(x) * self.conv_g(x)
            h = self.conv_o(x) * torch.tanh(c)
            x = h
            for i in range(1, 6):
                x = torch.relu(getattr(self, f'res_conv{i}')(x) + x)
            x = self.conv(x) + y
        return x

    def auxiliary_losses(self, type_ids=None):
        return {}
