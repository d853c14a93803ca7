"""Graceful preemption: SIGTERM, SIGUSR1 and Ctrl-C stop a run at the next safe point.

Clusters ask a job to stop before they kill it: SLURM and Kubernetes send SIGTERM (SLURM can send
SIGUSR1 ahead with ``--signal``), and a user presses Ctrl-C. Inside :func:`graceful_stop` the
first such signal only sets a flag; the long loops look at it at their safe points:

* training finishes its optimiser step, saves ``checkpoint-N`` as usual and stops, so
  ``--resume_from_checkpoint latest`` continues exactly where it stopped (the weights then equal
  an uninterrupted run's);
* scoring stops after its batch (every scored batch is already on disk) and resumes on a rerun;
* class-image generation and evaluation stop after the image they are writing.

The loop then raises :class:`Preempted`, and the command exits with ``128 + signal number``
(143 for SIGTERM), the code of a job that was stopped, with a line that says how to continue.
A second signal exits at once. With several processes the flag is combined over them at each
training step (:func:`stop_requested`), so all stop at the same step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .errors import DreambatError

logger = logging.getLogger(__name__)

T = TypeVar("T")

SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None), signal.SIGINT) if s is not None)


class Preempted(DreambatError):
    """A run stopped at a safe point because it was asked to; rerun the same command to continue."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_requested: int | None = None  # the first signal received inside graceful_stop, if any


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _requested


def _handler(signum, frame) -> None:
    global _requested
    if _requested is not None:  # the second signal: stop now, the way that signal always does
        signal.signal(signum, signal.SIG_DFL)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)
        return
    _requested = signum
    logger.warning("Received %s: stopping at the next safe point (training saves a checkpoint first); "
                   "send it again to stop at once.", signal.Signals(signum).name)


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Catch :data:`SIGNALS` for the block (main thread only; elsewhere the block runs unchanged)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _requested = None


def stop_requested(accelerator=None) -> int | None:
    """The stop signal, combined over every process when ``accelerator`` runs several (a collective
    call then: every process must make it at the same point)."""
    if accelerator is None or accelerator.num_processes == 1:
        return _requested
    import torch
    import torch.distributed as dist

    flag = torch.tensor([_requested or 0], device=accelerator.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def check(where: str, processes=None) -> None:
    """Raise :class:`Preempted` if a stop was asked for; ``where``: what is finished and kept.
    ``processes`` (an accelerator or accelerate state): combine the flag over them first (collective)."""
    signum = stop_requested(processes)
    if signum:
        raise Preempted(signum, f"Stopped by {signal.Signals(signum).name} {where}. Rerun the same command "
                                "to continue.")


def until_stopped(items: Iterable[T]) -> Iterator[T]:
    """``items`` until a stop signal arrives (then the stream simply ends, and the consumer finishes
    what it holds; call :func:`check` after it)."""
    for item in items:
        if _requested is not None:
            return
        yield item


def run_command(prog: str, run: Callable[[], int]) -> int:
    """A command's exit code: ``run()`` under :func:`graceful_stop`; a :class:`Preempted` stop prints
    ``PROG: Stopped by ...`` and returns ``128 + signal``; another :class:`DreambatError` prints
    ``PROG: error: ...`` and returns 2."""
    import sys

    try:
        with graceful_stop():
            return run()
    except Preempted as stop:
        print(f"{prog}: {stop}", file=sys.stderr)
        return stop.exit_code
    except DreambatError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
