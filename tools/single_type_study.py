"""Can a network learn one rain type with a given pixel loss in N iterations? Output vs input PSNR over training.

Trains one network (any registered arch; UniRain ``tiny`` by default) on a single rain type, synthesised on random
crops of clean photos, with one pixel loss from BasicSR's registry, and scores whole validation images of that type
every few iterations: the output's PSNR next to the rainy input's. It is how we found why daytime raindrops stay
at the input in the 10-minute demo (docs/experiments.md): L1 keeps the identity, MSE learns them.

    python tools/single_type_study.py --type drd --loss L1Loss --iters 3000 --out drd_l1.json
    python tools/single_type_study.py --type drd --loss MSELoss --lr 1e-3 --out drd_mse.json
    python tools/single_type_study.py --type drd --loss CharbonnierLoss --loss-opt eps=4e-4 --out drd_charb.json

Training pairs come from a fixed bank of ``--bank`` synthetic crops (synthesis stays out of the timing), with
random flips and 90-degree rotations; AdamW with cosine decay to 1e-5; one torch thread unless OMP_NUM_THREADS says
otherwise. PSNR is RGB on uint8 images, no border crop (UniRain's convention). Prints a table, writes JSON.
"""
import argparse
import json
import os
import os.path as osp
import random
import sys
import time

import numpy as np
import torch
import yaml
from tqdm import tqdm

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout without installing

import unirain_arch  # noqa: E402,F401  (registers UniRain, UniRainDense, PReNet)
import unirain_data  # noqa: E402,F401  (registers DistilledRainDataset)
from basicsr.losses import build_loss  # noqa: E402
from basicsr.metrics import calculate_psnr  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402
from unirain_arch.inference import derain_tensor  # noqa: E402
from unirain_data.bundled_photos import BUNDLED_PHOTOS, bundled_photo_path  # noqa: E402
from unirain_data.distilled_dataset import DistilledRainDataset  # noqa: E402
from unirain_data.rain_synthesis import synthesize_pair  # noqa: E402
from unirain_utils.image_io import imread_bgr, to_integer  # noqa: E402
from unirain_utils.rain_types import type_id, type_name  # noqa: E402


def key_values(items, flag):
    """``['eps=4e-4', 'dim=16']`` -> ``{'eps': 0.0004, 'dim': 16}`` (values parsed as YAML)."""
    options = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise SystemExit(f'{flag}: expected KEY=VALUE, got {item!r}')
        options[key] = yaml.safe_load(value)
    return options


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--type', default='drd', help='rain type: drs, drd, nrs or nrd')
    parser.add_argument('--loss', default='L1Loss', help='pixel loss registered in BasicSR (L1Loss, MSELoss, ...)')
    parser.add_argument('--loss-opt', nargs='*', default=[], metavar='KEY=VALUE', help='extra loss options')
    parser.add_argument('--arch', default='UniRain', help='registered network')
    parser.add_argument('--arch-opt', nargs='*', default=['preset=tiny'], metavar='KEY=VALUE',
                        help='network options (default: preset=tiny)')
    parser.add_argument('--iters', type=int, default=1500, help='training iterations')
    parser.add_argument('--batch', type=int, default=8, help='batch size')
    parser.add_argument('--crop', type=int, default=64, help='training crop size (rain is synthesised on the crop)')
    parser.add_argument('--lr', type=float, default=2e-3, help='AdamW learning rate (cosine decay to 1e-5)')
    parser.add_argument('--bank', type=int, default=6000, help='synthetic training crops drawn once')
    parser.add_argument('--eval-every', type=int, default=250, help='validation interval (and the last iteration)')
    parser.add_argument('--train-photos', default='astronaut,coffee,motorcycle_left,motorcycle_right',
                        help="scikit-image's bundled photos to crop for training")
    parser.add_argument('--val-photos', default='chelsea,rocket', help='bundled photos for validation')
    parser.add_argument('--val-seed', type=int, default=7, help='seed of the fixed validation rain (the demo: 7)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the crops, the rain and the initialisation')
    parser.add_argument('--out', required=True, help='JSON file for the checks')
    args = parser.parse_args(argv)
    try:
        args.type = type_name(type_id(args.type))
    except ValueError as err:
        raise SystemExit(f'--type: {err}')
    for flag, names in (('--train-photos', args.train_photos), ('--val-photos', args.val_photos)):
        unknown = [n for n in names.split(',') if n not in BUNDLED_PHOTOS]
        if unknown:
            raise SystemExit(f'{flag}: unknown photo(s) {", ".join(unknown)}; choose from {", ".join(BUNDLED_PHOTOS)}')
    if min(args.iters, args.batch, args.crop, args.bank, args.eval_every) < 1:
        raise SystemExit('--iters, --batch, --crop, --bank and --eval-every must be positive')
    return args


