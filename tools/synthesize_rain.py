"""Synthesise a four-type rain set (DRS, DRD, NRS, NRD) from a folder of clean images, or rain on one image.

Folder mode splits the images (not the pairs) into train/val/test, so no clean scene is in two splits:

    python tools/synthesize_rain.py --input datasets/kodak24 --out datasets/kodak4type --val 2 --test 4

writes OUT/{train,val,test}/{drs,drd,nrs,nrd}/{input,target}/NAME.png and one manifest per split,
OUT/{split}.jsonl, with paths relative to OUT. Train with `dataroot: OUT/train` or `manifest: OUT/train.jsonl`.

Single-image mode:

    python tools/synthesize_rain.py --image photo.png --type nrs --out rainy.png --target-out night_clean.png

The same --seed gives the same files. For night types the target is the night scene without rain or noise.
"""
import argparse
import os
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unirain_data.manifest import SPLITS, ManifestEntry, write_manifest  # noqa: E402
from unirain_data.rain_synthesis import synthesize_pair  # noqa: E402
from unirain_utils.image_io import IMAGE_EXTENSIONS, imread_bgr, is_image_file, write_image  # noqa: E402
from unirain_utils.rain_types import RAIN_TYPES, type_id, type_name  # noqa: E402



def split_size(text):
    """'2' is a count of images, '0.2' a fraction of them."""
    try:
        value = float(text) if '.' in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a count (2) or a fraction (0.2), got {text!r}') from None
    if value < 0 or (isinstance(value, float) and value >= 1):
        raise argparse.ArgumentTypeError(f'expected a count >= 0 or a fraction in [0, 1), got {text!r}')
    return value


def rain_types(text):
    names = [name for name in text.split(',') if name]
    if not names:
        raise argparse.ArgumentTypeError('expected at least one rain type, e.g. drs,drd,nrs,nrd')
    try:
        return [type_name(type_id(name)) for name in names]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--input', help='folder of clean images (png, jpg, ...): makes a train/val/test set')
    source.add_argument('--image', help='one clean image: writes one rainy image to --out')
    parser.add_argument('--out', required=True, help='output folder (with --input) or output file (with --image)')
    parser.add_argument('--types', type=rain_types, default=','.join(RAIN_TYPES).lower(),
                        help='folder mode: comma-separated rain types to make (default: all four)')
    parser.add_argument('--type', help='rain type of the single image: drs | drd | nrs | nrd')
    parser.add_argument('--target-out', help='single-image mode: also write the clean target (the night scene '
                        'without rain for nrs/nrd)')
    parser.add_argument('--val', type=split_size, default=0.1, help='validation images: a count (2) or a fraction (0.1, the default)')
    parser.add_argument('--test', type=split_size, default=0.1, help='test images: a count (4) or a fraction (0.1, the default)')
    parser.add_argument('--variants', type=int, default=1, help='rainy versions per image and type (default 1)')
    parser.add_argument('--resize', type=int, help='first resize each image so its short side is this many pixels')
    parser.add_argument('--crop', type=int, help='then take a random square crop of this size per variant')
    parser.add_argument('--seed', type=int, default=0, help='seed of the split, crops and rain (default 0)')
    parser.add_argument('--source', help='manifest "source" field; default synthetic-<input folder name>')
    args = parser.parse_args(argv)
    if args.image and not args.type:
        parser.error('--image needs --type (drs, drd, nrs or nrd)')
    if args.input and (args.type or args.target_out):
        parser.error('--type and --target-out are for --image; a folder set uses --types and writes targets anyway')
    if args.type:
        try:
            args.type = type_name(type_id(args.type))
        except ValueError as exc:
            parser.error(f'--type: {exc}')
    if args.variants < 1:
        parser.error(f'--variants must be at least 1, got {args.variants}')
    for key in ('resize', 'crop'):
        if getattr(args, key) is not None and getattr(args, key) < 16:
            parser.error(f'--{key} must be at least 16 pixels, got {getattr(args, key)}')
    return args


