"""Typed dataset manifests: one JSON object per line (JSONL), one rainy/clean pair per line.

Fields of a line (see the README, "Manifest format"):

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
import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from unirain_data.rain_types import RAIN_TYPES

SPLITS = ('train', 'val', 'test')
VERDICTS = ('real', 'kept', 'rejected')
_FIELDS = ('lq', 'gt', 'type', 'source', 'split', 'verdict', 'score')


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
            self.score = float(self.score)

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


def iter_manifest(path) -> Iterator[ManifestEntry]:
    """Stream the entries of a manifest; a bad line raises ManifestError naming ``path:line``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'manifest not found: {path}')
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield ManifestEntry.from_dict(json.loads(line))
            except (ValueError, TypeError) as exc:
                raise ManifestError(f'{path}:{number}: {exc}') from exc


def read_manifest(path):
    """All entries of a manifest; an empty manifest is an error (training on nothing is never intended)."""
    entries = list(iter_manifest(path))
    if not entries:
        raise ManifestError(f'{path}: the manifest has no entries')
    return entries


def write_manifest(path, entries: Iterable[ManifestEntry]):
    """Write atomically: the file is either the old one or the complete new one, never half-written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.manifest-', suffix='.tmp')
    count = 0
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            for entry in entries:
                f.write(json.dumps(entry.to_dict(), ensure_ascii=False) + '\n')
                count += 1
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return count


def resolve_path(manifest_path, path):
    """A manifest path as a file path: absolute paths stay, relative ones are relative to the manifest."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(manifest_path)), path)
