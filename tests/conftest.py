"""Fixtures shared by the test files."""
from pathlib import Path

import pytest

# ../shared (real data, read-only) sits beside the checkout on development machines and in CI; users lack it.
SHARED = Path(__file__).resolve().parents[2] / 'shared'


@pytest.fixture(scope='session')
def shared_data():
    """The real data folder, or a clean skip where it is absent."""
    if not (SHARED / 'data').is_dir():
        pytest.skip(f'real data not found at {SHARED / "data"}')
    return SHARED / 'data'
