"""Derain photos: a file, a folder or a glob, with any registered checkpoint, on CPU or GPU.

    python tools/derain.py --input photos/ --output derained/ --model options/test_UniRain.yml
    python tools/derain.py --input 'shots/*.jpg' --output out/ --model net_g_latest.pth:UniRain,preset=small
    python tools/derain.py --input big.png --output out/ --opt options/test_PReNet_Rain100L.yml --device cuda --half

Names and formats are kept (PNG/JPEG/WebP/BMP/TIFF; a 16-bit PNG stays 16-bit; gray stays gray; alpha is
copied). Inputs are never overwritten. Unreadable files, files above --max-pixels and files that run out of
memory are skipped and listed at the end; the other files are still derained. The exit status is 0 when
every file was derained, 1 when some were skipped as unreadable, 2 for a usage error (one line on stderr).
"""
import argparse
import os
import sys
import time

import yaml

from unirain_arch.inference import MODEL_SPEC_HELP, InferenceError, load_model, parse_model_spec
from unirain_utils.image_io import DEFAULT_MAX_PIXELS
from unirain_utils.photo_batch import PhotoBatchError, derain_paths


class UsageError(ValueError):
    """A command line that cannot run; printed as one line, exit status 2."""


def pixel_count(text):
    """--max-pixels: an integer, also written as 2e8 or 200_000_000; 0 means no limit."""
    try:
        value = float(text.replace('_', ''))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number of pixels') from None
    if value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f'{text!r} must be a whole number of pixels >= 0')
    return int(value)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Derain images with a UniRain (or any BasicSR-registered) checkpoint.',
        epilog='Exit status: 0 all derained, 1 some files unreadable (listed), 2 usage error.')
    parser.add_argument('--input', '-i', nargs='+', required=True,
                        help='image files, folders or glob patterns (quote patterns)')
    parser.add_argument('--output', '-o', required=True, help='output folder (file names are kept)')
    weights = parser.add_argument_group('model: --model SPEC, as in tools/compare.py (or the equivalent '
                                        '--opt FILE / --ckpt CKPT --arch NAME [--preset P])')
    weights.add_argument('--model', metavar='SPEC', help=MODEL_SPEC_HELP)
    weights.add_argument('--opt', help='BasicSR option file: network_g and path.pretrain_network_g')
    weights.add_argument('--ckpt', help='checkpoint: BasicSR (params / params_ema) or a plain state dict; '
                                        'overrides the option file\'s path.pretrain_network_g')
    weights.add_argument('--arch', help='registered arch name when no --opt is given, e.g. UniRain, PReNet')
    weights.add_argument('--preset', help='arch preset (UniRain/UniRainDense: paper, small, tiny)')
    weights.add_argument('--param-key', default=None,
                         help='checkpoint key holding the weights (default: params_ema, params, or the whole file)')
    run = parser.add_argument_group('running')
    run.add_argument('--device', default='auto', help='cpu, cuda, cuda:1, ... (default: cuda when available)')
    precision = run.add_mutually_exclusive_group()
    precision.add_argument('--half', action='store_true', help='float16 autocast (GPU only)')
    precision.add_argument('--bf16', action='store_true', help='bfloat16 autocast')
    run.add_argument('--tile', type=int, default=512,
                     help='tile size in pixels, bounds memory on large photos; 0 = whole image (default 512)')
    run.add_argument('--overlap', type=int, default=32, help='tile overlap in pixels (default 32)')
    run.add_argument('--max-pixels', type=pixel_count, default=DEFAULT_MAX_PIXELS, metavar='N',
                     help=f'refuse (skip and list) images with more pixels than N, read from the file header '
                          f'before decoding; 0 = no limit (default {DEFAULT_MAX_PIXELS}, a 10000x10000 photo)')
    out = parser.add_argument_group('output')
    out.add_argument('--recursive', action='store_true', help='descend into sub-folders (their layout is kept)')
    out.add_argument('--skip-existing', action='store_true', help='leave outputs that already exist (resume)')
    out.add_argument('--quality', type=int, default=95, help='JPEG/WebP quality (default 95)')
    out.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    if args.model and (args.opt or args.arch or args.preset):
        parser.error('give either --model SPEC or --opt / --arch, not both')
    if not args.model and not args.opt and not args.arch:
        parser.error('give --model SPEC (e.g. --model net_g.pth:UniRain,preset=small or --model OPTION.yml)')
    if not args.model and not args.opt and not args.ckpt:
        parser.error('--arch needs --ckpt (a checkpoint to load)')
    if args.tile < 0:
        parser.error(f'--tile {args.tile} must be >= 0 (0 = whole image)')
    if args.overlap < 0 or (args.tile and args.overlap >= args.tile):
        parser.error(f'--overlap {args.overlap} must be >= 0 and smaller than --tile {args.tile}')
    if not 0 <= args.quality <= 100:
        parser.error(f'--quality {args.quality} must be in 0..100')
    return args


