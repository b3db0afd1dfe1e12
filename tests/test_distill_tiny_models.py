"""The tiny stand-in models (unirain_data.distillation.tiny_models) shared by the test_distill_* files.

``tiny_assets`` builds them once per session; ``single_thread`` runs each distillation test module on one
torch thread (see one_thread).
"""
import contextlib
import os

import pytest
import yaml

from unirain_data.distillation.tiny_models import build_tiny_assets, tiny_config  # noqa: F401  (re-exported)

_CACHE = {}


@contextlib.contextmanager
def one_thread():
    """Tiny models on a shared machine run many times faster on one thread than fighting over two."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_assets(tmp_path_factory):
    """The stand-ins, built once per test session (the other distillation test files share them)."""
    if 'assets' not in _CACHE:
        with one_thread():
            _CACHE['assets'] = build_tiny_assets(str(tmp_path_factory.mktemp('distill-assets')))
    return _CACHE['assets']


def write_config(cfg, path):
    with open(path, 'w') as f:
        yaml.safe_dump(cfg, f)
    return path


@pytest.fixture(scope='session')
def assets(tmp_path_factory):
    return tiny_assets(tmp_path_factory)


@pytest.fixture(scope='module', autouse=True)
def single_thread():
    with one_thread():
        yield


def test_tiny_judge_reloads_offline_and_answers_yes_or_no(assets):
    """The stand-in judge is a complete transformers model: saved, reloaded offline, generating yes/no."""
    from PIL import Image

    from unirain_data.distillation.judges import QwenVLJudge
    from unirain_data.distillation.prompt import parse_answer
    judge = QwenVLJudge('qwen', assets['qwen'], max_new_tokens=1, offline=True)
    folder = os.path.join(assets['folder'], 'cand', 'input')
    images = [Image.open(os.path.join(folder, f'cand{i:02d}.png')).convert('RGB') for i in range(6)]
    answers = [judge(images[i], images[:2], 'Does the rain look real?') for i in range(6)]
    assert all(parse_answer(a) in ('yes', 'no') for a in answers), answers
    assert answers == [judge(images[i], images[:2], 'Does the rain look real?') for i in range(6)]  # greedy
