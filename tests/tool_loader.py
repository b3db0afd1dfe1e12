"""Import a script from tools/ (not a package) as a module, for tests of its functions."""
import importlib.util
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / 'tools'


def load_tool(name):
    """A fresh module object for ``tools/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f'unirain_tool_{name}', TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
