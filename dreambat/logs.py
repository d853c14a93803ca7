"""Logging for dreambat's command-line entry points: readable INFO lines from dreambat, warnings
only from the libraries, and no library loading bars."""

from __future__ import annotations

import logging


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once per process (a no-op for handlers already installed)."""
    import diffusers
    import transformers

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
        level=logging.WARNING,
    )
    logging.getLogger("dreambat").setLevel(logging.DEBUG if verbose else logging.INFO)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
