"""Pack a manifest (or a UniRain folder layout) into BasicSR LMDBs: OUT/lq.lmdb, OUT/gt.lmdb, OUT/manifest.jsonl.

The images are stored as lossless PNG, so the LMDB gives the very tensors the files give. The key manifest
keeps every field of the input (type, source, split, verdict, ...) and is what the dataset reads:

    datasets:
      train:
        type: DistilledRainDataset
        manifest: OUT/manifest.jsonl
        io_backend: {type: lmdb}   # db_paths default to OUT/lq.lmdb, OUT/gt.lmdb

Examples:
    python tools/make_lmdb.py --manifest rain100l.jsonl --out datasets/rain100l_lmdb
    python tools/make_lmdb.py --dataroot datasets/unirain_train --out datasets/unirain_train_lmdb
"""
import argparse
import os
import sys

from unirain_utils.image_io import BadImageError
from unirain_data.lmdb_builder import build_lmdb
from unirain_data.manifest import ManifestError, entries_from_layout, resolve_path, scan_manifest


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--manifest', help='manifest (JSONL) of image paths')
    source.add_argument('--dataroot', help='folder layout DIR/{drs,drd,nrs,nrd}/{input,target}/')
    parser.add_argument('--out', required=True, help='output folder (created; existing LMDBs are never overwritten)')
    parser.add_argument('--compress-level', type=int, default=1, choices=range(10), metavar='0-9',
                        help='PNG compression level (lossless at every level; higher is smaller and slower); default 1')
    parser.add_argument('--on-bad', choices=['error', 'skip'], default='error',
                        help='a bad pair (unreadable, corrupt, sizes differ, bad manifest line): stop naming it '
                             '(default) or leave it out, listed and counted')
    return parser.parse_args(argv)


def load_entries(args):
    """(origin, entry with readable paths) of the input, and the problems met when skipping."""
    if args.dataroot:
        pairing = entries_from_layout(args.dataroot)
        problems = [f'{path}: no clean image of the same name' for path in pairing.unmatched_lq]
        if problems and args.on_bad == 'error':
            raise FileNotFoundError(f'{len(problems)} rainy image(s) without a clean partner, e.g. {problems[0]}')
        return [(entry.lq, entry) for entry in pairing.entries], problems
    entries, problems = scan_manifest(args.manifest)
    if problems and args.on_bad == 'error':
        raise problems[0]
    if not entries and not problems:
        raise ManifestError(f'{args.manifest}: the manifest has no entries')
    for _, entry in entries:
        entry.lq, entry.gt = resolve_path(args.manifest, entry.lq), resolve_path(args.manifest, entry.gt)
    return entries, [str(p) for p in problems]


def main(argv=None):
    args = parse_args(argv)
    try:
        entries, problems = load_entries(args)
        result = build_lmdb(entries, args.out, compress_level=args.compress_level, on_bad=args.on_bad)
    except (BadImageError, ManifestError, FileNotFoundError, FileExistsError, ValueError) as exc:
        sys.exit(f'error: {exc}')
    skipped = problems + [f'{origin}: {reason}' for origin, reason in result.skipped]
    for line in skipped[:20]:
        print(f'skipped {line}')
    if skipped:
        print(f'skipped {len(skipped)} bad entr{"y" if len(skipped) == 1 else "ies"} in all')
    print(f'wrote {result.pairs} pairs: {result.lmdb_paths["lq"]}, {result.lmdb_paths["gt"]}')
    print(f'key manifest: {result.manifest}')
    print(f'option file: manifest: {os.path.abspath(result.manifest)}  io_backend: {{type: lmdb}}')
    return result


if __name__ == '__main__':
    main()
