"""Uniform weights vs CoBa vs TUR: the same small arch on the same four-type data at an equal iteration budget.

Clean images (scikit-image's bundled photos by default, or --clean-root) are split by image into train / val /
test, shrunk to 128x128 and given all four rain types with unirain_data's synthesis. Each strategy then trains
the same network from the same initialisation on the same batches (same order, same crops); only
train.pixel_opt differs. CoBa learns from the val split; every strategy is scored on the test split.
Prints per-type, average and worst-type PSNR (RGB, uint8, no border crop: UniRain's convention) and writes JSON.

    python tools/benchmark_reweighting.py --clean-root ../shared/data/kodak24 --out bench_reweighting
"""
import argparse
import json
import os
import os.path as osp
import random
import sys
import time

import cv2
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout without installing

import unirain_data  # noqa: E402,F401  (registers DistilledRainDataset)
import unirain_losses  # noqa: E402,F401  (registers the strategies and UniRainModel)
from basicsr.data import build_dataset  # noqa: E402
from basicsr.metrics import calculate_psnr  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from unirain_data.rain_synthesis import synthesize_pair  # noqa: E402
from unirain_data.rain_types import RAIN_TYPES  # noqa: E402

SKIMAGE_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'cat', 'immunohistochemistry')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
SIZE = 128
STRATEGIES = ('uniform', 'coba', 'tur')


def pixel_opt(strategy, args):
    if strategy == 'uniform':
        return {'type': 'UniformTypeLoss'}
    if strategy == 'coba':
        return {'type': 'CoBaLoss', 'mode': args.coba_mode, 'window': args.coba_window,
                'warmup_updates': args.coba_warmup}
    return {'type': 'TURLoss', 'uncertainty': 'per_type', 'lr': args.tur_lr}


def clean_images(clean_root):
    """(name, HxWx3 float32 BGR in [0, 1]) of every clean image."""
    if clean_root is None:
        import skimage.data
        return [(name, getattr(skimage.data, name)()[..., ::-1].astype(np.float32) / 255) for name in SKIMAGE_PHOTOS]
    names = sorted(n for n in os.listdir(clean_root) if osp.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    if not names:
        raise SystemExit(f'--clean-root {clean_root}: no images ({", ".join(IMAGE_EXTENSIONS)})')
    images = []
    for name in names:
        img = cv2.imread(osp.join(clean_root, name), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f'--clean-root: cannot read {osp.join(clean_root, name)}')
        images.append((osp.splitext(name)[0], img.astype(np.float32) / 255))
    return images


def square(img):
    """The central square, shrunk to SIZE x SIZE."""
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return cv2.resize(img[top:top + side, left:left + side], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def prepare_data(args, work):
    """work/{train,val,test}/{drs,drd,nrs,nrd}/{input,target}/NAME.png, split by clean image."""
    images = clean_images(args.clean_root)
    n_val, n_test = args.val_images, args.test_images
    if len(images) < n_val + n_test + 1:
        raise SystemExit(f'{len(images)} clean images: too few for {n_val} val + {n_test} test + >= 1 train')
    splits = {'test': images[:n_test], 'val': images[n_test:n_test + n_val], 'train': images[n_test + n_val:]}
    pairs = [(split, i, name, img, t) for split, items in splits.items() for i, (name, img) in enumerate(items)
             for t in range(len(RAIN_TYPES))]
    for split, i, name, img, t in tqdm(pairs, desc='synthesising rain', unit='pair'):
        folder = osp.join(work, split, RAIN_TYPES[t].lower())
        seed = args.seed * 1000003 + {'train': 0, 'val': 1, 'test': 2}[split] * 10007 + i * 4 + t
        rainy, target = synthesize_pair(square(img), RAIN_TYPES[t], seed)
        for sub, pic in (('input', rainy), ('target', target)):
            os.makedirs(osp.join(folder, sub), exist_ok=True)
            cv2.imwrite(osp.join(folder, sub, f'{name}.png'), np.round(pic * 255).astype(np.uint8))
    return {split: len(items) for split, items in splits.items()}


def options(strategy, args, work):
    val_sets = {f'val_{t}': {'name': f'val_{name.lower()}', 'type': 'DistilledRainDataset', 'phase': 'val',
                             'dataroot': osp.join(work, 'val'), 'types': [name.lower()], 'io_backend': {'type': 'disk'}}
                for t, name in enumerate(RAIN_TYPES)}
    return {
        'name': f'benchmark_{strategy}', 'model_type': 'UniRainModel', 'scale': 1, 'num_gpu': 0,
        'manual_seed': args.seed, 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1,
        'datasets': val_sets,
        'network_g': {'type': args.arch, 'preset': args.preset},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0,
                  'optim_g': {'type': 'AdamW', 'lr': args.lr, 'weight_decay': 1e-4, 'betas': [0.9, 0.999]},
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [args.iters], 'restart_weights': [1],
                                'eta_min': 1e-6},
                  'total_iter': args.iters, 'pixel_opt': pixel_opt(strategy, args)},
        'val': {'val_freq': args.val_freq, 'coba_crop': 64, 'save_img': False},
    }


