"""Compare deraining models on the same per-type test data: a Table-1 style report, parameters, latency, grids.

    python tools/compare.py --data datasets/unirain/test \\
        --model UniRain=options/test_UniRain.yml \\
        --model PReNet=options/test_PReNet.yml \\
        --model 'UniRain-small=experiments/x/models/net_g_5000.pth:UniRain,preset=small' \\
        --out results/compare

writes results.md (tables ready to paste), results.json (every number, per image too) and grid_<type>.png
(rainy | each model | clean for a few samples). Every number is computed here from the models' outputs;
``--readme README.md`` replaces the block between ``<!-- compare:begin -->`` and ``<!-- compare:end -->``.

A model is NAME=SPEC where SPEC is
  OPTION.yml            a BasicSR option file: network_g and path.pretrain_network_g (param_key_g honoured)
  CKPT:ARCH             a checkpoint and its arch: an option/network YAML or JSON file, or an inline
                        registered name with arguments, e.g. ``net_g_5000.pth:UniRain,preset=small``
  untrained:ARCH        random weights (seed 0), only with --allow-untrained; labelled "untrained" everywhere
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from tqdm import tqdm

from unirain_arch.inference import (InferenceError, derain_image, derain_tensor, load_model, parse_model_spec,
                                    resolve_network)
from unirain_utils.files import atomic_write
from unirain_utils.image_io import BadImageError, is_image_file, read_image, to_integer, write_image
from unirain_utils.rain_types import RAIN_TYPES

METRICS = ('psnr_rgb', 'ssim_rgb', 'psnr_y', 'ssim_y')
INPUT_ROW = 'rainy input (no deraining)'
README_BEGIN, README_END = '<!-- compare:begin -->', '<!-- compare:end -->'


def conventions(rounding):
    quant = ('uint8 by rounding (BasicSR tensor2img)' if rounding == 'round'
             else 'uint8 by truncation (PReNet\'s official uint8(255*x))')
    return {
        'images': f'whole images, no border crop, never cropped to a size multiple (models pad and crop back); '
                  f'outputs clamped to [0, 1] then {quant}; targets read as uint8',
        'psnr_rgb': 'PSNR over the three RGB channels of the uint8 images (dB), BasicSR calculate_psnr, '
                    'test_y_channel false, crop_border 0',
        'ssim_rgb': 'SSIM (Gaussian 11x11, sigma 1.5, MATLAB constants) averaged over R, G, B of the uint8 images, '
                    'BasicSR calculate_ssim, test_y_channel false, crop_border 0',
        'psnr_y': 'PSNR on MATLAB BT.601 Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 (R, G, B in [0, 1]) '
                  'computed in floating point from the uint8 images (dB), BasicSR test_y_channel true, crop_border 0',
        'ssim_y': 'SSIM on that Y channel, BasicSR calculate_ssim, test_y_channel true, crop_border 0',
        'lpips': 'LPIPS (AlexNet, v0.1) on the uint8 RGB images scaled to [-1, 1]; lower is better',
        'niqe': 'NIQE (BasicSR calculate_niqe, Y channel, no crop) on unpaired real photos; lower is better',
        'average': 'mean of the per-type means over the types present (each type weighs the same)',
        'latency': 'median wall time of derain_tensor on one random square image, in ms per megapixel',
    }


# ------------------------------------------------------------------------------------------------ data


@dataclass
class Pair:
    name: str
    lq: str
    gt: str


def pairs_from_folder(root):
    """{TYPE: [Pair]} from root/{drs,drd,nrs,nrd}/{input,target}/, paired exactly as DistilledRainDataset does."""
    from unirain_data.manifest import entries_from_layout
    try:
        pairing = entries_from_layout(root, split='test')
    except (FileNotFoundError, ValueError) as exc:
        raise InferenceError(f'--data {root}: {exc}') from exc
    if pairing.unmatched_lq:
        raise InferenceError(f'--data {root}: no clean image for {pairing.unmatched_lq[:3]} '
                             '(target/ needs the same file names)')
    found = {}
    for entry in pairing.entries:
        found.setdefault(entry.type, []).append(Pair(os.path.basename(entry.lq), entry.lq, entry.gt))
    return found


def pairs_from_manifest(path, split=None):
    from unirain_data.manifest import read_manifest, resolve_path
    found = {}
    for entry in read_manifest(path):
        if split and entry.split != split:
            continue
        lq, gt = resolve_path(path, entry.lq), resolve_path(path, entry.gt)
        found.setdefault(entry.type, []).append(Pair(os.path.basename(lq), lq, gt))
    if not found:
        raise InferenceError(f'{path}: no entries' + (f' with split {split!r}' if split else ''))
    return {t: found[t] for t in RAIN_TYPES if t in found}


def limit_pairs(pairs, max_per_type):
    return {t: v[:max_per_type] if max_per_type else v for t, v in pairs.items()}


# ---------------------------------------------------------------------------------------------- models


@dataclass
class Model:
    name: str
    spec: str
    net: torch.nn.Module = None
    arch: dict = None
    weights: str = ''
    untrained: bool = False
    params: int = 0
    latency_ms_per_mp: float = None
    per_image: dict = field(default_factory=dict)  # TYPE -> [{'file', metric: value}]
    niqe: list = field(default_factory=list)


def build_model(name, spec, device, allow_untrained):
    try:
        checkpoint, network = parse_model_spec(spec)
    except InferenceError as exc:
        raise InferenceError(f'--model {name}={spec}: {exc}') from exc
    net_opt, opt_ckpt, _, _ = resolve_network(network)
    checkpoint = checkpoint or opt_ckpt
    untrained = checkpoint is None
    if untrained and not allow_untrained:
        raise InferenceError(f'--model {name}: no weights ({spec}); pass --allow-untrained to compare random weights')
    torch.manual_seed(0)
    net = load_model(checkpoint, network, device=device, allow_untrained=untrained)
    weights = 'untrained (random init, seed 0)' if untrained else checkpoint
    return Model(name=name, spec=spec, net=net, arch=net_opt, weights=weights, untrained=untrained,
                 params=sum(p.numel() for p in net.parameters()))


def measure_latency(net, size, tile, overlap, dtype, repeats=3):
    """Median ms per megapixel of derain_tensor on a random size x size image (one warm-up run first)."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    cuda = next(net.parameters()).is_cuda
    times = []
    for i in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        derain_tensor(net, x, tile, overlap, dtype)
        if cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3 / (size * size / 1e6)


