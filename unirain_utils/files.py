"""Atomic file writes: a reader (or a resumed run after a crash) sees the old file or the new one, never half."""
import contextlib
import errno
import os
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path, mode='wb', encoding=None):
    """Open a temporary file beside ``path``; on success it is flushed, fsynced and renamed onto ``path``.

    On any error the temporary file is removed and ``path`` keeps its old content. A full disk or quota, however
    it surfaces (torch.save turns it into ``unexpected pos ...``), is reported as an OSError naming ``path``.
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f'atomic_open: mode {mode!r}; use "w" or "wb"')
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results get the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = _disk_full(exc)
        if full is None:
            raise
        raise OSError(full.errno, f'{full.strerror} while writing {path}; the previous file, if any, is unchanged: '
                                  'free some space and run again') from exc
    _fsync_folder(folder)


def _disk_full(exc):
    """The out-of-space OSError behind ``exc`` (itself or what it was raised while handling), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_folder(folder):
    """Make the rename itself durable (best effort: some filesystems refuse to open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path, data):
    """Write ``data`` (bytes or str) to ``path`` atomically."""
    text = isinstance(data, str)
    with atomic_open(path, 'w' if text else 'wb', encoding='utf-8' if text else None) as f:
        f.write(data)
