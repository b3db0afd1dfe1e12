"""Issue 16, data side: huge images, link loops, progress across a kill, damaged manifests, derain usage errors
and a killed reference-database build. One test (or a few) per finding, each bounded in time and memory."""
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_fixtures import build, make_layout, make_manifest
from test_inference import swinir_option  # noqa: F401  (a fixture: SwinIR that adds a constant)
from tool_loader import load_tool
from unirain_data.manifest import ManifestError, iter_manifest, scan_manifest
from unirain_utils import image_io, photo_batch
from unirain_utils.image_io import BadImageError, decode_image, read_image
from unirain_utils.photo_batch import collect_inputs

ROOT = Path(__file__).resolve().parents[1]
derain_cli = load_tool('derain')


def png_header_only(width, height):
    """A PNG whose header declares width x height (8-bit gray) but whose data holds a few rows: ~2 KB on disk,
    as big as a real bomb to any reader that trusts the header."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    rows = zlib.compress(b'\0' * (width + 1) * 16)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
            + chunk(b'IDAT', rows) + chunk(b'IEND', b''))


@contextmanager
def deadline(seconds):
    """Fail instead of hanging: the code before the fix looped (nearly) forever here."""
    def expire(*_):
        raise TimeoutError(f'still running after {seconds} s')
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_derain(args, capsys):
    code = derain_cli.main([*args, '--device', 'cpu', '--quiet'])
    out, err = capsys.readouterr()
    return code, out, err


# ----- 3: a pixel limit, read from the header ----------------------------------------------------------------------
def test_a_30000x30000_png_header_is_refused_without_decoding(tmp_path, monkeypatch):
    bomb = png_header_only(30000, 30000)
    path = tmp_path / 'bomb.png'
    path.write_bytes(bomb)

    def no_decoding(*_):
        raise AssertionError('the image was decoded')
    monkeypatch.setattr(image_io.cv2, 'imdecode', no_decoding)
    for call in (lambda: decode_image(bomb, 'lmdb-key-7'), lambda: read_image(str(path))):
        with pytest.raises(image_io.ImageTooLargeError) as caught:
            call()
        assert '30000x30000 = 900,000,000 pixels, above the limit of 100,000,000 pixels' in str(caught.value)
        assert str(caught.value).startswith(('lmdb-key-7: ', f'{path}: '))
    assert isinstance(caught.value, BadImageError)  # every reader that skips bad images skips it too
    monkeypatch.undo()
    small = cv2.imencode('.png', np.full((20, 30, 3), 7, np.uint8))[1].tobytes()
    with pytest.raises(image_io.ImageTooLargeError, match=r'x\.png: 30x20 = 600 pixels, above the limit of 599'):
        decode_image(small, 'x.png', max_pixels=599)
    assert decode_image(small, 'x.png', max_pixels=600).pixels.shape == (20, 30, 3)
    assert decode_image(small, 'x.png', max_pixels=None).pixels.shape == (20, 30, 3)


def test_derain_skips_and_lists_too_large_and_out_of_memory_files(tmp_path, swinir_option, capsys,  # noqa: F811
                                                                  monkeypatch):
    src, out = tmp_path / 'in', tmp_path / 'out'
    src.mkdir()
    (src / 'bomb.png').write_bytes(png_header_only(30000, 30000))
    for name in ('a.png', 'b.png', 'c.png'):
        cv2.imwrite(str(src / name), np.full((9, 11, 3), 100, np.uint8))
    run = ['--input', str(src), '--output', str(out), '--opt', str(swinir_option)]
    code, _, err = run_derain(run, capsys)
    assert code == 1 and sorted(p.name for p in out.iterdir()) == ['a.png', 'b.png', 'c.png']
    assert (cv2.imread(str(out / 'a.png')) == 120).all()  # the others were derained: the net adds 20 / 255
    assert f'{src / "bomb.png"}: {src / "bomb.png"}: 30000x30000 = 900,000,000 pixels' in err
    assert '1 of them exceed --max-pixels 100000000' in err

    code, _, err = run_derain(run[:3] + [str(tmp_path / 'small'), *run[4:], '--max-pixels', '98'], capsys)
    assert code == 1 and sorted(p.name for p in (tmp_path / 'small').iterdir()) == []
    assert err.count('11x9 = 99 pixels, above the limit of 98 pixels') == 3

    real = photo_batch.derain_tensor

    def exhausted_on_b(net, x, *args):  # torch's CPU allocator, for a photo too big for this machine (b.png)
        exhausted_on_b.calls += 1
        if exhausted_on_b.calls == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        return real(net, x, *args)
    exhausted_on_b.calls = 0
    monkeypatch.setattr(photo_batch, 'derain_tensor', exhausted_on_b)
    (src / 'bomb.png').unlink()
    code, out_text, err = run_derain(run[:3] + [str(tmp_path / 'oom'), *run[4:]], capsys)
    assert code == 1 and sorted(p.name for p in (tmp_path / 'oom').iterdir()) == ['a.png', 'c.png']
    assert f"{src / 'b.png'}: out of memory while deraining it (RuntimeError: [enforce fail" in err
    assert 'derained 2 image(s)' in out_text


def test_dataset_refuses_samples_above_max_pixels(tmp_path):
    big = make_layout(tmp_path / 'set', {'drs': 1}, height=20, width=20)
    make_layout(tmp_path / 'small', {'drs': 1}, height=8, width=8)
    os.replace(tmp_path / 'small/drs/input/0.png', tmp_path / 'set/drs/input/1.png')
    os.replace(tmp_path / 'small/drs/target/0.png', tmp_path / 'set/drs/target/1.png')
    dataset = build(dataroot=big, max_pixels=100)
    assert tuple(dataset[1]['lq'].shape) == (3, 8, 8)
    with pytest.raises(BadImageError, match=r'drs/input/0\.png: 20x20 = 400 pixels, above the limit of 100 pixels.*'
                                            r'the dataset option max_pixels raises the limit'):
        dataset[0]
    skipping = build(dataroot=big, max_pixels=100, on_bad_sample='skip')
    assert skipping[0]['lq_path'].endswith('1.png') and skipping.skipped == 1
    assert tuple(build(dataroot=big)[0]['lq'].shape) == (3, 20, 20)  # default limit: 100 megapixels
    with pytest.raises(ValueError, match="max_pixels must be a positive integer or null.*'many'"):
        build(dataroot=big, max_pixels='many')


# ----- 4: link loops in --recursive ----------------------------------------------------------------------------------
def test_two_links_to_the_parent_end_the_walk_at_once(tmp_path):
    (tmp_path / 'in' / 'sub').mkdir(parents=True)
    cv2.imwrite(str(tmp_path / 'in' / 'a.png'), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / 'in' / 'sub' / 'b.png'), np.zeros((4, 4, 3), np.uint8))
    os.symlink('..', tmp_path / 'in' / 'sub' / 'up1')
    os.symlink('..', tmp_path / 'in' / 'sub' / 'up2')  # each level doubles the paths a naive walk follows
    with deadline(60):
        found = collect_inputs(str(tmp_path / 'in'), recursive=True)
    assert [rel for _, rel in found] == ['a.png', os.path.join('sub', 'b.png')]


def test_a_self_loop_derains_each_image_once(tmp_path, swinir_option, capsys):  # noqa: F811
    src = tmp_path / 'in'
    (src / 'deeper').mkdir(parents=True)
    cv2.imwrite(str(src / 'p.png'), np.full((6, 6, 3), 50, np.uint8))
    cv2.imwrite(str(src / 'deeper' / 'q.png'), np.full((6, 6, 3), 60, np.uint8))
    os.symlink('.', src / 'self')
    os.symlink(src / 'deeper', src / 'alias')  # a second path to one folder: its files are derained once
    with deadline(60):
        code, out, _ = run_derain(['--input', str(src), '--recursive', '--output', str(tmp_path / 'out'),
                                   '--opt', str(swinir_option)], capsys)
    assert code == 0 and 'derained 2 image(s)' in out
    assert sorted(str(p.relative_to(tmp_path / 'out')) for p in (tmp_path / 'out').rglob('*.png')) == \
        ['deeper/q.png', 'p.png']


# ----- 7: progress across a kill; one final validation ------------------------------------------------------------
TRAIN = """
name: progress_kill
model_type: UniRainModel
scale: 1
num_gpu: 0
manual_seed: 5
datasets:
  train: {name: train, type: DistilledRainDataset, dataroot: DATA, phase: train, io_backend: {type: disk},
          gt_size: 8, num_worker_per_gpu: 0, batch_size_per_gpu: 4, dataset_enlarge_ratio: 1, prefetch_mode: ~}
  val: {name: val_all, type: DistilledRainDataset, dataroot: DATA, phase: val, io_backend: {type: disk}}
