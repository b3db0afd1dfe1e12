"""Derain folders of photos: collect inputs, plan outputs (never overwrite an input, never collide), run.

    report = derain_paths(net, ['photos/'], 'derained/', tile_size=512)
"""
import glob
import os
from dataclasses import dataclass, field

from unirain_arch.inference import derain_image
from unirain_utils.image_io import IMAGE_EXTENSIONS, BadImageError, is_image_file, read_image, write_image


class PhotoBatchError(ValueError):
    """Inputs or an output folder that cannot be used; the message names the path."""


def collect_inputs(inputs, recursive=False, output_dir=None):
    """[(file, path relative to the output folder)] for files, folders and glob patterns, in a stable order.

    A folder keeps its inner layout (with ``recursive``); files and glob matches keep their names. An
    ``output_dir`` inside a recursively scanned folder is not scanned: earlier results are not inputs.
    """
    found = []
    skip = os.path.join(os.path.realpath(output_dir), '') if output_dir else None
    for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            pattern = os.path.join(glob.escape(item), '**', '*') if recursive else os.path.join(glob.escape(item), '*')
            files = [p for p in sorted(glob.glob(pattern, recursive=recursive))
                     if os.path.isfile(p) and is_image_file(p)]
            if recursive and skip and skip != os.path.join(os.path.realpath(item), ''):
                files = [p for p in files if not os.path.realpath(p).startswith(skip)]
            found += [(p, os.path.relpath(p, item)) for p in files]
        elif os.path.isfile(item):
            found.append((item, os.path.basename(item)))
        else:
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise PhotoBatchError(f'input {item!r}: no such file or folder, and no file matches it as a pattern')
            found += [(p, os.path.basename(p)) for p in matches if is_image_file(p)]
    return found


@dataclass
class DerainReport:
    """What :func:`derain_paths` did: written outputs, skipped existing ones, and failures with reasons."""
    written: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (input path, reason)


def plan_outputs(inputs, output_dir, recursive=False):
    """[(input, output)] or PhotoBatchError before anything runs: never overwrite an input, never collide."""
    pairs = [(src, os.path.join(output_dir, rel)) for src, rel in collect_inputs(inputs, recursive, output_dir)]
    if not pairs:
        raise PhotoBatchError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) found in {inputs}')
    sources = {os.path.realpath(src) for src, _ in pairs}
    clash = [dst for _, dst in pairs if os.path.realpath(dst) in sources]
    if clash:
        raise PhotoBatchError(f'output {clash[0]} would overwrite an input; choose another --output folder')
    seen = {}
    for src, dst in pairs:
        key = os.path.normcase(os.path.realpath(dst))
        if key in seen:
            raise PhotoBatchError(f'{seen[key]} and {src} would both be written to {dst}; derain them separately')
        seen[key] = src
    return pairs


def derain_paths(net, inputs, output_dir, tile_size=None, tile_overlap=32, dtype=None, recursive=False,
                 skip_existing=False, quality=95, progress=True):
    """Derain files / folders / globs into ``output_dir`` keeping names and formats.

    An unreadable file is recorded in the report and the run goes on; the caller decides what a failure
    means. Inputs are never overwritten (checked for every file before the first one runs).
    """
    from tqdm import tqdm

    pairs = plan_outputs(inputs, output_dir, recursive)
    report = DerainReport()
    bar = tqdm(pairs, unit='img', disable=not progress, desc='derain')
    for src, dst in bar:
        bar.set_postfix_str(os.path.basename(src))
        if skip_existing and os.path.exists(dst):
            report.skipped.append(dst)
            continue
        try:
            img, meta = read_image(src)
        except BadImageError as exc:
            report.failed.append((src, str(exc)))
            continue
        out = derain_image(net, img, tile_size, tile_overlap, dtype, progress)
        write_image(dst, out, meta, quality)
        report.written.append(dst)
    return report
