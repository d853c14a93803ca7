"""How much subject fidelity can the mini-world show at all? Ceilings of the attribute classifier.

Subject fidelity (``dreambat_world.metrics``) is the share of generated images in which the
world's attribute classifier reads the subject's shape, colour *and* pattern. A LoRA's samples
pass through the backbone's VAE decoder, so no recipe can score above what the classifier reads
on the VAE's own reconstructions of the subject photos. Per world subject, on its 13 photos (5
train + 8 held-out):

* ``photos``: the classifier on the crisp renders (the classifier's own ceiling);
* ``recon``: on the VAE's reconstructions of the same photos (encode to the posterior mean,
  decode): the ceiling of anything the backbone draws;
* ``base``: on ``--samples`` images the base backbone draws for the subject's full description
  ("a photo of a dotted purple star"): what the backbone can already compose from text.

Each with the per-attribute rates. One JSON to ``benchmarks/results/world-ceiling.json``.

    python -m benchmarks.bench_world_ceiling
    python -m benchmarks.bench_world_ceiling --table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks._measure import REPO, git_head, log, machine_info
from dreambat_world.classifiers import AttributeClassifier, images_to_tensor
from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR
from dreambat_world.evaluator_training import vae_round_trip
from dreambat_world.evaluators import CLASSIFIER_DIR
from dreambat_world.sampling import generate, load_pipeline
from dreambat_world.subjects import WORLD_SUBJECTS, subject_photos

ATTRIBUTES = ("shape", "color", "pattern", "all")


def reconstruct(vae, images: list[Image.Image], resolution: int) -> list[Image.Image]:
    """``images`` through the VAE (:func:`~dreambat_world.evaluator_training.vae_round_trip`), as PIL images."""
    decoded = vae_round_trip(vae, images_to_tensor(images, resolution))
    arrays = ((decoded.permute(0, 2, 3, 1).float().numpy() + 1) * 127.5).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


def measure(args) -> dict:
    classifier = AttributeClassifier.load(args.classifier)
    pipe = load_pipeline(ASSETS_DIR / BACKBONE_DIR)
    resolution = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    rows = []
    for subject in WORLD_SUBJECTS:
        design = subject.design
        photos = subject_photos(subject, "train") + subject_photos(subject, "heldout")
        prompt = f"a photo of a {design.pattern} {design.color} {subject.class_word}"
        base = generate(pipe, [prompt] * args.samples, list(range(args.samples)))
        row = {"subject": subject.name, "base_prompt": prompt, "photos_n": len(photos), "base_n": len(base)}
        for label, images in (("photos", photos), ("recon", reconstruct(pipe.vae, photos, resolution)),
                              ("base", base)):
            row[label] = classifier.subject_fidelity(images, subject)
        rows.append(row)
        log(f"{subject.name}: photos {row['photos']['all']:.2f}, recon {row['recon']['all']:.2f}, "
            f"base {row['base']['all']:.2f}")
    return {"command": "python -m benchmarks.bench_world_ceiling", "classifier": str(args.classifier), "commit": git_head(),
            "date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "samples": args.samples, "rows": rows}


def table(result: dict) -> str:
    rows = result["rows"]
    lines = ["| subject | photos: all (pattern) | VAE reconstructions: all (shape / colour / pattern) | "
             "base backbone, full description: all (shape / colour / pattern) |", "|---|---|---|---|"]

    def cell(scores: dict) -> str:
        return f"{scores['all']:.2f} ({scores['shape']:.2f} / {scores['color']:.2f} / {scores['pattern']:.2f})"

    for row in rows:
        lines.append(f"| {row['subject']} | {row['photos']['all']:.2f} ({row['photos']['pattern']:.2f}) | "
                     f"{cell(row['recon'])} | {cell(row['base'])} |")
    mean = {label: {a: float(np.mean([r[label][a] for r in rows])) for a in ATTRIBUTES}
            for label in ("photos", "recon", "base")}
    lines.append(f"| **mean of {len(rows)}** | **{mean['photos']['all']:.2f}** ({mean['photos']['pattern']:.2f}) | "
                 f"**{cell(mean['recon'])}** | **{cell(mean['base'])}** |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=16, help="base-backbone images per subject")
    p.add_argument("--classifier", type=Path, default=CLASSIFIER_DIR, help="the attribute classifier's folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "world-ceiling.json")
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = p.parse_args()
    if not args.table:
        torch.set_num_threads(args.threads)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(measure(args), indent=2) + "\n")
    print(table(json.loads(args.out.read_text())))


if __name__ == "__main__":
    main()
