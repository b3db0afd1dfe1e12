"""UniRainModel: real optimisation on mixed-type batches, logging, per-type validation, CoBa feedback, TUR groups."""
import copy
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import default_collate

import unirain_data  # noqa: F401  (registers DistilledRainDataset)
import unirain_losses  # noqa: F401  (registers the strategies and the model)
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import MessageLogger
from basicsr.utils.registry import ARCH_REGISTRY
from unirain_losses.type_metrics import declared_type, sample_type
from unirain_utils.cli import load_plugins
from unirain_utils.options import OptionLoader, load_options

TYPES = ('drs', 'drd', 'nrs', 'nrd')


@ARCH_REGISTRY.register()
class UniRainLossesResidualTestNet(nn.Module):
    """x + conv3x3(x), the conv starting at zero: the output starts at the input and moves slowly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return x + self.conv(x)


TINY_YAML = """
name: unirain_model_test
model_type: UniRainModel        # the model under test
scale: 1
num_gpu: 0                      # CPU
manual_seed: 0
is_train: true
dist: false
rank: 0
world_size: 1
datasets: {}                    # val datasets are added by each test
network_g: {type: UniRainLossesResidualTestNet}
path: {pretrain_network_g: ~, strict_load_g: true, resume_state: ~}
train:
  ema_decay: 0
  optim_g: {type: AdamW, lr: !!float 2e-4, weight_decay: 0, betas: [0.9, 0.99]}
  scheduler: {type: CosineAnnealingRestartLR, periods: [1000], restart_weights: [1], eta_min: !!float 1e-6}
  total_iter: 1000
  pixel_opt: {type: CoBaLoss, warmup_updates: 2, window: 4}
val:
  val_freq: 2                   # CoBa gets per-type validation losses every 2 iterations
  coba_crop: 16             # centre crops of the validation images
  save_img: false
  metrics:
    psnr: {type: calculate_psnr, crop_border: 0, test_y_channel: false}
