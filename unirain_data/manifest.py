"""Typed dataset manifests: one JSON object per line (JSONL), one rainy/clean pair per line.

Fields of a line (docs/data.md, "Manifest format"):

    lq       rainy image: a path (relative paths are relative to the manifest's folder) or an LMDB key
    gt       clean image: a path or an LMDB key
    type     rain type: DRS | DRD | NRS | NRD (any case on input, written upper case)
    source   where the pair comes from (e.g. "Rain100L", "synthetic-kodak24")
    split    train | val | test
    verdict  distillation outcome: real | kept | rejected, or null when the pair was never judged
    score    distillation score (fraction of judges voting yes), or null
    ...      any other key (votes, references, retrieval scores) is kept verbatim in ``extra``
"""
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, NamedTuple, Optional

from unirain_utils.files import atomic_open
from unirain_utils.image_io import is_image_file
from unirain_utils.rain_types import RAIN_TYPES

SPLITS = ('train', 'val', 'test')
VERDICTS = ('real', 'kept', 'rejected')
_FIELDS = ('lq', 'gt', 'type', 'source', 'split', 'verdict', 'score')
# The common folder layout: ROOT/<type, lower case>/{input,target}/ with matching file names.
LAYOUT_INPUT, LAYOUT_TARGET = 'input', 'target'


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names the file and line."""


@dataclass
class ManifestEntry:
    lq: str
    gt: str
    type: str
    source: str = ''
    split: str = 'train'
    verdict: Optional[str] = None
    score: Optional[float] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.type = str(self.type).upper()
        if self.type not in RAIN_TYPES:
            raise ValueError(f'unknown rain type {self.type!r}; expected one of {", ".join(RAIN_TYPES)}')
        if self.split not in SPLITS:
            raise ValueError(f'unknown split {self.split!r}; expected one of {", ".join(SPLITS)}')
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f'unknown verdict {self.verdict!r}; expected one of {", ".join(VERDICTS)} or null')
        for key in ('lq', 'gt'):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f'{key!r} must be a non-empty path or LMDB key, got {getattr(self, key)!r}')
        if self.score is not None:
            if isinstance(self.score, bool):
                raise ValueError(f'score must be a number or null, got {self.score!r}')
            score = float(self.score)
            if not math.isfinite(score):
                raise ValueError(f'score must be a finite number or null, got {self.score!r}')
            self.score = score

    def to_dict(self):
        record = {key: getattr(self, key) for key in _FIELDS}
        record.update(self.extra)
        return record

    @classmethod
    def from_dict(cls, record):
        if not isinstance(record, dict):
            raise ValueError(f'expected a JSON object, got {type(record).__name__}')
        missing = [key for key in ('lq', 'gt', 'type') if key not in record]
        if missing:
            raise ValueError(f'missing required key(s) {", ".join(missing)}')
        known = {key: record[key] for key in _FIELDS if key in record}
        extra = {key: value for key, value in record.items() if key not in _FIELDS}
        return cls(**known, extra=extra)


_FILE_KINDS = ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a named pipe (FIFO)'), (stat.S_ISCHR, 'a character device'),
               (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'))


def _check_regular_file(path):
    """FileNotFoundError for a missing manifest; ManifestError naming what else the path is (never opened: a FIFO
    would block and a device would never end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f'manifest not found: {path}') from None
    except OSError as exc:
        raise ManifestError(f'{path}: cannot be read as a manifest ({exc.strerror or exc})') from exc
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), 'not a regular file')
        raise ManifestError(f'{path}: is {kind}, not a manifest file (JSON lines)')


def _parse_line(raw):
    """One manifest line (bytes) -> ManifestEntry; ValueError / TypeError / RecursionError say what is wrong."""
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as exc:
        raise ValueError(f'not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})') from None
    try:
        record = json.loads(text)
    except RecursionError:
        raise ValueError('JSON nested too deeply to be a manifest entry') from None
    return ManifestEntry.from_dict(record)


def _parse_lines(path):
    """(line number, entry or the ManifestError of that line) for every non-blank line.

    A line that is not UTF-8, not JSON, nested too deeply or not a valid entry (a NaN or infinite score included)
    is that line's ManifestError; a path that is not a regular file is an error for the whole manifest.
    """
    _check_regular_file(path)
    try:
        with open(path, 'rb') as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    yield number, _parse_line(raw)
                except (ValueError, TypeError) as exc:
                    error = ManifestError(f'{path}:{number}: {exc}')
                    error.__cause__ = exc
                    yield number, error
    except OSError as exc:
        raise ManifestError(f'{path}: cannot be read ({exc.strerror or exc})') from exc


def iter_manifest(path) -> Iterator[ManifestEntry]:
    """Stream the entries of a manifest; a bad line raises ManifestError naming ``path:line``."""
    for _, entry in _parse_lines(path):
        if isinstance(entry, ManifestError):
            raise entry
        yield entry


