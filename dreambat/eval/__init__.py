"""DreamBench evaluation: DINO, CLIP-I, CLIP-T, PRES, DIV, the runner, sample grids, plots.

Modules, one role each:

- :mod:`~dreambat.eval.metrics`: the metrics as pure functions of embeddings.
- :mod:`~dreambat.eval.encoders`: DINO (transformers) and CLIP (open_clip) evaluators behind
  ``embed_images`` / ``embed_texts``.
- :mod:`~dreambat.eval.prompts`: the DreamBench templates shipped in ``assets/dreambench/``.
- :mod:`~dreambat.eval.config`: methods, subjects and settings, validated.
- :mod:`~dreambat.eval.flags`: the setting groups of ``dreambat eval`` / ``dreambat grid``;
  :mod:`~dreambat.eval.cli`: their entry points.
- :mod:`~dreambat.eval.generation`: seeded, batched, resumable generation with LoRA swapping.
- :mod:`~dreambat.eval.runner`: :func:`run_dreambench`; :mod:`~dreambat.eval.tables`,
  :mod:`~dreambat.eval.plots`: what it writes.
- :mod:`~dreambat.eval.grids`: captioned sample grids of several LoRAs and the base model.
- :mod:`~dreambat.eval.tiny`: tiny offline evaluators for tests and the demo.

Names are imported lazily, so ``import dreambat.eval`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ClipEncoder": "encoders", "DinoEncoder": "encoders", "dino_transform": "encoders",
    "clip_i_score": "metrics", "clip_t_score": "metrics", "dino_score": "metrics",
    "pres_score": "metrics", "div_score": "metrics", "PriorSettings": "config",
    "mean_pairwise_cosine": "metrics", "mean_paired_cosine": "metrics",
    "DreamBenchPrompts": "prompts", "clip_t_prompt": "prompts", "generation_prompt": "prompts",
    "DreamBenchConfig": "config", "EncoderSettings": "config", "GenerationSettings": "config",
    "SamplingSettings": "config", "DreamBenchSettings": "flags", "GridSettings": "flags",
    "Method": "config", "DreamBenchSubject": "config", "build_methods": "config",
    "run_dreambench": "runner", "DreamBenchResult": "runner",
    "GridConfig": "grids", "render_grid": "grids",
    "write_tables": "tables", "plot_scores": "plots",
    "write_tiny_evaluators": "tiny", "TinyEvaluators": "tiny",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
