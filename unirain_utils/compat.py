"""The one place where unirain changes basicsr 1.4.2's behaviour.

basicsr 1.4.2 predates current torch / torchvision / OpenCV / PyYAML practice; each patch below fixes one
measured breakage (docs/basicsr.md lists them) with the smallest change. Two entry points:

- ``make_basicsr_importable()``: the torchvision alias without which ``import basicsr`` fails. The three
  registry packages call it and nothing else, so importing a loss or a dataset patches no more than that;
- ``apply()``: every patch, for running basicsr's train / test pipelines (the ``basicsr`` command calls it
  before it loads the plugins). Idempotent.

``tests/test_compat.py`` checks each patch against the installed basicsr, so a basicsr release that moves or
fixes a target fails loudly there instead of silently changing training.
"""
import importlib
import os
import sys
import types

from unirain_utils import checkpoints, cpu_threads, options, resume, run_lock

BASICSR_VERSION = '1.4.2'
# every basicsr 1.4.2 module that calls torch.load (tests/test_compat.py checks the list against the source)
TORCH_LOAD_MODULES = ('basicsr.models.base_model', 'basicsr.train', 'basicsr.archs.basicvsr_arch',
                      'basicsr.archs.dfdnet_arch', 'basicsr.archs.inception', 'basicsr.archs.spynet_arch',
                      'basicsr.archs.tof_arch', 'basicsr.archs.vgg_arch')
_applied = False
# validation datasets basicsr built for this run, handed to the model it builds next (then dropped)
_val_datasets = None


