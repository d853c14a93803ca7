"""Does the pretrained backbone draw what captions ask? Measured with the attribute classifiers.

Held-out captions are written from fresh single-object scenes (a seed the pool never uses), in
the canonical phrasing of :func:`dreambat_world.synthetic.caption`. The backbone draws each caption
with a few seeds; the world's attribute classifier reads the main object's shape, colour and
pattern and the background colour back from every image, and agreement with the scene's ground
truth is reported per attribute. The same classifier on the rendered scenes themselves gives the
ceiling (how often the classifier is right on real images of those captions), and on those scenes
passed through the backbone's own VAE (encode, decode) the ceiling of anything the backbone can
draw: a sample is a decoded latent, so it is never sharper than a reconstruction.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .subjects import matches_any_subject
from .synthetic import SceneSpec, caption, random_scene, record_rng, render

HELDOUT_CAPTION_SEED = 424_242
"""Seed of the held-out captions' scenes; the pool uses small seeds (default 0)."""


@dataclass(frozen=True)
class HeldoutCaption:
    """A held-out caption, its scene and the attributes the classifier should read back."""

    caption: str
    scene: SceneSpec
    expected: dict[str, str]


def heldout_captions(n: int = 64, seed: int = HELDOUT_CAPTION_SEED) -> list[HeldoutCaption]:
    """``n`` single-object captions (canonical phrasing) with ``{shape, color, pattern, background}``."""
    out = []
    for i in range(n):
        scene = random_scene(record_rng(seed, i), exclude=matches_any_subject, max_objects=1)
        obj = scene.objects[0]
        out.append(HeldoutCaption(caption(scene), scene, {
            "shape": obj.shape, "color": obj.color, "pattern": obj.pattern,
            "background": scene.background}))
    return out


def measure_fidelity(backbone: str | Path, classifier: Any, *, n_captions: int = 64,
                     seeds: Sequence[int] = (0, 1), steps: int = 25, guidance: float = 3.0,
                     size: int = 32, device: str = "cpu") -> dict[str, Any]:
    """Generate ``n_captions`` x ``len(seeds)`` images and score them with ``classifier``.

    Args:
        backbone: the diffusers folder of the world backbone.
        classifier: an :class:`~dreambat_world.classifiers.AttributeClassifier` (anything with
            ``agreement(images, expected_list) -> {head: fraction, "all": fraction}``).
        device: where the backbone samples (``"auto"``: CUDA when available); the initial noise
            comes from CPU generators, so the images do not depend on it beyond float rounding.

    Returns:
        ``{"generated": {head: rate}, "rendered": {head: rate}, "vae_round_trip": {head: rate},
        "generated_by_value": {head: {value: {"n", "right", "read_as"}}}, "n_images", "seconds", ...}``.
    """
    from dreambat.eval.encoders import resolve_device

    from .sampling import generate, load_pipeline

    items = heldout_captions(n_captions)
    pipe = load_pipeline(backbone).to(resolve_device(device))
    start = time.perf_counter()
    prompts = [it.caption for it in items for _ in seeds]
    images = generate(pipe, prompts, [s for _ in items for s in seeds], steps=steps, guidance=guidance)
    seconds = time.perf_counter() - start
    expected = [it.expected for it in items for _ in seeds]
    rendered = [render(it.scene, size) for it in items]
    readings = classifier.predict(images)
    return {
        "generated": classifier.agreement_of(readings, expected),
        "generated_by_value": readings_by_value(readings, expected, ("shape", "color")),
        "rendered": classifier.agreement(rendered, [it.expected for it in items]),
        "vae_round_trip": classifier.agreement(vae_round_trip(pipe.vae, rendered),
                                               [it.expected for it in items]),
        "n_captions": n_captions, "seeds": list(seeds), "n_images": len(images),
        "steps": steps, "guidance": guidance, "seconds_generate": round(seconds, 1),
        "chance": {"shape": 1 / 8, "color": 1 / 11, "pattern": 1 / 4, "background": 1 / 11},
    }


def readings_by_value(predictions: Sequence[dict[str, str]], expected: Sequence[dict[str, str]],
                      heads: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per asked value of each head: how many images asked for it (``n``), how many were read
    right (``right``, strict: a striped object's second colour does not count) and what the
    rest were read as (``read_as``: ``{value: count}``, most frequent first)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for head in heads:
        asked = sorted({want[head] for want in expected})
        table = {}
        for value in asked:
            readings = [got[head] for got, want in zip(predictions, expected) if want[head] == value]
            wrong = Counter(r for r in readings if r != value)
            table[value] = {"n": len(readings), "right": len(readings) - sum(wrong.values()),
                            "read_as": dict(wrong.most_common())}
        out[head] = table
    return out


def vae_round_trip(vae: Any, images: Sequence[Any], batch_size: int = 64) -> list[Any]:
    """``images`` (PIL, one size) encoded by ``vae`` (latent means) and decoded again, as PIL images."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    from .classifiers import images_to_tensor

    post = VaeImageProcessor(do_resize=False)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = images_to_tensor(chunk, chunk[0].size[0]).to(vae.device, vae.dtype)
        with torch.no_grad():
            decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample.float().clamp(-1, 1)
        out.extend(post.postprocess(decoded.cpu(), output_type="pil"))
    return out
