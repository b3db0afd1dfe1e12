"""Folder layouts of public deraining datasets, turned into typed manifest entries.

Each layout names where the rainy and the clean images are and how a rainy file finds its clean one. A root
may hold the folders directly, or split folders (names containing train / test / val, e.g. ``train/``,
``test_a/``, ``train_set/``) each holding them; the split of an entry comes from that folder's name, else from
the root's name, else ``train``. ``LAYOUTS`` maps each name to its description (shown by
``tools/convert_dataset.py --help``).
"""
import os
import re
from typing import Optional

from unirain_data.manifest import Pairing, entries_from_layout, file_stem, list_images, pair_folders
from unirain_utils.rain_types import RAIN_TYPES

_RAIN100_RAINY = ('rain', 'rainy', 'input', 'data')
_RAIN100_CLEAN = ('norain', 'clean', 'gt', 'target', 'groundtruth', 'ground_truth')
_RAIN1400_RAINY = ('rainy_image', 'rainy', 'rain', 'input')
_RAIN1400_CLEAN = ('ground_truth', 'clean', 'norain', 'gt')
_RAINDROP_RAINY = ('data', 'rain', 'input')
_RAINDROP_CLEAN = ('gt', 'clean', 'target')
_RAINDS_FOLDERS = {'rainstreak': 'DRS', 'raindrop': 'DRD', 'rainstreak_raindrop': None}  # None: --rds-type
_GTAV_RAINY = ('rainy', 'rain', 'input')
_GTAV_CLEAN = ('gt', 'clean', 'norain', 'target')

LAYOUTS = {
    'rain100': 'Rain100L/H, Rain200L/H (JORDER) and similar, type DRS. Rainy images in one of rain/, rainy/, input/, '
               'data/ (or their X2/ subfolder), clean ones in one of norain/, clean/, gt/, target/, groundtruth/; or '
               'both mixed in ROOT as rain-N and norain-N. A pair shares its number: the stem without a leading '
               '"rain-" / "norain-" and a trailing "x2" (rain/X2/norain-12x2.png <-> norain/norain-12.png, '
               'rainy/12.png <-> clean/12.png).',
    'rain1400': 'Rain1400 (DDN, Fu et al. 2017), type DRS: ROOT/rainy_image/N_K.ext (K = 1..14 renderings) and '
                'ROOT/ground_truth/N.ext.',
    'rain12': 'Rain12 (Li et al. 2016), type DRS: one folder with N_in.ext (rainy) and N_GT.ext (clean).',
    'raindrop': 'RainDrop (Qian et al. 2018), type DRD, real pairs (verdict real): ROOT/data/N_rain.ext and '
                'ROOT/gt/N_clean.ext, usually inside train/, test_a/, test_b/.',
    'rainds': 'RainDS (Quan et al. 2021), RainDS_syn or RainDS_real: split folders (train/ test/ or train_set/ '
              'test_set/) holding gt/, rainstreak/ (DRS), raindrop/ (DRD), rainstreak_raindrop/ (--rds-type, '
              'default DRD); a rainy file pairs with the gt file of the same trailing number (rain-12.png, rd-12.png, '
              'pie-rd-rain-12.png <-> norain-12.png / pie-norain-12.png). A ROOT named *real* (RainDS_real) gets '
              'source RainDS-real and verdict real, one named *syn* source RainDS-syn, others source RainDS.',
    'gtav-nightrain': 'GTAV-NightRain, type NRS: rainy/ and gt/ (often inside train/ and test/); the rainy frame '
                      'NAME_K.ext (K-th rain rendering) pairs with the clean frame NAME.ext, or NAME.ext with '
                      'NAME.ext.',
    'folders': 'Any two folders: --lq DIR --gt DIR --type X; files pair by identical stem (extensions may differ).',
    'unirain': "UniRain's own layout: ROOT/{drs,drd,nrs,nrd}/{input,target}/ with matching names.",
}
DEFAULT_SOURCES = {'rain100': 'Rain100', 'rain1400': 'Rain1400', 'rain12': 'Rain12', 'raindrop': 'RainDrop',
                   'rainds': 'RainDS', 'gtav-nightrain': 'GTAV-NightRain'}


