"""Golden check for refactors: run the command line on the tests' tiny settings and fingerprint every
output (LoRA weights, manifests, reports, run records, model cards), so two checkouts can be
compared file by file.

    python -m benchmarks.golden_outputs run --repo /path/to/old-checkout --out old.json
    python -m benchmarks.golden_outputs run --repo . --out new.json
    python -m benchmarks.golden_outputs compare old.json new.json

Both runs use the same work folder (``--work``, default ``/tmp/dreambat-golden``), so the paths
written into manifests and reports are equal; timings are left out (they differ on every run),
and so are checkpoints' optimizer states, logs and images. The runs cover ``train_dreambooth_bat.py``
with each selection rule, a re-selection that reuses the scores, training from a manifest, and
``dreambat score`` with a count, a threshold and CLIP retrieval.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SETUP = """
import sys
from pathlib import Path
from dreambat.backbone.tiny import write_tiny_backbone
from dreambat.data.shard_writer import write_shards
from dreambat.eval.tiny import write_tiny_evaluators
from dreambat_world.synthetic import backbone_records
work = Path(sys.argv[1])
write_tiny_backbone(work / "sd", "test", seed=0)
records = list(backbone_records(16, seed=1, size=32))
records.insert(5, {"key": "corrupt", "image": b"not a jpeg", "caption": "broken"})
write_shards(records, work / "shard-00000.tar")
found = write_tiny_evaluators(work / "evaluators", seed=0)
(work / "clip.txt").write_text(f"{found.clip_model}\\n{found.clip_pretrained}")
"""
SKIPPED_NAMES = {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"}
SKIPPED_PARTS = {"logs", "archive"}


def _runs(repo: Path, work: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (output folder, command-line arguments after the interpreter)."""
    clip_model, clip_pretrained = (work / "clip.txt").read_text().split("\n")
    shard = str(work / "shard-00000.tar")
    base = ["--pretrained_model_name_or_path", str(work / "sd"), "--instance_data_dir", str(work / "subject"),
            "--instance_prompt", "a photo of sks star", "--seed", "0"]
    estimator = ["--num_score_timesteps", "2", "--score_batch_size", "4", "--reference_draws", "2"]
    train = [str(repo / "train_dreambooth_bat.py"), *base, "--train_batch_size", "2", "--max_train_steps", "4",
             "--learning_rate", "1e-3", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1",
             "--surrogate_steps", "3", *estimator]
    pool = ["--backbone_shards", shard]
    clip = ["--clip_model", clip_model, "--clip_pretrained", clip_pretrained]
    score = ["-m", "dreambat", "score", *base, *pool, *estimator,
             "--surrogate_lora", str(work / "train_albat" / "surrogate")]
    return {
        "train_albat": ("train_albat", [*train, *pool, "--num_backbone_samples", "5"]),
        "train_albat_reselect": ("train_albat", [*train, *pool, "--num_backbone_samples", "3"]),
        "train_albat_default": ("train_albat_default", [*train, *pool]),
        "train_random": ("train_random", [*train, *pool, "--selection", "random", "--num_backbone_samples", "4"]),
        "train_clip": ("train_clip", [*train, *pool, "--selection", "clip", "--num_backbone_samples", "4", *clip]),
        "train_none": ("train_none", [*train, "--selection", "none"]),
        "score_albat": ("score_albat", [*score, "--num_backbone_samples", "6"]),
        "score_albat_threshold": ("score_albat", [*score, "--score_threshold", "0.0"]),
        "score_clip": ("score_clip", ["-m", "dreambat", "score", *base, *pool, "--selection", "clip",
                                      "--backbone_fraction", "0.5", *clip]),
        "train_from_manifest": ("train_from_manifest", [*train, *pool, "--selection_manifest",
                                                        str(work / "score_albat" / "selection.jsonl"),
                                                        "--num_backbone_samples", "2"]),
    }


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "timings"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _fingerprint(path: Path) -> str:
    if path.suffix == ".json":
        return json.dumps(_without_timings(json.loads(path.read_text())), sort_keys=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(repo: Path, out: Path, work: Path) -> None:
    """Run every command of :func:`_runs` with ``repo``'s code and write each output's fingerprint."""
    repo, work = repo.resolve(), work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(repo)}
    subprocess.run([sys.executable, "-c", SETUP, str(work)], check=True, env=env, cwd=repo)
    shutil.copytree(repo / "assets" / "subject", work / "subject")
    result = {}
    for name, (folder, args) in _runs(repo, work).items():
        folder = work / folder
        done = subprocess.run([sys.executable, *args, "--output_dir", str(folder)], env=env, cwd=repo,
                              capture_output=True, text=True)
        files = {
            str(p.relative_to(folder)): _fingerprint(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".png" and p.name not in SKIPPED_NAMES
            and not SKIPPED_PARTS & set(p.relative_to(folder).parts)
        }
        result[name] = {"returncode": done.returncode, "stderr": done.stderr[-2000:] if done.returncode else "",
                        "files": files}
        print(f"{name}: exit {done.returncode}, {len(files)} files", flush=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


def compare(before: Path, after: Path) -> int:
    """Print every output that differs; exit status 1 if any does."""
    old, new = json.loads(before.read_text()), json.loads(after.read_text())
    differences, files = 0, 0
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name, {}), new.get(name, {})
        if a.get("returncode") != b.get("returncode"):
            differences += 1
            print(f"{name}: exit {a.get('returncode')} -> {b.get('returncode')} {b.get('stderr', '')[-300:]}")
        for file in sorted(a.get("files", {}).keys() | b.get("files", {}).keys()):
            files += 1
            x, y = a.get("files", {}).get(file), b.get("files", {}).get(file)
            if x != y:
                differences += 1
                at = next((i for i, (p, q) in enumerate(zip(x or "", y or "")) if p != q), 0)
                print(f"{name}/{file} differs near: {str(x)[max(at - 80, 0):at + 80]!r}\n"
                      f"{' ' * len(name + file)}      now: {str(y)[max(at - 80, 0):at + 80]!r}")
    print(f"{len(old)} runs, {files} files, {differences} differences")
    return 1 if differences else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the commands with one checkout's code")
    run_parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    run_parser.add_argument("--out", type=Path, required=True)
    run_parser.add_argument("--work", type=Path, default=Path("/tmp/dreambat-golden"))
    compare_parser = commands.add_parser("compare", help="compare two runs' fingerprints")
    compare_parser.add_argument("before", type=Path)
    compare_parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.repo, args.out, args.work)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    raise SystemExit(main())
