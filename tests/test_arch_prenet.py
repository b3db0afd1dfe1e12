"""PReNet: official parameter names, official weights through BasicSR, real deraining quality."""
import os

import cv2
import numpy as np
import pytest
import torch

import unirain_arch  # noqa: F401  (registers the archs)
from basicsr.metrics import calculate_psnr
from basicsr.utils import img2tensor, tensor2img
from unirain_arch.prenet_arch import PReNet

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data')
WEIGHTS = os.path.join(SHARED, 'prenet_official', 'Rain100L', 'net_latest.pth')
PAIRS = os.path.join(SHARED, 'rain100l_train')
needs_shared = pytest.mark.skipif(not (os.path.isfile(WEIGHTS) and os.path.isdir(PAIRS)),
                                  reason='../shared/data (official PReNet weights, Rain100L pairs) is absent')




def test_parameter_names_and_count_are_the_official_ones():
    net = PReNet()
    expected = (['conv0.0.weight', 'conv0.0.bias']
                + [f'res_conv{i}.{j}.{p}' for i in range(1, 6) for j in (0, 2) for p in ('weight', 'bias')]
                + [f'conv_{g}.0.{p}' for g in 'ifgo' for p in ('weight', 'bias')]
                + ['conv.0.weight', 'conv.0.bias'])
    assert list(net.state_dict()) == expected
    assert sum(p.numel() for p in net.parameters()) == 168963
    assert net.auxiliary_losses() == {} and net.last_routing == [] and net.last_uncertainty is None


def test_forward_is_the_recurrence():
    torch.manual_seed(0)
    net = PReNet(recurrent_iter=2)
    y = torch.rand(2, 3, 21, 17)
    with torch.no_grad():
        assert net(y).shape == y.shape
        net.conv[0].weight.zero_()
        net.conv[0].bias.fill_(0.25)
        # the last stage predicts a residual on top of the rainy input, unclamped
        torch.testing.assert_close(net(y), y + 0.25)


@pytest.mark.parametrize('bad', [0, -1, 2.5, True, '6'])
def test_recurrent_iter_is_checked(bad):
    with pytest.raises(ValueError, match='recurrent_iter'):
        PReNet(recurrent_iter=bad)


@needs_shared
def test_official_weights_load_unchanged_through_pretrain_network_g():
    from basicsr.models.sr_model import SRModel
    opt = {'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': {'type': 'PReNet', 'recurrent_iter': 6},
           'path': {'pretrain_network_g': WEIGHTS, 'param_key_g': None, 'strict_load_g': True}}
    model = SRModel(opt)
    official = torch.load(WEIGHTS, map_location='cpu', weights_only=True)
    loaded = model.net_g.state_dict()
    assert list(loaded) == list(official)
    assert all(torch.equal(loaded[k], official[k]) for k in official)


@needs_shared
def test_official_rain100l_weights_derain_real_pairs():
    """Every 20th of the 200 pairs, 128x128 centre crops (options/test_PReNet_Rain100L.yml runs all 200)."""
    net = PReNet()
    net.load_state_dict(torch.load(WEIGHTS, map_location='cpu', weights_only=True))
    net.eval()
    names = sorted(os.listdir(os.path.join(PAIRS, 'rainy')), key=lambda n: int(os.path.splitext(n)[0]))[::20]
    before, after = [], []
    for name in names:
        rainy = cv2.imread(os.path.join(PAIRS, 'rainy', name))
        clean = cv2.imread(os.path.join(PAIRS, 'clean', name))
        top, left = (rainy.shape[0] - 128) // 2, (rainy.shape[1] - 128) // 2
        rainy, clean = (im[top:top + 128, left:left + 128] for im in (rainy, clean))
        with torch.no_grad():
            out = net(img2tensor(rainy.astype(np.float32) / 255)[None])
        before.append(calculate_psnr(rainy, clean, crop_border=0, test_y_channel=True))
        after.append(calculate_psnr(tensor2img(out), clean, crop_border=0, test_y_channel=True))
    assert len(names) == 10
    assert np.mean(after) > 35
    assert np.mean(after) > np.mean(before) + 5