logger: {print_freq: 1, save_checkpoint_freq: 1000, use_tb_logger: true}
"""


def write_layout(root, count, size, seed, noisy_type=None):
    """root/{drs,drd,nrs,nrd}/{input,target}/i.png; rainy = clean + 0.1, plus heavy noise for ``noisy_type``."""
    rng = np.random.default_rng(seed)
    for t, name in enumerate(TYPES):
        for sub in ('input', 'target'):
            (root / name / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            clean = cv2.GaussianBlur(rng.uniform(0.1, 0.8, (size, size, 3)), (5, 5), 1.5)
            rainy = clean + 0.1
            if t == noisy_type:
                rainy = rainy + rng.normal(0, 0.25, clean.shape)
            for sub, img in (('input', rainy), ('target', clean)):
                cv2.imwrite(str(root / name / sub / f'{i}.png'), np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))


def val_dataset_opts(root, per_type=True):
    base = {'type': 'DistilledRainDataset', 'dataroot': str(root), 'phase': 'val', 'io_backend': {'type': 'disk'}}
    if not per_type:
        return {'val': dict(base, name='mixed_val')}
    return {f'val_{i}': dict(base, name=f'val_{name}', types=[name]) for i, name in enumerate(TYPES)}


def make_opt(tmp_path, val_root, per_type=True, **train_overrides):
    opt = yaml.load(TINY_YAML, Loader=OptionLoader)
    opt['datasets'] = val_dataset_opts(val_root, per_type)
    opt['train'].update(train_overrides)
    for key in ('models', 'training_states', 'visualization'):
        opt['path'][key] = str(tmp_path / key)
        (tmp_path / key).mkdir(exist_ok=True)
    return opt


def train_batches(root, batch_size, steps, seed=0):
    """Batches of DistilledRainDataset (train phase: random 16x16 crops) holding every type equally often."""
    dataset = build_dataset({'type': 'DistilledRainDataset', 'name': 'train', 'dataroot': str(root), 'phase': 'train',
                             'gt_size': 16, 'use_hflip': True, 'use_rot': True, 'type_balanced': True,
                             'io_backend': {'type': 'disk'}})
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        # type_balanced: index % 4 is the type
        indices = [4 * int(j) + t for t in range(4) for j in rng.choice(len(dataset) // 4, batch_size // 4)]
        yield default_collate([dataset[i] for i in indices])


class RecordingTB:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = value


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('pairs')
    write_layout(root / 'train', count=4, size=24, seed=0, noisy_type=3)
    write_layout(root / 'val', count=2, size=24, seed=1, noisy_type=3)
    return root


def validate_all(model, opt, current_iter, tb_logger=None):
    for phase, dataset_opt in opt['datasets'].items():
        loader = build_dataloader(build_dataset(dataset_opt), dataset_opt, num_gpu=0, dist=False)
        model.validation(loader, current_iter, tb_logger, save_img=False)


def test_trains_on_mixed_batches_logs_and_validates_per_type(tmp_path, data):
    opt = make_opt(tmp_path, data / 'val')
    opt['network_g'] = {'type': 'UniRain', 'preset': 'tiny', 'balance_loss_weight': 0.01}
    model = build_model(opt)
    before = [p.detach().clone() for p in model.net_g.parameters()]
    for step, batch in enumerate(train_batches(data / 'train', 8, 4), start=1):
        assert sorted(set(batch['type_id'].tolist())) == [0, 1, 2, 3]
        model.feed_data(batch)
        model.optimize_parameters(step)
    log = model.get_current_log()
    expected = {'l_pix', 'l_moe_balance'} | {f'{k}_{t}' for k in ('l_pix', 'w', 'l_val') for t in TYPES}
    assert expected <= set(log)
    assert all(math.isfinite(v) for v in log.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))
    assert len(model.cri_pix.loss_history) == 2  # updates at iterations 2 and 4
    assert [log[f'l_val_{t}'] for t in TYPES] == pytest.approx(model.cri_pix.loss_history[-1].tolist(), rel=1e-6)

    # through BasicSR's message logger: losses under losses/, weights as they are
    tb = RecordingTB()
    MessageLogger(opt, 4, tb)({'epoch': 0, 'iter': 4, 'lrs': model.get_current_learning_rate(), **log})
    assert {'losses/l_pix_drs', 'losses/l_moe_balance', 'w_nrd', 'losses/l_val_drd'} <= set(tb.scalars)

    tb = RecordingTB()
    validate_all(model, opt, 4, tb)
    per_type = model.type_metric_results['psnr']
    assert list(per_type) == list(TYPES) + ['avg']
    assert per_type['avg'] == pytest.approx(np.mean([per_type[t] for t in TYPES]))
    assert per_type['nrd'] < min(per_type[t] for t in TYPES[:3])  # the noisy type restores worst
    for t in TYPES:
        assert tb.scalars[f'metrics/val_{t}/psnr'] == pytest.approx(per_type[t])
        assert tb.scalars[f'metrics/m_psnr_{t}'] == pytest.approx(per_type[t])
    assert tb.scalars['metrics/m_psnr_avg'] == pytest.approx(per_type['avg'])

    # one mixed dataset with type ids gives the same per-type numbers as one dataset per type
    mixed_opt = make_opt(tmp_path, data / 'val', per_type=False)
    mixed_opt['network_g'] = opt['network_g']
    mixed = build_model(mixed_opt)
    mixed.net_g.load_state_dict(model.net_g.state_dict())
    validate_all(mixed, mixed_opt, 4)
    assert mixed.type_metric_results['psnr'] == pytest.approx(per_type)


def test_weights_move_toward_the_type_whose_validation_loss_lags(tmp_path, data):
    """Every type must learn the same -0.1 offset; NRD's heavy noise makes its validation L1 fall slowly."""
    model = build_model(make_opt(tmp_path, data / 'val'))
    history = []
    for step, batch in enumerate(train_batches(data / 'train', 8, 20, seed=1), start=1):
        model.feed_data(batch)
        model.optimize_parameters(step)
        history.append(model.cri_pix.weights())
    losses = model.cri_pix.loss_history
    drop = (losses[0] - losses[-1]).tolist()
    assert drop[3] < 0.5 * min(drop[:3])  # the premise: NRD converges much more slowly
    assert all(torch.equal(w, torch.full((4,), 0.25)) for w in history[:5])  # warm-up: 2 updates (iters 2, 4)
    for weights in history[5:]:  # every update after warm-up favours NRD
        assert int(weights.argmax()) == 3
        assert weights[3].item() > 0.25
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert max(w[3].item() for w in history) > 0.3
    assert model.get_current_log()['w_nrd'] == pytest.approx(history[-2][3].item())  # this step's weights


