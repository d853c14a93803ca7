"""Ground truth about backbone selections in the world: oracle selections and what a selector kept.

The world knows what every pool image shows (``metadata["attributes"]``) and, in the noisy pool,
what went wrong with it (``metadata["noise"]``). Two uses, both for benchmarks only:

* **Oracle selections**: candidates chosen by that ground truth, an upper reference for what
  any selector could gain by *which* images it adds (:data:`ORACLES`, :func:`oracle_manifest`).
  A user never has such labels, so this is not a ``--selection`` of the trainer.
* **Composition** of a selection (:func:`composition`): the share of kept images that show the
  subject's class (its shape), its colour and pattern, and the share with a mismatched caption
  or a degraded image, next to the same shares in the whole scored pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dreambat.albat import ManifestRecord, write_manifest
from dreambat.data.records import candidate_record
from dreambat.data.shards import BackboneSample

from .classifiers import main_object_labels
from .noisy_pool import is_clean
from .subjects import Subject


def _main_object(metadata: Mapping[str, Any]) -> Mapping[str, str] | None:
    """The labels of the image's main object (the classifier's rule), None for an image without objects."""
    attributes = metadata.get("attributes") or {}
    return main_object_labels(attributes) if attributes.get("objects") else None


def shared_attributes(metadata: Mapping[str, Any], subject: Subject) -> int:
    """How many of the subject's shape, colour and pattern the image's main object has (0-3)."""
    main = _main_object(metadata)
    if main is None:
        return 0
    d = subject.design
    return int(main["shape"] == d.shape) + int(main["color"] == d.color) + int(main["pattern"] == d.pattern)


def _oracle_class(metadata: Mapping[str, Any], subject: Subject) -> float:
    """1 when the main object has the subject's shape (its class word) and the pair is clean."""
    main = _main_object(metadata)
    return float(main is not None and main["shape"] == subject.design.shape and is_clean(metadata))


def _oracle_near(metadata: Mapping[str, Any], subject: Subject) -> float:
    """Shared attributes with the subject (shape counts double), for clean pairs only."""
    if not is_clean(metadata):
        return 0.0
    main = _main_object(metadata)
    if main is None:
        return 0.0
    return float(shared_attributes(metadata, subject) + int(main["shape"] == subject.design.shape))


def _oracle_clean(metadata: Mapping[str, Any], subject: Subject) -> float:
    """1 for a clean pair (caption describes the image, image undegraded), whatever it shows."""
    return float(is_clean(metadata))


ORACLES: dict[str, Callable[[Mapping[str, Any], Subject], float]] = {
    "oracle_clean": _oracle_clean,
    "oracle_class": _oracle_class,
    "oracle_near": _oracle_near,
}
"""Oracle name -> ground-truth score of a candidate (higher is kept first; ties are broken at random).

``oracle_clean``: a random draw among the clean pairs (correct caption, undegraded image): what
avoiding the web's junk alone is worth; on the clean pool it is a random selection.
``oracle_class``: images of the subject's class (the main object has the subject's shape) with a
correct caption and an undegraded image, the way Custom Diffusion or DreamBooth's class prior
would want them. ``oracle_near``: the images most like the subject (shape, colour, pattern shared;
the shape counts twice), clean pairs only.
"""


def oracle_scores(metadatas: Sequence[Mapping[str, Any]], subject: Subject, oracle: str, seed: int = 0) -> np.ndarray:
    """The oracle's score of every candidate plus a seeded tie-break below 0.5 (so top-N among
    equals is a random draw, and every score stays positive for the top-N rule)."""
    if oracle not in ORACLES:
        raise KeyError(f"Unknown oracle {oracle!r}; known: {', '.join(ORACLES)}.")
    truth = np.array([ORACLES[oracle](m, subject) for m in metadatas], dtype=np.float64)
    jitter = np.random.default_rng(seed).random(len(truth)) * 0.5
    return 1.0 + truth + jitter


def oracle_manifest(candidates: Sequence[BackboneSample], subject: Subject, oracle: str, path: str | Path, *,
                    seed: int = 0) -> Path:
    """Write a selection manifest of ``candidates`` (backbone samples, e.g. ``list(ShardReader(...))``)
    scored by ``oracle``.

    Pass it to a BAT run as ``--selection albat --selection_manifest PATH --num_backbone_samples N``:
    the top-N rule then keeps the N candidates the oracle ranks highest.
    """
    scores = oracle_scores([c.metadata for c in candidates], subject, oracle, seed)
    records = [candidate_record(c.index, c.key, c.url, c.caption, float(z)) for c, z in zip(candidates, scores)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(records, path, fingerprint={"oracle": oracle, "subject": subject.name, "seed": seed,
                                               "urls": sorted({c.url for c in candidates}),
                                               "candidates": len(candidates)})
    return path


def composition(records: Iterable[ManifestRecord], metadata_by_key: Mapping[str, Mapping[str, Any]],
                subject: Subject) -> dict[str, float | None]:
    """What a selection kept, against the pool it chose from.

    Returns ``{"kept_X": share among kept, "pool_X": share among all candidates}`` for X in
    ``class`` (main object has the subject's shape), ``color``, ``pattern`` (main object has the
    subject's colour / pattern), ``bad_caption`` (mismatched or partly wrong), ``degraded``
    (a degraded or off-domain image) and ``duplicate``; None where a set is empty.
    """
    d = subject.design

    def tests(m: Mapping[str, Any]) -> dict[str, bool]:
        main = _main_object(m)
        fate = m.get("noise") or {}
        return {
            "class": main is not None and main["shape"] == d.shape,
            "color": main is not None and main["color"] == d.color,
            "pattern": main is not None and main["pattern"] == d.pattern,
            "bad_caption": fate.get("caption", "clean") != "clean",
            "degraded": fate.get("image", "clean") != "clean",
            "duplicate": fate.get("duplicate_of") is not None,
        }

    rows = [r for r in records if r.key in metadata_by_key]
    kept = [r for r in rows if r.selected]
    out: dict[str, float | None] = {}
    for which, subset in (("kept", kept), ("pool", rows)):
        flags = [tests(metadata_by_key[r.key]) for r in subset]
        for name in ("class", "color", "pattern", "bad_caption", "degraded", "duplicate"):
            out[f"{which}_{name}"] = float(np.mean([f[name] for f in flags])) if flags else None
    return out
