"""DistilledRainDataset: typed rainy/clean pairs (manifest or folder layout) for BasicSR, disk or LMDB.

Sample keys: ``lq``, ``gt`` (RGB tensors, 3xHxW in [0, 1]), ``lq_path``, ``gt_path`` (paths, or LMDB keys),
``type_id`` (int; a LongTensor (B,) once batched) and ``rain_type`` ('DRS', ...). The option keys are
documented in docs/data.md and in ``DistilledRainDataset.__init__``.
"""
import os
import random
from collections import Counter
from typing import NamedTuple, Optional

import numpy as np
from basicsr.data.transforms import augment
from basicsr.utils import FileClient, get_root_logger, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from unirain_data import lmdb_clients
from unirain_data.bundled_photos import bundled_photo_path
from unirain_data.manifest import (ManifestError, entries_from_layout, natural_key, resolve_path,
                                   scan_manifest)
from unirain_utils.image_io import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, BadImageError, ImageTooLargeError,
                                    decode_image, is_image_file, match_pair, to_bgr)
from unirain_utils.rain_types import RAIN_TYPES, type_id, type_name

VERDICT_FILTERS = ('real', 'kept', 'rejected', 'unjudged')  # 'unjudged': verdict null
DEFAULT_VERDICTS = ('real', 'kept', 'unjudged')
# Consecutive unreadable samples after which skipping gives up: the data, not one file, is broken.
MAX_CONSECUTIVE_BAD = 100
_OWN_KEYS = {'type', 'name', 'phase', 'dataroot', 'manifest', 'types', 'sources', 'verdicts', 'splits', 'io_backend',
             'gt_size', 'use_hflip', 'use_rot', 'type_balanced', 'on_bad_sample', 'synthesize', 'max_pixels'}
# Keys basicsr itself, or UniRainModel's per-type validation (rain_type), reads from a dataset block.
_LOADER_KEYS = {'rain_type', 'batch_size_per_gpu', 'num_worker_per_gpu', 'dataset_enlarge_ratio', 'prefetch_mode', 'pin_memory',
                'persistent_workers', 'num_prefetch_queue', 'use_shuffle', 'scale'}
_SYNTH_KEYS = {'clean_root', 'bundled', 'seed'}


class _Sample(NamedTuple):
    lq: Optional[str]  # resolved path or LMDB key; None in the on-the-fly synthesis mode
    gt: str
    type_id: Optional[int]  # None in the synthesis mode: the type is drawn per sample
    origin: str  # names the entry in messages: "manifest:line" or the rainy file


def _as_list(value, key):
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f'{key} must be a non-empty list, got {value!r}')
    return list(value)


def _choice(opt, key, allowed, default):
    value = opt.get(key, default)
    if value not in allowed:
        raise ValueError(f'{key}: {value!r} is not one of {", ".join(allowed)}')
    return value


def _images_under(root):
    if not os.path.isdir(root):
        raise FileNotFoundError(f'synthesize.clean_root: folder not found: {root}')
    found = []
    for folder, _, names in os.walk(root):
        found += [os.path.join(folder, name) for name in names if is_image_file(name)]
    if not found:
        raise FileNotFoundError(f'synthesize.clean_root: no images ({", ".join(IMAGE_EXTENSIONS)}) under {root}')
    return sorted(found, key=natural_key)


