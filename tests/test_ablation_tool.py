"""tools/run_ablation.py: a fair ablation (one factor per configuration) on disjoint, typed splits."""
import copy
from pathlib import Path

import cv2
import numpy as np
import pytest

from tool_loader import load_tool
import unirain_arch  # noqa: F401  (registers the archs)
from basicsr.archs import build_network
from unirain_data.manifest import read_manifest

ablation = load_tool('run_ablation')


def options(args_line='--shared s --out o --preset tiny'):
    args = ablation.parse_args(args_line.split())
    return {name: ablation.option_file(name, *ablation.CONFIGS[name], args, '/data')
            for name in ablation.CONFIGS}


def without(opt, *paths):
    """A copy of the option dict with the given (nested) keys removed."""
    opt = copy.deepcopy(opt)
    for path in paths:
        node = opt
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    return opt


def test_configurations_differ_only_in_the_ablated_factor():
    opts = options()
    base = opts['unirain_coba']
    varying = (('name',), ('network_g',), ('train', 'pixel_opt'))
    for name, opt in opts.items():
        assert without(opt, *varying) == without(base, *varying), name
    assert opts['unirain_uniform']['network_g'] == base['network_g']
    assert opts['unirain_uniform']['train']['pixel_opt'] == {'type': 'UniformTypeLoss'}
    assert opts['dense_coba']['train']['pixel_opt'] == base['train']['pixel_opt']
    assert opts['dense_coba']['network_g']['type'] == 'UniRainDense'
    assert opts['unirain_softdec_coba']['train']['pixel_opt'] == base['train']['pixel_opt']


def test_every_configuration_builds_its_network_with_the_intended_routing():
    nets = {name: build_network(dict(opt['network_g'])) for name, opt in options().items()}
    hard = {name: [m for m in net.modules() if getattr(m, 'mode', None) == 'hard'] for name, net in nets.items()}
    assert hard['unirain_coba'] and hard['unirain_uniform']  # the paper's top-1 decoder
    assert not hard['unirain_softdec_coba']  # everything soft
    assert type(nets['dense_coba']).__name__ == 'UniRainDense'


def test_budget_flags_reach_the_option_files():
    opt = options('--shared s --out o --preset tiny --iters 123 --batch 2 --crop 48 --lr 5e-4 --coba-freq 7 '
                  '--val-freq 60 --seed 3')['unirain_coba']
    assert opt['train']['total_iter'] == 123 and opt['train']['scheduler']['periods'] == [123]
    assert opt['datasets']['train']['batch_size_per_gpu'] == 2 and opt['datasets']['train']['gt_size'] == 48
    assert opt['train']['optim_g']['lr'] == 5e-4 and opt['manual_seed'] == 3
    assert opt['val']['coba_freq'] == 7 and opt['val']['val_freq'] == 60
    assert [opt['datasets'][f'val_{i}']['types'] for i in range(1, 5)] == [['drs'], ['drd'], ['nrs'], ['nrd']]


@pytest.mark.parametrize('flags, data_seed', [(['--seed', '3'], 0), (['--seed', '3', '--data-seed', '5'], 5)])
def test_training_seed_keeps_the_rain_of_the_data(monkeypatch, tmp_path, flags, data_seed):
    """Runs with different --seed must train and test on the same synthetic rain."""
    seen = []

    def prepare(shared, out, variants, seed):
        seen.append(seed)
        raise SystemExit('stop before training')

    monkeypatch.setattr(ablation, 'prepare_data', prepare)
    with pytest.raises(SystemExit, match='stop before training'):
        ablation.main(['--shared', str(tmp_path), '--out', str(tmp_path / 'out')] + flags)
    assert seen == [data_seed]


