"""Does our synthetic rain look like real rain? Statistics per rain type, real beside synthetic, and contact sheets.

    python tools/rain_realism.py measure --drop-pairs DATA/raindrop_pairs --streak-pairs DATA/rain100l_train \\
        --night-pairs DATA/night_streak_pairs --day-photos DATA/kodak24 --out docs/realism [--before OLD_OUT]

Every *-pairs folder holds rainy/ and clean/ images with the same file stems. The synthetic rain is made at the
real images' resolution (rain sizes are in pixels): daytime drops (DRD) on the clean side of each real raindrop
pair, streaks (DRS) on the clean side of the streak pairs, night rain (NRS, NRD) on the day photos cropped and
resized to the real night frames' size. Real raindrop pairs are aligned first (two shots, the camera moved).

Writes into --out: realism.json (every image's statistics, the machine and the date), realism.md (the table:
real range, synthetic median [min - max], and whether the median is inside the real range), samples/ (the
synthetic images shown) and sheet_<section>.jpg (real | synthetic, or real | before | after with --before, a
previous run's --out folder, e.g. one made with an earlier renderer).

    python tools/rain_realism.py sheet --left RAINY_DIR --right DERAINED_DIR --out sheet.jpg

puts images with the same stem side by side (e.g. real photos and a model's output).
"""
import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unirain_data import rain_statistics as stats  # noqa: E402
from unirain_data.rain_synthesis import synthesize_pair  # noqa: E402
from unirain_utils.files import atomic_write  # noqa: E402
from unirain_utils.image_io import imread_bgr, is_image_file, to_integer, write_image  # noqa: E402

SHEET_WIDTH = 480     # width of one image in a contact sheet (pixels)
SHEET_ROWS = 4        # examples per contact sheet
LABEL_HEIGHT = 28

# section -> (real-pairs argument, synthetic types, what the rows mean)
SECTIONS = {
    'drops': ('drop_pairs', ('DRD', 'NRD'), 'raindrops on glass'),
    'streaks': ('streak_pairs', ('DRS',), 'daytime rain streaks'),
    'night': ('night_pairs', ('NRS', 'NRD'), 'night rain'),
}
# statistics shown in the table, per section: key -> (label, format)
COLUMNS = {
    'drops': {
        'coverage_raw': ('pixels changed > 20/255 (real: before alignment)', '{:.0%}'),
        'coverage': ('drop mask coverage', '{:.0%}'),
        'drops_per_mp': ('drops per megapixel', '{:.0f}'),
        'radius_p50': ('drop radius, median (px)', '{:.1f}'),
        'radius_p90': ('drop radius, 90th percentile (px)', '{:.1f}'),
        'detail_ratio': ('detail kept inside drops (HF energy ratio)', '{:.2f}'),
        'brightness': ('brightness change inside drops (1/255)', '{:+.1f}'),
        'contrast_ratio': ('local contrast inside drops, ratio', '{:.2f}'),
        'psnr': ('input PSNR (dB)', '{:.1f}'),
    },
    'streaks': {
        'coverage': ('streak coverage', '{:.1%}'),
        'intensity': ('streak brightness (1/255)', '{:.1f}'),
        'angle_spread': ('orientation spread (deg)', '{:.1f}'),
        'width': ('streak width (px)', '{:.2f}'),
        'length': ('streak length (px)', '{:.1f}'),
        'psnr': ('input PSNR (dB)', '{:.1f}'),
    },
    'night': {
        'scene_mean': ('scene brightness (1/255)', '{:.1f}'),
        'coverage': ('streak coverage', '{:.1%}'),
        'intensity': ('streak brightness (1/255)', '{:.1f}'),
        'dark_coverage': ('streak coverage on the dark scene', '{:.1%}'),
        'dark_intensity': ('streak brightness on the dark scene (1/255)', '{:.1f}'),
        'width': ('streak width (px)', '{:.2f}'),
        'length': ('streak length (px)', '{:.1f}'),
        'noise': ('noise sigma of the input (1/255)', '{:.2f}'),
        'lamps_per_mp': ('lamp cores per megapixel', '{:.0f}'),
        'lamp_height': ('lamp height (0 top, 1 bottom)', '{:.2f}'),
        'lamps_in_sky': ('lamps in the sky of the day photo', '{:.0%}'),
        'psnr': ('input PSNR (dB)', '{:.1f}'),
    },
}