def peak_memory(device):
    """Peak resident memory of this process (and peak GPU memory on CUDA), for the closing line."""
    import torch
    try:
        import resource
        text = f'peak RAM {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB'
    except ImportError:  # not on Windows
        text = 'peak RAM unknown'
    if str(device).startswith('cuda'):
        text += f', peak GPU {torch.cuda.max_memory_allocated(torch.device(device)) / 2**20:.0f} MiB'
    return text


def pick_device(name):
    """The --device value as a torch device name, or UsageError (unknown name, no such GPU)."""
    import torch
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f'--device {name}: {exc}') from exc
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise UsageError(f'--device {name}: this machine has {count} CUDA device(s); use --device cpu')
    return name


def load_network(args, device):
    """The network the command line names, or UsageError: a missing file, a bad arch option or checkpoint."""
    if args.model:
        if args.model.lower().endswith(('.yml', '.yaml', '.json')) and not os.path.isfile(args.model):
            raise UsageError(f'--model {args.model}: option file not found')
        try:
            checkpoint, network = parse_model_spec(args.model)
        except yaml.YAMLError as exc:
            raise UsageError(f'--model {args.model}: an arch option is not a YAML value ({exc})') from exc
        if checkpoint is None and not isinstance(network, str):
            raise InferenceError(f'--model {args.model}: derain needs weights (CKPT:ARCH or an option file)')
        checkpoint = args.ckpt or checkpoint
    else:
        checkpoint = args.ckpt
        network = args.opt or {'type': args.arch, **({'preset': args.preset} if args.preset else {})}
    try:
        return load_model(checkpoint, network, device=device, param_key=args.param_key)
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as exc:  # an unreadable option file, bad arch options
        raise UsageError(f'cannot load the network {network}: {type(exc).__name__}: {exc}') from exc


def one_line(text, limit=600):
    """An error message on one line (torch lists every mismatched tensor on its own line)."""
    line = '; '.join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= limit else line[:limit] + ' ...'


def main(argv=None):
    import torch

    args = parse_args(argv)
    dtype = torch.float16 if args.half else torch.bfloat16 if args.bf16 else None
    try:
        device = pick_device(args.device)
        net = load_network(args, device)
        start = time.perf_counter()
        report = derain_paths(net, args.input, args.output, tile_size=args.tile or None, tile_overlap=args.overlap,
                              dtype=dtype, recursive=args.recursive, skip_existing=args.skip_existing,
                              quality=args.quality, progress=not args.quiet, max_pixels=args.max_pixels or None)
    except (InferenceError, PhotoBatchError, UsageError, OSError) as exc:
        print(f'derain: error: {one_line(exc)}', file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f'derained {len(report.written)} image(s) into {args.output} in {seconds:.1f} s on {device}'
          + (f'; {len(report.skipped)} already there' if report.skipped else '') + f'; {peak_memory(device)}')
    if report.failed:
        print(f'{len(report.failed)} file(s) could not be read and were skipped:', file=sys.stderr)
        for path, reason in report.failed:
            print(f'  {path}: {reason}', file=sys.stderr)
        if report.too_large:
            print(f'{len(report.too_large)} of them exceed --max-pixels {args.max_pixels}; a larger --max-pixels '
                  'derains them where memory allows', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
