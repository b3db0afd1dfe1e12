"""The one place where unirain changes basicsr 1.4.2's behaviour.

basicsr 1.4.2 predates current torch / torchvision / OpenCV / PyYAML practice; each patch below fixes one
measured breakage (see the README's FAQ) with the smallest change. ``apply()`` is idempotent and must run
before ``import basicsr`` (the torchvision alias) -- every unirain package imports this module first.
``tests/test_compat.py`` checks each patch against the installed basicsr, so a basicsr release that moves
or fixes a target fails loudly there instead of silently changing training.
"""
import collections
import importlib
import os
import sys

import yaml

BASICSR_VERSION = '1.4.2'
_applied = False
# (epoch, iter) of the training state being resumed; read when the train loader is built.
_resume_point = None


def _alias_functional_tensor():
    """torchvision 0.17 removed ``transforms.functional_tensor``; basicsr.data.degradations imports it."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        sys.modules[name] = importlib.import_module('torchvision.transforms._functional_tensor')


class OptionLoader(yaml.SafeLoader):
    """PyYAML's safe loader with ordered mappings: an option file is data, never code."""


def _construct_ordered(loader, node):
    loader.flatten_mapping(node)
    return collections.OrderedDict(loader.construct_pairs(node))


def _refuse_python_tag(loader, tag_suffix, node):
    raise yaml.constructor.ConstructorError(
        None, None, f'option files are data: the tag "tag:yaml.org,2002:python/{tag_suffix}" would run Python '
        'code and is refused; write the value as plain YAML', node.start_mark)


OptionLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_ordered)
OptionLoader.add_multi_constructor('tag:yaml.org,2002:python/', _refuse_python_tag)


class _OrderedDumper(yaml.SafeDumper):
    pass


_OrderedDumper.add_representer(
    collections.OrderedDict, lambda dumper, data: dumper.represent_dict(data.items()))


def ordered_yaml():
    """Drop-in for ``basicsr.utils.options.ordered_yaml`` returning (safe loader, dumper)."""
    return OptionLoader, _OrderedDumper


def load_options(path):
    """Read an option file safely (for tools that read basicsr option files themselves)."""
    with open(path, encoding='utf-8') as f:
        return yaml.load(f, Loader=OptionLoader)


def _map_location(opt):
    import torch
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def _load_resume_state(opt):
    """basicsr's ``load_resume_state`` without its unconditional ``torch.cuda.current_device()``.

    The state is loaded with ``weights_only=True`` (schedulers keep a ``collections.Counter``, allowed
    explicitly) and the resume point is remembered so the sampler can skip what was already trained on.
    """
    global _resume_point
    import torch
    from basicsr.utils import check_resume, scandir

    resume_state_path = None
    if opt['auto_resume']:
        state_path = os.path.join('experiments', opt['name'], 'training_states')
        if os.path.isdir(state_path):
            states = [float(v.split('.state')[0])
                      for v in scandir(state_path, suffix='state', recursive=False, full_path=False)]
            if states:
                resume_state_path = os.path.join(state_path, f'{max(states):.0f}.state')
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']
    if resume_state_path is None:
        _resume_point = None
        return None
    if not os.path.isfile(resume_state_path):
        raise FileNotFoundError(f'path.resume_state: no training state at {resume_state_path!r}')
    with torch.serialization.safe_globals([collections.Counter]):
        resume_state = torch.load(resume_state_path, map_location=_map_location(opt), weights_only=True)
    check_resume(opt, resume_state['iter'])
    _resume_point = (resume_state['epoch'], resume_state['iter'])
    return resume_state


def _sampler_iter(original_iter):
    def __iter__(self):
        skip, self.resume_skip = getattr(self, 'resume_skip', 0), 0
        indices = list(original_iter(self))
        return iter(indices[skip:])
    return __iter__


def _create_train_val_dataloader(original):
    """Make resume exact: basicsr restarts the saved epoch from its first batch; skip the batches done."""

    def create_train_val_dataloader(opt, logger):
        result = original(opt, logger)
        train_sampler = result[1]
        if _resume_point is not None and train_sampler is not None:
            epoch, current_iter = _resume_point
            batch = opt['datasets']['train']['batch_size_per_gpu']
            iters_per_epoch = len(train_sampler) // batch  # basicsr's train loader drops the last batch
            done = current_iter - epoch * iters_per_epoch
            if iters_per_epoch and 0 < done <= iters_per_epoch:
                train_sampler.resume_skip = done * batch
                logger.info(f'Resume: skipping the {done} batches of epoch {epoch} trained before the stop.')
            else:
                logger.warning(f'Resume: iter {current_iter} is not inside epoch {epoch} of {iters_per_epoch} '
                               'iterations (data changed?); the epoch restarts from its first batch.')
        return result

    return create_train_val_dataloader


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


def _require(module, name):
    if not hasattr(module, name):
        raise RuntimeError(f'unirain.compat: basicsr {getattr(sys.modules.get("basicsr"), "__version__", "?")} '
                           f'has no {module.__name__}.{name}; this patch targets basicsr {BASICSR_VERSION}')
    return getattr(module, name)


def apply():
    """Apply every patch once. Safe to call many times."""
    global _applied
    if _applied:
        return
    _alias_functional_tensor()
    import basicsr.data.data_sampler as data_sampler
    import basicsr.data.degradations as degradations
    import basicsr.models.base_model as base_model
    import basicsr.models.sr_model as sr_model
    import basicsr.train as train
    import basicsr.utils.dist_util as dist_util
    import basicsr.utils.options as options

    _require(options, 'ordered_yaml')
    options.ordered_yaml = ordered_yaml
    _require(train, 'load_resume_state')
    train.load_resume_state = _load_resume_state
    train.create_train_val_dataloader = _create_train_val_dataloader(
        _require(train, 'create_train_val_dataloader'))
    sampler_cls = _require(data_sampler, 'EnlargedSampler')
    sampler_cls.__iter__ = _sampler_iter(sampler_cls.__iter__)
    _require(dist_util, '_init_dist_pytorch')
    dist_util._init_dist_pytorch = _init_dist_pytorch
    _require(base_model.BaseModel, 'model_to_device')
    base_model.BaseModel.model_to_device = _model_to_device
    _require(sr_model.SRModel, 'dist_validation')
    sr_model.SRModel.dist_validation = _dist_validation
    degradations.add_jpg_compression = _add_jpg_compression(_require(degradations, 'add_jpg_compression'))
    _applied = True
