#!/usr/bin/env python
"""Write the world's backbone pool (outside git) and its bundled assets (under assets/world/).

    python scripts/make_world.py                       # 40,000 records in 8 shards + assets
    python scripts/make_world.py --n 2000 --pool_dir /tmp/pool --skip_assets
    python scripts/make_world.py --noisy --skip_assets     # the LAION-like pool, outputs/world/shards-noisy

Pool: ``<pool_dir>/shard-XXXXX.tar`` (PNG, 32 px, captions, metadata with "attributes") and
``pool.json`` (settings, sizes, seconds). ``--noisy``: the same records with the seeded web noise
of ``dreambat_world/noisy_pool.py`` (ground truth in each record's ``"noise"`` metadata). Assets: ``assets/world/subjects/<name>/{train,heldout}``
and ``assets/world/shards/shard-00000.tar`` (500 records). Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dreambat_world.data import (  # noqa: E402
    ASSETS_DIR, DEFAULT_NOISY_POOL_DIR, DEFAULT_POOL_DIR, PoolConfig, write_bundled_assets, write_pool,
)
from dreambat_world.noisy_pool import NoiseConfig  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool_dir", type=Path, default=None,
                        help=f"default {DEFAULT_POOL_DIR} ({DEFAULT_NOISY_POOL_DIR} with --noisy)")
    parser.add_argument("--noisy", action="store_true",
                        help="write the LAION-like noisy pool (dreambat_world/noisy_pool.py) instead of the clean one")
    parser.add_argument("--n", type=int, default=PoolConfig.n, help="pool records")
    parser.add_argument("--per_shard", type=int, default=PoolConfig.per_shard)
    parser.add_argument("--seed", type=int, default=PoolConfig.seed)
    parser.add_argument("--assets_dir", type=Path, default=ASSETS_DIR)
    parser.add_argument("--n_bundled", type=int, default=500, help="records of the bundled shard")
    parser.add_argument("--skip_pool", action="store_true")
    parser.add_argument("--skip_assets", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_assets:
        report = write_bundled_assets(args.assets_dir, seed=args.seed, n_shard=args.n_bundled)
        print(json.dumps({"assets": asdict(report)}, indent=1))
    if not args.skip_pool:
        pool_dir = args.pool_dir or REPO_ROOT / (DEFAULT_NOISY_POOL_DIR if args.noisy else DEFAULT_POOL_DIR)
        noise = NoiseConfig() if args.noisy else None
        report = write_pool(pool_dir, PoolConfig(n=args.n, seed=args.seed, per_shard=args.per_shard, noise=noise))
        print(json.dumps({"pool": {k: v for k, v in asdict(report).items() if k != "shards"}}, indent=1))


if __name__ == "__main__":
    main()