# --------------------------------------------------------------------------------------------- metrics


def image_metrics(out, gt, lpips_fn=None):
    """PSNR/SSIM on RGB and on MATLAB Y (and LPIPS) of two uint8 HxWx3 BGR images, no crop (BasicSR code)."""
    from basicsr.metrics import calculate_psnr, calculate_ssim
    values = {
        'psnr_rgb': calculate_psnr(out, gt, crop_border=0, test_y_channel=False),
        'ssim_rgb': calculate_ssim(out, gt, crop_border=0, test_y_channel=False),
        'psnr_y': calculate_psnr(out, gt, crop_border=0, test_y_channel=True),
        'ssim_y': calculate_ssim(out, gt, crop_border=0, test_y_channel=True),
    }
    if lpips_fn is not None:
        values['lpips'] = lpips_fn(out, gt)
    return {k: float(v) for k, v in values.items()}


def summarize(per_image, keys):
    """({TYPE: {metric: mean, 'n': count}}, {metric: mean of the per-type means})."""
    per_type = {}
    for rain_type, rows in per_image.items():
        per_type[rain_type] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
        per_type[rain_type]['n'] = len(rows)
    average = {k: float(np.mean([v[k] for v in per_type.values()])) for k in keys} if per_type else {}
    return per_type, average


def load_u8(path):
    return to_integer(read_image(path)[0], 8)


# ----------------------------------------------------------------------------------------------- grids


def _label(img, text, height=18):
    band = np.full((height, img.shape[1], 3), 255, np.uint8)
    scale = 0.4
    while scale > 0.2 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > img.shape[1] - 4:
        scale -= 0.05
    cv2.putText(band, text, (2, height - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, img])


def make_grid(rows, cell_height):
    """One image from rows of [(label, uint8 BGR image)]: every cell resized to ``cell_height``, labelled."""
    lines = []
    for row in rows:
        cells = []
        for text, img in row:
            width = max(1, round(img.shape[1] * cell_height / img.shape[0]))
            cell = cv2.resize(img, (width, cell_height), interpolation=cv2.INTER_AREA)
            cells.append(np.pad(_label(cell, text), ((2, 2), (2, 2), (0, 0)), constant_values=255))
        lines.append(np.hstack(cells))
    width = max(line.shape[1] for line in lines)
    return np.vstack([np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255)
                      for line in lines])


