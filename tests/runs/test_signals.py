"""Stop signals: the first asks for a stop at the next safe point, the second stops at once."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from dreambat import preemption
from tests.conftest import REPO

TWICE = """
import os, signal, sys, time
from dreambat import preemption
with preemption.graceful_stop():
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    assert preemption.requested() == getattr(signal, sys.argv[1])
    print("still running after the first", flush=True)
    try:
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        time.sleep(30)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
print("survived the second")
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_the_second_signal_ends_the_process_at_once(name):
    done = subprocess.run([sys.executable, "-c", TWICE, name], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("still running after the first")
    assert done.returncode == -getattr(signal, name)  # killed by the signal itself: the scheduler sees it
    assert "send it again to stop at once" in done.stderr or "send it again" in done.stdout + done.stderr


def test_a_second_ctrl_c_is_a_keyboard_interrupt():
    done = subprocess.run([sys.executable, "-c", TWICE, "SIGINT"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["still running after the first", "interrupted"] and done.returncode == 3


def test_outside_the_block_nothing_is_requested_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.graceful_stop():
        assert signal.getsignal(signal.SIGTERM) is not before
        preemption.check("anywhere")  # nothing asked: no stop
        signal.raise_signal(signal.SIGUSR1)
        with pytest.raises(preemption.Preempted) as stop:
            preemption.check("after the test's step")
        assert stop.value.exit_code == 128 + signal.SIGUSR1 and "SIGUSR1 after the test's step" in str(stop.value)
        assert list(preemption.until_stopped(range(5))) == []
    assert signal.getsignal(signal.SIGTERM) is before and preemption.requested() is None
