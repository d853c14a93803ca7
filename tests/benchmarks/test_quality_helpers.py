"""The statistics behind BENCHMARKS.md's quality tables, checked against hand-computed values."""

import json

import numpy as np
import pytest

from benchmarks import bench_ablations, bench_quality
from dreambat.albat.manifest import ManifestRecord, read_manifest, write_manifest
from dreambat.albat.selection import apply_selection, get_rule


def _row(method, subject, seed, loss, **metrics):
    base = {m: 0.0 for m in bench_quality.WORLD_METRICS}
    return base | {"method": method, "subject": subject, "seed": seed, "heldout_loss": loss} | metrics


def test_paired_difference_is_mean_and_standard_error_of_pairs():
    base = {("a", 0): _row("dreambooth", "a", 0, 1.0), ("b", 0): _row("dreambooth", "b", 0, 2.0),
            ("c", 0): _row("dreambooth", "c", 0, 3.0)}
    rows = [_row("exact", "a", 0, 0.5), _row("exact", "b", 0, 2.5), _row("exact", "c", 0, 2.0),
            _row("exact", "d", 0, 9.0)]  # no baseline for d: not paired
    mean, se, n = bench_quality.paired(rows, base, "heldout_loss")
    diffs = np.array([-0.5, 0.5, -1.0])
    assert n == 3
    assert mean == pytest.approx(diffs.mean())
    assert se == pytest.approx(diffs.std(ddof=1) / np.sqrt(3))
    assert bench_quality.paired(rows[:1], base, "heldout_loss") is None  # one pair has no SE


def test_versus_random_counts_pairs_with_lower_loss():
    rows = [_row("random", s, 0, 1.0) for s in "abc"]
    rows += [_row("exact", "a", 0, 0.9), _row("exact", "b", 0, 0.8), _row("exact", "c", 0, 1.2)]
    lines = bench_quality._versus_random(rows, ["random", "exact"])
    exact = next(line for line in lines if line.startswith("| exact"))
    assert exact.endswith("| 2/3 |")
    assert "| 3 |" in exact
    assert bench_quality._versus_random(rows, ["exact"]) == []  # nothing to compare with


def test_agreement_spearman_and_top_overlap():
    a = {f"k{i}": float(i) for i in range(10)}
    assert bench_ablations.agreement(a, dict(a), keep=3) == pytest.approx((1.0, 1.0))
    reversed_ = {k: -v for k, v in a.items()}
    rho, overlap = bench_ablations.agreement(a, reversed_, keep=3)
    assert rho == pytest.approx(-1.0) and overlap == 0.0
    partial = {k: v for k, v in a.items() if k in {"k0", "k8", "k9"}}  # only common keys count
    assert bench_ablations.agreement(a, partial, keep=2) == pytest.approx((1.0, 1.0))
    assert bench_ablations.agreement(a, {"k0": 1.0}, keep=2) is None


def test_negated_manifest_makes_the_top_rule_keep_the_lowest_scores(tmp_path):
    scores = [0.3, -2.0, 1.5, -0.1, None, 0.7, -1.0]
    records = [ManifestRecord(index=i, key=f"k{i}", url="shard.tar", caption="c", score=z,
                              status="scored" if z is not None else "skipped",
                              reason=None if z is not None else "nonfinite_loss", selected=bool(i % 2))
               for i, z in enumerate(scores)]
    work = tmp_path / "seed0"
    write_manifest(records, work / "exact" / "selection.jsonl", fingerprint={"test": 1})
    negated = read_manifest(bench_quality.negated_manifest(work))
    assert [r.score for r in negated] == [None if z is None else -z for z in scores]
    assert all(r.selected is None for r in negated)
    result = get_rule("albat", num_samples=3).select(negated)
    kept = [r.key for r in apply_selection(negated, result) if r.selected]
    assert sorted(kept) == ["k1", "k3", "k6"]  # Z = -2.0, -1.0, -0.1: the three lowest
    with pytest.raises(SystemExit, match="exact"):
        bench_quality.negated_manifest(tmp_path / "nothing")


def test_sweep_arguments_change_only_their_setting():
    args = bench_ablations.parse_args(["--subjects", "a", "b", "--seeds", "0", "1", "--max_candidates", "1000"])
    gamma = bench_ablations.value_argv(bench_ablations.SWEEPS["gamma"], 0.9, args)
    assert gamma[gamma.index("--gamma") + 1] == "0.9"
    assert gamma[gamma.index("--max_candidates") + 1] == "1000"
    assert gamma[gamma.index("--tag") + 1] == "gamma-0.9"
    pool = bench_ablations.value_argv(bench_ablations.SWEEPS["pool"], 0.25, args)
    assert pool[pool.index("--max_candidates") + 1] == "250"  # the pool is the first quarter
    assert bench_quality.parse_args(pool).max_candidates == 250
    photos = bench_ablations.value_argv(bench_ablations.SWEEPS["photos"], 2, args)
    parsed = bench_quality.parse_args(photos)
    assert parsed.num_subject_images == 2 and parsed.methods == ["dreambooth", "random", "exact"]


def test_sweep_table_takes_dreambooth_from_the_reference_when_the_setting_does_not_change_it(tmp_path):
    ref = [_row("dreambooth", s, 0, 1.0) for s in "ab"] + [_row("exact", s, 0, 0.9) for s in "ab"] \
        + [_row("random", s, 0, 0.95) for s in "ab"] + [_row(m, "z", 0, 5.0) for m in ("dreambooth", "exact")]
    gamma = [_row("exact", "a", 0, 0.8), _row("exact", "b", 0, 0.7),
             _row("random", "a", 0, 0.9), _row("random", "b", 0, 0.9)]
    for tag, rows in (("ref", ref), ("gamma-0.75", gamma)):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = bench_ablations.parse_args(["--output_dir", str(tmp_path), "--reference_tag", "ref", "--seeds", "0"])
    table = bench_ablations.sweep_table(bench_ablations.SWEEPS["gamma"], args)
    exact_05 = next(line for line in table.splitlines() if line.startswith("| 0.5 | exact"))
    assert exact_05.startswith("| 0.5 | exact | 2 | 0.90000")  # subject z was not swept: left out
    exact_075 = next(line for line in table.splitlines() if line.startswith("| 0.75 | exact"))
    assert "0.75000 (-0.25000 ± 0.05000*)" in exact_075  # vs the reference's DreamBooth rows
    assert exact_075.rstrip(" |").endswith("-0.15000 ± 0.05000")  # ALBAT minus random


def test_per_subject_differences_are_paired_by_seed():
    rows = [_row("dreambooth", "a", 0, 1.0) | {"class_word": "star"}, _row("dreambooth", "a", 1, 3.0) | {"class_word": "star"},
            _row("exact", "a", 0, 0.5) | {"class_word": "star"}, _row("exact", "a", 1, 3.5) | {"class_word": "star"}]
    table = bench_quality.per_subject(rows, ["dreambooth", "exact"])
    line = next(line for line in table.splitlines() if line.startswith("| a |"))
    assert line == "| a | star | 2 | 2.00000 | +0.00000 |"  # (-0.5 + 0.5) / 2