def test_tur_learns_its_scales_in_its_own_param_group(tmp_path, data):
    opt = make_opt(tmp_path, data / 'val', pixel_opt={'type': 'TURLoss', 'lr': 0.01})
    model = build_model(opt)
    groups = model.optimizer_g.param_groups
    assert len(groups) == 2
    assert groups[1]['lr'] == 0.01 and groups[1]['weight_decay'] == 0.0
    assert groups[1]['params'][0] is model.cri_pix.log_sigma
    assert len(model.get_current_learning_rate()) == 2
    for step, batch in enumerate(train_batches(data / 'train', 8, 3), start=1):
        model.feed_data(batch)
        model.update_learning_rate(step)
        model.optimize_parameters(step)
    assert (model.cri_pix.log_sigma.detach() != 0).all()
    assert {'l_wpix_drs', 'l_unc_nrd', 'w_drd'} <= set(model.get_current_log())
    assert model.reweight_sets is None  # TUR needs no validation losses: nothing was built for it


def test_tur_reads_the_arch_uncertainty_map(tmp_path, data):
    opt = make_opt(tmp_path, data / 'val', pixel_opt={'type': 'TURLoss', 'uncertainty': 'arch'})
    opt['network_g'] = {'type': 'UniRain', 'preset': 'tiny', 'uncertainty_head': True}
    model = build_model(opt)
    assert len(model.optimizer_g.param_groups) == 1  # the map belongs to the arch, trained with it
    head = model.net_g.uncertainty
    before = [p.detach().clone() for p in head.parameters()]
    batch = next(train_batches(data / 'train', 4, 1))
    model.feed_data(batch)
    model.optimize_parameters(1)
    # the loss trains the arch's head (its first step reaches the zero-initialised output conv)
    assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters()))
    log = model.get_current_log()
    # the head starts at sigma = 1: the weighted term is the plain L1 and the uncertainty term ~0
    assert log['l_wpix_drs'] == pytest.approx(log['l_pix_drs'], rel=1e-4)
    assert abs(log['l_unc_drs']) < 1e-4
    bare = build_model(make_opt(tmp_path, data / 'val', pixel_opt={'type': 'TURLoss', 'uncertainty': 'arch'}))
    bare.feed_data(batch)
    with pytest.raises(ValueError, match='last_uncertainty'):
        bare.optimize_parameters(1)


def test_configuration_errors_are_clear(tmp_path, data):
    with pytest.raises(ValueError, match='plain pixel loss; use a per-type strategy'):
        build_model(make_opt(tmp_path, data / 'val', pixel_opt={'type': 'L1Loss'}))
    with pytest.raises(ValueError, match='sets lr but UniformTypeLoss has no learnable parameters'):
        build_model(make_opt(tmp_path, data / 'val', pixel_opt={'type': 'UniformTypeLoss', 'lr': 1e-3}))
    with pytest.raises(ValueError, match='not an optimizer of torch.optim'):
        build_model(make_opt(tmp_path, data / 'val', optim_g={'type': 'Adamm', 'lr': 1e-3}))
    opt = make_opt(tmp_path, data / 'val')
    opt['datasets'] = {k: v for k, v in opt['datasets'].items() if k != 'val_2'}
    with pytest.raises(ValueError, match='none for: nrs'):
        build_model(opt).validation_sets()
    opt = make_opt(tmp_path, data / 'val')
    opt['val'] = None
    with pytest.raises(ValueError, match='val.val_freq'):
        build_model(opt)
    opt = make_opt(tmp_path, data / 'val')
    opt['datasets']['val_0']['name'] = 'holdout'
    opt['datasets']['val_0']['rain_type'] = 'rain'
    with pytest.raises(ValueError, match="rain_type 'rain'"):
        build_model(opt).validation_sets()

    model = build_model(make_opt(tmp_path, data / 'val', pixel_opt={'type': 'UniformTypeLoss'}))
    batch = next(train_batches(data / 'train', 4, 1))
    del batch['type_id']
    model.feed_data(batch)
    with pytest.raises(KeyError, match='use DistilledRainDataset'):
        model.optimize_parameters(1)


