"""How dreambat joins the processes that ``accelerate launch`` or ``torchrun`` started.

On a machine without an accelerator, accelerate only forms a (gloo) process group when told
``cpu=True``; without it every process silently runs the whole job alone. Both the trainer and
the scorer ask here.
"""

from __future__ import annotations

import torch
from accelerate import PartialState


def cpu_only() -> bool:
    """True when no CUDA or MPS device is available."""
    mps = getattr(torch.backends, "mps", None)
    return not (torch.cuda.is_available() or (mps is not None and mps.is_available()))


def process_state() -> PartialState:
    """The shared accelerate state: rank, world size and device of this process."""
    return PartialState(cpu=cpu_only())


def on_main_for_all(compute):
    """``compute()`` on the main process; every process gets its result, or raises its error.

    A collective call when there are several processes (each must call it): the result, or the
    exception the main process raised, is broadcast, so all continue or all stop together.
    """
    state = process_state()
    if state.num_processes == 1:
        return compute()
    from accelerate.utils import broadcast_object_list

    outcome = None
    if state.is_main_process:
        try:
            outcome = compute()
        except Exception as error:  # handed to the other processes, then raised everywhere
            outcome = error
    outcome = broadcast_object_list([outcome], from_process=0)[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
