"""UniRainModel: BasicSR's SRModel trained with a per-rain-type reweighting strategy, for any arch."""
from collections import OrderedDict
from os import path as osp

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F
from tqdm import tqdm

from basicsr.data import build_dataset
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from unirain_losses.mixed_precision import MixedPrecision, amp_dtype
from unirain_losses.progress_plot import ProgressPlot
from unirain_losses.reweighting import TypeReweightedLoss, default_type_names
from unirain_losses.type_metrics import TypeMetrics, declared_type, sample_type
from unirain_utils.files import atomic_open
from unirain_utils.resume import host_rng_state, iteration_seed, set_host_rng_state

MISSING_TYPE_IDS = 'the dataset must provide type ids: use DistilledRainDataset (the batch has no "type_id")'
# keys of train.pixel_opt that configure the strategy's optimizer param group, not the loss itself
PARAM_GROUP_KEYS = ('lr', 'weight_decay')
BEST_AVG_NAME = 'per_type_avg'
COMPILE_KEYS = {'mode', 'backend', 'dynamic', 'fullgraph', 'options'}


def compile_options(value):
    """``train.compile``: false -> None; true -> {}; a mapping -> keyword arguments of ``torch.compile``."""
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if isinstance(value, dict) and set(value) <= COMPILE_KEYS:
        return dict(value)
    raise ValueError(f'train.compile: {value!r} is not true, false or a mapping of torch.compile arguments '
                     f'({", ".join(sorted(COMPILE_KEYS))}), e.g. {{mode: max-autotune}}')


def centre_crop(img, size):
    """Centre crop of a (B, C, H, W) tensor to at most size x size (smaller sides are kept whole)."""
    h, w = img.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[..., top:top + ch, left:left + cw]


