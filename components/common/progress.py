"""Progress lines for long work: count, rate, elapsed, at most one line per interval."""

from __future__ import annotations

import time

import apache_beam as beam


class Progress:
    """Prints '[step] <count> <unit> (<rate>/s, <elapsed>s)' every `every_s` seconds."""

    def __init__(self, step: str, unit: str, total: int = 0, every_s: float = 10.0):
        self.step, self.unit, self.total, self.every_s = step, unit, total, every_s
        self.count = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.report()

    def report(self, final: bool = False) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        of = f"/{self.total:,}" if self.total else ""
        print(f"[{self.step}] {'done: ' if final else ''}{self.count:,}{of} {self.unit} "
              f"({self.count / elapsed:,.0f}/s, {elapsed:,.0f}s)", flush=True)


class ProgressDoFn(beam.DoFn):
    """Passes elements through and prints progress per worker."""

    def __init__(self, step: str, unit: str, every_s: float = 10.0):
        self._args = (step, unit)
        self._every_s = every_s

    def setup(self):
        self._progress = Progress(*self._args, every_s=self._every_s)

    def process(self, element):
        self._progress.update()
        yield element
