"""Fixtures shared by the test files."""
from pathlib import Path

import pytest
import torch

from unirain_utils.cli import load_plugins

# Tests run basicsr's pipelines in-process: patch basicsr and register every plugin, as the `basicsr` command does.
load_plugins()

# ../shared (real data, read-only) sits beside the checkout on development machines and in CI; users lack it.
SHARED = Path(__file__).resolve().parents[2] / 'shared'


@pytest.fixture(scope='session')
def shared_data():
    """The real data folder, or a clean skip where it is absent."""
    if not (SHARED / 'data').is_dir():
        pytest.skip(f'real data not found at {SHARED / "data"}')
    return SHARED / 'data'


@pytest.fixture(autouse=True, scope='session')
def one_torch_thread():
    """Test nets are small: one thread avoids OpenMP stalls when the 2 CI cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