# ---------------------------------------------------------------------------------------------- report


def fmt(value, digits):
    return '—' if value is None or (isinstance(value, float) and math.isnan(value)) else f'{value:.{digits}f}'


def markdown(report):
    conv = report['conventions']
    types = list(report['data']['types'])
    rows = report['models']
    counts = ', '.join(f'{t} {n}' for t, n in report['data']['types'].items())
    out = [f'Data: `{report["data"]["source"]}` ({counts} pairs). {conv["images"]}. '
           f'Average: {conv["average"]}. Generated by `tools/compare.py`; see results.json for every image.', '']

    def metric_table(title, columns, legend, digits):
        header = ['model'] + [f'{t} {label}' for t in types for _, label in columns] + \
                 [f'Avg {label}' for _, label in columns]
        out.extend([f'**{title}**', '', legend, '', '| ' + ' | '.join(header) + ' |',
                    '|' + '---|' * len(header)])
        for row in rows:
            cells = [row['name'] + (' *(untrained)*' if row['untrained'] else '')]
            cells += [fmt(row['per_type'].get(t, {}).get(k), d) for t in types for (k, _), d in zip(columns, digits)]
            cells += [fmt(row['average'].get(k), d) for (k, _), d in zip(columns, digits)]
            out.append('| ' + ' | '.join(cells) + ' |')
        out.append('')

    metric_table('RGB: PSNR (dB) / SSIM', [('psnr_rgb', 'PSNR-RGB'), ('ssim_rgb', 'SSIM-RGB')],
                 f'PSNR-RGB: {conv["psnr_rgb"]}. SSIM-RGB: {conv["ssim_rgb"]}.', (2, 4))
    metric_table('Y channel: PSNR (dB) / SSIM', [('psnr_y', 'PSNR-Y'), ('ssim_y', 'SSIM-Y')],
                 f'PSNR-Y: {conv["psnr_y"]}. SSIM-Y: {conv["ssim_y"]}.', (2, 4))
    if report['lpips']['computed']:
        metric_table('LPIPS (lower is better)', [('lpips', 'LPIPS')], f'LPIPS: {conv["lpips"]}.', (4,))
    else:
        out.extend([f'LPIPS: not computed ({report["lpips"]["reason"]}).', ''])
    if any(r['niqe'] is not None for r in rows):
        out.extend([f'**NIQE on real photos** (`{report["real"]["source"]}`, {report["real"]["count"]} images; '
                    f'{conv["niqe"]})', '', '| model | NIQE |', '|---|---|'])
        out += [f'| {r["name"]} | {fmt(r["niqe"], 3)} |' for r in rows]
        out.append('')
    s = report['settings']
    tile = f'tiles {s["tile"]}/{s["overlap"]}' if s['tile'] else 'whole image'
    out.extend([f'**Models** (latency: {conv["latency"]}, {s["latency_size"]}x{s["latency_size"]}, {tile}, '
                f'{s["dtype"]}, on {s["device_name"]})', '', '| model | arch | weights | params (M) | ms / MP |',
                '|---|---|---|---|---|'])
    for row in rows:
        arch = '—' if not row['arch'] else row['arch']['type'] + (
            f' ({row["arch"]["preset"]})' if 'preset' in row['arch'] else '')
        params = fmt(row['params'] / 1e6, 3) if row['params'] else '—'
        out.append(f'| {row["name"]} | {arch} | {row["weights"]} | {params} | {fmt(row["latency_ms_per_mp"], 1)} |')
    out.append('')
    return '\n'.join(out)