def training_bank(args):
    """(N, 3, crop, crop) RGB tensors of rainy inputs and targets, from random crops of the training photos."""
    rng = np.random.default_rng(args.seed)
    photos = [imread_bgr(bundled_photo_path(n)) for n in args.train_photos.split(',')]
    for name, photo in zip(args.train_photos.split(','), photos):
        if min(photo.shape[:2]) < args.crop:
            raise SystemExit(f'--crop {args.crop} is larger than photo {name} ({photo.shape[1]}x{photo.shape[0]})')
    inputs, targets = [], []
    for i in tqdm(range(args.bank), desc=f'synthesising {args.type} crops', leave=False):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - args.crop + 1)
        left = rng.integers(0, photo.shape[1] - args.crop + 1)
        crop = np.ascontiguousarray(photo[top:top + args.crop, left:left + args.crop])
        rainy, target = synthesize_pair(crop, args.type, int(rng.integers(1 << 31)))
        inputs.append(rainy[..., ::-1])
        targets.append(target[..., ::-1])
    as_tensor = lambda images: torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return as_tensor(inputs), as_tensor(targets)


def validation_set(args):
    """(name, rainy, target) RGB (3, H, W) tensors: the demo's fixed validation rain of this type."""
    dataset = DistilledRainDataset({
        'name': f'val_{args.type}', 'phase': 'val', 'type': 'DistilledRainDataset', 'types': [args.type.lower()],
        'synthesize': {'bundled': args.val_photos.split(','), 'seed': args.val_seed}})
    return [(osp.basename(s['lq_path']), s['lq'], s['gt']) for s in (dataset[i] for i in range(len(dataset)))]


def mean_psnr(pairs):
    """Mean PSNR over (output, target) pairs of (3, H, W) tensors, on uint8 images rounded like tensor2img."""
    uint8 = lambda tensor: to_integer(tensor.numpy().transpose(1, 2, 0))  # noqa: E731
    return float(np.mean([calculate_psnr(uint8(a), uint8(b), crop_border=0) for a, b in pairs]))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS') or 1))  # unset or empty: one thread
    inputs, targets = training_bank(args)
    val = validation_set(args)
    input_psnr = mean_psnr([(rainy, target) for _, rainy, target in val])
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    try:
        net = ARCH_REGISTRY.get(args.arch)(**key_values(args.arch_opt, '--arch-opt'))
        criterion = build_loss({'type': args.loss, **key_values(args.loss_opt, '--loss-opt')})
    except (KeyError, TypeError, ValueError) as err:
        raise SystemExit(f'--arch {args.arch} {args.arch_opt} / --loss {args.loss} {args.loss_opt}: {err}')
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.iters, eta_min=1e-5)
    checks, start = [], time.time()
    for it in tqdm(range(1, args.iters + 1), desc=f'{args.arch} on {args.type} with {args.loss}'):
        index = torch.randint(0, len(inputs), (args.batch,))
        rainy, target = inputs[index], targets[index]
        turns = random.randint(0, 3)
        rainy, target = torch.rot90(rainy, turns, (2, 3)), torch.rot90(target, turns, (2, 3))
        if random.random() < 0.5:
            rainy, target = rainy.flip(3), target.flip(3)
        loss = criterion(net(rainy), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if it % args.eval_every == 0 or it == args.iters:
            net.eval()
            psnr = mean_psnr([(derain_tensor(net, rainy_val[None])[0], target_val) for _, rainy_val, target_val in val])
            net.train()
            checks.append({'iter': it, 'seconds': round(time.time() - start, 1), 'train_loss': loss.item(),
                           'psnr': psnr, 'gain': psnr - input_psnr})
            tqdm.write(f'iter {it:6d}  {args.type} PSNR {psnr:.2f} dB '
                       f'(input {input_psnr:.2f}, {psnr - input_psnr:+.2f})')
    report = {'args': vars(args), 'validation': [name for name, _, _ in val], 'input_psnr': input_psnr,
              'checks': checks}
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'\n{args.arch} {args.arch_opt} on {args.type}, {args.loss} {args.loss_opt}, lr {args.lr}, '
          f'batch {args.batch} of {args.crop}x{args.crop}; validation: {", ".join(report["validation"])}')
    print('| iteration | seconds | PSNR-RGB | input | gain |\n|---|---|---|---|---|')
    for c in checks:
        print(f'| {c["iter"]} | {c["seconds"]} | {c["psnr"]:.2f} | {input_psnr:.2f} | {c["gain"]:+.2f} |')
    print(f'wrote {args.out}')
    return report


if __name__ == '__main__':
    main()