def scan_manifest(path):
    """Every usable line and every bad one, for readers told to skip bad lines rather than stop.

    Returns ``(entries, problems)``: ``entries`` is a list of ``(origin, ManifestEntry)`` with origin
    ``"path:line"``; ``problems`` holds one ManifestError per unusable line.
    """
    entries, problems = [], []
    for number, entry in _parse_lines(path):
        if isinstance(entry, ManifestError):
            problems.append(entry)
        else:
            entries.append((f'{path}:{number}', entry))
    return entries, problems


def read_manifest(path):
    """All entries of a manifest; an empty manifest is an error (training on nothing is never intended)."""
    entries = list(iter_manifest(path))
    if not entries:
        raise ManifestError(f'{path}: the manifest has no entries')
    return entries


def write_manifest(path, entries: Iterable[ManifestEntry]):
    """Write atomically: the file is either the old one or the complete new one, never half-written."""
    count = 0
    with atomic_open(path, 'w', encoding='utf-8') as f:
        for entry in entries:
            f.write(json.dumps(entry.to_dict(), ensure_ascii=False) + '\n')
            count += 1
    return count


def resolve_path(manifest_path, path):
    """A manifest path as a file path: absolute paths stay, relative ones are relative to the manifest."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(manifest_path)), path)


def natural_key(name):
    """Sort key putting 'rain-2.png' before 'rain-10.png'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', name)]


def list_images(folder):
    """Image files directly inside ``folder`` (full paths), in natural order; a missing folder is an error."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'image folder not found: {folder}')
    names = [name for name in os.listdir(folder)
             if is_image_file(name) and os.path.isfile(os.path.join(folder, name))]
    return [os.path.join(folder, name) for name in sorted(names, key=natural_key)]


def file_stem(path):
    return os.path.splitext(os.path.basename(path))[0]


class Pairing(NamedTuple):
    entries: List[ManifestEntry]
    unmatched_lq: List[str]  # rainy images without a clean image
    unused_gt: List[str]  # clean images no rainy image pairs with


def pair_folders(lq_dir, gt_dir, rain_type, *, source='', split='train', verdict=None,
                 lq_key: Callable[[str], Optional[str]] = file_stem,
                 gt_key: Callable[[str], Optional[str]] = file_stem) -> Pairing:
    """Pair the rainy images of ``lq_dir`` with the clean images of ``gt_dir`` by key (default: the file stem).

    A key function returning None marks a file that is not of its kind (ignored). Several rainy images may share
    one clean image (Rain1400's 14 renderings); two clean images with one key are ambiguous and raise ValueError
    naming both. Paths in the entries are the folders joined with the file names.
    """
    clean = {}
    for path in list_images(gt_dir):
        key = gt_key(path)
        if key is None:
            continue
        if key in clean:
            raise ValueError(f'clean images {clean[key]} and {path} both match key {key!r}; remove one')
        clean[key] = path
    entries, unmatched, used = [], [], set()
    for path in list_images(lq_dir):
        key = lq_key(path)
        if key is None:
            continue
        if key not in clean:
            unmatched.append(path)
            continue
        used.add(key)
        entries.append(ManifestEntry(lq=path, gt=clean[key], type=rain_type, source=source, split=split,
                                     verdict=verdict))
    unused = [path for key, path in clean.items() if key not in used]
    return Pairing(entries, unmatched, unused)


def entries_from_layout(root, types=None, *, source=None, split='train') -> Pairing:
    """Entries of the common layout ``root/{drs,drd,nrs,nrd}/{input,target}/`` (absolute paths).

    ``types`` (names, any case) picks type folders; each named one must exist. Without it every type folder
    present is used and at least one must be. ``source`` defaults to the name of ``root``.
    """
    root = os.path.abspath(root)
    source = os.path.basename(root) if source is None else source
    wanted = RAIN_TYPES if types is None else [str(name).upper() for name in types]
    entries, unmatched, unused, found = [], [], [], []
    for name in wanted:
        if name not in RAIN_TYPES:
            raise ValueError(f'unknown rain type {name!r}; expected one of {", ".join(RAIN_TYPES)} (any case)')
        folder = os.path.join(root, name.lower())
        if not os.path.isdir(folder):
            if types is not None:
                raise FileNotFoundError(f'type folder {folder} not found (types asks for {name.lower()})')
            continue
        found.append(name)
        pairing = pair_folders(os.path.join(folder, LAYOUT_INPUT), os.path.join(folder, LAYOUT_TARGET), name,
                               source=source, split=split)
        entries += pairing.entries
        unmatched += pairing.unmatched_lq
        unused += pairing.unused_gt
    if not found:
        raise FileNotFoundError(f'{root} has none of the type folders '
                                f'{", ".join(t.lower() for t in RAIN_TYPES)} (each with {LAYOUT_INPUT}/ and '
                                f'{LAYOUT_TARGET}/ inside)')
    return Pairing(entries, unmatched, unused)
