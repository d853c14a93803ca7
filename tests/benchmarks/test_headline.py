"""The headline's comparisons and verdicts on synthetic rows with hand-computed differences."""

import json

from benchmarks import bench_curves, bench_headline, bench_quality


def _row(method, subject, seed, step, pool="noisy", **metrics):
    row = {m: 0.5 for m in bench_quality.WORLD_METRICS}
    return row | {"method": method, "subject": subject, "seed": seed, "step": step, "pool": pool, "photos": 1,
                  "selection": None, "train_seconds": 10.0} | metrics


def _rows():
    """Three subjects, one seed. Every curve starts at the base (DINO 0, CLIP-T 1, PRES 0.2).
    prior: CLIP-T = 1 - DINO, PRES 0.2 flat; random: CLIP-T = 1 - DINO, PRES rises to 0.6;
    albat: CLIP-T = 1 - DINO/2 + a subject offset, PRES like random. So at every matched DINO, albat
    beats both on CLIP-T beyond 2 SE, equals random on PRES and loses to prior on it."""
    rows = []
    for subject, offset in (("a", 0.00), ("b", 0.01), ("c", 0.02)):
        rows.append(_row("base", subject, 0, 0, dino=0.0, clip_t=1.0, pres=0.2))
        for step, dino in ((2, 0.4), (4, 0.8)):
            rows.append(_row("prior", subject, 0, step, pool="clean", dino=dino, clip_t=1 - dino, pres=0.2))
            rows.append(_row("random", subject, 0, step, dino=dino, clip_t=1 - dino, pres=0.2 + dino / 2))
            rows.append(_row("albat", subject, 0, step, dino=dino, clip_t=1 - dino / 2 + offset * dino,
                             pres=0.2 + dino / 2))
    return bench_curves.with_pool_free_rows(rows)


def test_verdicts_count_matched_comparisons_beyond_2se_in_the_right_direction():
    result = bench_headline.headline(_rows(), gamma=0.5)
    verdicts = {(v["method"], v["reference"]): v for v in result["verdicts"] if v["pool"] == "noisy"}
    against_random = verdicts[("albat", "random")]
    # CLIP-T better beyond 2 SE at all 4 DINO levels; PRES equal; prompt fidelity and subject fidelity flat
    assert against_random["by_metric"]["clip_t"] == {"better": 4, "worse": 0, "comparisons": 4}
    assert against_random["by_metric"]["pres"]["better"] == against_random["by_metric"]["pres"]["worse"] == 0
    assert against_random["verdict"] == "wins"
    against_prior = verdicts[("albat", "prior")]
    assert against_prior["by_metric"]["pres"] == {"better": 0, "worse": 4, "comparisons": 4}  # PRES lower is better
    assert against_prior["verdict"] == "mixed"
    assert verdicts[("random", "prior")]["verdict"] == "loses"
    # at DINO 0.32 (the second of levels 0.16 .. 0.64): albat - random CLIP-T = 0.16 + offset × 0.32
    level = next(d for d in result["matched_likeness"] if d["method"] == "albat" and d["reference"] == "random"
                 and d["metric"] == "clip_t" and d["x_metric"] == "dino" and d["level"] == 0.32)
    assert abs(level["mean"] - (0.16 + 0.01 * 0.32)) < 1e-9 and level["pairs"] == 3


def test_equal_exposure_sets_a_mixture_at_twice_the_steps_of_prior_and_the_same_as_random():
    assert bench_curves.exposure_step("albat", 2, 0.5, reference="prior") == 4
    assert bench_curves.exposure_step("albat", 2, 0.5, reference="random") == 2
    assert bench_curves.exposure_step("prior", 4, 0.5, reference="random") == 2
    result = bench_headline.headline(_rows(), gamma=0.5)
    exposure = {(d["reference"], d["method"], d["step"], d["method_step"], d["metric"]): d
                for d in result["equal_exposure"] if d["pool"] == "noisy"}
    # albat at step 4 (DINO 0.8) against prior at step 2 (DINO 0.4)
    assert abs(exposure[("prior", "albat", 2, 4, "dino")]["mean"] - 0.4) < 1e-9
    assert ("prior", "albat", 4, 8, "dino") not in exposure  # no step 8: no comparison
    assert abs(exposure[("random", "albat", 2, 2, "dino")]["mean"]) < 1e-12


def test_write_headline_writes_the_json_tables_and_one_front_per_case(tmp_path):
    rows_file = tmp_path / "results.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in _rows() if r["pool"] == "noisy" or r["method"] == "prior"))
    result = bench_headline.write_headline([rows_file], tmp_path / "out", gamma=0.5)
    saved = json.loads((tmp_path / "out" / "headline.json").read_text())
    assert saved["verdicts"] == json.loads(json.dumps(result["verdicts"]))
    # prior's rows (clean) are shared with the noisy pool: two cases
    assert [(c["pool"], c["photos"], c["subjects"]) for c in saved["cases"]] == [("clean", 1, 3), ("noisy", 1, 3)]
    assert "| noisy | 1 | albat | random | **wins** |" in (tmp_path / "out" / "headline.md").read_text()
    for case in ("clean-1photos", "noisy-1photos"):
        assert (tmp_path / "out" / f"headline-{case}.png").stat().st_size > 10_000


def test_validity_sets_albat_against_its_own_bottom_only():
    """albat_bottom follows random's curves, so albat's top beats its bottom exactly as it beats random."""
    rows = _rows()
    rows += [{**r, "method": "albat_bottom"} for r in rows if r["method"] == "random"]
    result = bench_headline.headline(rows, gamma=0.5)
    validity = result["validity"]
    assert (validity["arm"], validity["reference"]) == ("albat", "albat_bottom")
    assert {d["method"] for d in validity["equal_steps"] + validity["matched_likeness"]} == {"albat"}
    [verdict] = [v for v in validity["verdicts"] if v["pool"] == "noisy"]
    assert verdict["by_metric"]["clip_t"] == {"better": 4, "worse": 0, "comparisons": 4}
    assert verdict["verdict"] == "wins"
    # step 2 (DINO 0.4): albat - bottom CLIP-T = 0.2 + 0.4 × offset, averaged over offsets 0, 0.01, 0.02
    [step2] = [d for d in validity["equal_steps"] if d["pool"] == "noisy" and d["step"] == 2 and d["metric"] == "clip_t"]
    assert abs(step2["mean"] - (0.2 + 0.4 * 0.01)) < 1e-9 and step2["pairs"] == 3
    # without a bottom arm there is no validity block
    assert bench_headline.headline(_rows(), gamma=0.5)["validity"] is None
