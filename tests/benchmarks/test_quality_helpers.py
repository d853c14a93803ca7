"""The statistics behind BENCHMARKS.md's quality tables, checked against hand-computed values."""

import json

import numpy as np
import pytest

from benchmarks import bench_ablations, bench_curves, bench_quality
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


def test_tables_take_rows_written_before_pres_and_div():
    """results.jsonl rows from before PRES / DIV / class drift lack those keys; new rows may hold None."""
    prior = ("pres", "div", "class_subject_fidelity")
    old = [{k: v for k, v in _row(m, "a", 0, 1.0).items() if k not in prior} for m in ("dreambooth", "exact")]
    new = [_row("dreambooth", "a", 1, 1.0, pres=None), _row("exact", "a", 1, 0.9, pres=0.5)]
    rows = [r | {"pool": "clean", "photos": 5, "step": 10} for r in old + new]
    line = next(line for line in bench_curves.curve_table(rows).splitlines() if "| exact |" in line)
    assert line.endswith("| 0.5000 | 0.0000 | 0.0000 |")  # the means of the rows that have them
    assert "| exact |" in bench_quality.summarise(rows, ["dreambooth", "exact"])
    assert bench_quality.paired(rows, {(r["subject"], r["seed"]): r for r in rows[:1]}, "pres") is None


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
    records = [ManifestRecord(index=i, key=f"k{i}", source={"url": "shard.tar", "caption": "c"}, score=z,
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


def _curve_row(method, subject, seed, step, **metrics):
    row = {m: 0.5 for m in bench_quality.WORLD_METRICS}
    return row | {"method": method, "subject": subject, "seed": seed, "step": step, "pool": "clean", "photos": 5,
                  "selection": None} | metrics


def test_curves_pair_bat_with_dreambooth_at_equal_subject_exposure():
    from benchmarks import bench_curves

    rows = []
    for subject, offset in (("a", 0.0), ("b", 0.1), ("c", 0.3)):
        rows += [_curve_row("dreambooth", subject, 0, 200, subject_fidelity=0.2 + offset),
                 _curve_row("dreambooth", subject, 0, 400, subject_fidelity=0.4 + offset),
                 _curve_row("random", subject, 0, 200, subject_fidelity=0.1 + offset),
                 _curve_row("random", subject, 0, 400, subject_fidelity=0.25 + offset)]
    # equal steps: random - dreambooth at 400 is -0.15 on every subject
    steps = bench_curves.difference_table(rows, "dreambooth", metrics=("subject_fidelity",))
    line = next(l for l in steps.splitlines() if l.startswith("| clean | 5 | 400 | random"))
    assert "-0.1500 ± 0.0000*" in line
    # equal exposure at γ = 0.5: random at 400 vs dreambooth at 200 is +0.05 on every subject
    exposure = bench_curves.exposure_table(rows, 0.5)
    line = next(l for l in exposure.splitlines() if l.startswith("| clean | 5 | 200 | 400 | random"))
    assert "+0.0500 ± 0.0000*" in line
    assert "| 400 | 800 |" not in exposure  # no BAT run at step 800: no pair
    curve = bench_curves.curve_table(rows)
    assert "| clean | 5 | dreambooth | 400 | 3 |" in curve


def test_curves_write_tables_composition_and_tradeoff_plot(tmp_path):
    from benchmarks import bench_curves

    kept = {f"{w}_{n}": v for w, v in (("kept", 0.5), ("pool", 0.1))
            for n in ("class", "color", "pattern", "bad_caption", "degraded", "duplicate")}
    rows = [_curve_row(m, s, seed, step, dino=0.3 + step / 1000, clip_t=0.7 - step / 1000,
                       selection=None if m == "dreambooth" else kept)
            for m in ("dreambooth", "oracle_class") for s in "ab" for seed in (0, 1) for step in (200, 400)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = bench_curves.write_tables(tmp_path, 0.5)
    assert "| clean | oracle_class | 4 | 0.500 / 0.100 |" in text
    assert "minus dreambooth" in text and "equal subject exposure" in text
    assert (tmp_path / "summary.md").read_text() == text
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000


def test_curves_run_end_to_end_with_an_oracle_and_resume(tmp_path):
    """Two methods on a 120-image noisy pool, checkpoints at 2 and 4 steps, one prompt: every
    (method, step) and the base backbone get a row with every metric, and a rerun adds nothing."""
    from benchmarks import bench_curves
    from dreambat_world import data as world_data
    from dreambat_world.noisy_pool import NoiseConfig

    pool = tmp_path / "pool"
    world_data.write_pool(pool, world_data.PoolConfig(n=120, per_shard=120, noise=NoiseConfig()))
    argv = ["--pool", "noisy", "--pool_dir", str(pool), "--output_dir", str(tmp_path / "out"), "--tag", "t",
            "--methods", "dreambooth", "oracle_class", "--subjects", "1", "--photos", "2", "--checkpoints", "2", "4",
            "--keep", "8", "--max_candidates", "120", "--num_prompts", "1", "--num_images", "1",
            "--inference_steps", "2"]
    bench_curves.main(argv)
    rows = bench_curves.load_rows(tmp_path / "out" / "t")
    assert sorted((r["method"], r["step"]) for r in rows) == [("base", 0), ("dreambooth", 2), ("dreambooth", 4),
                                                              ("oracle_class", 2), ("oracle_class", 4)]
    assert all(r["pool"] == "noisy" and r["photos"] == 2 and r["dino"] is not None for r in rows)
    oracle = next(r for r in rows if r["method"] == "oracle_class")
    assert oracle["selection"]["kept_class"] == 1.0 and oracle["selection"]["kept_bad_caption"] == 0.0
    bench_curves.main(argv)  # resumes: nothing new
    assert len(bench_curves.load_rows(tmp_path / "out" / "t")) == 5


def test_curves_refuse_to_mix_rows_made_with_other_settings(tmp_path):
    from benchmarks import bench_curves

    args = bench_curves.parse_args(["--output_dir", str(tmp_path)])
    root = tmp_path / "steps"
    root.mkdir()
    bench_curves.check_settings(root, args)  # nothing there yet
    (root / "settings.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}))
    (root / "results.jsonl").write_text("{}\n")
    bench_curves.check_settings(root, bench_curves.parse_args(["--output_dir", str(tmp_path), "--seeds", "1"]))
    with pytest.raises(SystemExit, match=r"--learning_rate 0.001 -> 0.0001.*another --tag"):
        bench_curves.check_settings(root, bench_curves.parse_args(["--output_dir", str(tmp_path),
                                                                   "--learning_rate", "1e-4"]))