def make_basicsr_importable():
    """torchvision 0.17 removed ``transforms.functional_tensor``; basicsr.data.degradations imports it."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        sys.modules[name] = importlib.import_module('torchvision.transforms._functional_tensor')


def _init_dist_pytorch(backend='nccl', **kwargs):
    """torchrun: device from LOCAL_RANK (not RANK % gpus); gloo when there is no GPU."""
    import torch
    import torch.distributed as dist
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)))
    else:
        backend = 'gloo'
    dist.init_process_group(backend=backend, **kwargs)


def _model_to_device(self, net):
    """DDP with ``device_ids=None`` on CPU; ``find_unused_parameters`` when the option or the net asks.

    A hard-routed MoE leaves unchosen experts without gradient in a step; such an arch sets
    ``ddp_find_unused_parameters = True`` so users need not know about DDP's flag.
    """
    import torch
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        find_unused = bool(self.opt.get('find_unused_parameters', False)
                           or getattr(net, 'ddp_find_unused_parameters', False))
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def _dist_validation(self, dataloader, current_iter, tb_logger, save_img):
    """Validate on rank 0 with the bare net, then wait for it on every rank.

    basicsr runs rank 0's validation through the DDP wrapper, whose forward broadcasts buffers: a collective
    the other ranks never join (they crash, or worse, pair it with their next training step).
    """
    import torch.distributed as dist
    if self.opt['rank'] == 0:
        wrapped = self.net_g
        self.net_g = self.get_bare_model(wrapped)
        try:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            self.net_g = wrapped
    dist.barrier()


def _add_jpg_compression(original):
    def add_jpg_compression(img, quality=90):
        """OpenCV >= 4.7 rejects a float JPEG quality; basicsr draws it with ``np.random.uniform``."""
        return original(img, int(round(float(quality))))
    add_jpg_compression.__wrapped__ = original
    return add_jpg_compression


class _WeightsOnlyTorch(types.ModuleType):
    """``torch`` as basicsr's modules see it: the same module, except that ``load`` reads weights only.

    basicsr calls ``torch.load`` without ``weights_only`` (``path.pretrain_network_g`` in train and test, its
    archs' pretrained files), which torch's unsafe-load switch or a torch older than 2.6 turns into full
    unpickling: code in a checkpoint would run.
    """

    def __init__(self):
        super().__init__('torch', 'torch whose load reads weights only (unirain_utils.compat)')

    def __getattr__(self, name):
        import torch
        value = getattr(torch, name)
        setattr(self, name, value)  # later lookups find it directly
        return value

    @staticmethod
    def load(f, map_location=None):
        return checkpoints.load_checkpoint(f, map_location=map_location)


def _lock_run_folder(parse_options, folder):
    """basicsr's ``parse_options``, then (rank 0) an exclusive lock on ``<root>/<folder>/<name>`` for the run.

    It runs before basicsr touches the folder (``make_exp_dirs`` archives one that exists), so a second run with
    the same name stops with RunLockedError instead of archiving and overwriting a live run.
    """

    def parse_options_and_lock(root_path, is_train=True):
        opt, args = parse_options(root_path, is_train=is_train)
        if opt['rank'] == 0:
            run_lock.acquire(os.path.join(root_path, folder, opt['name']))
        return opt, args

    return parse_options_and_lock


def _set_cpu_threads(create):
    """Set torch's CPU threads (``unirain_utils.cpu_threads``) as the loaders are built: the logger exists and
    the loader workers are known."""

    def create_train_val_dataloader(opt, logger):
        cpu_threads.configure(opt, logger)
        return create(opt, logger)

    return create_train_val_dataloader


def _require(module, name):
    if not hasattr(module, name):
        raise RuntimeError(f'unirain.compat: basicsr {getattr(sys.modules.get("basicsr"), "__version__", "?")} '
                           f'has no {module.__name__}.{name}; this patch targets basicsr {BASICSR_VERSION}')
    return getattr(module, name)


def _keep_val_datasets(create):
    """Remember the validation datasets basicsr builds, so the model reuses them instead of building them again."""

    def create_train_val_dataloader(opt, logger):
        global _val_datasets
        result = create(opt, logger)
        _val_datasets = [loader.dataset for loader in result[2]]
        return result

    return create_train_val_dataloader


def _hand_val_datasets(build_model):
    """Give the model the datasets of ``_keep_val_datasets`` (models with ``use_validation_datasets`` only)."""

    def build_model_with_val_datasets(opt):
        global _val_datasets
        model = build_model(opt)
        if _val_datasets is not None and hasattr(model, 'use_validation_datasets'):
            model.use_validation_datasets(_val_datasets)
        _val_datasets = None
        return model

    return build_model_with_val_datasets


def apply():
    """Apply every patch once. Safe to call many times."""
    global _applied
    if _applied:
        return
    make_basicsr_importable()
    import basicsr.data.data_sampler as data_sampler
    import basicsr.data.degradations as degradations
    import basicsr.models.base_model as base_model
    import basicsr.models.sr_model as sr_model
    import basicsr.test as test
    import basicsr.train as train
    import basicsr.utils.dist_util as dist_util
    import basicsr.utils.options as basicsr_options

    _require(basicsr_options, 'ordered_yaml')
    basicsr_options.ordered_yaml = options.ordered_yaml
    _require(train, 'load_resume_state')
    train.load_resume_state = resume.load_resume_state
    train.create_train_val_dataloader = _keep_val_datasets(resume.resuming_dataloaders(_set_cpu_threads(
        _require(train, 'create_train_val_dataloader'))))
    train.parse_options = _lock_run_folder(_require(train, 'parse_options'), 'experiments')
    test.parse_options = _lock_run_folder(_require(test, 'parse_options'), 'results')
    weights_only_torch = _WeightsOnlyTorch()
    for name in TORCH_LOAD_MODULES:
        module = importlib.import_module(name)
        _require(module, 'torch')
        module.torch = weights_only_torch
    train.build_model = _hand_val_datasets(_require(train, 'build_model'))
    sampler_cls = _require(data_sampler, 'EnlargedSampler')
    sampler_cls.__iter__ = resume.skipping_sampler_iter(sampler_cls.__iter__)
    _require(dist_util, '_init_dist_pytorch')
    dist_util._init_dist_pytorch = _init_dist_pytorch
    _require(base_model.BaseModel, 'model_to_device')
    base_model.BaseModel.model_to_device = _model_to_device
    _require(sr_model.SRModel, 'dist_validation')
    sr_model.SRModel.dist_validation = _dist_validation
    degradations.add_jpg_compression = _add_jpg_compression(_require(degradations, 'add_jpg_compression'))
    _applied = True