def test_prepared_splits_are_disjoint_and_cover_four_types(tmp_path):
    shared = tmp_path / 'shared'
    rng = np.random.default_rng(0)
    for folder in ('rainy', 'clean'):
        (shared / 'rain100l_train' / folder).mkdir(parents=True)
    for n in range(1, 201):  # stand-ins for the Rain100L training pairs (only paths are read)
        for folder in ('rainy', 'clean'):
            (shared / 'rain100l_train' / folder / f'{n}.png').write_bytes(b'')
    (shared / 'kodak24').mkdir()
    for n in range(1, 25):
        cv2.imwrite(str(shared / 'kodak24' / f'kodim{n:02d}.png'), rng.integers(0, 256, (32, 48, 3), np.uint8))
    data = ablation.prepare_data(str(shared), str(tmp_path / 'out'), variants=1, seed=0)
    splits = {split: read_manifest(str(Path(data) / f'{split}.jsonl')) for split in ('train', 'val', 'test')}
    counts = {split: {t: sum(e.type == t for e in entries) for t in ('DRS', 'DRD', 'NRS', 'NRD')}
              for split, entries in splits.items()}
    assert counts == {'train': {'DRS': 170, 'DRD': 18, 'NRS': 18, 'NRD': 18},
                      'val': {'DRS': 10, 'DRD': 2, 'NRS': 2, 'NRD': 2},
                      'test': {'DRS': 20, 'DRD': 4, 'NRS': 4, 'NRD': 4}}
    clean = {split: {Path(e.gt).name.split('_')[0] if e.type != 'DRS' else e.gt for e in entries}
             for split, entries in splits.items()}
    assert not clean['train'] & clean['test'] and not clean['val'] & clean['test'] and not clean['train'] & clean['val']
    for entry in splits['test']:
        assert Path(entry.lq).is_file() and Path(entry.gt).is_file()
    with pytest.raises(SystemExit, match='nope'):
        ablation.main(['--shared', str(shared), '--out', str(tmp_path / 'out'), '--configs', 'nope'])


def test_summary_reports_average_over_types_and_the_worst_type():
    results = {'models': [{'name': 'a', 'per_type': {'DRS': {'psnr_rgb': 30.0}, 'DRD': {'psnr_rgb': 22.0},
                                                     'NRS': {'psnr_rgb': 28.0}, 'NRD': {'psnr_rgb': 24.0}}}]}
    (row,) = ablation.summary_table(results)
    assert row['average'] == 26.0 and (row['worst_type'], row['worst']) == ('DRD', 22.0)
    assert '| a | 30.00 | 22.00 | 28.00 | 24.00 | 26.00 | 22.00 (DRD) |' in ablation.summary_markdown([row])


def test_evaluation_scores_baselines_beside_the_configurations_and_can_write_the_readme(monkeypatch, tmp_path):
    calls = []

    def run(cmd, check):
        calls.append(cmd)
        (tmp_path / 'report').mkdir()
        (tmp_path / 'report' / 'results.json').write_text('{"models": []}')

    monkeypatch.setattr(ablation.subprocess, 'run', run)
    options = {'unirain_coba': '/o/unirain_coba.yml', 'dense_coba': '/o/dense_coba.yml'}
    results = ablation.evaluate(['unirain_coba', 'dense_coba'], options, str(tmp_path), '/data', 'cpu',
                                ['PReNet-Rain100L=prenet.pth:PReNet'], 'README.md')
    (cmd,) = calls
    models = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == '--model']
    assert models == [f'UniRain+CoBa={ablation.checkpoint("unirain_coba", str(tmp_path))}:/o/unirain_coba.yml',
                      f'UniRainDense+CoBa={ablation.checkpoint("dense_coba", str(tmp_path))}:/o/dense_coba.yml',
                      'PReNet-Rain100L=prenet.pth:PReNet']
    assert cmd[cmd.index('--readme') + 1] == 'README.md' and cmd[cmd.index('--data') + 1] == '/data/test.jsonl'
    assert results == {'models': []}
    assert set(ablation.LABELS) == set(ablation.CONFIGS)
