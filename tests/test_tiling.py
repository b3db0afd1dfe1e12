"""tiled_forward: exact blending for local networks, close agreement for UniRain, clear option errors."""
import pytest
import torch
from skimage import data as skdata
from torch import nn

from unirain_arch.tiling import check_tile_options, tiled_forward
from unirain_arch.unirain_arch import UniRain




class Identity(nn.Module):
    def forward(self, x):
        return x


def local_net():
    """Three 3x3 convs: receptive-field radius 3, so overlap 16 (margin 4) must reproduce it exactly."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
                         nn.Conv2d(8, 3, 3, padding=1)).eval()


@pytest.mark.parametrize('size, tile, overlap', [
    ((70, 90), 32, 16), ((33, 100), 32, 0), ((64, 64), 20, 1), ((50, 41), 16, 3), ((17, 200), 64, 63)])
def test_weights_cover_every_pixel_once(size, tile, overlap):
    x = torch.rand(2, 3, *size)
    torch.testing.assert_close(tiled_forward(Identity(), x, tile, overlap), x)


def test_local_network_is_reproduced_exactly():
    net = local_net()
    x = torch.rand(2, 3, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(tiled_forward(net, x, 32, 16), net(x), rtol=0, atol=1e-6)
        # without overlap the tile borders show: the blending is what makes it exact
        assert (tiled_forward(net, x, 32, 0) - net(x)).abs().max() > 1e-3


def test_image_within_one_tile_runs_in_one_pass():
    net = local_net()
    x = torch.rand(1, 3, 30, 31)
    with torch.no_grad():
        assert torch.equal(tiled_forward(net, x, 32, 8), net(x))


def test_unirain_tiled_output_is_close_to_untiled():
    torch.manual_seed(0)
    net = UniRain(preset='tiny').eval()
    x = torch.from_numpy(skdata.astronaut()[::4, ::4].copy()).permute(2, 0, 1)[None].float() / 255  # 128x128
    with torch.no_grad():
        full = net(x)
        tiled = tiled_forward(net, x, 96, 32)
    # per-tile attention / routing statistics differ a little (seeds 0-2: 43-49 dB); misplaced tiles would
    # differ by about the network's whole correction
    assert tiled.shape == full.shape
    assert -10 * torch.log10(((tiled - full) ** 2).mean()) > 38
    assert (tiled - full).abs().mean() < 0.2 * (full - x).abs().mean()


def test_network_that_changes_size_is_refused():
    with pytest.raises(ValueError, match='keep the image size'):
        tiled_forward(nn.Conv2d(3, 3, 3), torch.rand(1, 3, 40, 40), 16, 4)


@pytest.mark.parametrize('opt, match', [
    ({'tile_overlap': 8}, 'tile_size is required'),
    ({'tile_size': 0}, 'tile_size'),
    ({'tile_size': 64, 'tile_overlap': 64}, 'tile_overlap'),
    ({'tile_size': 64, 'tile_pad': 8}, 'tile_pad'),
    ([256, 32], 'mapping'),
])
def test_bad_tile_options_are_named(opt, match):
    with pytest.raises(ValueError, match=match):
        check_tile_options(opt)


def test_tile_options_default_overlap():
    assert check_tile_options({'tile_size': 256}) == (256, 32)
    assert check_tile_options({'tile_size': 128, 'tile_overlap': 16}) == (128, 16)
