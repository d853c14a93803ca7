"""The world's backbone pool and bundled assets, written as LAION-style webdataset shards.

The pool is the pre-training set of the world backbone: captioned scenes of random objects
(:func:`dreambat_world.synthetic.random_scene`) that never show a world subject's design
(:func:`~dreambat_world.subjects.matches_any_subject`), one record each
(:func:`~dreambat_world.pool_record.world_record`). Record ``i`` of seed ``s`` depends on
``(s, i)`` alone, so shards can be written in any order or in parallel and always agree.
Metadata is img2dataset-like plus the ground-truth ``"attributes"`` of the scene.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dreambat.data.shard_writer import write_shards
from dreambat.errors import ConfigError

from .noisy_pool import NoiseConfig, noisy_record
from .pool_record import POOL_URL_PREFIX, world_record  # noqa: F401 (also public here)
from .subjects import N_PHOTOS, PHOTO_SIZE, SPLITS, WORLD_SUBJECTS, subject_photos

SHARD_PATTERN = "shard-{:05d}.tar"
DEFAULT_POOL_DIR = Path("outputs/world/shards")
DEFAULT_NOISY_POOL_DIR = Path("outputs/world/shards-noisy")
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "world"
BUNDLED_SHARD = "shards/shard-00000.tar"
BACKBONE_DIR = "backbone"
"""The pretrained world backbone (a diffusers folder) under :data:`ASSETS_DIR`."""
SUBJECTS_DIR = "subjects"
BUNDLED_SEED_OFFSET = 1_000_003
"""The bundled shard uses seed ``pool seed + offset``: its records are not pool records."""


@dataclass(frozen=True)
class PoolConfig:
    """Settings of a backbone pool.

    Attributes:
        n: number of records (images).
        seed: the pool's seed; record ``i`` uses ``record_rng(seed, i)``.
        size: image side in pixels (the world backbone's native 32).
        per_shard: records per tar shard.
        max_objects: most objects per scene.
        image_format: ``"png"`` (lossless: 32 px patterns do not survive JPEG) or ``"jpg"``.
        noise: the LAION-like noise of :mod:`dreambat_world.noisy_pool` (None: the clean pool
            the world backbone was pretrained on).
    """

    n: int = 40_000
    seed: int = 0
    size: int = PHOTO_SIZE
    per_shard: int = 5_000
    max_objects: int = 2
    image_format: str = "png"
    noise: NoiseConfig | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.per_shard < 1 or self.size < 8:
            raise ConfigError(f"PoolConfig needs n >= 1, per_shard >= 1, size >= 8; got {self}.")
        if self.image_format not in ("png", "jpg"):
            raise ConfigError(f"image_format must be 'png' or 'jpg', got {self.image_format!r}.")


def world_records(n: int, seed: int, size: int = PHOTO_SIZE, *, start: int = 0,
                  max_objects: int = 2, noise: NoiseConfig | None = None) -> Iterator[dict[str, Any]]:
    """Records ``start .. start + n - 1`` of the pool of ``seed`` (see :func:`world_record`;
    with ``noise``, :func:`~dreambat_world.noisy_pool.noisy_record`)."""
    for index in range(start, start + n):
        if noise is None:
            yield world_record(index, seed, size, max_objects)
        else:
            yield noisy_record(index, seed, noise, size, max_objects)


@dataclass
class WriteReport:
    """What a writer did: paths, counts, bytes and seconds (saved as JSON next to the shards)."""

    config: dict[str, Any]
    shards: list[str] = field(default_factory=list)
    n_records: int = 0
    total_bytes: int = 0
    seconds: float = 0.0


def write_pool(folder: str | Path, config: PoolConfig = PoolConfig()) -> WriteReport:
    """Write the pool as ``folder/shard-XXXXX.tar`` plus ``folder/pool.json`` (the report).

    Shards already complete (present with the expected name) are kept, so an interrupted run
    resumes; each shard is written atomically by :func:`write_shards`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start_time = time.perf_counter()
    report = WriteReport(config=asdict(config))
    for shard_index, start in enumerate(range(0, config.n, config.per_shard)):
        path = folder / SHARD_PATTERN.format(shard_index)
        count = min(config.per_shard, config.n - start)
        if not path.is_file():
            records = world_records(count, config.seed, config.size, start=start,
                                    max_objects=config.max_objects, noise=config.noise)
            write_shards(records, path, max_per_shard=count, image_format=config.image_format)
        report.shards.append(str(path))
        report.n_records += count
        report.total_bytes += path.stat().st_size
    report.seconds = round(time.perf_counter() - start_time, 2)
    (folder / "pool.json").write_text(json.dumps(asdict(report), indent=2))
    return report


def write_bundled_assets(folder: str | Path = ASSETS_DIR, *, seed: int = 0, n_shard: int = 500,
                         size: int = PHOTO_SIZE) -> WriteReport:
    """Write the demo / test assets: subject photos and one small backbone shard.

    Layout: ``folder/subjects/<name>/{train,heldout}/NN.png`` (every world subject,
    :data:`~dreambat_world.subjects.N_PHOTOS` per split) and ``folder/shards/shard-00000.tar``
    (``n_shard`` PNG records of seed ``seed + BUNDLED_SEED_OFFSET``, disjoint from the pool).
    """
    folder = Path(folder)
    start_time = time.perf_counter()
    report = WriteReport(config={"seed": seed, "n_shard": n_shard, "size": size})
    for subject in WORLD_SUBJECTS:
        for split in SPLITS:
            out = folder / SUBJECTS_DIR / subject.name / split
            out.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(subject_photos(subject, split, size)):  # type: ignore[arg-type]
                path = out / f"{i:02d}.png"
                image.save(path, format="PNG", optimize=True)
                report.total_bytes += path.stat().st_size
            report.n_records += N_PHOTOS[split]
    shard = folder / BUNDLED_SHARD
    write_shards(world_records(n_shard, seed + BUNDLED_SEED_OFFSET, size), shard,
                 max_per_shard=n_shard, image_format="png")
    report.shards.append(str(shard))
    report.n_records += n_shard
    report.total_bytes += shard.stat().st_size
    report.seconds = round(time.perf_counter() - start_time, 2)
    return report


def subject_photo_dir(name: str, split: str = "train", folder: str | Path = ASSETS_DIR) -> Path:
    """The bundled folder of a subject's photos, e.g. ``assets/world/subjects/<name>/train``."""
    path = Path(folder) / SUBJECTS_DIR / name / split
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; use one of {SPLITS}.")
    return path
