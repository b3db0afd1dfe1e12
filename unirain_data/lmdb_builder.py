"""Build the lq/gt LMDB pair of a manifest with basicsr's ``make_lmdb_from_imgs``, plus a manifest of its keys.

Output folder::

    OUT/lq.lmdb/      rainy images (lossless PNG bytes) + basicsr's meta_info.txt
    OUT/gt.lmdb/      clean images, each stored once even when several rainy images share it
    OUT/manifest.jsonl  the input entries with lq/gt replaced by LMDB keys; ``lq_file`` / ``gt_file`` keep the
                        original paths

Every pair is decoded and checked first (the same checks as the dataset), so a bad image is reported (or
skipped, when asked) before anything is written. The LMDBs are written under temporary names and renamed at the
end: an interrupted build leaves no half-written LMDB that looks complete.
"""
import dataclasses
import os
import re
import shutil
from typing import NamedTuple

from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from tqdm import tqdm

from unirain_utils.image_io import BadImageError, decode_image, match_pair
from unirain_data.manifest import ManifestEntry, file_stem, write_manifest

LMDB_NAMES = {'lq': 'lq.lmdb', 'gt': 'gt.lmdb'}
KEY_MANIFEST = 'manifest.jsonl'
# Largest stored pixel: 4 channels x 16 bit. PNG adds a byte per row and a little zlib framing.
_BYTES_PER_PIXEL_BOUND = 8
_PER_IMAGE_OVERHEAD = 64 * 1024
_MAP_SIZE_SLACK = 64 * 1024 ** 2


class LmdbBuild(NamedTuple):
    manifest: str
    lmdb_paths: dict
    pairs: int
    skipped: list  # (origin, reason) of the entries left out


def lmdb_key(index, path):
    """ASCII key, unique by its number, readable by its file stem (meta_info.txt needs it free of spaces)."""
    return f'{index:07d}_{re.sub(r"[^A-Za-z0-9._-]+", "_", file_stem(path))[:64]}'


def _check(origin, entry):
    """Decode both images of an entry as the dataset will; returns the pixel count of each, or raises."""
    pixels = {}
    for side in ('lq', 'gt'):
        path = getattr(entry, side)
        try:
            with open(path, 'rb') as f:
                content = f.read()
        except OSError as exc:
            raise BadImageError(f'entry {origin}: cannot read {path} ({exc.strerror or exc})') from exc
        try:
            pixels[side] = decode_image(content, path).pixels
        except BadImageError as exc:
            raise BadImageError(f'entry {origin}: {exc}') from exc
    try:
        match_pair(pixels['lq'], pixels['gt'], entry.lq, entry.gt)
    except BadImageError as exc:
        raise BadImageError(f'entry {origin}: {exc}') from exc
    return pixels['lq'].shape[0] * pixels['lq'].shape[1]


def build_lmdb(entries, out_dir, *, compress_level=1, on_bad='error') -> LmdbBuild:
    """``entries``: list of (origin, ManifestEntry) whose lq/gt are readable paths (relative ones are relative to
    the working directory). Returns what was written."""
    if on_bad not in ('error', 'skip'):
        raise ValueError(f'on_bad: {on_bad!r} is not one of error, skip')
    if not entries:
        raise ValueError('no entries to put into an LMDB')
    targets = {side: os.path.join(out_dir, name) for side, name in LMDB_NAMES.items()}
    manifest_path = os.path.join(out_dir, KEY_MANIFEST)
    existing = [path for path in (*targets.values(), manifest_path) if os.path.exists(path)]
    if existing:
        raise FileExistsError(f'refusing to overwrite {", ".join(existing)}; remove it or choose another folder')

    good, skipped, sizes = [], [], {}
    for origin, entry in tqdm(entries, desc='check pairs', unit='pair'):
        entry = dataclasses.replace(entry, lq=os.path.abspath(entry.lq), gt=os.path.abspath(entry.gt))
        try:
            pixels = _check(origin, entry)
        except BadImageError as exc:
            if on_bad == 'error':
                raise
            skipped.append((origin, str(exc)))
            continue
        good.append((origin, entry))
        sizes[entry.lq] = sizes[entry.gt] = pixels
    if not good:
        raise ValueError(f'all {len(entries)} entries are unusable, e.g. {skipped[0][1]}')

    keys = {'lq': {}, 'gt': {}}
    for _, entry in good:
        for side in ('lq', 'gt'):
            path = getattr(entry, side)
            if path not in keys[side]:
                keys[side][path] = lmdb_key(len(keys[side]), path)

    os.makedirs(out_dir, exist_ok=True)
    partial = {side: os.path.join(out_dir, f'.partial-{name}') for side, name in LMDB_NAMES.items()}
    for path in partial.values():
        if os.path.exists(path):
            shutil.rmtree(path)  # left by an interrupted build of ours
    try:
        for side in ('lq', 'gt'):
            paths = list(keys[side])
            map_size = sum(sizes[p] * _BYTES_PER_PIXEL_BOUND + _PER_IMAGE_OVERHEAD for p in paths) + _MAP_SIZE_SLACK
            # basicsr joins data_path with each path: absolute paths keep theirs; data_path only names the input
            make_lmdb_from_imgs(os.path.commonpath(paths), partial[side], paths, [keys[side][p] for p in paths],
                                compress_level=compress_level, map_size=map_size)
        for side in ('lq', 'gt'):
            os.rename(partial[side], targets[side])
    except BaseException:
        for path in partial.values():
            if os.path.exists(path):
                shutil.rmtree(path)
        raise

    key_entries = [ManifestEntry(lq=keys['lq'][e.lq], gt=keys['gt'][e.gt], type=e.type, source=e.source,
                                 split=e.split, verdict=e.verdict, score=e.score,
                                 extra={**e.extra, 'lq_file': e.lq, 'gt_file': e.gt})
                   for _, e in good]
    write_manifest(manifest_path, key_entries)
    return LmdbBuild(manifest_path, targets, len(good), skipped)
