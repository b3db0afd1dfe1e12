"""Summary of a distilled manifest (kept / rejected per type and per source, abstentions per judge) and a
picture of some kept and rejected candidates beside the references they were judged against.

Both stream the manifest; the examples are drawn by reservoir sampling with a fixed seed (bounded memory,
the same picture every time).
"""
import json
import os
import random

import cv2
import numpy as np

from unirain_data.distillation.images import read_bgr
from unirain_utils.image_io import BadImageError, write_image
from unirain_data.manifest import iter_manifest, resolve_path
from unirain_utils.rain_types import RAIN_TYPES

TILE = 160
HEADER = 34
VERDICT_ORDER = ('real', 'kept', 'rejected', None)


def _count(table, key, verdict):
    row = table.setdefault(key, {'real': 0, 'kept': 0, 'rejected': 0, 'unjudged': 0})
    row[verdict or 'unjudged'] += 1


def _ratio(row):
    judged = row['kept'] + row['rejected']
    return round(row['kept'] / judged, 4) if judged else None


def summarize(manifest, examples=4, seed=0):
    """(summary dict, {'kept': [entries], 'rejected': [entries]}) of a distilled manifest."""
    total, by_type, by_source, judges = {}, {}, {}, {}
    all_abstained = unreadable = 0
    samples, seen = {'kept': [], 'rejected': []}, {'kept': 0, 'rejected': 0}
    rng = random.Random(seed)
    for entry in iter_manifest(manifest):
        _count(total, 'all', entry.verdict)
        _count(by_type, entry.type, entry.verdict)
        _count(by_source, entry.source or '(none)', entry.verdict)
        votes = entry.extra.get('votes') or {}
        for name, vote in votes.items():
            row = judges.setdefault(name, {'yes': 0, 'no': 0, 'abstain': 0})
            row[vote.get('vote') or 'abstain'] += 1
        if votes and all(v.get('vote') is None for v in votes.values()):
            all_abstained += 1
        if 'error' in entry.extra:
            unreadable += 1
        if entry.verdict in samples and 'references' in entry.extra:
            seen[entry.verdict] += 1  # reservoir sampling: each judged entry is equally likely to be shown
            bucket = samples[entry.verdict]
            if len(bucket) < examples:
                bucket.append(entry)
            else:
                slot = rng.randrange(seen[entry.verdict])
                if slot < examples:
                    bucket[slot] = entry
    for table in (total, by_type, by_source):
        for row in table.values():
            row['keep_ratio'] = _ratio(row)
    summary = {'manifest': os.path.abspath(manifest), 'total': total.get('all', {}),
               'by_type': {t: by_type[t] for t in RAIN_TYPES if t in by_type},
               'by_source': dict(sorted(by_source.items())), 'judges': judges,
               'all_judges_abstained': all_abstained, 'unreadable': unreadable}
    return summary, samples


def format_summary(summary):
    """A plain-text table of the summary."""
    lines = [f'{"":<24}{"real":>8}{"kept":>8}{"rejected":>10}{"keep %":>8}']

    def row(name, r):
        ratio = '' if r.get('keep_ratio') is None else f'{100 * r["keep_ratio"]:.1f}'
        lines.append(f'{name[:24]:<24}{r["real"]:>8}{r["kept"]:>8}{r["rejected"]:>10}{ratio:>8}')

    if summary['total']:
        row('all', summary['total'])
    lines.append('by type:')
    for name, r in summary['by_type'].items():
        row(f'  {name}', r)
    lines.append('by source:')
    for name, r in summary['by_source'].items():
        row(f'  {name}', r)
    if summary['judges']:
        lines.append(f'{"judge":<24}{"yes":>8}{"no":>8}{"abstain":>10}')
        for name, r in summary['judges'].items():
            lines.append(f'{name[:24]:<24}{r["yes"]:>8}{r["no"]:>8}{r["abstain"]:>10}')
        lines.append(f'candidates on which every judge abstained: {summary["all_judges_abstained"]}')
    if summary['unreadable']:
        lines.append(f'unreadable candidates (rejected): {summary["unreadable"]}')
    for stage, r in summary.get('throughput', {}).items():
        rate = 'n/a' if r['per_second'] is None else f'{r["per_second"]:.2f}'
        lines.append(f'stage {stage:<20} {rate:>10} candidates/s ({r["candidates"]} in {r["seconds"]:.1f} s)')
    return '\n'.join(lines)


def _tile(path, label):
    """A TILE x (TILE + HEADER) BGR uint8 tile: the image letterboxed, the label above it."""
    tile = np.full((TILE + HEADER, TILE, 3), 255, np.uint8)
    try:
        img = read_bgr(path)
    except BadImageError:
        img = None
    if img is not None:
        h, w = img.shape[:2]
        scale = TILE / max(h, w)
        small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        small = np.clip(np.rint(small * 255), 0, 255).astype(np.uint8)
        top, left = HEADER + (TILE - small.shape[0]) // 2, (TILE - small.shape[1]) // 2
        tile[top:top + small.shape[0], left:left + small.shape[1]] = small
    else:
        cv2.putText(tile, 'unreadable', (8, HEADER + TILE // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 200), 1)
    for i, text in enumerate(label.split('\n')[:2]):
        cv2.putText(tile, text[:26], (4, 13 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def draw_examples(samples, manifest, path):
    """Rows of [candidate | its references]: the kept examples first, then the rejected ones. Returns the
    number of rows drawn (0: nothing to draw, no file written)."""
    rows = []
    width = 1 + max([len(e.extra.get('references', [])) for bucket in samples.values() for e in bucket] or [0])
    for verdict in ('kept', 'rejected'):
        for entry in samples[verdict]:
            yes, judged = entry.extra.get('yes', 0), entry.extra.get('yes', 0) + entry.extra.get('no', 0)
            label = f'{verdict.upper()} {entry.type} yes {yes}/{judged}\n{os.path.basename(entry.lq)}'
            tiles = [_tile(resolve_path(manifest, entry.lq), label)]
            ssims = entry.extra.get('retrieval', {}).get('references', {}).get('ssim', [])
            for i, ref in enumerate(entry.extra['references']):
                score = f'SSIM {ssims[i]:.3f}' if i < len(ssims) and ssims[i] is not None else ''
                tiles.append(_tile(ref, f'reference {i + 1}\n{score}'))
            tiles += [np.full_like(tiles[0], 255)] * (width - len(tiles))
            rows.append(np.concatenate(tiles, axis=1))
    if not rows:
        return 0
    gap = np.full((6, rows[0].shape[1], 3), 128, np.uint8)
    picture = np.concatenate([part for r in rows for part in (r, gap)][:-1], axis=0)
    write_image(path, picture)
    return len(rows)


def write_report(manifest, report_dir, examples=4, throughput=None, seed=0):
    """summary.json, summary.txt and examples.png in ``report_dir``. Returns the summary dict."""
    summary, samples = summarize(manifest, examples, seed)
    if throughput:
        summary['throughput'] = throughput
    os.makedirs(report_dir, exist_ok=True)
    picture = os.path.join(report_dir, 'examples.png')
    summary['examples_png'] = picture if examples and draw_examples(samples, manifest, picture) else None
    with open(os.path.join(report_dir, 'summary.json'), 'w', encoding='utf-8') as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(report_dir, 'summary.txt'), 'w', encoding='utf-8') as f:
        f.write(format_summary(summary) + '\n')
    return summary