def readme_block(report):
    """One table for a front page: PSNR-RGB / SSIM-RGB per type and on average, with its convention in one line."""
    types = list(report['data']['types'])
    counts = ', '.join(f'{t} {n}' for t, n in report['data']['types'].items())
    rounding = 'rounding' if report['settings']['rounding'] == 'round' else 'truncation'
    out = [f'PSNR-RGB (dB) / SSIM-RGB, whole uint8 images ({rounding}), no border crop, average = mean over types; '
           f'{counts} test pairs. Generated by `tools/compare.py --readme`.', '',
           '| model | params (M) | ' + ' | '.join(types) + ' | average |', '|---|---|' + '---|' * (len(types) + 1)]
    for row in report['models']:
        cells = [row['name'] + (' *(untrained)*' if row['untrained'] else ''),
                 fmt(row['params'] / 1e6, 2) if row['params'] else '—']
        cells += [f'{fmt(row["per_type"].get(t, {}).get("psnr_rgb"), 2)} / '
                  f'{fmt(row["per_type"].get(t, {}).get("ssim_rgb"), 3)}' for t in types]
        cells.append(f'{fmt(row["average"].get("psnr_rgb"), 2)} / {fmt(row["average"].get("ssim_rgb"), 3)}')
        out.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(out)


def update_readme(path, text):
    with open(path, encoding='utf-8') as f:
        content = f.read()
    if README_BEGIN not in content or README_END not in content:
        raise InferenceError(f'{path}: add the lines {README_BEGIN} and {README_END} where the results go')
    head, rest = content.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    atomic_write(path, f'{head}{README_BEGIN}\n{text}\n{README_END}{tail}')


# ------------------------------------------------------------------------------------------------- run


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--model', action='append', required=True, metavar='NAME=SPEC',
                        help='a model to compare (repeat); see SPEC below')
    parser.add_argument('--data', required=True,
                        help='test data: a folder DIR/{drs,drd,nrs,nrd}/{input,target}/ or a JSONL manifest')
    parser.add_argument('--split', default=None, help='with a manifest: only this split (e.g. test)')
    parser.add_argument('--max-per-type', type=int, default=0, help='use only the first N pairs of each type')
    parser.add_argument('--real', help='folder of unpaired real rainy photos: adds NIQE per model')
    parser.add_argument('--out', required=True, help='output folder for results.md, results.json, grid_<type>.png')
    parser.add_argument('--device', default='auto', help='cpu, cuda, ... (default: cuda when available)')
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument('--half', action='store_true', help='float16 autocast (GPU)')
    precision.add_argument('--bf16', action='store_true', help='bfloat16 autocast')
    parser.add_argument('--tile', type=int, default=0, help='tile size for inference; 0 = whole images (default)')
    parser.add_argument('--overlap', type=int, default=32, help='tile overlap (default 32)')
    parser.add_argument('--rounding', choices=('round', 'trunc'), default='round',
                        help='float -> uint8 before metrics: round (BasicSR, default) or trunc (PReNet official)')
    parser.add_argument('--lpips', choices=('auto', 'on', 'off'), default='auto',
                        help='auto: when the lpips package and weights are there; on: fail without them')
    parser.add_argument('--latency-size', type=int, default=256, help='side of the latency test image (default 256)')
    parser.add_argument('--grid-samples', type=int, default=3, help='samples per type in each grid (default 3)')
    parser.add_argument('--grid-height', type=int, default=160, help='cell height in the grids (default 160)')
    parser.add_argument('--allow-untrained', action='store_true',
                        help='accept models without weights (random init, labelled untrained)')
    parser.add_argument('--no-input-row', action='store_true', help='leave out the rainy-input reference row')
    parser.add_argument('--readme', help='also write the tables between the compare markers of this file')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    for item in args.model:
        if '=' not in item:
            parser.error(f'--model {item!r}: expected NAME=SPEC')
    return args


