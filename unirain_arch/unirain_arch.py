"""UniRain: a Restormer-style 4-level U-Net whose FFNs are mixtures of experts (docs/method.md section 1).

Registered in BasicSR's ARCH_REGISTRY as ``UniRain`` and ``UniRainDense`` (the same backbone with plain
FFNs: the "what does the MoE buy" ablation and a Restormer stand-in).
"""
import math

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from unirain_arch.block import TransformerBlock
from unirain_arch.ffn import GatedFFN
from unirain_arch.moe import HardMoE, MixtureOfExperts, SoftMoE
from unirain_arch.padding import crop_to, pad_to_multiple
from unirain_arch.presets import resolve
from unirain_arch.router import load_balance_loss, router_label_loss

MODES = ('soft', 'hard', 'dense')
# (stage, level index 0..3): level 0 is full resolution; the refinement stage works there too.
_STAGE_LEVELS = {'encoder': (0, 1, 2), 'latent': (3,), 'decoder': (2, 1, 0), 'refinement': (0,)}


def _per_level(value, key, arch):
    """A scalar applies to all four levels; a list must give exactly four."""
    if isinstance(value, (int, float)):
        return [value] * 4
    values = list(value)
    if len(values) != 4:
        raise ValueError(f'{arch}: {key} needs 4 values (levels 1-3 and latent), got {value!r}')
    return values


