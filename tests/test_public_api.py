"""What another project imports: the README's snippet runs as written; importing a package pulls in only itself."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = '## Use the losses and the network outside BasicSR'


def readme_snippet():
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert HEADING in text, 'README lost its "outside BasicSR" section'
    match = re.search(r'```python\n(.*?)```', text.split(HEADING, 1)[1], re.S)
    assert match, 'the "outside BasicSR" section has no python block'
    return match.group(1)


def run_python(code):
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_readme_snippet_runs_as_written():
    code = readme_snippet() + '\nprint("LOSS", float(loss))\n'
    out = run_python(code)
    value = float(re.search(r'LOSS ([\d.eE+-]+)', out).group(1))
    assert 0 < value < 1  # an L1 between two images in [0, 1] (the untrained net keeps roughly its input)


def test_losses_import_without_networks_or_training_patches():
    out = run_python(
        'import sys\n'
        'from unirain_losses import CoBaLoss, TURLoss, UniformTypeLoss, UniRainModel\n'
        'import basicsr.train, basicsr.models.sr_model as sr\n'
        'print(sorted(m for m in sys.modules if m.startswith("unirain_arch")))\n'
        'print(basicsr.train.load_resume_state.__module__, sr.SRModel.dist_validation.__module__)\n')
    archs, patched = out.strip().splitlines()
    assert archs == '[]'
    assert patched == 'basicsr.train basicsr.models.sr_model'  # basicsr's own: only the import fix was applied


def test_datasets_import_without_networks():
    out = run_python('import sys\nimport unirain_data\nprint(any(m.startswith("unirain_arch") for m in sys.modules))\n')
    assert out.strip() == 'False'


def test_arch_exports_the_registered_networks():
    out = run_python('from unirain_arch import UniRain, UniRainDense, PReNet\n'
                     'from basicsr.utils.registry import ARCH_REGISTRY\n'
                     'print(all(ARCH_REGISTRY.get(c.__name__) is c for c in (UniRain, UniRainDense, PReNet)))\n')
    assert out.strip() == 'True'
