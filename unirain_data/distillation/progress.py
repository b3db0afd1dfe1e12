"""One tqdm bar per pipeline stage (load, caption, embed, retrieve, each judge), and the time spent in each."""
import time
from contextlib import contextmanager

from tqdm import tqdm


class StageBars:
    def __init__(self, stages, total, unit, enabled=True, initial=0):
        width = max(len(s) for s in stages)
        self.bars = {s: tqdm(total=total, initial=initial, desc=s.ljust(width), unit=unit, position=i, leave=True,
                             disable=not enabled, dynamic_ncols=True) for i, s in enumerate(stages)}
        self.seconds = {s: 0.0 for s in stages}
        self.counts = {s: 0 for s in stages}

    @contextmanager
    def stage(self, name, count):
        """Time the block and advance ``name``'s bar by ``count`` items when it ends."""
        start = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - start
        self.counts[name] += count
        self.bars[name].update(count)

    def skip(self, count):
        """Items done by an earlier run: every bar advances, no time is counted."""
        for bar in self.bars.values():
            bar.update(count)

    def close(self):
        for bar in self.bars.values():
            bar.close()

    def rates(self):
        """{stage: items per second} over the items this process handled."""
        return {s: (self.counts[s] / self.seconds[s] if self.seconds[s] > 0 else None) for s in self.seconds}
