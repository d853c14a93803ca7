#!/usr/bin/env python
"""Regenerate the project's procedural assets (everything under ``assets/``) from a fixed seed.

    python scripts/make_assets.py                 # writes assets/ with the default seed
    python scripts/make_assets.py --out /tmp/a --seed 0

Writes:
  * ``subject/subject_00.jpg`` ... : photos of ``dreambat_world.synthetic.DEMO_SUBJECT`` (a purple star
    with yellow dots), 128x128 JPEG;
  * ``backbone/shard-00000.tar``: an img2dataset-format webdataset shard of captioned 64x64
    scenes that never show the subject's design but do show its shape, colour and pattern.

The same seed gives the same files, byte for byte (tar members sorted, mtimes 0), with the same
numpy, Pillow and libjpeg.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from dreambat_world import synthetic  # noqa: E402
from dreambat.data.shard_writer import write_shards  # noqa: E402

DEFAULT_SEED = 0
DEFAULT_OUT = REPO_ROOT / "assets"
N_SUBJECT = 5
SUBJECT_SIZE = 128
N_BACKBONE = 300
BACKBONE_SIZE = 64
JPEG_QUALITY = 90
SUBJECT_DIR = "subject"
BACKBONE_SHARD = "backbone/shard-00000.tar"


def subject_rng(seed: int) -> np.random.Generator:
    """The subject photos' generator. ``PCG64(seed)`` is ``SeedSequence(seed)`` with an empty
    spawn key, so it never coincides with a backbone record's ``record_rng(seed, i)``."""
    return np.random.Generator(np.random.PCG64(seed))


def subject_photos(seed: int = DEFAULT_SEED, n: int = N_SUBJECT,
                   size: int = SUBJECT_SIZE) -> list[tuple[str, Image.Image]]:
    """``[(file name, image)]`` of the demo subject's photos."""
    images = synthetic.subject_images(synthetic.DEMO_SUBJECT, n, subject_rng(seed), size)
    return [(f"subject_{i:02d}.jpg", image) for i, image in enumerate(images)]


def backbone_samples(seed: int = DEFAULT_SEED, n: int = N_BACKBONE,
                     size: int = BACKBONE_SIZE) -> Iterator[dict[str, Any]]:
    """The backbone shard's records, the demo subject's design kept out."""
    return synthetic.backbone_records(n, seed, size, exclude_subject=synthetic.DEMO_SUBJECT)


def make_assets(out: Path = DEFAULT_OUT, seed: int = DEFAULT_SEED, *, n_subject: int = N_SUBJECT,
                n_backbone: int = N_BACKBONE) -> list[Path]:
    """Write all assets under ``out`` and return the paths written."""
    out = Path(out)
    subject_dir = out / SUBJECT_DIR
    subject_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    photos = subject_photos(seed, n_subject)
    names = {name for name, _ in photos}
    for stale in subject_dir.glob("subject_*.jpg"):  # photos from a run with a larger n
        if stale.name not in names:
            stale.unlink()
    for name, image in photos:
        path = subject_dir / name
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
        written.append(path)
    written += write_shards(backbone_samples(seed, n_backbone), out / BACKBONE_SHARD,
                            max_per_shard=max(1, n_backbone), image_format="jpg",
                            quality=JPEG_QUALITY)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: assets/)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed (default: {DEFAULT_SEED})")
    parser.add_argument("--n-subject", type=int, default=N_SUBJECT, help="subject photos to write")
    parser.add_argument("--n-backbone", type=int, default=N_BACKBONE, help="backbone records to write")
    args = parser.parse_args(argv)
    paths = make_assets(args.out, args.seed, n_subject=args.n_subject, n_backbone=args.n_backbone)
    total = sum(p.stat().st_size for p in paths)
    for path in paths:
        print(f"{path.stat().st_size:>9,d}  {path}")
    print(f"{total:>9,d}  bytes in {len(paths)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
