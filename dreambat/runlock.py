"""One run per output folder at a time: a lock file held for the whole run.

``output_dir/.dreambat.lock`` is locked with ``flock`` by the main process for as long as a run
works in the folder (``train_dreambooth_bat.py``, ``dreambat score``, ``dreambat eval``). The
operating system drops the lock when its process ends, however it ends, so:

* a second run into a folder whose lock is held is refused at once, before it writes anything,
  with the running process's host, pid, start time and command;
* a lock file left by a killed run (the file is there, nobody holds it) is taken over, with a
  message naming the dead run; the stages then reuse or resume what it left, as usual.

The file names its holder (JSON: host, pid, started, command) and is removed on a normal exit.
With several processes only the main one locks (:func:`run_lock` hands its outcome to the
others, so all stop together on a refusal). ``flock`` works on local disks and on NFS v4; where a
filesystem has no locks at all, a held lock cannot be told from a stale one, and the lock is
taken with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import DreambatError

logger = logging.getLogger(__name__)

LOCK_NAME = ".dreambat.lock"


class RunLockedError(DreambatError):
    """Another run is working in the output folder."""


def _holder_text(info: dict) -> str:
    command = " ".join(info.get("command") or []) or "unknown command"
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')} "
            f"({command[:200]})")


def _read_holder(handle) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


class RunLock:
    """The lock of one output folder. ``acquire()`` / ``release()``, or use as a context manager.

    Re-entrant within a process: a run that locks a folder its caller already holds (a BAT run's
    scoring stage) shares that lock.
    """

    _held: dict[Path, list] = {}  # folder -> [handle, depth]: the locks this process holds

    def __init__(self, folder: str | Path, *, what: str = "run") -> None:
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._created_folder = False

    def acquire(self) -> RunLock:
        held = RunLock._held.get(self.folder)
        if held is not None:
            held[1] += 1
            return self
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._created_folder = True
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _read_holder(handle)
                    handle.close()
                    self._undo_folder()
                    raise RunLockedError(
                        f"Another dreambat {holder.get('what', 'run')} is working in {self.folder}: "
                        f"{_holder_text(holder)}. Wait for it to finish or stop it, or pass another "
                        f"--output_dir. If that process is gone (a machine that shares this folder and "
                        f"crashed), delete {self.path} and rerun."
                    ) from None
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    logger.warning("The filesystem of %s has no file locks: nothing stops another run from "
                                   "working in it at the same time.", self.folder)
                    break
                handle.close()
                raise
            # the holder before us may have removed the file between our open and our flock
            try:
                same = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        earlier = _read_holder(handle)
        if earlier:
            logger.warning("Took over the lock of %s: the %s there (%s) is no longer running; what it finished "
                           "is reused or resumed as usual.", self.folder, earlier.get("what", "run"),
                           _holder_text(earlier))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "what": self.what, "host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": sys.argv,
        }, indent=2) + "\n")
        handle.flush()
        RunLock._held[self.folder] = [handle, 1]
        return self

    def release(self) -> None:
        held = RunLock._held.get(self.folder)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del RunLock._held[self.folder]
        handle = held[0]
        try:
            self.path.unlink(missing_ok=True)  # while still locked: the next run finds no stale file
        finally:
            handle.close()
        self._undo_folder()

    def _undo_folder(self) -> None:
        """Remove the folder this lock created when nothing else was written to it."""
        if self._created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()
            self._created_folder = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def run_lock(folder: str | Path, *, what: str = "run") -> Iterator[RunLock | None]:
    """Hold ``folder``'s :class:`RunLock` on the main process for the block; every process calls it.

    With several processes the main one's outcome is handed to the others, so a refusal stops them
    all before any of them writes.
    """
    from .launch import process_state

    state = process_state()
    lock, outcome = None, None
    if state.is_main_process:
        try:
            lock = RunLock(folder, what=what).acquire()
        except DreambatError as error:
            outcome = error
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        outcome = broadcast_object_list([outcome], from_process=0)[0]
    if outcome is not None:
        raise outcome
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