def run(args):
    device = ('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device
    dtype = torch.float16 if args.half else torch.bfloat16 if args.bf16 else None
    tile = args.tile or None
    pairs = (pairs_from_manifest(args.data, args.split) if os.path.isfile(args.data)
             else pairs_from_folder(args.data))
    pairs = limit_pairs(pairs, args.max_per_type)

    lpips_fn, lpips_reason = None, 'disabled with --lpips off'
    if args.lpips != 'off':
        from unirain_utils.lpips_metric import calculate_lpips, lpips_available
        ok, lpips_reason = lpips_available(device=device)
        if ok:
            lpips_fn = lambda a, b: calculate_lpips(a, b, device=device)  # noqa: E731
        elif args.lpips == 'on':
            raise InferenceError(lpips_reason)

    models = [] if args.no_input_row else [Model(name=INPUT_ROW, spec='identity', weights='—')]
    for item in args.model:
        name, spec = item.split('=', 1)
        models.append(build_model(name, spec, device, args.allow_untrained))
    for model in models:
        if model.net is not None:
            model.latency_ms_per_mp = measure_latency(model.net, args.latency_size, tile, args.overlap, dtype)

    keys = METRICS + (('lpips',) if lpips_fn else ())
    grids = {t: [] for t in pairs}
    total = sum(len(v) for v in pairs.values())
    bar = tqdm(total=total, unit='img', disable=args.quiet, desc='compare')
    for rain_type, items in pairs.items():
        for index, pair in enumerate(items):
            lq_img, _ = read_image(pair.lq)
            gt = load_u8(pair.gt)
            if gt.shape != lq_img.shape:
                raise InferenceError(f'{pair.gt}: size {gt.shape[:2]} differs from its input {lq_img.shape[:2]}')
            row = [('rainy', to_integer(lq_img, 8, args.rounding))] if index < args.grid_samples else None
            for model in models:
                out = lq_img if model.net is None else derain_image(model.net, lq_img, tile, args.overlap, dtype)
                out = to_integer(out, 8, args.rounding)
                values = image_metrics(out, gt, lpips_fn)
                model.per_image.setdefault(rain_type, []).append({'file': pair.name, **values})
                if row is not None and model.net is not None:
                    row.append((f'{model.name} {values["psnr_rgb"]:.2f}dB', out))
            if row is not None:
                grids[rain_type].append(row + [('clean', gt)])
            bar.update(1)
    bar.close()

    real = None
    if args.real:
        from basicsr.metrics import calculate_niqe
        photos = sorted(os.path.join(args.real, n) for n in os.listdir(args.real) if is_image_file(n))
        if not photos:
            raise InferenceError(f'--real {args.real}: no images')
        real = {'source': args.real, 'count': len(photos)}
        for path in tqdm(photos, unit='img', disable=args.quiet, desc='NIQE'):
            img, _ = read_image(path)
            for model in models:
                out = img if model.net is None else derain_image(model.net, img, tile, args.overlap, dtype)
                model.niqe.append(float(calculate_niqe(to_integer(out, 8, args.rounding), crop_border=0)))

    report = {
        'conventions': conventions(args.rounding),
        'settings': {'device': device, 'device_name': _device_name(device), 'tile': args.tile,
                     'overlap': args.overlap, 'dtype': str(dtype or torch.float32).replace('torch.', ''),
                     'rounding': args.rounding, 'latency_size': args.latency_size},
        'data': {'source': args.data, 'types': {t: len(v) for t, v in pairs.items()}},
        'real': real,
        'lpips': {'computed': lpips_fn is not None, 'reason': '' if lpips_fn else lpips_reason},
        'models': [],
    }
    for model in models:
        per_type, average = summarize(model.per_image, keys)
        report['models'].append({
            'name': model.name, 'spec': model.spec, 'arch': model.arch, 'weights': model.weights,
            'untrained': model.untrained, 'params': model.params, 'latency_ms_per_mp': model.latency_ms_per_mp,
            'per_type': per_type, 'average': average, 'per_image': model.per_image,
            'niqe': float(np.mean(model.niqe)) if model.niqe else None,
        })
    return report, grids


def _device_name(device):
    if str(device).startswith('cuda'):
        return torch.cuda.get_device_name(torch.device(device))
    return f'CPU ({torch.get_num_threads()} threads)'


def write_outputs(report, grids, out_dir, cell_height):
    os.makedirs(out_dir, exist_ok=True)
    text = markdown(report)
    atomic_write(os.path.join(out_dir, 'results.md'), text)
    atomic_write(os.path.join(out_dir, 'results.json'), json.dumps(report, indent=1))
    for rain_type, rows in grids.items():
        if rows:
            write_image(os.path.join(out_dir, f'grid_{rain_type}.png'), make_grid(rows, cell_height))
    return text


def main(argv=None):
    args = parse_args(argv)
    try:
        report, grids = run(args)
        text = write_outputs(report, grids, args.out, args.grid_height)
        if args.readme:
            update_readme(args.readme, readme_block(report))
    except (InferenceError, BadImageError) as exc:
        print(f'compare: error: {exc}', file=sys.stderr)
        return 2
    print(text)
    print(f'wrote {args.out}/results.md, results.json and grid_<type>.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