def split_of(name) -> Optional[str]:
    name = name.lower()
    for split in ('train', 'test', 'val'):
        if split in name:
            return split
    return None


def _subfolder(root, names):
    """The first of ``names`` (any case) that is a folder in ``root``; a folder with no images but an X2/
    inside (JORDER's layout) resolves to that X2/."""
    if not os.path.isdir(root):
        return None
    present = {entry.lower(): entry for entry in os.listdir(root) if os.path.isdir(os.path.join(root, entry))}
    for name in names:
        if name in present:
            folder = os.path.join(root, present[name])
            x2 = os.path.join(folder, 'X2')
            if not list_images(folder) and os.path.isdir(x2):
                return x2
            return folder
    return None


def _merge(pairings):
    merged = Pairing([], [], [])
    for pairing in pairings:
        for mine, theirs in zip(merged, pairing):
            mine.extend(theirs)
    return merged


def _by_split(root, split, convert_one, expected):
    """``convert_one(folder, split)`` on ROOT itself, or on each split folder of ROOT; None means not found."""
    found = convert_one(root, split or split_of(os.path.basename(os.path.abspath(root))) or 'train')
    if found is not None:
        return found
    subfolders = sorted(entry for entry in os.listdir(root) if os.path.isdir(os.path.join(root, entry))
                        and split_of(entry))
    pairings = [convert_one(os.path.join(root, sub), split or split_of(sub)) for sub in subfolders]
    pairings = [p for p in pairings if p is not None]
    if not pairings:
        raise FileNotFoundError(f'{root} does not look like {expected}: expected folders not found there nor in a '
                                'train/test/val subfolder')
    return _merge(pairings)


def _two_folders(rainy_names, clean_names, rain_type, lq_key=file_stem, gt_key=file_stem, **fields):
    def convert_one(folder, split):
        rainy, clean = _subfolder(folder, rainy_names), _subfolder(folder, clean_names)
        if rainy is None or clean is None:
            return None
        return pair_folders(rainy, clean, rain_type, split=split, lq_key=lq_key, gt_key=gt_key, **fields)
    return convert_one


def _rain100_key(path):
    return re.sub(r'x2$', '', re.sub(r'^(no)?rain[-_]', '', file_stem(path).lower()))


def _rain100(root, split, fields):
    two = _two_folders(_RAIN100_RAINY, _RAIN100_CLEAN, 'DRS', _rain100_key, _rain100_key, **fields)

    def convert_one(folder, split_):
        found = two(folder, split_)
        if found is not None or not os.path.isdir(folder):
            return found
        stems = [file_stem(p).lower() for p in list_images(folder)]
        if not any(s.startswith('norain') for s in stems):
            return None

        def lq_key(path):
            return _rain100_key(path) if re.match(r'rain[-_]', file_stem(path).lower()) else None

        def gt_key(path):
            return _rain100_key(path) if file_stem(path).lower().startswith('norain') else None
        return pair_folders(folder, folder, 'DRS', split=split_, lq_key=lq_key, gt_key=gt_key, **fields)
    return _by_split(root, split, convert_one, 'Rain100/Rain200')


def _rain1400(root, split, fields):
    convert_one = _two_folders(_RAIN1400_RAINY, _RAIN1400_CLEAN, 'DRS',
                               lambda p: re.sub(r'_\d+$', '', file_stem(p)), **fields)
    return _by_split(root, split, convert_one, 'Rain1400')


def _suffix_key(suffix):
    def key(path):
        stem = file_stem(path)
        return stem[:-len(suffix)] if stem.lower().endswith(suffix) else None
    return key


def _rain12(root, split, fields):
    if not list_images(root):
        raise FileNotFoundError(f'{root} does not look like Rain12: no images (N_in.png, N_GT.png) in it')
    return pair_folders(root, root, 'DRS', split=split or 'test', lq_key=_suffix_key('_in'),
                        gt_key=_suffix_key('_gt'), **fields)


