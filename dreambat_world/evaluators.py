"""Where the world's committed evaluators live, in the shape ``dreambat.eval`` takes them.

``assets/world/evaluators/`` holds three folders, trained by ``scripts/train_world_evaluators.py``:

* ``classifier/`` - :class:`~dreambat_world.classifiers.AttributeClassifier` (shape, colour,
  pattern, background colour);
* ``clip/`` - an open_clip CLIP (``open_clip_config.json``, ``open_clip_model.safetensors`` and
  the world's own small BPE tokenizer), loaded as ``local-dir:FOLDER``;
* ``dino/`` - a transformers ``ViTModel`` folder for :class:`~dreambat.eval.encoders.DinoEncoder`.

:func:`world_evaluators` returns them like :func:`dreambat.eval.tiny.write_tiny_evaluators` does,
so ``EncoderSettings(dino_model=str(e.dino_model), clip_model=str(e.clip_model),
clip_pretrained=str(e.clip_pretrained))`` works for both.
"""

from __future__ import annotations

from pathlib import Path

from dreambat.errors import ModelNotFoundError

EVALUATORS_DIR = Path(__file__).resolve().parents[1] / "assets" / "world" / "evaluators"
"""``assets/world/evaluators`` of the repository."""
CLASSIFIER_DIR = EVALUATORS_DIR / "classifier"
CLIP_DIR = EVALUATORS_DIR / "clip"
DINO_DIR = EVALUATORS_DIR / "dino"
CLIP_CHECKPOINT = "open_clip_model.safetensors"


def world_evaluators(folder: str | Path = EVALUATORS_DIR):
    """The committed DINO- and CLIP-role evaluators as a :class:`~dreambat.eval.tiny.TinyEvaluators`.

    ``clip_model`` is the string ``"local-dir:FOLDER"`` (open_clip reads the config, weights and
    tokenizer from the folder); ``clip_pretrained`` names the checkpoint, which that schema ignores.
    """
    from dreambat.eval.tiny import TinyEvaluators

    folder = Path(folder)
    dino, clip = folder / "dino", folder / "clip"
    missing = [str(p) for p in (dino / "config.json", clip / "open_clip_config.json", clip / CLIP_CHECKPOINT)
               if not p.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"World evaluator files are missing: {missing}. Train them with "
            "`python scripts/train_world_evaluators.py dino|clip`."
        )
    return TinyEvaluators(dino_model=dino, clip_model=f"local-dir:{clip}", clip_pretrained=clip / CLIP_CHECKPOINT)


def world_evaluator_settings(folder: str | Path = EVALUATORS_DIR) -> dict[str, str]:
    """``{"dino_model", "clip_model", "clip_pretrained"}`` strings for ``EncoderSettings`` / the CLI flags."""
    found = world_evaluators(folder)
    return {"dino_model": str(found.dino_model), "clip_model": str(found.clip_model),
            "clip_pretrained": str(found.clip_pretrained)}
