"""Progress that reads well in a terminal and in a log file.

In a terminal, :func:`progress` is a tqdm bar. When stderr is not a terminal (a cluster job, ``>
run.log 2>&1``, CI), redraws would fill the file with carriage returns and glue log lines to
multi-kilobyte bar lines, so the same calls become :class:`LogProgress`: a plain INFO line every
``interval`` seconds and at the end, with counts, rate, ETA and the latest postfix.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

logger = logging.getLogger("dreambat.progress")

LOG_INTERVAL_SECONDS = 30.0


def _interactive() -> bool:
    forced = os.environ.get("DREAMBAT_PROGRESS")
    if forced in ("bar", "log"):
        return forced == "bar"
    return sys.stderr.isatty()


class LogProgress:
    """The subset of tqdm's interface dreambat uses, writing periodic log lines instead of a bar."""

    def __init__(self, total: int | None = None, *, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, interval: float = LOG_INTERVAL_SECONDS):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.disable, self.interval = disable, interval
        self.started = self.last = time.monotonic()
        self.start_n = initial
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last >= self.interval:
            self.last = now
            self._log()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _log(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        eta = ""
        if not final and self.total and rate > 0:
            eta = f", ETA {_duration((self.total - self.n) / rate)}"
        tail = f" ({self.postfix})" if self.postfix else ""
        logger.info("%s: %s %s%s, %.2f %s/s, %s elapsed%s%s", self.desc, done, self.unit,
                    " done" if final else "", rate, self.unit, _duration(elapsed), eta, tail)

    def close(self) -> None:
        if not self.disable and self.n > self.start_n:
            self._log(final=True)
        self.disable = True

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def progress(total: int | None = None, *, desc: str = "", unit: str = "it", initial: int = 0, disable: bool = False):
    """A tqdm bar on a terminal, :class:`LogProgress` otherwise (``DREAMBAT_PROGRESS=bar|log`` forces one)."""
    if _interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable)
    return LogProgress(total, desc=desc, unit=unit, initial=initial, disable=disable)