@MODEL_REGISTRY.register()
class UniRainModel(SRModel):
    """SRModel whose pixel loss is a per-type strategy (CoBaLoss, TURLoss, UniformTypeLoss).

    Everything else stays BasicSR's: EMA, schedulers, checkpoints, metrics, DDP. On top of SRModel:

    * Training batches must carry ``type_id`` (B,); the strategy gets the ids, the rainy input (``lq``)
      and the arch's ``last_uncertainty`` if it has one. ``net.auxiliary_losses(type_ids)`` (MoE load
      balance, router CE), when the arch has it, is added to the total and logged under its keys.
      Logged every iteration: ``l_pix`` (the strategy's total), ``l_pix_<type>`` (plain criterion per
      type), ``w_<type>`` (weights of this step), strategy extras, and ``l_val_<type>`` after the first
      validation-loss update.
    * Any optimizer of ``torch.optim`` by name (``optim_g: {type: AdamW, ...}``). Learnable strategy
      parameters (TUR) get their own param group: ``pixel_opt: {lr: ..., weight_decay: ...}`` (default:
      optim_g's lr, no weight decay); the scheduler drives both groups.
    * Strategies that learn from validation losses (CoBa): every ``val.coba_freq`` iterations (default
      ``val.val_freq``), inside the training step and so before that iteration's checkpoint, the model
      computes the plain L1 of the training network on centre crops (``val.coba_crop``, default 128;
      smaller images whole) of every validation dataset, per type, and calls ``strategy.update``. It uses
      the validation datasets BasicSR built (``use_validation_datasets``, called by ``unirain_utils.compat``
      right after the model is built; a model built outside BasicSR's pipeline builds them itself). Under DDP
      each rank takes a share of the images and the sums are all-reduced, so every rank gets the same
      weights. Doing it here rather than in ``validation`` keeps it independent of BasicSR's order
      (checkpoint, then validation) and of rank-0-only validation.
    * ``validation`` reports BasicSR's per-dataset metrics and, once every validation dataset of the round
      has been seen, per-type metrics and their average over types (``m_<metric>_<type>``,
      ``m_<metric>_avg`` in the log and tensorboard, best average tracked as ``per_type_avg``). The type
      of an image: its ``type_id`` if the dataset gives one, else the dataset's ``rain_type`` option
      (``unirain_losses.type_metrics`` keeps the books).
    * ``test`` runs on the bare net (EMA copy when present); with a top-level ``tile: {tile_size,
      tile_overlap}`` it uses ``unirain_arch.tiling.tiled_forward``.
    * ``train.amp: bf16 | fp16 | ~``: mixed precision (``unirain_losses.mixed_precision``) for any arch:
      autocast around the forward and the losses; the strategy's loss and its statistics (TUR's sigmas,
      the per-type losses) in fp32, as are CoBa's validation losses and the validation itself. fp16 adds
      a GradScaler whose state is saved in the training state (``amp_scaler``), so resume stays exact.
    * ``train.compile: true`` (or a mapping of torch.compile arguments, e.g. ``{mode: max-autotune}``): the
      training forward runs through ``torch.compile(net_g)`` (weights and checkpoints unchanged); if
      compiling fails, a warning names the error and training goes on eagerly.
    * Exact resume: the strategy's state_dict and the python / numpy RNG states of every rank are saved in
      the training state and restored by ``resume_training``. The torch RNG is reseeded at the start of
      every training step from (manual_seed, rank, iteration), so the network's randomness does not depend
      on what consumed random numbers before (a new DataLoader iterator after resume draws one). With
      ``num_worker_per_gpu: 0`` a resumed run reproduces the uninterrupted one bit for bit.
    """

    def __init__(self, opt):
        self.val_type_losses = None
        self.rng_states = None
        self.resume_iter = None
        self.progress = None
        self.reweight_sets = None
        self.amp = MixedPrecision(None, 'cpu')
        self.compiled_g = None
        super().__init__(opt)
        self.type_names = self.cri_pix.type_names if self.is_train else default_type_names(4)
        self.num_val_datasets = sum(1 for phase in opt['datasets'] if phase != 'train')
        self.type_metrics = TypeMetrics(self.type_names)
        self.val_datasets_seen = 0
        self.validated = set()  # (dataset name, iteration) validated by this process

    # ----------------------------------------------------------------------------------------- training setup
    def init_training_settings(self):
        train_opt = self.opt['train']
        pixel_opt = train_opt.get('pixel_opt')
        if not pixel_opt or 'type' not in pixel_opt:
            raise ValueError('UniRainModel: train.pixel_opt must name a per-type strategy '
                             '(type: CoBaLoss | TURLoss | UniformTypeLoss)')
        strategy_cls = LOSS_REGISTRY.get(pixel_opt['type'])
        if not (isinstance(strategy_cls, type) and issubclass(strategy_cls, TypeReweightedLoss)):
            raise ValueError(f'UniRainModel: train.pixel_opt.type {pixel_opt["type"]!r} is a plain pixel loss; use '
                             f'a per-type strategy, e.g. {{type: UniformTypeLoss, criterion: '
                             f'{{type: {pixel_opt["type"]}}}}}')
        self.strategy_group = {key: pixel_opt[key] for key in PARAM_GROUP_KEYS if key in pixel_opt}
        train_opt['pixel_opt'] = OrderedDict((k, v) for k, v in pixel_opt.items() if k not in PARAM_GROUP_KEYS)
        self.amp = MixedPrecision(amp_dtype(train_opt.get('amp')), self.device)
        compile_opt = compile_options(train_opt.get('compile', False))
        super().init_training_settings()
        if compile_opt is not None:
            # a separate callable sharing net_g's parameters: net_g, its state_dict keys and checkpoints stay as
            # they are; torch.compile is lazy, so failures surface in the first step (see optimize_parameters)
            self.compiled_g = torch.compile(self.net_g, **compile_opt)
        if self.opt['dist']:
            # each rank initialised the strategy from its own seed (seed + rank); DDP only syncs the net
            for tensor in self.cri_pix.state_dict().values():
                if isinstance(tensor, torch.Tensor):
                    dist.broadcast(tensor, src=0)
        val_opt = self.opt.get('val') or {}
        self.coba_crop = int(val_opt.get('coba_crop', 128))
        if self.cri_pix.needs_val_losses:
            freq = val_opt.get('coba_freq', val_opt.get('val_freq'))
            if not freq:
                raise ValueError(f'{type(self.cri_pix).__name__} learns from per-type validation losses: set '
                                 'val.val_freq (or val.coba_freq) and one validation dataset per type (or one with '
                                 'type ids)')
            self.coba_freq = int(freq)

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        optimizer_cls = getattr(torch.optim, str(optim_type), None)
        if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
            raise ValueError(f'train.optim_g.type: {optim_type!r} is not an optimizer of torch.optim '
                             '(Adam, AdamW, SGD, ...)')
        return optimizer_cls(params, lr=lr, **kwargs)

    def setup_optimizers(self):
        logger = get_root_logger()
        optim_opt = dict(self.opt['train']['optim_g'])
        optim_type = optim_opt.pop('type')
        net_params = []
        for name, param in self.net_g.named_parameters():
            if param.requires_grad:
                net_params.append(param)
            else:
                logger.warning(f'Params {name} will not be optimized.')
        groups = [{'params': net_params}]
        strategy_params = [p for p in self.cri_pix.parameters() if p.requires_grad]
        if strategy_params:
            groups.append({'params': strategy_params, 'lr': float(self.strategy_group.get('lr', optim_opt['lr'])),
                           'weight_decay': float(self.strategy_group.get('weight_decay', 0.0))})
        elif self.strategy_group:
            raise ValueError(f'train.pixel_opt sets {", ".join(self.strategy_group)} but '
                             f'{type(self.cri_pix).__name__} has no learnable parameters')
        self.optimizer_g = self.get_optimizer(optim_type, groups, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    def use_validation_datasets(self, datasets):
        """The validation datasets BasicSR built, in option order: the strategy's per-type losses come from them."""
        if self.is_train and self.cri_pix.needs_val_losses:
            self.reweight_sets = self.typed_val_sets(datasets)

    def typed_val_sets(self, datasets):
        """[(dataset, declared type id or None)]; together they must cover every type.

        A dataset's types: its declared ``rain_type``, else the ``type_ids`` it lists (DistilledRainDataset);
        a dataset whose samples carry ``type_id`` without listing them is trusted to cover what it holds.
        """
        name = type(self.cri_pix).__name__
        sets, covered, unlisted = [], set(), False
        for dataset in datasets:
            fixed = declared_type(dataset.opt, self.cri_pix.type_names)
            if fixed is not None:
                covered.add(fixed)
            elif hasattr(dataset, 'type_ids'):
                covered.update(dataset.type_ids)
            elif len(dataset) and 'type_id' in dataset[0]:
                unlisted = True
            else:
                raise ValueError(f'validation dataset {dataset.opt.get("name")!r}: cannot tell its rain type; '
                                 f'add `rain_type: <{"|".join(self.cri_pix.type_names)}>` to it, or use a '
                                 'dataset that gives type ids (DistilledRainDataset)')
            sets.append((dataset, fixed))
        missing = [n for t, n in enumerate(self.cri_pix.type_names) if t not in covered]
        if not sets or (missing and not unlisted):
            raise ValueError(f'{name} needs validation images of every type; none for: '
                             f'{", ".join(missing) or "any type (no val datasets)"}')
        return sets

    def validation_sets(self):
        """The (dataset, type) pairs of ``use_validation_datasets``; built here only outside BasicSR's pipeline."""
        if self.reweight_sets is None:
            self.reweight_sets = self.typed_val_sets(
                [build_dataset(o) for phase, o in self.opt['datasets'].items() if phase.startswith('val')])
        return self.reweight_sets

    # ---------------------------------------------------------------------------------------------- training
    def feed_data(self, data):
        super().feed_data(data)
        self.type_ids = None
        if 'type_id' in data:
            self.type_ids = torch.as_tensor(data['type_id']).long().reshape(-1).to(self.device)

    def optimize_parameters(self, current_iter):
        if self.type_ids is None:
            raise KeyError(MISSING_TYPE_IDS)
        seed = iteration_seed(self.opt.get('manual_seed', 0), self.opt.get('rank', 0), current_iter)
        if self.compiled_g is not None:
            try:
                loss_dict = self.forward_backward(self.compiled_g, seed)
            except Exception as exc:  # dynamo and inductor raise many types; a real error recurs eagerly below
                arch = type(self.get_bare_model(self.net_g)).__name__
                get_root_logger().warning(f'train.compile: torch.compile of {arch} failed ({type(exc).__name__}: '
                                          f'{str(exc).strip()[:500]}); training goes on eagerly')
                self.compiled_g = None
        if self.compiled_g is None:
            loss_dict = self.forward_backward(self.net_g, seed)
        self.sync_strategy_grads()
        self.amp.step(self.optimizer_g)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        if self.cri_pix.needs_val_losses and current_iter % self.coba_freq == 0:
            self.update_reweighting(current_iter)
        for name, value in zip(self.type_names, self.val_type_losses or ()):
            if value is not None:
                loss_dict[f'l_val_{name}'] = torch.tensor(value, device=self.device)
        self.log_dict = self.reduce_loss_dict(loss_dict)

    def forward_backward(self, net, seed):
        """Forward (autocast when ``train.amp``), losses and backward of one step; returns the loss dict."""
        torch.manual_seed(seed)
        self.optimizer_g.zero_grad()
        bare = self.get_bare_model(self.net_g)
        loss_dict = OrderedDict()
        with self.amp.autocast():
            self.output = net(self.lq)
            with self.amp.full_precision():
                uncertainty = getattr(bare, 'last_uncertainty', None)
                l_pix = self.cri_pix(self.output.float(), self.gt, self.type_ids, lq=self.lq,
                                     uncertainty=None if uncertainty is None else uncertainty.float())
            l_total = l_pix
            loss_dict['l_pix'] = l_pix
            loss_dict.update(self.cri_pix.last_log)
            auxiliary = bare.auxiliary_losses(self.type_ids) if hasattr(bare, 'auxiliary_losses') else {}
            for key, value in auxiliary.items():
                l_total = l_total + value
                loss_dict[key] = value
            if self.cri_perceptual:
                l_percep, l_style = self.cri_perceptual(self.output, self.gt)
                for key, value in (('l_percep', l_percep), ('l_style', l_style)):
                    if value is not None:
                        l_total = l_total + value
                        loss_dict[key] = value
        self.amp.backward(l_total)
        return loss_dict

    def sync_strategy_grads(self):
        """The strategy's parameters live outside DDP: average their gradients across ranks here."""
        if not self.opt['dist']:
            return
        world_size = dist.get_world_size()
        for param in self.cri_pix.parameters():
            if param.requires_grad:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                dist.all_reduce(param.grad)
                param.grad.div_(world_size)

    @torch.no_grad()
    def per_type_val_losses(self):
        """Mean plain L1 per type on centre crops of the validation images; None for a type without images."""
        net = self.get_bare_model(self.net_g)
        was_training = net.training
        net.eval()
        rank, world_size = get_dist_info()
        num_types = self.cri_pix.num_types
        sums = torch.zeros(num_types, dtype=torch.float64, device=self.device)
        counts = torch.zeros(num_types, dtype=torch.float64, device=self.device)
        for dataset, fixed in self.validation_sets():
            for index in range(rank, len(dataset), world_size):
                sample = dataset[index]
                type_id = int(sample['type_id']) if 'type_id' in sample else fixed
                lq = centre_crop(sample['lq'][None].to(self.device), self.coba_crop)
                gt = centre_crop(sample['gt'][None].to(self.device), self.coba_crop)
                sums[type_id] += F.l1_loss(net(lq), gt).double()
                counts[type_id] += 1
        if self.opt['dist']:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        net.train(was_training)
        return [float(s / c) if c > 0 else None for s, c in zip(sums.tolist(), counts.tolist())]

    def update_reweighting(self, current_iter):
        self.val_type_losses = self.per_type_val_losses()
        applied = self.cri_pix.update(self.val_type_losses)
        logger = get_root_logger()
        losses = ', '.join(f'{n} {v:.5f}' if v is not None else f'{n} -'
                           for n, v in zip(self.type_names, self.val_type_losses))
        weights = ', '.join(f'{n} {w:.4f}' for n, w in zip(self.type_names, self.cri_pix.weights().tolist()))
        logger.info(f'Reweighting @ iter {current_iter}: val L1 [{losses}] -> weights [{weights}]')
        if not applied:
            logger.warning(f'Reweighting @ iter {current_iter}: skipped, some type has no validation loss yet')
        plot = self.progress_plot()
        if plot is not None:
            plot.add_weights(current_iter, self.type_weights())

    # -------------------------------------------------------------------------------------------- inference
    def test(self):
        net = self.get_bare_model(self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g)
        was_training = net.training
        net.eval()
        # archs that need sizes divisible by their window (BasicSR's SwinIR) and do not pad themselves
        multiple = self.opt['network_g'].get('window_size')
        forward = net
        if multiple:
            from unirain_arch.padding import PadToMultiple
            forward = PadToMultiple(net, multiple)
        with torch.no_grad():
            tile = self.opt.get('tile')
            if tile:
                from unirain_arch.tiling import check_tile_options, tiled_forward
                tile_size, tile_overlap = check_tile_options(tile)
                self.output = tiled_forward(forward, self.lq, tile_size, tile_overlap)
            else:
                self.output = forward(self.lq)
        net.train(was_training)

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """BasicSR's validation, run once per iteration and logged at the iteration of the weights it measures.

        basicsr's training loop ends with ``current_iter = total_iter + 1`` and then validates again, right after
        the in-loop validation of ``total_iter`` when ``val_freq`` divides it: that call is logged at total_iter
        and skipped when this process already validated there.
        """
        if self.opt.get('is_train') and isinstance(current_iter, int):
            current_iter = min(current_iter, int(self.opt['train']['total_iter']))
            key = (dataloader.dataset.opt['name'], current_iter)
            if key in self.validated:
                return
            self.validated.add(key)
        super().validation(dataloader, current_iter, tb_logger, save_img)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_opt = dataloader.dataset.opt
        dataset_name = dataset_opt['name']
        fixed = declared_type(dataset_opt, self.type_names)
        metrics_opt = self.opt['val'].get('metrics') or {}
        values = {metric: [] for metric in metrics_opt}
        pbar = tqdm(total=len(dataloader), unit='image') if self.opt['val'].get('pbar', False) else None
        cached_inputs = self.type_metrics.input_cache.get(dataset_name)
        inputs = []
        for index, val_data in enumerate(dataloader):
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            type_id = sample_type(val_data, dataset_opt, self.type_names)
            self.feed_data(val_data)
            self.test()
            visuals = self.get_current_visuals()
            sr_img = tensor2img([visuals['result']])
            metric_data = {'img': sr_img}
            input_values = None
            if 'gt' in visuals:
                metric_data['img2'] = tensor2img([visuals['gt']])
                del self.gt
                if cached_inputs is None:
                    lq_data = {'img': tensor2img([visuals['lq']]), 'img2': metric_data['img2']}
                    inputs.append({m: float(calculate_metric(lq_data, o)) for m, o in metrics_opt.items()})
                input_values = (cached_inputs or inputs)[index]
            del self.lq, self.output
            if save_img:
                if fixed is None and type_id is not None:  # a mixed set: type folders may reuse file names
                    img_name = f'{self.type_names[type_id]}_{img_name}'
                imwrite(sr_img, self.visualization_path(dataset_name, img_name, current_iter))
            output_values = {metric: float(calculate_metric(metric_data, o)) for metric, o in metrics_opt.items()}
            for metric, value in output_values.items():
                values[metric].append(value)
            if type_id is not None:
                self.type_metrics.add(type_id, output_values, input_values)
            if pbar:
                pbar.update(1)
                pbar.set_description(f'Test {img_name}')
        if pbar:
            pbar.close()
        if cached_inputs is None and inputs:
            self.type_metrics.input_cache[dataset_name] = inputs
        if metrics_opt and values[next(iter(metrics_opt))]:
            self._initialize_best_metric_results(dataset_name)
            self.metric_results = {metric: float(np.mean(v)) for metric, v in values.items()}
            for metric, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, metric, value, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        self.val_datasets_seen += 1
        if self.val_datasets_seen >= self.num_val_datasets:
            self.log_type_metrics(current_iter, tb_logger)
            self.type_metrics.reset()
            self.val_datasets_seen = 0

    def visualization_path(self, dataset_name, img_name, current_iter):
        folder = self.opt['path']['visualization']
        if self.opt['is_train']:
            return osp.join(folder, img_name, f'{img_name}_{current_iter}.png')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(folder, dataset_name, f'{img_name}_{suffix}.png')

    def log_type_metrics(self, current_iter, tb_logger):
        """Per-type means over every validation dataset of the round, and their average over types."""
        results = OrderedDict()
        for metric in self.opt['val'].get('metrics') or {}:
            per_type = self.type_metrics.means(metric)
            if per_type:
                results[metric] = per_type
        self.type_metric_results = results
        if not results:
            return
        self._initialize_best_metric_results(BEST_AVG_NAME)
        lines = [f'Validation per type ({len(results[next(iter(results))]) - 1} types) @ {current_iter}']
        for metric, per_type in results.items():
            self._update_best_metric_result(BEST_AVG_NAME, metric, per_type['avg'], current_iter)
            best = self.best_metric_results[BEST_AVG_NAME][metric]
            lines.append(f'\t {TypeMetrics.line(metric, per_type)}\tBest avg: {best["val"]:.4f} @ {best["iter"]} iter')
            inputs = self.type_metrics.means(metric, inputs=True)
            if inputs:
                lines.append(f'\t rainy input: {TypeMetrics.line(metric, inputs)}')
            if tb_logger:
                for kind, means in (('', per_type), ('input_', inputs)):
                    for name, value in means.items():
                        tb_logger.add_scalar(f'metrics/m_{metric}_{kind}{name}', value, current_iter)
        get_root_logger().info('\n'.join(lines))
        plot = self.progress_plot()
        if plot is not None:
            metric = 'psnr' if 'psnr' in results else next(iter(results))
            plot.add(current_iter, metric, results[metric], self.type_metrics.means(metric, inputs=True),
                     self.type_weights())

    def progress_plot(self):
        """The run's ProgressPlot (rank 0 of a training run only), or None."""
        if self.opt.get('rank', 0) != 0 or not self.opt.get('is_train') or not self.opt['path'].get('experiments_root'):
            return None
        if self.progress is None:
            self.progress = ProgressPlot(self.opt['path']['experiments_root'], self.resume_iter)
        return self.progress

    def type_weights(self):
        """{type: current loss weight} of the reweighting strategy ({} outside training)."""
        if not hasattr(self, 'cri_pix'):
            return {}
        return {name: float(w) for name, w in zip(self.type_names, self.cri_pix.weights())}

    # --------------------------------------------------------------------------------------- save / resume
    def save(self, epoch, current_iter):
        self.rng_states = self.gather_host_rng_states()
        super().save(epoch, current_iter)
        plot = self.progress_plot()
        if plot is not None:  # with the checkpoint, so a run resumed from it keeps the history up to it
            plot.save_changes()

    @staticmethod
    def gather_host_rng_states():
        """Every rank's python / numpy RNG state (a collective under DDP: all ranks call ``save``)."""
        state = host_rng_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            return states
        return [state]

    @master_only
    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter,
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers],
                 'reweighting': self.cri_pix.state_dict(),
                 'rng': self.rng_states}
        if self.amp.scaler is not None:
            state['amp_scaler'] = self.amp.state_dict()
        with atomic_open(osp.join(self.opt['path']['training_states'], f'{current_iter}.state')) as f:
            torch.save(state, f)

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.resume_iter = resume_state.get('iter')
        logger = get_root_logger()
        if 'reweighting' in resume_state:
            self.cri_pix.load_state_dict(resume_state['reweighting'])
        else:
            logger.warning('Resume: the training state holds no reweighting state (not written by UniRainModel); '
                           f'{type(self.cri_pix).__name__} starts afresh')
        if self.amp.scaler is not None:
            if resume_state.get('amp_scaler'):
                self.amp.load_state_dict(resume_state['amp_scaler'])
            else:
                logger.warning('Resume: train.amp is fp16 but the training state holds no gradient scaler state '
                               '(written without fp16); the scaler starts afresh')
        rank, world_size = get_dist_info()
        states = resume_state.get('rng')
        if states and len(states) == world_size:
            set_host_rng_state(states[rank])
        else:
            logger.warning(f'Resume: no python/numpy RNG state for {world_size} process(es) in the training state; '
                           'data augmentation will differ from an uninterrupted run')