def batches(args, work):
    """The same sequence of mixed-type batches (order and crops) for every strategy."""
    dataset = build_dataset({'type': 'DistilledRainDataset', 'name': 'train', 'phase': 'train',
                             'dataroot': osp.join(work, 'train'), 'gt_size': args.crop, 'use_hflip': True,
                             'use_rot': True, 'io_backend': {'type': 'disk'}})
    random.seed(args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    while True:
        yield from loader


@torch.no_grad()
def test_psnr(net, work):
    """Mean RGB PSNR per type on the test split (whole 128x128 images)."""
    net.eval()
    dataset = build_dataset({'type': 'DistilledRainDataset', 'name': 'test', 'phase': 'test',
                             'dataroot': osp.join(work, 'test'), 'io_backend': {'type': 'disk'}})
    scores = {name: [] for name in RAIN_TYPES}
    for index in range(len(dataset)):
        sample = dataset[index]
        output = net(sample['lq'][None])
        scores[sample['rain_type']].append(calculate_psnr(tensor2img(output), tensor2img(sample['gt'][None]),
                                                          crop_border=0, test_y_channel=False))
    net.train()
    per_type = {name: float(np.mean(values)) for name, values in scores.items()}
    return {**per_type, 'avg': float(np.mean(list(per_type.values()))), 'worst': min(per_type.values())}


def run(strategy, args, work):
    torch.manual_seed(args.seed)  # the same initial network for every strategy
    model = build_model(options(strategy, args, work))
    data = batches(args, work)
    start = time.time()
    for it in tqdm(range(1, args.iters + 1), desc=strategy, unit='iter'):
        model.update_learning_rate(it)
        model.feed_data(next(data))
        model.optimize_parameters(it)
    seconds = time.time() - start
    return {'psnr': test_psnr(model.get_bare_model(model.net_g), work), 'train_seconds': seconds,
            'final_weights': dict(zip(RAIN_TYPES, model.cri_pix.weights().tolist()))}


def table(results):
    head = ['strategy'] + list(RAIN_TYPES) + ['avg', 'worst', 'train s']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for strategy, result in results.items():
        psnr = result['psnr']
        cells = [strategy] + [f'{psnr[k]:.2f}' for k in list(RAIN_TYPES) + ['avg', 'worst']]
        lines.append('| ' + ' | '.join(cells + [f'{result["train_seconds"]:.0f}']) + ' |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='bench_reweighting', help='work folder: data/ and results.json')
    parser.add_argument('--clean-root', help='folder of clean images (default: scikit-image\'s bundled photos)')
    parser.add_argument('--strategies', default=','.join(STRATEGIES), help=f'comma-separated subset of {STRATEGIES}')
    parser.add_argument('--arch', default='UniRain', help='registered arch name (any arch works)')
    parser.add_argument('--preset', default='tiny', help='preset of UniRain / UniRainDense')
    parser.add_argument('--iters', type=int, default=300, help='training iterations per strategy (equal budget)')
    parser.add_argument('--batch', type=int, default=8, help='batch size (mixed types)')
    parser.add_argument('--crop', type=int, default=48, help='training crop size')
    parser.add_argument('--lr', type=float, default=1e-3, help='AdamW learning rate (cosine decay to 1e-6)')
    parser.add_argument('--val-freq', type=int, default=10, help='iterations between CoBa updates')
    parser.add_argument('--coba-warmup', type=int, default=10, help='CoBa updates with uniform weights')
    parser.add_argument('--coba-window', type=int, default=5, help='CoBa slope window')
    parser.add_argument('--coba-mode', default='paper', choices=('paper', 'official'), help='CoBa formulas')
    parser.add_argument('--tur-lr', type=float, default=1e-2,
                        help='learning rate of TUR\'s per-type log sigmas (their own param group)')
    parser.add_argument('--val-images', type=int, default=2, help='clean images for the val split (CoBa)')
    parser.add_argument('--test-images', type=int, default=2, help='clean images for the test split')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (1 is fastest on busy shared cores)')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(',') if s.strip()]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise SystemExit(f'--strategies: unknown {unknown}; choose from {list(STRATEGIES)}')
    torch.set_num_threads(args.threads)
    out = osp.abspath(args.out)
    work = osp.join(out, 'data')
    begin = time.time()
    counts = prepare_data(args, work)
    results = {strategy: run(strategy, args, work) for strategy in strategies}
    total = time.time() - begin
    print(f'\nclean images train/val/test: {counts["train"]}/{counts["val"]}/{counts["test"]} x 4 types, '
          f'{SIZE}x{SIZE}; {args.arch} {args.preset}; {args.iters} iters x batch {args.batch} of {args.crop}px; '
          f'test PSNR (dB, RGB, uint8, no crop)')
    print(table(results))
    print(f'total {total:.0f} s on {args.threads} CPU thread(s)')
    summary = {'budget': vars(args), 'images': counts, 'size': SIZE, 'results': results, 'total_seconds': total}
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    print(f'wrote {osp.join(out, "results.json")}')


if __name__ == '__main__':
    main()
