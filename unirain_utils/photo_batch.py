"""Derain folders of photos: collect inputs, plan outputs (never overwrite an input, never collide), run.

    report = derain_paths(net, ['photos/'], 'derained/', tile_size=512)
"""
import glob
import os
import tempfile
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from unirain_arch.inference import derain_tensor
from unirain_utils.image_io import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, BadImageError, ImageTooLargeError,
                                    is_image_file, read_image, write_image)


class PhotoBatchError(ValueError):
    """Inputs or an output folder that cannot be used; the message names the path."""


def walk_images(folder):
    """Image files under ``folder``, sorted. Links to folders are followed, but a folder already visited (a link
    loop, or two links to one folder) is not entered again, so the walk ends and lists each folder once."""
    visited, found = set(), []
    for root, dirs, names in os.walk(folder, followlinks=True):
        try:
            info = os.stat(root)
        except OSError:  # vanished or unreadable: os.walk skips such folders too
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((info.st_dev, info.st_ino))
        # real sub-folders first: their files are then reached by their own paths rather than through a link
        dirs.sort(key=lambda name: (os.path.islink(os.path.join(root, name)), name))
        found += [os.path.join(root, name) for name in names if is_image_file(name)]
    return sorted(p for p in found if os.path.isfile(p))


def collect_inputs(inputs, recursive=False, output_dir=None):
    """[(file, path relative to the output folder)] for files, folders and glob patterns, in a stable order.

    A folder keeps its inner layout (with ``recursive``); files and glob matches keep their names. An
    ``output_dir`` inside a recursively scanned folder is not scanned: earlier results are not inputs. A file
    reached by several paths (links, repeated inputs) is listed once, by the first of them.
    """
    found = []
    skip = os.path.join(os.path.realpath(output_dir), '') if output_dir else None
    for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            if recursive:
                files = walk_images(item)
                if skip and skip != os.path.join(os.path.realpath(item), ''):
                    files = [p for p in files if not os.path.realpath(p).startswith(skip)]
            else:
                files = [p for p in sorted(glob.glob(os.path.join(glob.escape(item), '*')))
                         if os.path.isfile(p) and is_image_file(p)]
            found += [(p, os.path.relpath(p, item)) for p in files]
        elif os.path.isfile(item):
            found.append((item, os.path.basename(item)))
        else:
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise PhotoBatchError(f'input {item!r}: no such file or folder, and no file matches it as a pattern')
            found += [(p, os.path.basename(p)) for p in matches if is_image_file(p)]
    seen, unique = set(), []
    for path, rel in found:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append((path, rel))
    return unique


@dataclass
class DerainReport:
    """What :func:`derain_paths` did: written outputs, skipped existing ones, and failures with reasons."""
    written: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (input path, reason)
    too_large: list = field(default_factory=list)  # inputs (also in ``failed``) above the pixel limit


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


def prepare_output_dir(output_dir):
    """Create ``output_dir`` and check that files can be written in it, or PhotoBatchError naming it."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise PhotoBatchError(f'output {output_dir} is a file, not a folder; give a folder for the results')
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):  # permission bits alone miss read-only mounts
            pass
    except OSError as exc:
        raise PhotoBatchError(f'output folder {output_dir} cannot be written: {exc.strerror or exc}') from exc


def is_out_of_memory(exc):
    """Python's, OpenCV's and torch's (CPU and CUDA) ways of saying an allocation failed."""
    return (isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError))
            or (isinstance(exc, cv2.error) and getattr(exc, 'code', None) == cv2.Error.StsNoMem)
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


def derain_file(net, src, dst, tile_size=None, tile_overlap=32, dtype=None, quality=95, progress=False,
                max_pixels=DEFAULT_MAX_PIXELS):
    """Derain one photo file into ``dst`` in its format. The float image is handed over to the network's input
    tensor at once, so a large photo is held at full size as few times as possible (input, output, blend)."""
    img, meta = read_image(src, max_pixels)
    x = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))[None]  # BGR HWC -> RGB
    del img
    out = derain_tensor(net, x, tile_size, tile_overlap, dtype, progress)
    del x
    write_image(dst, out[0].numpy().transpose(1, 2, 0)[..., ::-1], meta, quality)


def derain_paths(net, inputs, output_dir, tile_size=None, tile_overlap=32, dtype=None, recursive=False,
                 skip_existing=False, quality=95, progress=True, max_pixels=DEFAULT_MAX_PIXELS):
    """Derain files / folders / globs into ``output_dir`` keeping names and formats.

    An unreadable file, one above ``max_pixels`` (None: no limit) or one that runs out of memory is recorded
    in the report and the run goes on; the caller decides what a failure means. Inputs are never overwritten
    (checked for every file before the first one runs); an output folder that cannot be written, or a write
    that fails, is a PhotoBatchError.
    """
    from tqdm import tqdm

    pairs = plan_outputs(inputs, output_dir, recursive)
    prepare_output_dir(output_dir)
    report = DerainReport()
    bar = tqdm(pairs, unit='img', disable=not progress, desc='derain')
    for src, dst in bar:
        bar.set_postfix_str(os.path.basename(src))
        if skip_existing and os.path.exists(dst):
            report.skipped.append(dst)
            continue
        try:
            derain_file(net, src, dst, tile_size, tile_overlap, dtype, quality, progress, max_pixels)
        except BadImageError as exc:
            report.failed.append((src, str(exc)))
            if isinstance(exc, ImageTooLargeError):
                report.too_large.append(src)
            continue
        except OSError as exc:  # the read succeeded, so this is the output side: stop, naming the file
            raise PhotoBatchError(f'cannot write {dst}: {exc.strerror or exc} ({len(report.written)} image(s) '
                                  'written before it)') from exc
        except (MemoryError, RuntimeError, cv2.error) as exc:
            if not is_out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # what the failed image held, before the next one
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else 'no details'
            report.failed.append((src, f'out of memory while deraining it ({type(exc).__name__}: {detail})'))
            continue
        report.written.append(dst)
    return report