network_g: {type: UniRain, preset: tiny}
path: {pretrain_network_g: ~, strict_load_g: true, resume_state: ~}
train:
  optim_g: {type: Adam, lr: !!float 1e-3}
  scheduler: {type: MultiStepLR, milestones: [100], gamma: 0.5}
  total_iter: 6
  warmup_iter: -1
  pixel_opt: {type: CoBaLoss, warmup_updates: 1, window: 3}
val:
  val_freq: 3
  coba_freq: 1
  coba_crop: 8
  save_img: false
  metrics: {psnr: {type: calculate_psnr, crop_border: 0, test_y_channel: false}}
logger: {print_freq: 1, save_checkpoint_freq: 1, use_tb_logger: false, wandb: {project: ~, resume_id: ~}}
dist_params: {backend: nccl, port: 29500}
"""
# Dies like a SIGKILL (no cleanup, no flush) as iteration 6 starts, after the checkpoint of iteration 5.
KILLED_AT_6 = """
import os, sys
from unirain_losses.unirain_model import UniRainModel
step = UniRainModel.optimize_parameters
def optimize_parameters(self, current_iter):
    if current_iter == 6:
        os._exit(9)
    step(self, current_iter)
UniRainModel.optimize_parameters = optimize_parameters
from unirain_utils.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train(cwd, args, script=None):
    command = [sys.executable, '-c', script, *args] if script else [sys.executable, '-m', 'unirain_utils.cli', *args]
    done = subprocess.run(command, cwd=cwd, env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True,
                          text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def test_progress_survives_a_kill_and_the_final_validation_runs_once(tmp_path):
    make_layout(tmp_path / 'data', {'drs': 2, 'drd': 2, 'nrs': 2, 'nrd': 2}, height=12, width=12)
    option_file = tmp_path / 'train.yml'
    option_file.write_text(TRAIN.replace('DATA', str(tmp_path / 'data')))
    code, log = train(tmp_path, ['train', '-opt', str(option_file)], KILLED_AT_6)
    assert code == 9, log[-3000:]
    code, log = train(tmp_path, ['train', '-opt', str(option_file), '--auto_resume'])
    assert code == 0, log[-3000:]
    assert 'iter: 5' in log and 'Resuming training from' in log
    progress = json.loads((tmp_path / 'experiments' / 'progress_kill' / 'progress.json').read_text())
    assert [r['iter'] for r in progress['weights']] == [1, 2, 3, 4, 5, 6]  # 4 and 5 came from the checkpoint
    assert [r['iter'] for r in progress['validations']] == [3, 6]
    assert log.count('Validation per type') == 1 and 'Validation per type (4 types) @ 6' in log
    assert '@ 7' not in log


def test_progress_is_saved_with_a_checkpoint_before_any_validation(tmp_path):
    from unirain_losses.progress_plot import ProgressPlot
    plot = ProgressPlot(str(tmp_path))
    plot.add_weights(10, {'drs': 0.3, 'drd': 0.7})
    plot.save_changes()
    assert json.loads((tmp_path / 'progress.json').read_text())['weights'][0]['iter'] == 10
    assert (tmp_path / 'progress.png').stat().st_size > 1000
    stamp = (tmp_path / 'progress.json').stat().st_mtime_ns
    plot.save_changes()  # nothing new: nothing written
    assert (tmp_path / 'progress.json').stat().st_mtime_ns == stamp


# ----- 8: damaged manifests -------------------------------------------------------------------------------------------
GOOD = {'lq': 'img/0_rain.png', 'gt': 'img/0_clean.png', 'type': 'drs'}
BAD_LINES = {
    'non-UTF-8': (b'{"lq": "img/0_rain\xff.png", "gt": "img/0_clean.png", "type": "drs"}',
                  'not UTF-8 text (byte 0xff at column 19)'),
    '100,000 deep': (b'[' * 100_000 + b']' * 100_000, 'JSON nested too deeply'),
    'NaN score': (json.dumps({**GOOD, 'score': float('nan')}).encode(),
                  'score must be a finite number or null, got nan'),
    'inf score': (b'{"lq": "a", "gt": "b", "type": "drs", "score": -Infinity}', 'got -inf'),
    'inf string score': (b'{"lq": "a", "gt": "b", "type": "drs", "score": "inf"}', "got 'inf'"),
}


@pytest.mark.parametrize('kind', list(BAD_LINES))
def test_a_bad_manifest_line_is_named_and_skippable(tmp_path, kind):
    make_manifest(tmp_path, [{'type': 'drs'}, {'type': 'drs'}])
    line, message = BAD_LINES[kind]
    path = tmp_path / 'manifest.jsonl'
    path.write_bytes(path.read_bytes() + line + b'\n')
    with pytest.raises(ManifestError, match=f'^{path}:3: ') as caught:
        list(iter_manifest(str(path)))
    assert message in str(caught.value)
    entries, problems = scan_manifest(str(path))
    assert len(entries) == 2 and [str(p).split(': ', 1)[0] for p in problems] == [f'{path}:3']
    with pytest.raises(ManifestError, match=f'{path}:3'):
        build(manifest=str(path))
    assert len(build(manifest=str(path), on_bad_sample='skip')) == 2


def test_a_manifest_path_that_is_not_a_file_is_named(tmp_path):
    fifo = tmp_path / 'pipe.jsonl'
    os.mkfifo(fifo)
    for path, kind in ((tmp_path, 'a folder'), ('/dev/zero', 'a character device'), (fifo, 'a named pipe')):
        for on_bad in ('error', 'skip'):  # a broken file is an error even where bad lines are skipped
            with pytest.raises(ManifestError, match=f'{path}: is {kind}'):
                build(manifest=str(path), on_bad_sample=on_bad)
    with pytest.raises(FileNotFoundError, match='manifest not found'):
        list(iter_manifest(str(tmp_path / 'missing.jsonl')))


# ----- 9: derain usage errors: one line, exit 2 -------------------------------------------------------------------
def unwritable_folder(tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / 'read-only'
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return Path('/proc/self')  # root writes into read-only folders; procfs takes no new files, even from root


def test_derain_usage_errors_are_one_line_and_exit_2(tmp_path, swinir_option, capsys):  # noqa: F811
    src = tmp_path / 'in'
    src.mkdir()
    cv2.imwrite(str(src / 'p.png'), np.full((6, 6, 3), 50, np.uint8))
    (tmp_path / 'a_file').write_text('not a folder')
    model = ['--opt', str(swinir_option)]
    cases = {
        'bad arch option': (['--model', f'{tmp_path}/w.pth:UniRain,preset=huge'], 'out',
                            "unknown preset 'huge'"),
        'arch value not YAML': (['--model', f'{tmp_path}/w.pth:UniRain,preset=[1'], 'out', 'not a YAML value'),
        'missing option file': (['--model', str(tmp_path / 'missing.yml')], 'out', 'option file not found'),
        'missing checkpoint': (['--model', f'{tmp_path}/missing.pth:UniRain,preset=tiny'], 'out',
                               'checkpoint not found'),
        'unknown device': (model + ['--device', 'abacus'], 'out', '--device abacus'),
        'output is a file': (model, 'a_file', 'is a file, not a folder'),
        'output under a file': (model, 'a_file/sub', 'cannot be written'),
        'read-only output': (model, str(unwritable_folder(tmp_path)), 'cannot be written'),
    }
    for name, (args, output, message) in cases.items():
        code = derain_cli.main(['--input', str(src), '--output', str(tmp_path / output), '--device', 'cpu', *args,
                                '--quiet'])
        err = capsys.readouterr().err
        assert code == 2, name
        assert err.startswith('derain: error: ') and err.count('\n') == 1 and message in err, (name, err)
    assert not (tmp_path / 'out').exists()


# ----- 10: a killed build-refs continues ------------------------------------------------------------------------------
BUILD = """
import json, os, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_hardening_data import FakeCaptioner, FakeEmbedder, reference_config
from unirain_data.distillation.reference_db import build_reference_db
records, db_dir, kill_after = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
build_reference_db(records, db_dir, FakeCaptioner(kill_after), FakeEmbedder(), reference_config(), workers=1,
                   progress=False)
"""


class FakeCaptioner:
    """Captions from the pixels (three distinct texts, so captions are shared); dies like a SIGKILL on call
    ``kill_after + 1``."""

    def __init__(self, kill_after=None):
        self.kill_after, self.captioned = kill_after, 0

    def __call__(self, images):
        if self.kill_after is not None and self.captioned >= self.kill_after:
            os._exit(9)
        self.captioned += len(images)
        return [f'rain over scene {int(np.asarray(im).mean()) % 3}\nsecond line' for im in images]


class StoppingCaptioner(FakeCaptioner):
    def __call__(self, images):
        if self.captioned:
            raise KeyboardInterrupt
        return super().__call__(images)


class FakeEmbedder:
    dim = 8

    @staticmethod
    def _unit(rows):
        rows = np.asarray(rows, np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def images(self, images):
        return self._unit([[np.asarray(im)[..., c % 3].mean() + c for c in range(self.dim)] for im in images])

    def texts(self, texts):
        return self._unit([[len(t) + c * sum(map(ord, t)) % 7 for c in range(self.dim)] for t in texts])


def reference_config():
    from unirain_data.distillation.config import config_from_dict
    return config_from_dict({'references': {'batch_size': 2}, 'retrieval': {'ssim_size': 11},
                             'pipeline': {'max_side': 16}, 'index': {'use_gpu': False}})


def database_content(folder):
    meta = json.loads((folder / 'meta.json').read_text())
    del meta['created']
    arrays = {name: np.load(folder / name).tolist() for name in ('image_emb.npy', 'thumbs.npy', 'text_emb.npy')}
    return meta, arrays, (folder / 'references.jsonl').read_text(), (folder / 'captions.json').read_text()


def test_a_killed_reference_build_continues_where_it_stopped(tmp_path):
    from unirain_data.distillation.reference_db import build_reference_db
    rng = np.random.default_rng(0)
    records = []
    for i in range(7):
        path = tmp_path / 'real' / f'{i}.png'
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (12, 14, 3), dtype=np.uint8))
        records.append({'path': str(path), 'gt': None, 'type': None, 'source': 'real'})
    db_dir = tmp_path / 'dbs' / 'refs'
    script = BUILD.format(tests=str(ROOT / 'tests'))
    killed = subprocess.run([sys.executable, '-c', script, json.dumps(records), str(db_dir), '4'], cwd=ROOT,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr[-3000:]
    assert not db_dir.exists() and (tmp_path / 'dbs' / '.refs.building').is_dir()

    captioner, told = FakeCaptioner(), []
    db = build_reference_db(records, str(db_dir), captioner, FakeEmbedder(), reference_config(), workers=1,
                            progress=False, log=told.append)
    assert captioner.captioned == 3  # two batches of two were done before the kill
    assert told == [f'continuing the stopped build in {tmp_path / "dbs" / ".refs.building"}: 4 of 7 references done']
    assert len(db) == 7
    assert sorted(p.name for p in (tmp_path / 'dbs').iterdir()) == ['refs', 'refs.lock']  # nothing hidden left
    once = tmp_path / 'once' / 'refs'
    build_reference_db(records, str(once), FakeCaptioner(), FakeEmbedder(), reference_config(), workers=1,
                       progress=False)
    assert database_content(db_dir) == database_content(once)
    assert sorted(os.listdir(db_dir)) == sorted(os.listdir(once))

    with pytest.raises(KeyboardInterrupt):  # stopped again, while rebuilding
        build_reference_db(records, str(db_dir), StoppingCaptioner(), FakeEmbedder(), reference_config(),
                           overwrite=True, workers=1, progress=False)
    changed = [dict(r, source='other') for r in records]  # a partial build of other references is not reused
    told.clear()
    captioner = FakeCaptioner()
    rebuilt = build_reference_db(changed, str(db_dir), captioner, FakeEmbedder(), reference_config(), overwrite=True,
                                 workers=1, progress=False, log=told.append)
    assert told == [f'discarding the stopped build in {tmp_path / "dbs" / ".refs.building"}: made for other '
                    'references or models']
    assert captioner.captioned == 7 and rebuilt.meta['sources'] == ['other']
    assert sorted(p.name for p in (tmp_path / 'dbs').iterdir()) == ['refs', 'refs.lock']
