"""Send a signal to this process at a named point of a BAT run (test helper).

``install(point, signum)`` wraps one library function so that the signal is raised at its n-th call:

* ``surrogate``: the 2nd training step of the surrogate (its loss, computed in the step);
* ``reference``: the start of the reference-gradient fit of ALBAT scoring;
* ``score``: right after the first scored batch is written to the part manifest;
* ``train``: the 3rd step of the final training (after ``checkpoint-2`` with the tests' flags);
* ``save``: the final LoRA's model card (its weights are on disk, the card and report are not).

Run as ``python -m tests.runs.stop_points POINT SIGNAL COMMAND FLAGS...`` (COMMAND: ``train`` or
``score``, also under ``torchrun -m``) it installs the point and runs that ``dreambat`` command:
SIGKILL there is a real kill at that point.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

SURROGATE_STEPS = 3  # the tests' --surrogate_steps: training steps 1-3 are the surrogate's

POINTS = ("surrogate", "reference", "score", "train", "save")


def _after_calls(owner, name: str, n: int, signum: int, set_attr, *, before: bool = True) -> None:
    original = getattr(owner, name)
    calls = {"n": 0}

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        fire = calls["n"] == n
        if fire and before:
            os.kill(os.getpid(), signum)
        result = original(*args, **kwargs)
        if fire and not before:
            os.kill(os.getpid(), signum)
        return result

    set_attr(owner, name, wrapper)


def install(point: str, signum: int, set_attr=setattr) -> None:
    """Raise ``signum`` at ``point`` (one of :data:`POINTS`); ``set_attr`` puts the wrapper in place
    (pytest's ``monkeypatch.setattr`` undoes it after a test)."""
    from dreambat.albat import manifest, scorer
    from dreambat.training import dreambooth, loop

    if point == "surrogate":
        _after_calls(loop, "training_loss", 2, signum, set_attr)
    elif point == "reference":
        _after_calls(scorer.AlbatScorer, "fit", 1, signum, set_attr)
    elif point == "score":
        _after_calls(manifest.ManifestWriter, "write", 1, signum, set_attr, before=False)
    elif point == "train":
        _after_calls(loop, "training_loss", SURROGATE_STEPS + 3, signum, set_attr)
    elif point == "save":
        _after_calls(dreambooth, "write_model_card", 2, signum, set_attr)  # the 1st is the surrogate's
    else:
        raise ValueError(f"unknown point {point!r}; one of {POINTS}")


if __name__ == "__main__":
    point, name, command, *flags = sys.argv[1:]
    install(point, getattr(signal, name))
    from dreambat.cli import main

    sys.exit(main([command, *flags]))