# night drops have no streaks to measure: their rows compare the scene, the noise and the lamps
SCENE_ONLY = {('night', 'NRD'): ('scene_mean', 'noise', 'lamps_per_mp', 'lamp_height', 'lamps_in_sky', 'psnr')}


# -------------------------------------------------------------------------------------------------- inputs

def image_pairs(folder):
    """[(stem, rainy path, clean path)] of FOLDER/rainy and FOLDER/clean, matched by stem; errors name the folder."""
    folder = Path(folder)
    sides = {}
    for side in ('rainy', 'clean'):
        if not (folder / side).is_dir():
            raise FileNotFoundError(f'{folder}: expected sub-folders rainy/ and clean/; {folder / side} is missing')
        sides[side] = {p.stem: p for p in sorted((folder / side).iterdir()) if is_image_file(p.name)}
    unmatched = sorted(set(sides['rainy']) ^ set(sides['clean']))
    if unmatched:
        raise ValueError(f'{folder}: images without a partner in rainy/ or clean/: {", ".join(unmatched[:10])}')
    if not sides['rainy']:
        raise FileNotFoundError(f'{folder}: no images in rainy/ and clean/')
    return [(stem, str(sides['rainy'][stem]), str(sides['clean'][stem]))
            for stem in sorted(sides['rainy'], key=_natural)]


def _natural(stem):
    return (0, int(stem), '') if stem.isdigit() else (1, 0, stem)


