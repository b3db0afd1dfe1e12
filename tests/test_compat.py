"""Each basicsr patch in unirain_utils.compat: still needed by the installed basicsr, applied, and working.

These tests fail loudly when basicsr changes under a patch (a new release fixing or moving a target).
"""
import collections
import inspect
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from unirain_utils import compat, resume  # compat is applied by conftest.py, as the basicsr command applies it


def test_targets_the_pinned_basicsr():
    import basicsr
    assert basicsr.__version__ == compat.BASICSR_VERSION


def test_functional_tensor_alias_lets_basicsr_import():
    import basicsr.data.degradations as degradations
    assert 'torchvision.transforms.functional_tensor' in sys.modules
    gray = degradations.rgb_to_grayscale(torch.rand(1, 3, 4, 4))
    assert gray.shape == (1, 1, 4, 4)


def test_jpeg_quality_float_is_accepted():
    import basicsr.data.degradations as degradations
    img = cv2.GaussianBlur(np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32), (7, 7), 3)
    with pytest.raises(cv2.error):  # the unpatched function still breaks on a float quality
        degradations.add_jpg_compression.__wrapped__(img, 35.5)
    out = degradations.random_add_jpg_compression(img, (30, 40))
    assert out.shape == img.shape and out.dtype == np.float32
    assert 0 < np.abs(out - img).mean() < 0.05


def _parse(path, monkeypatch, is_train=True):
    from basicsr.utils.options import parse_options
    monkeypatch.setattr(sys, 'argv', ['basicsr', '-opt', str(path)])
    return parse_options(str(path.parent), is_train=is_train)[0]


OPTION = """
name: safe
model_type: SRModel
num_gpu: 0
manual_seed: 0
datasets: {}
path: {}
train:
  optim_g: {type: Adam, lr: !!float 2e-4}
"""


