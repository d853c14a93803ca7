"""Training checkpoints (``output_dir/checkpoint-N``): save, prune, find, resume.

A checkpoint is accelerate's state folder: optimiser, LR schedule, gradient-accumulation step and
every process's RNG states, with the model weights replaced by the LoRA adapters alone
(``pytorch_lora_weights.safetensors`` in diffusers' format, so a checkpoint also loads with
``pipe.load_lora_weights(checkpoint_dir)``). The frozen backbone is never copied.

A checkpoint is written to ``checkpoint-N.tmp`` and renamed once every process has written its
part, so an interrupted save never leaves a folder that ``latest`` would pick.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from ..constants import CHECKPOINT_PREFIX, LORA_WEIGHTS_NAME
from ..errors import ConfigError
from ..lora import load_lora, save_lora
from ..pivotal import PivotalEmbedding, embeddings_file, find_embeddings, save_new_tokens

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")
STREAM_STATE_NAME = "dreambat_stream.json"


def checkpoint_step(path: str | Path) -> int | None:
    """N of a ``checkpoint-N`` folder name, else ``None``."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest (smallest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def resolve_resume(output_dir: str | Path, resume_from: str | None) -> Path | None:
    """The checkpoint folder to resume from, or ``None`` to start fresh.

    ``"latest"`` picks the newest ``checkpoint-N`` in ``output_dir`` (none: start fresh, logged).
    Anything else must name an existing checkpoint folder: a path, or a folder name inside
    ``output_dir``.

    Raises:
        ConfigError: a named checkpoint does not exist or is not a ``checkpoint-N`` folder.
    """
    if resume_from is None:
        return None
    if resume_from == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.info("--resume_from_checkpoint latest: no checkpoint in '%s', starting a fresh run.", output_dir)
            return None
        return checkpoints[-1]
    for candidate in (Path(resume_from).expanduser(), Path(output_dir) / resume_from):
        if candidate.is_dir():
            if checkpoint_step(candidate) is None:
                raise ConfigError(
                    f"--resume_from_checkpoint '{resume_from}' is not a checkpoint-N folder; pass one "
                    f"of {[p.name for p in list_checkpoints(output_dir)]} or 'latest'."
                )
            return candidate
    raise ConfigError(
        f"--resume_from_checkpoint '{resume_from}' does not exist (also looked in '{output_dir}'). "
        f"Available: {[p.name for p in list_checkpoints(output_dir)] or 'none'}; pass one of them, "
        "'latest', or drop the flag to start fresh."
    )


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoint folders; returns the deleted ones."""
    checkpoints = list_checkpoints(output_dir)
    doomed = checkpoints[: max(0, len(checkpoints) - keep)]
    for path in doomed:
        shutil.rmtree(path)
    if doomed:
        logger.info("Removed %d old checkpoint(s): %s", len(doomed), ", ".join(p.name for p in doomed))
    return doomed


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    *,
    total_limit: int | None = None,
    stream_state: dict | None = None,
    pivotal: PivotalEmbedding | None = None,
) -> Path:
    """Save the training state as ``output_dir/checkpoint-{step}``; call on every process.

    Every process writes its own RNG state; the main process writes the rest, renames the folder
    into place, then keeps only the newest ``total_limit`` checkpoints. ``stream_state`` (the
    settings that define the batch stream) is written next to it, to warn on a mismatched resume.
    """
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    partial = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if stream_state is not None:
            (partial / STREAM_STATE_NAME).write_text(json.dumps(stream_state, indent=2, sort_keys=True) + "\n")
        if pivotal is not None:  # under the final folder's name, so the checkpoint loads like the run
            save_new_tokens(partial, pivotal.new, pivotal.vectors, path=partial / embeddings_file(final).name)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        logger.info("Saved training state to %s", final)
        if total_limit is not None:
            prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def check_stream_state(checkpoint: Path, expected: dict) -> None:
    """Warn when a checkpoint was written with other stream settings than this run's."""
    path = checkpoint / STREAM_STATE_NAME
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    changed = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
    if changed:
        listing = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in sorted(changed.items()))
        logger.warning(
            "Resuming from %s with changed settings (%s); the run will not match an uninterrupted one.",
            checkpoint, listing,
        )


def register_lora_state_hooks(accelerator: Accelerator, unet, text_encoder=None, *,
                              pivotal: PivotalEmbedding | None = None, text_encoder_2=None) -> list:
    """Make ``save_state``/``load_state`` store only the LoRA adapters of ``unet``/``text_encoder``
    (and SDXL's ``text_encoder_2``).

    ``unet`` and the text encoders are the unwrapped modules (the text encoders only when trained).
    ``pivotal``'s new-token embeddings are restored on load (:func:`save_checkpoint` writes them).
    Returns the hook handles (``handle.remove()`` unregisters).
    """

    def identify(models, wanted):
        unwrapped = [accelerator.unwrap_model(model) for model in models]
        return next((m for m in unwrapped if wanted is not None and m is wanted), None)

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            save_lora(output_dir, identify(models, unet) or unet, identify(models, text_encoder),
                      identify(models, text_encoder_2))
        weights.clear()  # nothing else: the frozen backbone is not part of a checkpoint

    def load_hook(models, input_dir):
        models.clear()  # accelerate must not look for full model weights
        folder = Path(input_dir)
        if not (folder / LORA_WEIGHTS_NAME).is_file():
            raise ConfigError(f"Checkpoint '{folder}' has no {LORA_WEIGHTS_NAME}; it is incomplete, resume from another.")
        load_lora(folder, unet, text_encoder, text_encoder_2)
        if pivotal is not None:
            if find_embeddings(folder) is None:
                raise ConfigError(f"Checkpoint '{folder}' has no new-token embeddings, and this run trains them "
                                  "(--train_text_encoder_ti); resume without that flag, or start fresh.")
            pivotal.load_vectors(folder)

    return [
        accelerator.register_save_state_pre_hook(save_hook),
        accelerator.register_load_state_pre_hook(load_hook),
    ]
