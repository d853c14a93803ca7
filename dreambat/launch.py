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