class Downsample(nn.Sequential):
    """3x3 conv halving the channels, then pixel-unshuffle: half the size, twice the channels."""

    def __init__(self, dim):
        super().__init__(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    """3x3 conv doubling the channels, then pixel-shuffle: twice the size, half the channels."""

    def __init__(self, dim):
        super().__init__(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


class UncertaintyHead(nn.Sequential):
    """Positive per-pixel map for TUR (docs/method.md section 3, ``uncertainty: arch``); starts at exactly 1 everywhere.

    The last conv starts at zero weight and bias softplus^-1(1), so the TUR loss starts as the plain L1.
    """

    def __init__(self, dim, out_channels):
        super().__init__(nn.Conv2d(dim, dim // 2, 1), nn.GELU(),
                         nn.Conv2d(dim // 2, out_channels, 3, padding=1), nn.Softplus())
        nn.init.zeros_(self[2].weight)
        nn.init.constant_(self[2].bias, math.log(math.e - 1))


@ARCH_REGISTRY.register()
class UniRain(nn.Module):
    """Asymmetric MoE deraining U-Net: soft-routed encoder, hard top-k latent / decoder / refinement.

    Build from an option file with ``network_g: {type: UniRain, preset: paper}``; every key below
    overrides the preset.

    Args:
        preset: ``paper`` (default; 24.5 M params, 127 G MACs at 256x256), ``small`` (3.6 M; CPU
            experiments) or ``tiny`` (0.24 M; tests).
        inp_channels, out_channels: image channels (3). The input is added to the output when they match.
        dim: width of level 1; levels 2-4 use 2x, 4x, 8x (decoder level 1 and refinement use 2x).
        num_blocks: transformer blocks per level, [level1, level2, level3, latent]; the decoder mirrors them.
        num_refinement_blocks: blocks after decoder level 1, at full resolution.
        heads: attention heads per level (4 values; must divide that level's channels).
        ffn_expansion_factor: hidden width / channels of the plain FFNs (``dense`` stages).
        num_experts: experts N per MoE layer.
        top_k: experts kept per sample in hard layers (1..N).
        expert_expansion_factor: hidden width / channels of one expert; a number or 4 values per level.
        encoder_mode, latent_mode, decoder_mode, refinement_mode: ``soft`` (all experts, weighted by the
            gates), ``hard`` (top-k experts only) or ``dense`` (a plain FFN) for that stage's blocks.
        router_noise: std of the Gaussian noise added to the pooled feature in training (None: 1/N).
        renormalize_topk: rescale the kept top-k gates to sum 1 (off: the raw softmax gates weight them).
        balance_loss_weight: weight of the importance/load CV^2 loss (0: off).
        router_label_loss_weight: weight of a cross-entropy pulling rain type t to expert t mod N (0: off);
            the router never sees the label, only this loss does.
        uncertainty_head: also predict a positive (B, out_channels, H, W) map, ``last_uncertainty`` (TUR).
        bias: bias in the convs of attention and FFNs.
        norm_bias: LayerNorm with bias (True) or scale-only (False).
        checkpointing: activation checkpointing per transformer block in training: activations are
            recomputed in the backward pass (less memory, about one more forward); same gradients, same
            routing (the router noise repeats). Weights are the same with or without it.

    After a forward: ``last_routing`` (one dict per MoE layer: name, mode, gates (B, N), experts (B, k)
    or None), ``auxiliary_losses(type_ids)`` and ``last_uncertainty``.
    """

    _moe = True

    def __init__(self, preset='paper', **options):
        super().__init__()
        arch = type(self).__name__
        opt = resolve(preset, options, moe=self._moe, arch=arch)
        self.options = dict(opt, preset=preset)
        if not self._moe:
            opt.update(num_experts=1, top_k=1, expert_expansion_factor=1.0, router_noise=None,
                       renormalize_topk=False, balance_loss_weight=0.0, router_label_loss_weight=0.0,
                       **{f'{stage}_mode': 'dense' for stage in _STAGE_LEVELS})
        for stage in _STAGE_LEVELS:
            if opt[f'{stage}_mode'] not in MODES:
                raise ValueError(f'{arch}: {stage}_mode must be one of {", ".join(MODES)}, '
                                 f'got {opt[f"{stage}_mode"]!r}')
        num_blocks = _per_level(opt['num_blocks'], 'num_blocks', arch)
        heads = _per_level(opt['heads'], 'heads', arch)
        expert_expansion = _per_level(opt['expert_expansion_factor'], 'expert_expansion_factor', arch)
        dim = opt['dim']
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f'{arch}: dim must be a positive even integer (downsampling halves it), got {dim!r}')
        if not isinstance(opt['checkpointing'], bool):
            raise ValueError(f'{arch}: checkpointing must be true or false, got {opt["checkpointing"]!r}')
        widths = [dim, dim * 2, dim * 4, dim * 8]
        for level, (width, h) in enumerate(zip(widths, heads)):
            if width % h:
                raise ValueError(f'{arch}: heads[{level}]={h} does not divide the {width} channels of level '
                                 f'{level + 1} (dim={dim})')
        self.balance_loss_weight = float(opt['balance_loss_weight'])
        self.router_label_loss_weight = float(opt['router_label_loss_weight'])
        self.residual = opt['inp_channels'] == opt['out_channels']

        def stage(name, level, count, width=None):
            width = width or widths[level]
            mode = opt[f'{name}_mode']
            blocks = []
            for _ in range(count):
                if mode == 'dense':
                    ffn = GatedFFN(width, opt['ffn_expansion_factor'], opt['bias'])
                elif mode == 'soft':
                    ffn = SoftMoE(width, opt['num_experts'], expert_expansion[level], opt['bias'],
                                  opt['router_noise'])
                else:
                    ffn = HardMoE(width, opt['num_experts'], expert_expansion[level], opt['bias'],
                                  opt['router_noise'], opt['top_k'], opt['renormalize_topk'])
                blocks.append(TransformerBlock(width, heads[level], ffn, opt['bias'], opt['norm_bias'],
                                               opt['checkpointing']))
            return nn.Sequential(*blocks)

        # Registration order = data-flow order, so ``last_routing`` lists layers from input to output.
        self.patch_embed = nn.Conv2d(opt['inp_channels'], dim, 3, padding=1, bias=opt['bias'])
        self.encoder_level1 = stage('encoder', 0, num_blocks[0])
        self.down1_2 = Downsample(widths[0])
        self.encoder_level2 = stage('encoder', 1, num_blocks[1])
        self.down2_3 = Downsample(widths[1])
        self.encoder_level3 = stage('encoder', 2, num_blocks[2])
        self.down3_4 = Downsample(widths[2])
        self.latent = stage('latent', 3, num_blocks[3])
        self.up4_3 = Upsample(widths[3])
        self.reduce_chan_level3 = nn.Conv2d(widths[3], widths[2], 1, bias=opt['bias'])
        self.decoder_level3 = stage('decoder', 2, num_blocks[2])
        self.up3_2 = Upsample(widths[2])
        self.reduce_chan_level2 = nn.Conv2d(widths[2], widths[1], 1, bias=opt['bias'])
        self.decoder_level2 = stage('decoder', 1, num_blocks[1])
        self.up2_1 = Upsample(widths[1])
        # level 1 keeps the concatenated 2*dim channels (no reduction), as in Restormer
        self.decoder_level1 = stage('decoder', 0, num_blocks[0], widths[1])
        self.refinement = stage('refinement', 0, opt['num_refinement_blocks'], widths[1])
        self.output = nn.Conv2d(widths[1], opt['out_channels'], 3, padding=1, bias=opt['bias'])
        self.uncertainty = UncertaintyHead(widths[1], opt['out_channels']) if opt['uncertainty_head'] else None

        self.last_uncertainty = None
        # unchosen experts get no gradient in a step; DDP must be told (read by unirain_utils.compat)
        self.ddp_find_unused_parameters = any(isinstance(m, HardMoE) for m in self.modules())

    def forward(self, x):
        size = x.shape[-2:]
        inp = pad_to_multiple(x, 8)
        enc1 = self.encoder_level1(self.patch_embed(inp))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))
        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        feat = self.refinement(dec1)
        out = self.output(feat)
        if self.residual:
            out = out + inp
        if self.uncertainty is not None:
            self.last_uncertainty = crop_to(self.uncertainty(feat), size)
        return crop_to(out, size)

    def moe_layers(self):
        """(name, layer) of every MoE layer, input to output."""
        return [(name, m) for name, m in self.named_modules() if isinstance(m, MixtureOfExperts)]

    @property
    def last_routing(self):
        """One dict per MoE layer of the last forward: name, mode, gates (B, N), experts (B, k) or None."""
        routing = []
        for name, layer in self.moe_layers():
            info = layer.routing()
            if info is not None:
                routing.append({'name': name, **info})
        return routing

    def auxiliary_losses(self, type_ids=None):
        """The enabled auxiliary losses of the last forward, already weighted; ``{}`` when all are off."""
        losses = {}
        if self.balance_loss_weight <= 0 and self.router_label_loss_weight <= 0:
            return losses
        layers = [m for _, m in self.moe_layers()]
        if not layers:
            return losses
        if layers[0].last_logits is None:
            raise RuntimeError(f'{type(self).__name__}.auxiliary_losses: run a forward first')
        if self.balance_loss_weight > 0:
            balance = torch.stack([load_balance_loss(m.last_probs, m.last_weights) for m in layers]).mean()
            losses['l_moe_balance'] = self.balance_loss_weight * balance
        if self.router_label_loss_weight > 0:
            if type_ids is None:
                raise ValueError(f'{type(self).__name__}: router_label_loss_weight > 0 needs the batch\'s '
                                 'type_ids in auxiliary_losses(type_ids=...)')
            label = torch.stack([router_label_loss(m.last_logits, type_ids) for m in layers]).mean()
            losses['l_router_label'] = self.router_label_loss_weight * label
        return losses


@ARCH_REGISTRY.register()
class UniRainDense(UniRain):
    """UniRain's backbone with a plain gated FFN (``ffn_expansion_factor``) in every block.

    ``preset: paper`` is Restormer's configuration (about 26.1 M parameters). Takes the backbone keys of
    UniRain (preset, inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
    ffn_expansion_factor, bias, norm_bias, uncertainty_head, checkpointing); MoE keys are rejected.
    """

    _moe = False
