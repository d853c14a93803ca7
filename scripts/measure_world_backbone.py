#!/usr/bin/env python
"""How often the world's attribute classifier agrees with held-out captions on backbone samples.

    OMP_NUM_THREADS=1 python scripts/measure_world_backbone.py --n_captions 64 --seeds 0 1

Prints JSON: agreement per attribute (shape, color, pattern, background, all) on generated
images and, as the ceiling, on the rendered scenes of the same captions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR  # noqa: E402
from dreambat_world.fidelity import measure_fidelity  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    from dreambat_world.classifiers import AttributeClassifier
    from dreambat_world.evaluators import CLASSIFIER_DIR

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", type=Path, default=ASSETS_DIR / BACKBONE_DIR)
    p.add_argument("--classifier", type=Path, default=CLASSIFIER_DIR)
    p.add_argument("--n_captions", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (CUDA when available)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure_fidelity(args.backbone, AttributeClassifier.load(args.classifier),
                              n_captions=args.n_captions, seeds=args.seeds, steps=args.steps,
                              guidance=args.guidance, device=args.device)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
