"""Progress: a tqdm bar on a terminal; elsewhere (a pipe, a log file, CI) plain lines on the package logger,
never redraws."""
from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

LOG_EVERY = 10.0  # seconds between plain progress lines
log = logging.getLogger(__name__)


class LogLines:
    """The part of tqdm's interface the passes use, as one plain line at most every LOG_EVERY seconds
    and one at the end."""

    def __init__(self, total: int, desc: str, initial: int = 0):
        self.total, self.desc, self.n = total, desc, initial
        self.postfix: dict = {}
        self.start = self.last = time.perf_counter()
        self.shown = -1

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= LOG_EVERY:
            self.last = now
            self._line(now)

    def set_postfix(self, **kwargs) -> None:
        self.postfix = kwargs

    def close(self) -> None:
        if self.shown != self.n:
            self._line(time.perf_counter())

    def _line(self, now: float) -> None:
        self.shown = self.n
        extra = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        log.info(f"{self.desc}: {self.n}/{self.total} after {now - self.start:.0f} s{f' ({extra})' if extra else ''}")


def progress(total: int, desc: str, enabled: bool, initial: int = 0):
    """A progress bar for `total` steps: tqdm when stderr is a terminal, plain log lines when it
    is not, nothing when not `enabled`."""
    if enabled and not sys.stderr.isatty():
        return LogLines(total, desc, initial)
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, leave=False)