def test_a_validation_set_declares_its_type_never_by_its_name():
    names = ['drs', 'drd', 'nrs', 'nrd']
    assert declared_type({'name': 'holdout', 'rain_type': 'DRD'}, names) == 1
    assert declared_type({'name': 'val_drs'}, names) is None  # a name is not a declaration
    assert sample_type({'type_id': torch.tensor([2])}, {'name': 'x', 'rain_type': 'drs'}, names) == 2  # samples win


def test_coba_reuses_the_validation_datasets_basicsr_built(tmp_path, data, monkeypatch):
    opt = make_opt(tmp_path, data / 'val')
    model = build_model(opt)
    datasets = [build_dataset(o) for phase, o in opt['datasets'].items() if phase.startswith('val')]
    model.use_validation_datasets(datasets)
    import unirain_losses.unirain_model as module

    def no_second_build(dataset_opt):
        raise AssertionError(f'validation dataset {dataset_opt["name"]} built a second time')
    monkeypatch.setattr(module, 'build_dataset', no_second_build)
    model.update_reweighting(model.coba_freq)
    assert [d for d, _ in model.validation_sets()] == datasets
    assert all(v is not None for v in model.val_type_losses)


def test_tiled_test_matches_the_whole_image(tmp_path, data):
    opt = make_opt(tmp_path, data / 'val', pixel_opt={'type': 'UniformTypeLoss'})
    model = build_model(opt)
    with torch.no_grad():
        model.net_g.conv.weight.normal_(0, 0.1)
    lq = torch.rand(1, 3, 40, 37)
    model.feed_data({'lq': lq})
    model.test()
    whole = model.output
    tiled_opt = copy.deepcopy(opt)
    tiled_opt['tile'] = {'tile_size': 16, 'tile_overlap': 8}
    tiled = build_model(tiled_opt)
    tiled.net_g.load_state_dict(model.net_g.state_dict())
    tiled.feed_data({'lq': lq})
    tiled.test()
    assert torch.allclose(tiled.output, whole, atol=1e-6)
    assert tiled.net_g.training  # test() restores the training mode


OPTION_FILES = ('train_UniRain.yml', 'train_UniRain_uniform.yml', 'train_UniRain_TUR.yml')


def test_option_files_build_and_differ_only_in_the_strategy(tmp_path, data):
    """The shipped recipes, on a tiny arch and the test pairs, build a model and train one step."""
    root = Path(__file__).resolve().parents[1] / 'options'
    opts = {name: load_options(root / name) for name in OPTION_FILES}
    reference = opts[OPTION_FILES[0]]
    assert reference['train']['pixel_opt']['type'] == 'CoBaLoss'
    assert reference['train']['total_iter'] == 300000 and reference['datasets']['train']['gt_size'] == 128

    def without_strategy(opt):
        opt = copy.deepcopy(opt)
        del opt['name'], opt['train']['pixel_opt']
        return opt

    assert all(without_strategy(opt) == without_strategy(reference) for opt in opts.values())
    assert len({opt['train']['pixel_opt']['type'] for opt in opts.values()}) == 3
    for opt in opts.values():
        opt.update(num_gpu=0, is_train=True, dist=False, rank=0, world_size=1)
        opt['network_g'] = {'type': 'UniRain', 'preset': 'tiny'}
        for phase, dataset_opt in opt['datasets'].items():
            dataset_opt.pop('manifest')
            dataset_opt.pop('splits')
            dataset_opt.pop('verdicts', None)
            dataset_opt.update(dataroot=str(data / ('train' if phase == 'train' else 'val')), phase=phase.split('_')[0])
        opt['val']['coba_crop'] = 16
        for key in ('models', 'training_states', 'visualization'):
            opt['path'][key] = str(tmp_path / key)
        model = build_model(opt)
        model.feed_data(next(train_batches(data / 'train', 4, 1)))
        model.optimize_parameters(1)
        assert {f'w_{t}' for t in TYPES} <= set(model.get_current_log())


