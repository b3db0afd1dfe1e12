"""Turn a public deraining dataset's folders into a typed UniRain manifest (JSONL, one pair per line).

Examples:
    python tools/convert_dataset.py rain100 datasets/Rain100L --source Rain100L --split test -o rain100l_test.jsonl
    python tools/convert_dataset.py raindrop datasets/RainDrop -o raindrop.jsonl
    python tools/convert_dataset.py folders --lq my/rainy --gt my/clean --type nrd -o mine.jsonl
Manifests of several datasets combine by concatenation (`cat a.jsonl b.jsonl > all.jsonl`) when their paths
are absolute (the default).
"""
import argparse
import os
import sys
import textwrap
from collections import Counter

from unirain_data.manifest import ManifestEntry, write_manifest
from unirain_data.public_layouts import LAYOUTS, convert_layout


def _layout_help():
    return '\n'.join(textwrap.fill(text, 110, initial_indent=f'  {name:15s} ', subsequent_indent=' ' * 18)
                     for name, text in LAYOUTS.items())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__ + '\nlayouts:\n' + _layout_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('layout', choices=list(LAYOUTS), metavar='LAYOUT', help=f'one of: {", ".join(LAYOUTS)}')
    parser.add_argument('root', nargs='?', help='dataset folder (every layout but "folders")')
    parser.add_argument('-o', '--out', required=True, help='manifest to write (.jsonl)')
    parser.add_argument('--lq', help='layout folders: the rainy images')
    parser.add_argument('--gt', help='layout folders: the clean images')
    parser.add_argument('--type', help="rain type of every pair (drs, drd, nrs, nrd); overrides the layout's")
    parser.add_argument('--rds-type', default='DRD',
                        help='layout rainds: type of rainstreak_raindrop/ (streaks and drops together); default DRD')
    parser.add_argument('--source', help='source name written into each entry (default: the dataset name)')
    parser.add_argument('--split', choices=['train', 'val', 'test'],
                        help='split of every pair (default: from the train/test/val folder names, else train)')
    parser.add_argument('--verdict', choices=['real', 'kept', 'rejected'],
                        help='verdict of every pair (default: real for real captured pairs, else none)')
    parser.add_argument('--relative', action='store_true',
                        help="write paths relative to the manifest's folder (default: absolute)")
    parser.add_argument('--skip-unmatched', action='store_true',
                        help='leave out rainy images without a clean partner (listed and counted) instead of failing')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        pairing = convert_layout(args.layout, args.root, lq=args.lq, gt=args.gt, rain_type=args.type,
                                 source=args.source, split=args.split, verdict=args.verdict, rds_type=args.rds_type)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f'error: {exc}')
    if pairing.unmatched_lq:
        listed = '\n  '.join(pairing.unmatched_lq[:10])
        more = f'\n  ... and {len(pairing.unmatched_lq) - 10} more' if len(pairing.unmatched_lq) > 10 else ''
        message = f'{len(pairing.unmatched_lq)} rainy image(s) have no clean partner:\n  {listed}{more}'
        if not args.skip_unmatched:
            sys.exit(f'error: {message}\n(--skip-unmatched leaves them out)')
        print(f'skipped {message}')
    if not pairing.entries:
        sys.exit(f'error: no rainy/clean pairs found for layout {args.layout}')
    folder = os.path.dirname(os.path.abspath(args.out))

    def place(path):
        path = os.path.abspath(path)
        return os.path.relpath(path, folder) if args.relative else path

    entries = [ManifestEntry(lq=place(e.lq), gt=place(e.gt), type=e.type, source=e.source, split=e.split,
                             verdict=e.verdict, score=e.score, extra=e.extra) for e in pairing.entries]
    count = write_manifest(args.out, entries)
    summary = Counter((e.type, e.split, e.source) for e in entries)
    print(f'wrote {count} pairs to {args.out}')
    for (rain_type, split, source), n in sorted(summary.items()):
        print(f'  {rain_type} {split:5s} {source}: {n}')
    if pairing.unused_gt:
        print(f'  ({len(pairing.unused_gt)} clean image(s) without a rainy partner were not used)')
    return count


if __name__ == '__main__':
    main()
