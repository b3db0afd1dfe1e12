"""The no-download demo's pieces: bundled clean photos, per-type input metrics, the progress plot."""
import json

import numpy as np
import pytest

import unirain_data  # noqa: F401  (registers DistilledRainDataset)
from basicsr.data import build_dataset
from unirain_utils.options import load_options
from unirain_data.bundled_photos import BUNDLED_PHOTOS, bundled_photo_path
from unirain_losses.progress_plot import ProgressPlot


def test_every_bundled_photo_ships_with_scikit_image():
    for name in BUNDLED_PHOTOS:
        assert bundled_photo_path(name).endswith(BUNDLED_PHOTOS[name])
    with pytest.raises(ValueError, match="'eagle'"):
        bundled_photo_path('eagle')  # downloaded on first use by skimage: not offered


def test_bundled_val_set_is_fixed_and_rainy():
    opt = {'name': 'v', 'type': 'DistilledRainDataset', 'phase': 'val', 'types': ['drs', 'nrd'],
           'synthesize': {'bundled': ['chelsea'], 'seed': 7}}
    first, again = build_dataset(dict(opt)), build_dataset(dict(opt))
    assert len(first) == 2
    types = set()
    for i in range(2):
        a, b = first[i], again[i]
        assert a['lq'].shape == (3, 300, 451) and np.array_equal(a['lq'].numpy(), b['lq'].numpy())
        assert (a['lq'] - a['gt']).abs().mean() > 0.005  # rain was added
        types.add(a['rain_type'])
    assert types == {'DRS', 'NRD'}


def test_demo_option_uses_only_bundled_data():
    opt = load_options('options/train_UniRain_demo.yml')
    for phase, dataset in opt['datasets'].items():
        assert set(dataset['synthesize']['bundled']) <= set(BUNDLED_PHOTOS), phase
    train = set(opt['datasets']['train']['synthesize']['bundled'])
    assert not train & set(opt['datasets']['val_1']['synthesize']['bundled'])  # validation photos held out
    assert opt['train']['pixel_opt']['type'] == 'CoBaLoss' and opt['num_gpu'] == 0


def test_progress_plot_survives_resume(tmp_path):
    plot = ProgressPlot(str(tmp_path))
    for it in (100, 200, 300):
        plot.add(it, 'psnr', {'drs': 20.0 + it / 100, 'avg': 21.0}, {'drs': 18.0, 'avg': 18.0}, {'drs': 0.25})
    assert (tmp_path / 'progress.png').stat().st_size > 1000
    resumed = ProgressPlot(str(tmp_path), resume_iter=200)
    assert [r['iter'] for r in resumed.records] == [100, 200]
    resumed.add(300, 'psnr', {'drs': 30.0, 'avg': 30.0}, {'drs': 18.0, 'avg': 18.0}, {'drs': 0.4})
    records = json.loads((tmp_path / 'progress.json').read_text())['validations']
    assert [r['iter'] for r in records] == [100, 200, 300] and records[-1]['output']['drs'] == 30.0


def test_progress_keeps_every_reweighting_update_across_resume(tmp_path):
    plot = ProgressPlot(str(tmp_path))
    for it in (50, 100, 150, 200):
        plot.add_weights(it, {'drs': it / 1000, 'drd': 1 - it / 1000})
    plot.add(200, 'psnr', {'drs': 20.0, 'avg': 20.0}, {}, {'drs': 0.2})
    saved = json.loads((tmp_path / 'progress.json').read_text())
    assert [r['iter'] for r in saved['weights']] == [50, 100, 150, 200]
    assert saved['weights'][1]['weights'] == {'drs': 0.1, 'drd': 0.9}
    resumed = ProgressPlot(str(tmp_path), resume_iter=100)
    assert [r['iter'] for r in resumed.weight_history] == [50, 100] and resumed.records == []
    resumed.add_weights(150, {'drs': 0.5, 'drd': 0.5})
    resumed.add(150, 'psnr', {'drs': 21.0, 'avg': 21.0}, {}, {'drs': 0.5})
    saved = json.loads((tmp_path / 'progress.json').read_text())
    assert [r['iter'] for r in saved['weights']] == [50, 100, 150] and saved['weights'][-1]['weights']['drs'] == 0.5