def ddp_worker(rank, world_size, port, root, out):
    """One rank of a 2-process gloo group: what every rank must agree on after init and after training."""
    load_plugins()  # a spawned rank starts afresh: what the `basicsr` command does in each process
    torch.distributed.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                                         world_size=world_size)
    torch.manual_seed(100 + rank)  # basicsr seeds each rank with manual_seed + rank
    results = {}
    for strategy in ({'type': 'TURLoss', 'uncertainty': 'input_head', 'lr': 0.01}, {'type': 'CoBaLoss'}):
        opt = make_opt(Path(out) / f'rank{rank}', Path(root) / 'val', pixel_opt=strategy)
        opt.update(dist=True, rank=rank, world_size=world_size)
        model = build_model(opt)
        initial = copy.deepcopy(model.cri_pix.state_dict())
        for step, batch in enumerate(train_batches(Path(root) / 'train', 4, 2, seed=rank), start=1):
            model.feed_data(batch)
            model.optimize_parameters(step)
        results[strategy['type']] = {'initial': initial, 'trained': dict(model.cri_pix.named_parameters()),
                                     'val_losses': model.per_type_val_losses(),
                                     'rng': model.gather_host_rng_states()}
    torch.save(results, Path(out) / f'rank{rank}.pth')
    torch.distributed.destroy_process_group()


def test_ranks_agree_on_the_strategy_under_ddp(tmp_path, data):
    """Strategy parameters start equal (broadcast), stay equal (averaged gradients), val losses are all-reduced."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    for rank in range(2):
        (tmp_path / f'rank{rank}').mkdir()
    mp.spawn(ddp_worker, args=(2, port, str(data), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pth', weights_only=False) for r in range(2)]
    tur = [r['TURLoss'] for r in ranks]
    for name in ('head.body.0.weight', 'head.body.2.weight'):
        assert torch.equal(tur[0]['initial'][name], tur[1]['initial'][name]), name
    for name, param in tur[0]['trained'].items():
        assert torch.equal(param, tur[1]['trained'][name]), name
        assert not torch.equal(param, tur[0]['initial'][name]) or name.startswith('head.body.0'), name
    coba = [r['CoBaLoss'] for r in ranks]
    assert coba[0]['val_losses'] == coba[1]['val_losses']
    assert all(v is not None for v in coba[0]['val_losses'])
    assert len(coba[0]['rng']) == 2 and coba[0]['rng'][1]['python'] == coba[1]['rng'][1]['python']


@pytest.mark.parametrize('network', [
    {'type': 'UniRainDense', 'preset': 'tiny'},
    {'type': 'PReNet', 'recurrent_iter': 1},
    {'type': 'SwinIR', 'upscale': 1, 'in_chans': 3, 'img_size': 16, 'window_size': 4, 'img_range': 1.0,
     'depths': [1], 'embed_dim': 12, 'num_heads': [2], 'mlp_ratio': 2, 'upsampler': '', 'resi_connection': '1conv'},
])
def test_any_arch_trains_with_coba(tmp_path, data, network):
    opt = make_opt(tmp_path, data / 'val')
    opt['network_g'] = network
    model = build_model(opt)
    before = [p.detach().clone() for p in model.net_g.parameters()]
    for step, batch in enumerate(train_batches(data / 'train', 4, 2), start=1):
        model.feed_data(batch)
        model.optimize_parameters(step)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))
    assert len(model.cri_pix.loss_history) == 1 and math.isfinite(model.get_current_log()['l_val_nrd'])


def test_window_archs_are_padded_not_cropped_in_test():
    """BasicSR's SwinIR needs sizes divisible by its window: the model pads and crops back, tiled or not."""
    opt = {'name': 'swin', 'model_type': 'UniRainModel', 'is_train': False, 'num_gpu': 0, 'dist': False, 'scale': 1,
           'network_g': {'type': 'SwinIR', 'upscale': 1, 'in_chans': 3, 'img_size': 16, 'window_size': 8,
                         'img_range': 1., 'depths': [1], 'embed_dim': 12, 'num_heads': [2], 'mlp_ratio': 2,
                         'upsampler': '', 'resi_connection': '1conv'},
           'path': {'pretrain_network_g': None}, 'val': {'metrics': {}}, 'datasets': {}}
    model = build_model(opt)
    model.lq = torch.rand(1, 3, 37, 29)
    model.test()
    whole = model.output
    assert whole.shape == (1, 3, 37, 29)
    model.opt['tile'] = {'tile_size': 24, 'tile_overlap': 8}
    model.test()
    assert model.output.shape == (1, 3, 37, 29) and torch.isfinite(model.output).all()
