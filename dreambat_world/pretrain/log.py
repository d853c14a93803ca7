"""The pretraining log (JSON lines, one record per 50 steps) and its loss-curve plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dreambat.errors import DataError

def append_log(log_path: Path, record: dict[str, Any]) -> None:
    with open(log_path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_log(work_dir: str | Path) -> list[dict[str, Any]]:
    """The JSON-lines training log of a work dir, one record per (phase, step), in step order.

    A run stopped between checkpoints logs steps that its resumed run repeats; the later record
    of a step wins. Empty when there is no log.
    """
    path = Path(work_dir) / "log.jsonl"
    if not path.is_file():
        return []
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        latest[(record["phase"], record["step"])] = record
    order = {"vae": 0, "unet": 1}
    return sorted(latest.values(), key=lambda r: (order.get(r["phase"], 2), r["step"]))


def plot_log(work_dir: str | Path, path: str | Path) -> Path:
    """Loss curves of a pretraining run (VAE reconstruction MSE, UNet ε-MSE, and the UNet's
    learning rate where the log has it) against steps, as a PNG."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(work_dir)
    if not records:
        raise DataError(f"No training log in {work_dir}; run scripts/pretrain_world_backbone.py first.")
    panels = [(phase, key, title) for phase, key, title in
              (("vae", "mse", "VAE reconstruction MSE"), ("unet", "loss", "UNet ε-MSE (unweighted, 50-step means)"))
              if any(r["phase"] == phase for r in records)]  # a continued run has no VAE phase
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    axes = list(axes[0])
    for ax, (phase, key, title) in zip(axes, panels):
        rows = [r for r in records if r["phase"] == phase]
        steps, values = [r["step"] for r in rows], np.array([r[key] for r in rows])
        ax.plot(steps, values, lw=0.8, alpha=0.45)
        if len(values) >= 20:  # a running mean over 20 records (1,000 steps) shows the trend
            ax.plot(steps[19:], np.convolve(values, np.ones(20) / 20, mode="valid"), lw=1.6, color="C0")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    rates = [r for r in records if r["phase"] == "unet" and "lr" in r]
    if rates:
        lr_ax = axes[-1].twinx()
        lr_ax.plot([r["step"] for r in rates], [r["lr"] for r in rates], color="gray", lw=1, ls="--")
        lr_ax.set_ylabel("learning rate (dashed)", fontsize=8, color="gray")
        lr_ax.tick_params(labelsize=7, colors="gray")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