def fit_to(image, width, height):
    """Scale ``image`` to cover width x height, then centre-crop it to exactly that size."""
    scale = max(width / image.shape[1], height / image.shape[0])
    size = (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    y0, x0 = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.clip(resized[y0:y0 + height, x0:x0 + width], 0, 1)


# --------------------------------------------------------------------------------------------- measuring

def measure_real(section, rainy, clean, name):
    if section == 'drops':
        try:
            aligned, valid, correlation = stats.align_pair(rainy, clean)
        except ValueError as exc:  # e.g. a pair that is already aligned and covered in drops
            print(f'  {name}: {exc}; measured as it is')
            aligned, valid, correlation = clean, None, None
        result = stats.drop_statistics(rainy, aligned, valid)
        result['coverage_raw'] = stats.coverage_raw(rainy, clean)  # the plain measure, before alignment
        result['alignment_correlation'] = correlation
        return result
    if section == 'streaks':
        return stats.streak_statistics(rainy, clean)
    return stats.night_statistics(rainy, clean)


def measure_synthetic(section, rainy, target, day):
    if section == 'drops':
        return stats.drop_statistics(rainy, target)
    if section == 'streaks':
        return stats.streak_statistics(rainy, target)
    result = stats.night_statistics(rainy, target)
    lamps = stats.lamp_cores(target)
    sky = stats.sky_mask(day)
    result['lamps_in_sky'] = float(sky[lamps[:, 1].astype(int), lamps[:, 0].astype(int)].mean()) if len(lamps) \
        else float('nan')
    return result


def run_section(section, real_dir, args, samples_dir):
    """Real and synthetic statistics of one section, and the images its contact sheet shows."""
    _, rain_types, _ = SECTIONS[section]
    pairs = image_pairs(real_dir)
    if section == 'streaks' and args.streak_count:
        pairs = pairs[:args.streak_count]
    real, shown = [], []
    for stem, rainy_path, clean_path in pairs:
        rainy, clean = imread_bgr(rainy_path), imread_bgr(clean_path)
        if rainy.shape != clean.shape:
            raise ValueError(f'{rainy_path} and {clean_path} differ in size: {rainy.shape} vs {clean.shape}')
        real.append({'image': stem, **measure_real(section, rainy, clean, rainy_path)})
        if len(shown) < SHEET_ROWS:
            shown.append({'real': rainy_path, 'stem': stem})
    if section == 'night':
        height, width = imread_bgr(pairs[0][1]).shape[:2]
        days = sorted(p for p in Path(args.day_photos).iterdir() if is_image_file(p.name))[:args.day_count]
        if not days:
            raise FileNotFoundError(f'--day-photos {args.day_photos}: no images')
        scenes = [(p.stem, fit_to(imread_bgr(str(p)), width, height)) for p in days]
    else:
        scenes = [(stem, imread_bgr(clean_path)) for stem, _, clean_path in pairs]
    synthetic = {}
    for rain_type in rain_types:
        rows = []
        for index, (stem, day) in enumerate(scenes):
            for variant in range(args.variants):
                seed = args.seed + 1000 * index + variant
                rainy, target = synthesize_pair(day, rain_type, seed)
                rows.append({'image': stem, 'seed': seed, **measure_synthetic(section, rainy, target, day)})
                if variant == 0 and index < SHEET_ROWS and rain_type == rain_types[0]:
                    name = f'{section}_{index}_{rain_type.lower()}.jpg'
                    small = cv2.resize(rainy, (SHEET_WIDTH, round(rainy.shape[0] * SHEET_WIDTH / rainy.shape[1])),
                                       interpolation=cv2.INTER_AREA)
                    write_image(str(samples_dir / name), small, quality=90)
                    if index < len(shown):
                        shown[index]['synthetic'] = f'samples/{name}'
        synthetic[rain_type] = rows
    return {'real': real, 'synthetic': synthetic, 'shown': shown, 'real_dir': str(real_dir)}


# ---------------------------------------------------------------------------------------------- the table

def summary(values):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not len(values):
        return None
    return {'min': float(values.min()), 'median': float(np.median(values)), 'max': float(values.max()),
            'n': int(len(values))}


def _fmt(fmt, value):
    return '—' if value is None else fmt.format(value)


def _spread(fmt, values):
    """'median [min – max]' of a summary, or '—'."""
    if values is None:
        return '—'
    return f'{_fmt(fmt, values["median"])} [{_fmt(fmt, values["min"])} – {_fmt(fmt, values["max"])}]'


def section_table(section, result, before):
    """Markdown rows: statistic | real | (before) | synthetic | median inside the real range."""
    _, rain_types, what = SECTIONS[section]
    lines = []
    for rain_type in rain_types:
        header = ['statistic', f'real ({len(result["real"])} pairs)']
        if before is not None:
            header.append(f'{rain_type} before')
        header += [f'{rain_type} synthetic', 'inside real range']
        lines += [f'**{what}: {rain_type}**', '', '| ' + ' | '.join(header) + ' |',
                  '|' + '---|' * len(header)]
        for key, (label, fmt) in COLUMNS[section].items():
            if key not in SCENE_ONLY.get((section, rain_type), (key,)):
                continue
            real = summary(r.get(key) for r in result['real'])
            ours = summary(r.get(key) for r in result['synthetic'][rain_type])
            if real is None and ours is None:
                continue
            cells = [label, '—' if real is None else f'{_fmt(fmt, real["min"])} – {_fmt(fmt, real["max"])}']
            if before is not None:
                old = (before.get('sections', {}).get(section, {}).get('synthetic', {}).get(rain_type))
                cells.append(_spread(fmt, summary(r.get(key) for r in old) if old else None))
            cells.append(_spread(fmt, ours))
            inside = (real is not None and ours is not None
                      and real['min'] <= ours['median'] <= real['max'])
            cells.append('—' if real is None or ours is None else ('yes' if inside else 'no'))
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
    return lines


def machine():
    model = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return f'{model}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, {platform.system()}'


# -------------------------------------------------------------------------------------------- contact sheets

def _labelled(image, label, width=SHEET_WIDTH):
    height = round(image.shape[0] * width / image.shape[1])
    tile = to_integer(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
    bar = np.full((LABEL_HEIGHT, width, 3), 255, np.uint8)
    cv2.putText(bar, label, (6, LABEL_HEIGHT - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, tile], 0)


def contact_sheet(rows):
    """``rows`` of [(float image, label)] -> one uint8 image: tiles of one width, rows padded to one height."""
    built = []
    for row in rows:
        tiles = [_labelled(image, label) for image, label in row]
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in tiles]
        built.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    width = max(r.shape[1] for r in built)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                           for r in built], 0)


def section_sheet(section, result, out, before_dir):
    rain_type = SECTIONS[section][1][0]
    before_shown = {}
    if before_dir is not None:
        old = json.loads((before_dir / 'realism.json').read_text())['sections'].get(section, {})
        before_shown = {i: s.get('synthetic') for i, s in enumerate(old.get('shown', []))}
    rows = []
    for index, shown in enumerate(result['shown']):
        row = [(imread_bgr(shown['real']), f'real: {shown["stem"]}')]
        if before_dir is not None and before_shown.get(index):
            row.append((imread_bgr(str(before_dir / before_shown[index])), f'{rain_type} before'))
        if shown.get('synthetic'):
            row.append((imread_bgr(str(out / shown['synthetic'])), f'{rain_type} ' +
                        ('after' if before_dir is not None else 'synthetic')))
        rows.append(row)
    write_image(str(out / f'sheet_{section}.jpg'), contact_sheet(rows), quality=88)