def _raindrop(root, split, fields):
    convert_one = _two_folders(_RAINDROP_RAINY, _RAINDROP_CLEAN, 'DRD', _suffix_key('_rain'), _suffix_key('_clean'),
                               **fields)
    return _by_split(root, split, convert_one, 'RainDrop')


def _trailing_number(path):
    match = re.search(r'(\d+)$', file_stem(path))
    return (match.group(1).lstrip('0') or '0') if match else None


def _rainds(root, split, fields, rds_type):
    def convert_one(folder, split_):
        gt = _subfolder(folder, ('gt',))
        if gt is None:
            return None
        pairings = []
        for name, rain_type in _RAINDS_FOLDERS.items():
            rainy = _subfolder(folder, (name,))
            if rainy is not None:
                pairings.append(pair_folders(rainy, gt, rain_type or rds_type, split=split_, lq_key=_trailing_number,
                                             gt_key=_trailing_number, **fields))
        return _merge(pairings) if pairings else None
    return _by_split(root, split, convert_one, 'RainDS')


def _gtav(root, split, fields):
    def convert_one(folder, split_):
        rainy, clean = _subfolder(folder, _GTAV_RAINY), _subfolder(folder, _GTAV_CLEAN)
        if rainy is None or clean is None:
            return None
        frames = {file_stem(p) for p in list_images(clean)}

        def lq_key(path):
            stem = file_stem(path)
            return stem if stem in frames else re.sub(r'_\d+$', '', stem)
        return pair_folders(rainy, clean, 'NRS', split=split_, lq_key=lq_key, **fields)
    return _by_split(root, split, convert_one, 'GTAV-NightRain')


def convert_layout(layout, root=None, *, lq=None, gt=None, rain_type=None, source=None, split=None, verdict=None,
                   rds_type='DRD') -> Pairing:
    """Entries of a public dataset. ``rain_type`` overrides the layout's type; ``source``, ``split``, ``verdict``
    override the defaults described in LAYOUTS. Raises a clear error for an unknown layout or missing folders."""
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; supported: {", ".join(LAYOUTS)}')
    rain_type = None if rain_type is None else str(rain_type).upper()
    for name, value in (('type', rain_type), ('rds-type', str(rds_type).upper())):
        if value is not None and value not in RAIN_TYPES:
            raise ValueError(f'unknown rain type {value!r} for {name}; expected one of {", ".join(RAIN_TYPES)}')
    if layout == 'folders':
        if lq is None or gt is None or rain_type is None:
            raise ValueError('layout folders needs --lq DIR, --gt DIR and --type')
        pairing = pair_folders(lq, gt, rain_type, source=source or os.path.basename(os.path.abspath(lq)),
                               split=split or 'train', verdict=verdict)
        return _with_type(pairing, rain_type)
    if root is None:
        raise ValueError(f'layout {layout} needs a ROOT folder')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'dataset folder not found: {root}')
    if layout == 'unirain':
        pairing = entries_from_layout(root, source=source, split=split or 'train')
        for entry in pairing.entries:
            entry.verdict = verdict
        return _with_type(pairing, rain_type)
    if layout == 'rainds':
        if rain_type is not None:
            raise ValueError('layout rainds sets the type per folder; use --rds-type for rainstreak_raindrop/')
        name = os.path.basename(os.path.abspath(root)).lower()
        kind = 'real' if 'real' in name else 'syn' if 'syn' in name else None
        fields = {'source': source or (f'RainDS-{kind}' if kind else 'RainDS'),
                  'verdict': verdict or ('real' if kind == 'real' else None)}
        return _rainds(root, split, fields, str(rds_type).upper())
    fields = {'source': source or DEFAULT_SOURCES[layout],
              'verdict': verdict or ('real' if layout == 'raindrop' else None)}
    convert = {'rain100': _rain100, 'rain1400': _rain1400, 'rain12': _rain12, 'raindrop': _raindrop,
               'gtav-nightrain': _gtav}[layout]
    return _with_type(convert(root, split, fields), rain_type)


def _with_type(pairing, rain_type):
    if rain_type is not None:
        for entry in pairing.entries:
            entry.type = rain_type
    return pairing
