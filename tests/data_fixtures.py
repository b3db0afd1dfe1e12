"""Tiny images, folder layouts and manifests made on the fly for the unirain_data tests."""
import json
import logging
import os

import cv2
import numpy as np
import pytest

import unirain_data  # noqa: F401  (first: applies the basicsr compat patches, registers DistilledRainDataset)
from basicsr.utils import get_root_logger
from basicsr.utils.registry import DATASET_REGISTRY


def write_image(path, pixels):
    """Write an array with OpenCV (BGR / BGRA / gray, 8 or 16 bit); returns the path."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, pixels), path
    return path


def random_pixels(rng, height=40, width=48, channels=3, dtype=np.uint8):
    high = 256 if dtype == np.uint8 else 65536
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, high, shape, dtype=dtype)


def write_pair(lq_path, gt_path, rng, height=40, width=48):
    """A random clean image and its 'rainy' partner 255 - clean: lq + gt == 1 at every aligned pixel."""
    gt = random_pixels(rng, height, width)
    write_image(gt_path, gt)
    write_image(lq_path, 255 - gt)
    return gt


def make_layout(root, counts, seed=0, height=40, width=48):
    """root/<type>/{input,target}/<i>.png with counts[type] random pairs."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        for i in range(count):
            write_pair(os.path.join(root, name, 'input', f'{i}.png'), os.path.join(root, name, 'target', f'{i}.png'),
                       rng, height, width)
    return str(root)


def write_lines(path, records):
    with open(path, 'w', encoding='utf-8') as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record)) + '\n')
    return str(path)


def make_manifest(folder, specs, seed=0, name='manifest.jsonl', height=40, width=48):
    """Pairs under folder/img/ and a manifest of relative paths; specs: list of dicts with type and optional
    source / split / verdict / score."""
    rng = np.random.default_rng(seed)
    records = []
    for i, spec in enumerate(specs):
        lq, gt = f'img/{i}_rain.png', f'img/{i}_clean.png'
        write_pair(os.path.join(folder, lq), os.path.join(folder, gt), rng, height, width)
        records.append({'lq': lq, 'gt': gt, **spec})
    return write_lines(os.path.join(folder, name), records)


def build(**opt):
    """A DistilledRainDataset from options (name and phase filled in)."""
    opt.setdefault('name', 'test')
    opt.setdefault('phase', 'val')
    return DATASET_REGISTRY.get('DistilledRainDataset')(opt)


def as_bgr01(path):
    """What the dataset should give for an 8-bit colour file, as an RGB CHW float array."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
    return img[..., ::-1].transpose(2, 0, 1)


@pytest.fixture
def basicsr_log():
    """Messages the basicsr logger emits during a test (it does not propagate to pytest's caplog)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = get_root_logger()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
