"""Named configurations of the UniRain networks, selected by ``preset:``; any other option overrides them.

``paper`` is the architecture of docs/method.md section 1 with the unpublished MoE sizes tuned to the paper's
Table 3 (24.4 M parameters, 126.5 G multiply-adds on 1x3x256x256, counting only the experts that run).
``small`` is for CPU experiments, ``tiny`` for tests and smoke runs.
"""
import copy

PRESET_NAMES = ('paper', 'small', 'tiny')

# The backbone every variant shares (Restormer-style 4-level U-Net).
BACKBONE_DEFAULTS = {
    'inp_channels': 3,
    'out_channels': 3,
    'dim': 48,
    'num_blocks': [4, 6, 6, 8],
    'num_refinement_blocks': 4,
    'heads': [1, 2, 4, 8],
    'ffn_expansion_factor': 2.66,
    'bias': False,
    'norm_bias': True,
    'uncertainty_head': False,
    # recompute each transformer block's activations in backward: memory for time, same gradients
    'checkpointing': False,
}

# What UniRain adds: where the MoE layers sit, their size and their routing.
MOE_DEFAULTS = {
    'num_experts': 4,
    'top_k': 1,
    # One value per level (1: encoder 1 / decoder 1 / refinement at full resolution, 2, 3, 4: latent).
    # With k=1 no single width meets both of Table 3's totals (the uniform width giving 24.4 M parameters
    # executes ~87 G multiply-adds): wide experts where parameters are cheap and pixels many (level 1),
    # slim ones where parameters are expensive (deep levels) give 24.5 M and 127 G.
    'expert_expansion_factor': [2.4, 0.5, 0.5, 0.5],
    'encoder_mode': 'soft',
    'latent_mode': 'hard',
    'decoder_mode': 'hard',
    'refinement_mode': 'hard',
    'router_noise': None,  # None: 1 / num_experts
    'renormalize_topk': False,
    'balance_loss_weight': 0.0,
    'router_label_loss_weight': 0.0,
}

_BACKBONE_PRESETS = {
    'paper': {},
    'small': {'dim': 24, 'num_blocks': [2, 2, 2, 4], 'num_refinement_blocks': 2},
    'tiny': {'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 1, 2, 2]},
}
_MOE_PRESETS = {
    'paper': {},
    'small': {'expert_expansion_factor': [1.33, 0.66, 0.66, 0.66]},
    'tiny': {'expert_expansion_factor': 1.0},
}


def resolve(preset, overrides, moe=True, arch='UniRain'):
    """Defaults <- preset <- user options, with unknown keys and preset names rejected by name."""
    if preset not in PRESET_NAMES:
        raise ValueError(f'{arch}: unknown preset {preset!r}; expected one of {", ".join(PRESET_NAMES)}')
    options = copy.deepcopy(BACKBONE_DEFAULTS)
    options.update(copy.deepcopy(_BACKBONE_PRESETS[preset]))
    if moe:
        options.update(copy.deepcopy(MOE_DEFAULTS))
        options.update(copy.deepcopy(_MOE_PRESETS[preset]))
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        moe_keys = not moe and set(unknown) & set(MOE_DEFAULTS)
        hint = ' (MoE options belong to UniRain, not UniRainDense)' if moe_keys else ''
        raise ValueError(f'{arch}: unknown option(s) {", ".join(unknown)}{hint}; '
                         f'valid options: preset, {", ".join(sorted(options))}')
    options.update(copy.deepcopy(dict(overrides)))
    return options