def prepare(image, path, resize, crop, rng):
    """Resize the short side to ``resize``, then a random ``crop`` x ``crop`` square."""
    if resize:
        height, width = image.shape[:2]
        scale = resize / min(height, width)
        size = (max(round(width * scale), resize), max(round(height * scale), resize))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    if crop:
        height, width = image.shape[:2]
        if min(height, width) < crop:
            raise ValueError(f'{path} is {width}x{height} (after --resize), smaller than --crop {crop}')
        top, left = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
        image = image[top:top + crop, left:left + crop]
    return np.clip(image, 0, 1)


def image_seed(seed, name, *more):
    """A seed per (image, variant, ...) so a pair does not change when other images are added or removed."""
    return np.random.SeedSequence([seed, zlib.crc32(name.encode('utf-8')), *more])


def list_images(folder):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'input folder not found: {folder}')
    paths = sorted(p for p in Path(folder).iterdir() if is_image_file(p.name) and p.is_file())
    if not paths:
        raise ValueError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {folder}')
    stems = {}
    for path in paths:
        if path.stem in stems:
            raise ValueError(f'two images share the name {path.stem!r}: {stems[path.stem].name} and {path.name}')
        stems[path.stem] = path
    return paths


def assign_splits(paths, val, test, seed):
    """Image -> split, shuffled by ``seed``; counts or fractions of the images go to test and val."""
    total = len(paths)
    n_test = round(test * total) if isinstance(test, float) else test
    n_val = round(val * total) if isinstance(val, float) else val
    if n_test + n_val >= total:
        raise ValueError(f'{total} images cannot give {n_test} test and {n_val} val images and still leave '
                         'some for training; lower --val/--test')
    order = np.random.default_rng(seed).permutation(total)
    splits = {}
    for rank, index in enumerate(order):
        splits[paths[index]] = 'test' if rank < n_test else 'val' if rank < n_test + n_val else 'train'
    return splits


def make_set(args):
    paths = list_images(args.input)
    splits = assign_splits(paths, args.val, args.test, args.seed)
    source = args.source or f'synthetic-{Path(os.path.abspath(args.input)).name}'
    entries = {split: [] for split in SPLITS}
    with tqdm(total=len(paths) * args.variants * len(args.types), desc='synthesising', unit='pair') as bar:
        for path in paths:
            split, clean = splits[path], imread_bgr(path)
            for variant in range(args.variants):
                name = path.stem if args.variants == 1 else f'{path.stem}_{variant:02d}'
                crop_rng = np.random.default_rng(image_seed(args.seed, path.name, variant))
                scene = prepare(clean, path, args.resize, args.crop, crop_rng)
                for rain_type in args.types:
                    seed = image_seed(args.seed, path.name, variant, 1 + type_id(rain_type))
                    rainy, target = synthesize_pair(scene, rain_type, np.random.default_rng(seed))
                    folder = f'{split}/{rain_type.lower()}'
                    write_image(os.path.join(args.out, folder, 'input', f'{name}.png'), rainy)
                    write_image(os.path.join(args.out, folder, 'target', f'{name}.png'), target)
                    entries[split].append(ManifestEntry(
                        lq=f'{folder}/input/{name}.png', gt=f'{folder}/target/{name}.png', type=rain_type,
                        source=source, split=split,
                        extra={'clean': path.name, 'variant': variant, 'seed': args.seed}))
                    bar.update()
    for split, split_entries in entries.items():
        if split_entries:
            count = write_manifest(os.path.join(args.out, f'{split}.jsonl'), split_entries)
            print(f'{split:5s}: {count} pairs, {len({e.extra["clean"] for e in split_entries})} images '
                  f'-> {os.path.join(args.out, split)}  manifest {os.path.join(args.out, split + ".jsonl")}')


def make_one(args):
    rng = np.random.default_rng(image_seed(args.seed, Path(args.image).name, 0))
    clean = prepare(imread_bgr(args.image), args.image, args.resize, args.crop, rng)
    rainy, target = synthesize_pair(clean, args.type, rng)
    write_image(args.out, rainy)
    print(f'{args.type} rain on {args.image} -> {args.out}')
    if args.target_out:
        write_image(args.target_out, target)
        print(f'target -> {args.target_out}')


def main(argv=None):
    args = parse_args(argv)
    if args.image:
        make_one(args)
    else:
        make_set(args)


if __name__ == '__main__':
    try:
        main()
    except (ValueError, OSError) as exc:
        sys.exit(f'error: {exc}')