@DATASET_REGISTRY.register()
class DistilledRainDataset(data.Dataset):
    """Rainy/clean pairs of the four rain types, from a typed manifest or the folder layout.

    Options (``opt``), besides basicsr's loader keys:
        dataroot (str): layout ``dataroot/{drs,drd,nrs,nrd}/{input,target}/`` (matching names). Or:
        manifest (str | list[str]): JSONL manifest(s); relative paths are relative to each manifest.
        types (list[str]): rain types to use (drs, drd, nrs, nrd); default all.
        sources (list[str]), splits (list[str]): manifest only: keep these sources / splits; default all.
        verdicts (list[str]): manifest only: keep these distillation verdicts (real, kept, rejected, unjudged);
            default [real, kept, unjudged], i.e. all but rejected.
        io_backend (dict): {type: disk} or {type: lmdb, db_paths: [lq.lmdb, gt.lmdb], client_keys: [lq, gt]};
            with lmdb the manifest's lq/gt are keys and db_paths default to lq.lmdb, gt.lmdb beside it.
        phase (str): train (random gt_size crops, use_hflip / use_rot) or val / test (whole images).
        type_balanced (bool): train phase: each type equally likely per sample, whatever its count.
        on_bad_sample (str): error (raise naming the entry; default) or skip (log it, count it and use the next
            entry of the same type instead).
        synthesize (dict): rain made on the fly (rain_synthesis.synthesize_pair) from clean images:
            {clean_root: DIR (or the gt images of `manifest`), seed: base seed of the val/test rain (default 0)}.
            Instead of clean_root, ``bundled: [astronaut, coffee, ...]`` takes photos that ship inside
            scikit-image (unirain_data.bundled_photos): a dataset that needs no download at all.
            Each clean image yields one sample per type of `types`; train draws a new seed per sample.
        max_pixels (int): an image with more pixels is a bad sample, refused from its header before decoding
            (default 100000000; null: no limit). Treated as on_bad_sample says.
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.logger = get_root_logger()
        unknown = sorted(set(opt) - _OWN_KEYS - _LOADER_KEYS)
        if unknown:
            self.logger.warning(f'DistilledRainDataset ignores unknown option(s): {", ".join(unknown)}')
        if 'phase' not in opt:
            raise ValueError('DistilledRainDataset: option phase (train | val | test) is missing')
        self.phase = _choice(opt, 'phase', ('train', 'val', 'test'), None)
        self.on_bad = _choice(opt, 'on_bad_sample', ('error', 'skip'), 'error')
        self.max_pixels = opt.get('max_pixels', DEFAULT_MAX_PIXELS)
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int)
                                            or self.max_pixels < 1):
            raise ValueError(f'max_pixels must be a positive integer or null (no limit), got {self.max_pixels!r}')
        if self.phase == 'train':
            if not isinstance(opt.get('gt_size'), int) or opt['gt_size'] < 1:
                raise ValueError(f'gt_size must be a positive integer in the train phase, got {opt.get("gt_size")!r}')
            self.gt_size = opt['gt_size']
        self.use_hflip = bool(opt.get('use_hflip', False))
        self.use_rot = bool(opt.get('use_rot', False))
        self.types = self._parse_types()
        self.synth = self._parse_synth()
        self._setup_backend()
        self.samples = self._load_samples()
        self._index_types()
        self.file_client = None
        self.skipped = 0  # distinct bad entries met by this process (each worker counts its own)
        self._bad = set()
        self._noted = set()

    # ----- options -----------------------------------------------------------------------------------------
    def _parse_types(self):
        names = _as_list(self.opt.get('types'), 'types')
        if names is None:
            return list(range(len(RAIN_TYPES)))
        return sorted({type_id(name) for name in names})

    def _parse_synth(self):
        synth = self.opt.get('synthesize')
        if synth is None:
            return None
        if not isinstance(synth, dict):
            raise ValueError(f'synthesize must be a mapping (clean_root, seed), got {synth!r}')
        unknown = sorted(set(synth) - _SYNTH_KEYS)
        if unknown:
            raise ValueError(f'synthesize: unknown key(s) {", ".join(unknown)}; '
                             f'known: {", ".join(sorted(_SYNTH_KEYS))}')
        try:
            from unirain_data.rain_synthesis import synthesize_pair
        except ImportError as exc:
            raise ImportError(f'synthesize: the rain synthesis module is not available ({exc})') from exc
        self._synthesize_pair = synthesize_pair
        bundled = _as_list(synth.get('bundled'), 'synthesize.bundled')
        return {'clean_root': synth.get('clean_root'), 'seed': int(synth.get('seed', 0)),
                'bundled': [bundled_photo_path(name) for name in bundled] if bundled else None}

    def _setup_backend(self):
        backend = dict(self.opt.get('io_backend') or {'type': 'disk'})
        self.backend = backend.pop('type', 'disk')
        if self.backend not in ('disk', 'lmdb'):
            raise ValueError(f'io_backend.type: {self.backend!r} is not supported; use disk or lmdb')
        if self.backend == 'lmdb':
            manifests = _as_list(self.opt.get('manifest'), 'manifest')
            if not manifests:
                raise ValueError('io_backend lmdb needs a `manifest` of LMDB keys (tools/make_lmdb.py writes one '
                                 'beside the LMDBs)')
            if 'db_paths' not in backend:
                folders = {os.path.dirname(os.path.abspath(path)) for path in manifests}
                if len(folders) != 1:
                    raise ValueError('io_backend lmdb: manifests in several folders; give io_backend.db_paths')
                folder = folders.pop()
                backend['db_paths'] = [os.path.join(folder, 'lq.lmdb'), os.path.join(folder, 'gt.lmdb')]
            backend.setdefault('client_keys', ['lq', 'gt'])
            db_paths = _as_list(backend['db_paths'], 'io_backend.db_paths')
            keys = _as_list(backend['client_keys'], 'io_backend.client_keys')
            if sorted(keys) != ['gt', 'lq'] or len(db_paths) != 2:
                raise ValueError('io_backend lmdb: expected db_paths: [lq.lmdb, gt.lmdb] with client_keys: [lq, gt], '
                                 f'got db_paths {db_paths} and client_keys {keys}')
            self.db_paths = dict(zip(keys, db_paths))
            del backend['db_paths'], backend['client_keys']
        self.backend_kwargs = backend  # lmdb: options for lmdb.open (readahead, lock, ...)

    # ----- entries -----------------------------------------------------------------------------------------
    def _load_samples(self):
        dataroot, manifests = self.opt.get('dataroot'), _as_list(self.opt.get('manifest'), 'manifest')
        clean_root = self.synth and self.synth['clean_root']
        bundled = self.synth and self.synth['bundled']
        given = [name for name, value in (('dataroot', dataroot), ('manifest', manifests),
                                          ('synthesize.clean_root', clean_root), ('synthesize.bundled', bundled))
                 if value]
        if len(given) != 1:
            raise ValueError('DistilledRainDataset needs exactly one of dataroot, manifest, synthesize.clean_root '
                             f'or synthesize.bundled; got {", ".join(given) if given else "none"}')
        if clean_root or bundled:
            samples = [_Sample(None, path, None, path) for path in (bundled or _images_under(clean_root))]
        elif dataroot:
            if self.synth:
                raise ValueError('synthesize takes clean images from synthesize.clean_root or a manifest, '
                                 'not from dataroot')
            samples = self._samples_from_layout(dataroot)
        else:
            samples = self._samples_from_manifests(manifests)
        samples = self._drop_missing(samples)
        if not samples:
            raise ValueError('DistilledRainDataset: no usable entries left (see the warnings above)')
        return samples

    def _samples_from_layout(self, root):
        given = [key for key in ('sources', 'verdicts', 'splits') if self.opt.get(key) is not None]
        if given:
            raise ValueError(f'{", ".join(given)} filter manifest entries; dataroot folders have no such fields')
        pairing = entries_from_layout(root, split='train' if self.phase == 'train' else self.phase)
        self._warn_absent_types({e.type for e in pairing.entries}, f'dataroot {root}')
        entries = [e for e in pairing.entries if type_id(e.type) in self.types]
        folders = {type_name(t).lower() for t in self.types}
        # root/<type>/input/<file>: only the requested types' strays matter
        unmatched = [path for path in pairing.unmatched_lq
                     if os.path.basename(os.path.dirname(os.path.dirname(path))) in folders]
        if unmatched:
            listed = ', '.join(unmatched[:5])
            message = (f'{len(unmatched)} rainy image(s) under {root} have no clean image of the same name '
                       f'in the target/ folder beside: {listed}')
            if self.on_bad == 'error':
                raise FileNotFoundError(message)
            self.logger.warning(f'skipped: {message}')
        if pairing.unused_gt:
            self.logger.info(f'{len(pairing.unused_gt)} clean image(s) under {root} have no rainy image; unused')
        if not entries:
            raise ValueError(f'dataroot {root}: no rainy/clean pairs of types {", ".join(sorted(folders))} found')
        return [_Sample(e.lq, e.gt, type_id(e.type), e.lq) for e in entries]

    def _read_manifest(self, path):
        entries, problems = scan_manifest(path)
        if problems and self.on_bad == 'error':
            raise problems[0]
        for problem in problems[:5]:
            self.logger.warning(f'skipped manifest line: {problem}')
        if problems:
            self.logger.warning(f'skipped {len(problems)} bad line(s) of {path}')
        if not entries:
            raise ManifestError(f'{path}: the manifest has no {"usable " if problems else ""}entries')
        return entries

    def _samples_from_manifests(self, manifests):
        entries = []
        for path in manifests:
            entries += [(path, origin, entry) for origin, entry in self._read_manifest(path)]
        entries = self._filter(entries)
        if self.synth:
            seen, samples = set(), []
            for path, origin, entry in entries:
                gt = self._locate(path, entry.gt)
                if gt not in seen:
                    seen.add(gt)
                    samples.append(_Sample(None, gt, None, origin))
            return samples
        return [_Sample(self._locate(path, e.lq), self._locate(path, e.gt), type_id(e.type), origin)
                for path, origin, e in entries]

    def _locate(self, manifest, location):
        return location if self.backend == 'lmdb' else resolve_path(manifest, location)

    def _filter(self, entries):
        """Keep the entries the options ask for; a requested value no entry has is an error (a typo, usually)."""
        verdicts = _as_list(self.opt.get('verdicts'), 'verdicts') or list(DEFAULT_VERDICTS)
        for verdict in verdicts:
            if verdict not in VERDICT_FILTERS:
                raise ValueError(f'verdicts: {verdict!r} is not one of {", ".join(VERDICT_FILTERS)}')
        wanted = {
            'type': None if self.synth or self.opt.get('types') is None else {type_name(t) for t in self.types},
            'source': _as_list(self.opt.get('sources'), 'sources'),
            'split': _as_list(self.opt.get('splits'), 'splits'),
            'verdict': [None if v == 'unjudged' else v for v in verdicts],
        }
        names = {'source': 'sources', 'split': 'splits'}
        present = {field: Counter(getattr(e, field) for _, _, e in entries) for field in wanted}
        if wanted['type'] is not None:
            self._warn_absent_types(present['type'], 'the manifest(s)')
        for field, values in wanted.items():
            if values is None or field not in names:
                continue
            absent = [v for v in values if v not in present[field]]
            if absent:
                raise ValueError(f'{names[field]}: no manifest entry has {field} {", ".join(map(str, absent))}; the '
                                 f'manifest(s) have {dict(present[field])}')
        kept = [item for item in entries
                if all(values is None or getattr(item[2], field) in values for field, values in wanted.items())]
        if not kept:
            raise ValueError(f'no manifest entry passes the filters {self._filters_text(wanted)}; the manifest(s) '
                             f'have types {dict(present["type"])}, verdicts {dict(present["verdict"])}')
        return kept

    def _warn_absent_types(self, present, where):
        """A type asked for but absent is worth a warning, not an error: `types: [drs, drd, nrs, nrd]` is a natural
        thing to write in an option file used with a one-type dataset."""
        if self.opt.get('types') is None:
            return
        absent = [type_name(t) for t in self.types if type_name(t) not in present]
        if absent:
            self.logger.warning(f'types asks for {", ".join(absent)} but {where} hold none')

    @staticmethod
    def _filters_text(wanted):
        return ', '.join(f'{field}={sorted(map(str, values))}'
                         for field, values in wanted.items() if values is not None)

    def _missing(self, samples):
        """The reasons each sample lacks data: missing files, or keys absent from the LMDBs."""
        if self.backend == 'disk':
            return [[f'file not found: {path}' for path in (s.lq, s.gt)
                     if path is not None and not os.path.isfile(path)] for s in samples]
        absent = {}
        for side in ('lq', 'gt'):
            keys = sorted({getattr(s, side) for s in samples if getattr(s, side) is not None})
            absent[side] = set(lmdb_clients.missing_keys(self.db_paths[side], keys, **self.backend_kwargs))
        return [[f'LMDB key {getattr(s, side)!r} not in {self.db_paths[side]}' for side in ('lq', 'gt')
                 if getattr(s, side) in absent[side]] for s in samples]

    def _drop_missing(self, samples):
        """Missing files / LMDB keys are found now, not hours into training."""
        reasons = self._missing(samples)
        bad = [(s, r) for s, r in zip(samples, reasons) if r]
        if not bad:
            return samples
        listed = '; '.join(f'entry {s.origin}: {", ".join(r)}' for s, r in bad[:5])
        message = f'{len(bad)} entr{"y" if len(bad) == 1 else "ies"} missing data: {listed}'
        if self.on_bad == 'error':
            raise FileNotFoundError(message)
        self.logger.warning(f'skipped {message}')
        return [s for s, r in zip(samples, reasons) if not r]

    def _index_types(self):
        self._pool_of = {}  # type id -> positions of its samples, for balancing and same-type replacement
        self._rank = {}  # position -> its place in its pool
        if not self.synth:
            for position, sample in enumerate(self.samples):
                pool = self._pool_of.setdefault(sample.type_id, [])
                self._rank[position] = len(pool)
                pool.append(position)
        self._pools = [self._pool_of[t] for t in sorted(self._pool_of)]
        self.balanced = bool(self.opt.get('type_balanced', False)) and self.phase == 'train' and not self.synth
        if self.opt.get('type_balanced') and not self.balanced:
            reason = 'synthesis draws every type equally already' if self.synth else f'phase is {self.phase}'
            self.logger.info(f'type_balanced ignored: {reason}')
        counts = Counter(type_name(s.type_id) for s in self.samples if s.type_id is not None)
        what = (f'{len(self.samples)} clean images x {len(self.types)} synthesised types' if self.synth
                else f'{len(self.samples)} pairs {dict(counts)}')
        self.logger.info(f'DistilledRainDataset ({self.phase}, {self.backend}): {what}'
                         f'{", type-balanced" if self.balanced else ""}; {len(self)} samples per epoch')

    @property
    def type_ids(self):
        """Sorted ids of the rain types this dataset's samples carry (what a per-type validation covers)."""
        return list(self.types) if self.synth else sorted(self._pool_of)

    # ----- sampling ----------------------------------------------------------------------------------------
    def __len__(self):
        if self.synth:
            return len(self.samples) * len(self.types)
        if self.balanced:
            return len(self._pools) * max(len(pool) for pool in self._pools)
        return len(self.samples)

    def _position(self, index):
        """Sample position of a sampler index. Balanced: index % K picks the type, so that any shuffle of
        0..len-1 (EnlargedSampler under DDP included) gives each type 1/K of the samples; smaller types repeat."""
        if self.synth:
            return index // len(self.types)
        if self.balanced:
            pool = self._pools[index % len(self._pools)]
            return pool[(index // len(self._pools)) % len(pool)]
        return index

    def _replacement(self, position):
        """The next entry of the same type (deterministic), or the next clean image in the synthesis mode."""
        if self.synth:
            return (position + 1) % len(self.samples)
        pool = self._pool_of[self.samples[position].type_id]
        return pool[(self._rank[position] + 1) % len(pool)]

    def __getitem__(self, index):
        position = self._position(index)
        tries = min(MAX_CONSECUTIVE_BAD, len(self.samples))
        for _ in range(tries):
            if position not in self._bad:
                try:
                    return self._load(position, index)
                except BadImageError as exc:
                    message = f'entry {self.samples[position].origin}: {exc}'
                    if self.on_bad == 'error':
                        raise BadImageError(message) from exc
                    self._bad.add(position)
                    self.skipped += 1
                    self.logger.warning(f'skipped bad sample ({self.skipped} in this process so far), '
                                        f'the next entry of its type is used instead: {message}')
            position = self._replacement(position)
        raise BadImageError(f'no readable sample found in {tries} tries from index {index}; '
                            f'{self.skipped} bad entries met so far, e.g. {self.samples[position].origin}')

    # ----- reading -----------------------------------------------------------------------------------------
    def _get_bytes(self, location, client_key):
        if self.backend == 'disk':
            if self.file_client is None:
                self.file_client = FileClient('disk')
            try:
                return self.file_client.get(location)
            except FileNotFoundError as exc:
                raise BadImageError(f'file not found: {location}') from exc
            except OSError as exc:
                raise BadImageError(f'cannot read {location}: {exc.strerror or exc}') from exc
        try:
            content = lmdb_clients.read(self.db_paths[client_key], location, **self.backend_kwargs)
        except UnicodeEncodeError as exc:
            raise BadImageError(f'LMDB key {location!r} is not ASCII') from exc
        if content is None:
            raise BadImageError(f'LMDB key {location!r} not in {self.db_paths[client_key]}')
        return content

    def _decode(self, location, client_key):
        try:
            decoded = decode_image(self._get_bytes(location, client_key), location, self.max_pixels)
        except ImageTooLargeError as exc:
            raise ImageTooLargeError(f'{exc}; the dataset option max_pixels raises the limit') from exc
        if decoded.alpha_dropped:
            self._note('alpha', f'alpha channel dropped from {location}')
        if decoded.pixels.shape[2] == 1:
            self._note('gray', f'grayscale image expanded to 3 channels: {location}')
        return decoded.pixels

    def _note(self, kind, message):
        if kind not in self._noted:
            self._noted.add(kind)
            self.logger.warning(f'{message} (further ones are not logged)')

    def _crop(self, images, name):
        """The same random gt_size window of every image (they share one size)."""
        height, width = images[0].shape[:2]
        if height < self.gt_size or width < self.gt_size:
            raise BadImageError(f'{name}: {width}x{height} is smaller than gt_size {self.gt_size}')
        top, left = random.randint(0, height - self.gt_size), random.randint(0, width - self.gt_size)
        return [img[top:top + self.gt_size, left:left + self.gt_size] for img in images]

    def _synthesized(self, sample, index):
        """(rainy, target, virtual rainy path) made from a clean image. Training crops the clean image first:
        the synthesis works at pixel scale, so a crop gets the rain a full image would, at a fraction of the cost."""
        name = type_name(self.types[index % len(self.types)])
        clean = to_bgr(self._decode(sample.gt, 'gt'))
        if self.phase == 'train':
            clean, = self._crop([clean], sample.gt)
        seed = random.getrandbits(31) if self.phase == 'train' else self.synth['seed'] + index
        try:
            # The target is the clean image for day types, its night rendering (without rain) for night ones.
            lq, gt = self._synthesize_pair(np.ascontiguousarray(clean), name, seed)
        except ValueError as exc:  # e.g. an image too small to synthesise on
            raise BadImageError(f'{sample.gt}: cannot synthesise {name} rain ({exc})') from exc
        if lq.shape != clean.shape or gt.shape != clean.shape:
            raise RuntimeError(f'rain synthesis returned {lq.shape} / {gt.shape} for a {clean.shape} image')
        stem, ext = os.path.splitext(os.path.basename(sample.gt))
        # Virtual: unique per image, type and seed, so saved validation images get distinct names.
        return lq, gt, os.path.join(os.path.dirname(sample.gt), f'{stem}_{name.lower()}_s{seed}{ext}')

    def _load(self, position, index):
        sample = self.samples[position]
        if self.synth:
            rain_type = self.types[index % len(self.types)]
            lq, gt, lq_path = self._synthesized(sample, index)
        else:
            rain_type = sample.type_id
            lq, gt = match_pair(self._decode(sample.lq, 'lq'), self._decode(sample.gt, 'gt'), sample.lq, sample.gt)
            lq_path = sample.lq
            if self.phase == 'train':
                lq, gt = self._crop([lq, gt], sample.gt)
        if self.phase == 'train':
            gt, lq = augment([gt, lq], self.use_hflip, self.use_rot)
        gt, lq = img2tensor([gt, lq], bgr2rgb=True, float32=True)
        return {'lq': lq, 'gt': gt, 'lq_path': lq_path, 'gt_path': sample.gt, 'type_id': rain_type,
                'rain_type': type_name(rain_type)}
