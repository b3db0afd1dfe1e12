"""One run per output folder: an exclusive lock on ``<folder>.lock``, beside the folder, for the whole run.

The lock sits beside the folder, not inside it, because basicsr archives (renames) an existing folder when a new
run starts: the lock must be checked before that, and must not move with the archived folder. ``flock`` is
released by the kernel when the process ends, however it ends, so a killed run never leaves a stale lock; the
file stays (deleting a lock file races with a run that is opening it) and holds the last holder's pid and host.
"""
import datetime
import fcntl
import os
import socket

# (lock path, file descriptor) of the lock this process holds: one run per process at a time
_held = None


class RunLockedError(RuntimeError):
    """Another run holds the folder; the message names it (pid, host, start time)."""


def lock_path(folder):
    return os.path.normpath(folder) + '.lock'


def acquire(folder):
    """Lock ``folder`` for this process, or raise RunLockedError at once, having changed nothing.

    A lock this process already holds (an earlier run in the same process) is released first.
    """
    global _held
    release()
    path = lock_path(folder)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's record stays readable
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 512).decode('utf-8', 'replace').strip() or 'a process that left no record'
        os.close(fd)
        raise RunLockedError(f'{folder} is in use by another run ({holder}; lock {path}); wait for it to end, '
                             'or give this run another name') from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    os.write(fd, f'pid {os.getpid()} on host {socket.gethostname()}, started {started}\n'.encode())
    _held = (path, fd)
    return path


def release():
    """Release the lock this process holds, if any."""
    global _held
    if _held is not None:
        os.close(_held[1])  # closing the only descriptor drops the flock
        _held = None