def test_option_files_are_data(tmp_path, monkeypatch):
    good = tmp_path / 'good.yml'
    good.write_text(OPTION)
    opt = _parse(good, monkeypatch)
    assert isinstance(opt, collections.OrderedDict) and list(opt)[:3] == ['name', 'model_type', 'num_gpu']
    assert opt['train']['optim_g']['lr'] == pytest.approx(2e-4)

    marker = tmp_path / 'executed'
    evil = tmp_path / 'evil.yml'
    evil.write_text(OPTION + f'hook: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(yaml.constructor.ConstructorError, match='option files are data') as err:
        _parse(evil, monkeypatch)
    assert 'evil.yml' in str(err.value) and 'python/object/apply:os.system' in str(err.value)
    assert not marker.exists()


def test_resume_state_loads_on_cpu(tmp_path):
    import basicsr.train as train
    assert 'storage.cuda(device_id)' in inspect.getsource(train)  # upstream still assumes a GPU
    state = {'epoch': 1, 'iter': 8, 'optimizers': [{'lr': 0.1}],
             'schedulers': [{'milestones': collections.Counter({100: 1}), 'last_epoch': 8}]}
    torch.save(state, tmp_path / '8.state')
    opt = {'auto_resume': False, 'num_gpu': 0, 'name': 'x', 'network_g': {},
           'path': {'resume_state': str(tmp_path / '8.state'), 'models': str(tmp_path)}}
    loaded = train.load_resume_state(opt)
    assert loaded['iter'] == 8 and loaded['schedulers'][0]['milestones'] == collections.Counter({100: 1})
    assert opt['path']['pretrain_network_g'].endswith('net_g_8.pth')  # basicsr's check_resume ran
    assert resume._resume_point == (1, 8)
    opt['path']['resume_state'] = str(tmp_path / 'missing.state')
    with pytest.raises(resume.ResumeStateError, match='missing.state'):
        train.load_resume_state(opt)


def test_sampler_skips_trained_batches_once():
    from basicsr.data.data_sampler import EnlargedSampler
    sampler = EnlargedSampler(list(range(10)), num_replicas=1, rank=0)
    full = list(sampler)
    sampler.resume_skip = 4
    assert list(sampler) == full[4:]
    assert list(sampler) == full


def test_init_dist_uses_local_rank_and_gloo_without_gpu():
    import basicsr.utils.dist_util as dist_util
    assert dist_util._init_dist_pytorch is compat._init_dist_pytorch
    original = inspect.getsource(sys.modules['basicsr.utils.dist_util'])
    assert 'torch.cuda.set_device(rank % num_gpus)' in original  # the ZeroDivisionError on CPU is upstream


def test_ddp_on_cpu_honours_the_nets_unused_parameter_request(tmp_path):
    import torch.distributed as dist
    from basicsr.models.base_model import BaseModel
    assert 'device_ids=[torch.cuda.current_device()]' in inspect.getsource(
        sys.modules['basicsr.models.base_model'])
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        model = BaseModel.__new__(BaseModel)
        model.opt, model.device = {'dist': True, 'num_gpu': 0}, torch.device('cpu')
        net = torch.nn.Linear(2, 2)
        net.ddp_find_unused_parameters = True
        wrapped = model.model_to_device(net)
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        assert wrapped.device_ids is None and wrapped.find_unused_parameters
        plain = model.model_to_device(torch.nn.Linear(2, 2))
        assert not plain.find_unused_parameters
    finally:
        dist.destroy_process_group()


def test_dist_validation_uses_the_bare_net():
    from basicsr.models.sr_model import SRModel
    assert SRModel.dist_validation is compat._dist_validation
    assert 'if self.opt[\'rank\'] == 0:' in inspect.getsource(compat._dist_validation)


def test_validation_datasets_built_by_basicsr_reach_the_model():
    import basicsr.train as train

    class FakeModel:
        def use_validation_datasets(self, datasets):
            self.datasets = datasets

    class Loader:
        def __init__(self, dataset):
            self.dataset = dataset

    built = [object(), object()]
    create = compat._keep_val_datasets(lambda opt, logger: (None, None, [Loader(d) for d in built], 1, 1))
    build = compat._hand_val_datasets(lambda opt: FakeModel())
    create({}, None)
    model = build({})
    assert model.datasets == built  # the very objects basicsr built: no second build
    assert not hasattr(build({}), 'datasets')  # handed once, then dropped
    # the patch wraps basicsr's own functions (fails loudly if basicsr renames them)
    assert train.build_model.__name__ == 'build_model_with_val_datasets'
    assert train.create_train_val_dataloader.__name__ == 'create_train_val_dataloader'


def test_every_torch_load_in_basicsr_reads_weights_only():
    """Each basicsr module that calls torch.load sees compat's torch, whose load is weights-only."""
    import importlib
    from pathlib import Path

    import basicsr
    package = Path(basicsr.__file__).parent
    calling = {'.'.join(('basicsr',) + path.relative_to(package).with_suffix('').parts)
               for path in package.rglob('*.py') if 'torch.load(' in path.read_text(encoding='utf-8')}
    assert calling == set(compat.TORCH_LOAD_MODULES)  # a new call site in basicsr fails here
    for name in calling:
        module = importlib.import_module(name)
        assert isinstance(module.torch, compat._WeightsOnlyTorch), name
        assert module.torch.Tensor is torch.Tensor and module.torch.nn is torch.nn  # the rest is torch itself


def test_run_folders_are_locked_before_basicsr_touches_them():
    import basicsr.test
    import basicsr.train
    assert basicsr.train.parse_options.__name__ == basicsr.test.parse_options.__name__ == 'parse_options_and_lock'
    # the lock is only early enough while basicsr parses options before it resumes or archives a folder
    train_source = inspect.getsource(basicsr.train.train_pipeline)
    assert (train_source.index('parse_options(') < train_source.index('load_resume_state(')
            < train_source.index('make_exp_dirs('))
    test_source = inspect.getsource(basicsr.test.test_pipeline)
    assert test_source.index('parse_options(') < test_source.index('make_exp_dirs(')
