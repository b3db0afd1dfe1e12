"""How many threads torch uses for a training run on CPU.

torch's default (one per physical core) ignores the data-loader workers running beside it and whatever else
the machine runs; OpenMP threads then spin against them. On a busy 2-core machine a 60-iteration CPU run took
minutes with the default and seconds with one thread. So a CPU run that sets nothing gets one thread per CPU
this process may use, minus one per loader worker, at least 1 and at most ``MAX_DEFAULT``.
"""
import os

from unirain_utils.options import OptionError

MAX_DEFAULT = 8  # beyond this a small CPU network gains little and the loader starves


def usable_cpus():
    """CPUs this process may run on (its affinity mask, which taskset / cgroup cpusets narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose(opt, environ=None):
    """(threads, why) for this run, or (None, why) where torch's own setting stands.

    In order: the top-level option ``num_threads``; ``OMP_NUM_THREADS`` when set (torch already follows it);
    torch's default on a GPU run; else the default above, with each process of a torchrun job on a 1/N share.
    """
    environ = os.environ if environ is None else environ
    threads = opt.get('num_threads')
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise OptionError(f'option num_threads: must be an integer >= 1 or ~, got {threads!r}')
        return threads, 'option num_threads'
    if environ.get('OMP_NUM_THREADS'):
        return None, f'OMP_NUM_THREADS={environ["OMP_NUM_THREADS"]}'
    if opt.get('num_gpu', 0) != 0:
        return None, "torch's default on a GPU run"
    workers = int((opt.get('datasets', {}).get('train') or {}).get('num_worker_per_gpu') or 0)
    processes = max(1, int(environ.get('LOCAL_WORLD_SIZE', 1)))
    share = usable_cpus() // processes
    threads = min(MAX_DEFAULT, max(1, share - workers))
    return threads, (f'{share} CPU(s) for this process minus {workers} loader worker(s), at most {MAX_DEFAULT}; '
                     'set num_threads in the option file or OMP_NUM_THREADS to change it')


def configure(opt, logger):
    """Apply ``choose`` to torch and log the outcome."""
    import torch
    threads, why = choose(opt)
    if threads is not None:
        torch.set_num_threads(threads)
    logger.info(f'CPU threads: {torch.get_num_threads()} ({why}).')