# ------------------------------------------------------------------------------------------------- commands

def measure(args):
    out = Path(args.out)
    samples = out / 'samples'
    samples.mkdir(parents=True, exist_ok=True)
    before_dir = Path(args.before) if args.before else None
    before = json.loads((before_dir / 'realism.json').read_text()) if before_dir else None
    sections = {}
    for section, (arg, _, _) in SECTIONS.items():
        folder = getattr(args, arg)
        if folder:
            print(f'{section}: measuring {folder}', flush=True)
            sections[section] = run_section(section, folder, args, samples)
    if not sections:
        raise SystemExit('rain_realism: give at least one of --drop-pairs, --streak-pairs, --night-pairs')
    report = {
        'date': datetime.date.today().isoformat(),
        'machine': machine(),
        'command': 'python tools/rain_realism.py ' + ' '.join(args.argv),
        'summary': {section: {'real': {k: summary(r.get(k) for r in result['real']) for k in COLUMNS[section]},
                              'synthetic': {t: {k: summary(r.get(k) for r in rows) for k in COLUMNS[section]}
                                            for t, rows in result['synthetic'].items()}}
                    for section, result in sections.items()},
        'sections': sections,
    }
    atomic_write(str(out / 'realism.json'), json.dumps(report, indent=1, sort_keys=False) + '\n')
    lines = [f'Measured {report["date"]} on {report["machine"]} with `{report["command"]}`.', '']
    for section, result in sections.items():
        lines += section_table(section, result, before)
        section_sheet(section, result, out, before_dir)
    atomic_write(str(out / 'realism.md'), '\n'.join(lines))
    print('\n'.join(lines))


def sheet(args):
    left = {p.stem: p for p in sorted(Path(args.left).iterdir()) if is_image_file(p.name)}
    right = {p.stem: p for p in sorted(Path(args.right).iterdir()) if is_image_file(p.name)}
    common = sorted(set(left) & set(right), key=_natural)
    if not common:
        raise SystemExit(f'rain_realism sheet: no image stem is in both {args.left} and {args.right}')
    rows = [[(imread_bgr(str(left[s])), f'{args.left_label}: {s}'), (imread_bgr(str(right[s])), args.right_label)]
            for s in common]
    write_image(args.out, contact_sheet(rows), quality=88)
    print(f'{args.out}: {len(common)} rows ({", ".join(common)})')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    m = commands.add_parser('measure', help='real vs synthetic statistics, the table and the contact sheets')
    m.add_argument('--drop-pairs', help='real raindrop pairs: DIR/rainy, DIR/clean (e.g. the Raindrop dataset)')
    m.add_argument('--streak-pairs', help='real streak pairs: DIR/rainy, DIR/clean (e.g. Rain100L)')
    m.add_argument('--night-pairs', help='night rain pairs: DIR/rainy, DIR/clean (e.g. HQ-NightRain)')
    m.add_argument('--day-photos', help='clean daytime photos to synthesise night rain on (needed with '
                   '--night-pairs)')
    m.add_argument('--out', required=True, help='output folder')
    m.add_argument('--before', help='an earlier --out folder: its synthetic column and images go beside the new')
    m.add_argument('--variants', type=int, default=2, help='synthetic rain variants (seeds) per scene (default 2)')
    m.add_argument('--streak-count', type=int, default=40, help='streak pairs to use, in name order (default 40; '
                   '0 = all)')
    m.add_argument('--day-count', type=int, default=8, help='day photos to use for night rain (default 8)')
    m.add_argument('--seed', type=int, default=0, help='base seed of the synthetic rain (default 0)')
    s = commands.add_parser('sheet', help='two folders side by side, images matched by file stem')
    s.add_argument('--left', required=True)
    s.add_argument('--right', required=True)
    s.add_argument('--left-label', default='input')
    s.add_argument('--right-label', default='output')
    s.add_argument('--out', required=True, help='output image (.jpg or .png)')
    args = parser.parse_args(argv)
    if args.command == 'measure' and args.night_pairs and not args.day_photos:
        parser.error('--night-pairs needs --day-photos (clean daytime photos to make night rain from)')
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    (measure if args.command == 'measure' else sheet)(args)


if __name__ == '__main__':
    main()
