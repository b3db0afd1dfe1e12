"""tools/single_type_study.py: one rain type, one pixel loss, output vs input PSNR on the demo's validation rain."""
import json

import cv2
import numpy as np
import pytest

from tool_loader import load_tool
from unirain_utils.image_io import to_integer  # unirain first: it makes basicsr importable
from unirain_data.bundled_photos import bundled_photo_path
from basicsr.metrics import calculate_psnr
from unirain_data.rain_synthesis import synthesize_pair

study = load_tool('single_type_study')


def test_study_scores_the_demo_validation_rain_at_each_check(tmp_path):
    out = tmp_path / 'drd.json'
    report = study.main(['--type', 'DRD', '--loss', 'MSELoss', '--iters', '4', '--batch', '2', '--crop', '32',
                         '--bank', '6', '--eval-every', '2', '--val-photos', 'chelsea', '--out', str(out)])
    # the validation pair is the demo's: chelsea, DRD, seed 7 + index 0
    clean = cv2.imread(bundled_photo_path('chelsea')).astype(np.float32) / 255
    rainy, target = synthesize_pair(clean, 'DRD', 7)
    expected = calculate_psnr(to_integer(rainy), to_integer(target), crop_border=0)
    assert report['input_psnr'] == pytest.approx(expected, abs=1e-6)
    assert 20 < report['input_psnr'] < 40
    assert [c['iter'] for c in report['checks']] == [2, 4]
    for check in report['checks']:
        assert check['gain'] == pytest.approx(check['psnr'] - report['input_psnr'])
        assert np.isfinite(check['train_loss'])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))


@pytest.mark.parametrize('flags, named', [
    (['--type', 'hail'], 'hail'),
    (['--train-photos', 'astronaut,moon'], 'moon'),
    (['--loss', 'NoSuchLoss'], 'NoSuchLoss'),
    (['--loss-opt', 'eps'], 'eps'),
    (['--crop', '4000'], '4000'),
])
def test_bad_flags_are_named(tmp_path, flags, named):
    argv = ['--iters', '1', '--bank', '2', '--val-photos', 'chelsea', '--out', str(tmp_path / 'x.json')] + flags
    with pytest.raises(SystemExit, match=named):
        study.main(argv)
    assert not (tmp_path / 'x.json').exists()
