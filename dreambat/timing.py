"""Wall-clock timings of named stages, for reports."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timer:
    """Accumulates seconds per name: ``with timer("score"): ...`` then ``timer.seconds``.

    A name timed twice adds up. ``timer.seconds`` is a plain dict, ready for a JSON report.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
