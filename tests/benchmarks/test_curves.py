"""bench_curves' matched-likeness fronts, subject exposure of the unmixed arms, and its settings
check, on synthetic rows with hand-computed numbers."""

import json

import pytest

from benchmarks import bench_curves, bench_quality


def _row(method, subject, seed, step, **metrics):
    # a row as written before PRES / DIV / class drift existed; tests that need them pass them
    row = {m: 0.5 for m in bench_quality.WORLD_METRICS if m not in ("pres", "div", "class_subject_fidelity")}
    return row | {"method": method, "subject": subject, "seed": seed, "step": step, "pool": "clean", "photos": 5,
                  "selection": None} | metrics


def test_value_at_reads_the_first_crossing_linearly_between_checkpoints():
    curve = [(0.0, 1.0), (0.5, 0.5), (0.3, 0.3), (0.8, 0.0)]  # DINO goes back down between the 2nd and 3rd
    assert bench_curves.value_at(curve, 0.4) == pytest.approx(0.6)  # first segment, not the third
    assert bench_curves.value_at(curve, 0.0) == 1.0
    assert bench_curves.value_at(curve, 0.6) == pytest.approx(0.3 + 0.3 / 0.5 * -0.3)
    assert bench_curves.value_at(curve, 0.9) is None  # never reached
    assert bench_curves.value_at([(0.2, 0.7)], 0.2) == 0.7 and bench_curves.value_at([], 0.2) is None


def _front_rows():
    """Every curve starts at the base point (DINO 0, CLIP-T 1). DreamBooth follows CLIP-T = 1 - DINO;
    random follows 1 - DINO/2 on subject a (two seeds) and 1 - DINO/4 on subject b (one seed)."""
    rows = []
    for subject, seed, slope in (("a", 0, 0.5), ("a", 1, 0.5), ("b", 0, 0.25)):
        rows += [_row("base", subject, seed, 0, dino=0.0, clip_t=1.0),
                 _row("dreambooth", subject, seed, 2, dino=0.4, clip_t=0.6),
                 _row("dreambooth", subject, seed, 4, dino=0.8, clip_t=0.2),
                 _row("random", subject, seed, 2, dino=0.2, clip_t=1 - slope * 0.2),
                 _row("random", subject, seed, 4, dino=0.6, clip_t=1 - slope * 0.6)]
    return rows


def test_matched_likeness_differences_are_clustered_by_subject():
    rows = _front_rows()
    paths = bench_curves.curves(rows, "dino", "clip_t")
    assert paths[("clean", 5, "random", "b", 0)] == [(0.0, 1.0), (0.2, 0.95), (0.6, 0.85)]
    # spans: DreamBooth reaches DINO 0..0.8, random 0..0.6: four levels inside 0..0.6
    assert bench_curves.likeness_levels(paths, "clean", 5) == [0.12, 0.24, 0.36, 0.48]
    table = bench_curves.matched_table(rows, "dreambooth", "dino", ("clip_t",))
    # at DINO L: random - dreambooth = L/2 on a, 3L/4 on b; subject means -> 5L/8 ± (L/4)/√2/√2 = L/8
    line = next(l for l in table.splitlines() if l.startswith("| clean | 5 | 0.240 | random"))
    assert line == "| clean | 5 | 0.240 | random | 3 | +0.1500 ± 0.0300* |"
    reverse = bench_curves.matched_table(rows, "random", "dino", ("clip_t",))
    assert "| clean | 5 | 0.480 | dreambooth | 3 | -0.3000 ± 0.0600* |" in reverse
    # subject fidelity is 0.5 on every row: no span, no table
    assert bench_curves.matched_table(rows, "dreambooth", "subject_fidelity", ("clip_t",)) == ""


def test_pres_front_and_plot_panel_appear_only_when_rows_carry_it(tmp_path):
    rows = _front_rows()
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = bench_curves.write_tables(tmp_path, 0.5)
    assert "Prompt following at matched dino, minus dreambooth" in text and "PRES" not in text
    for r in rows:
        r["pres"] = None if r["method"] == "base" else 1 - r["clip_t"]  # drift mirrors CLIP-T; base has none
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = bench_curves.write_tables(tmp_path, 0.5)
    assert "PRES (lower is better) at matched dino, minus random" in text
    pres = text.split("PRES (lower is better) at matched dino, minus dreambooth")[1]
    # no base point: the curves start at step 2 (DreamBooth spans 0.4..0.8, random 0.2..0.6) -> levels 0.44, 0.48, ...
    assert "| clean | 5 | 0.480 | random | 3 | -0.3000 ± 0.0600* |" in pres
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000


def test_prior_is_set_against_dreambooth_at_the_same_step_and_mixtures_at_s_over_one_minus_gamma():
    assert bench_curves.exposure_step("prior", 200, 0.5) == 200
    assert bench_curves.exposure_step("clip_text", 200, 0.75) == 800
    rows = []
    for subject, offset in (("a", 0.0), ("b", 0.2)):
        rows += [_row("dreambooth", subject, 0, 200, dino=0.3 + offset),
                 _row("prior", subject, 0, 200, dino=0.25 + offset), _row("prior", subject, 0, 400, dino=0.9),
                 _row("clip_text", subject, 0, 400, dino=0.4 + offset)]
    table = bench_curves.exposure_table(rows, 0.5)
    assert "| clean | 5 | 200 | 200 | prior | 2 |" in table and "-0.0500 ± 0.0000*" in table
    assert "| 200 | 400 | prior |" not in table
    line = next(l for l in table.splitlines() if "| clip_text |" in l)
    assert line.startswith("| clean | 5 | 200 | 400 | clip_text | 2 |") and "+0.1000 ± 0.0000*" in line


def test_paired_clusters_seeds_by_subject():
    base = {(s, seed): {"m": 0.0} for s in "ab" for seed in (0, 1, 2)}
    rows = [{"subject": "a", "seed": seed, "m": d} for seed, d in ((0, 1.0), (1, 3.0))] + \
        [{"subject": "b", "seed": 0, "m": 6.0}, {"subject": "b", "seed": 2, "m": None}]
    mean, se, n = bench_quality.paired(rows, base, "m")
    assert (mean, se, n) == pytest.approx((4.0, 2.0, 3))  # subject means 2 and 6, not the pair mean 10/3
    assert bench_quality.paired(rows[:2], base, "m") is None  # one subject: no standard error


def test_settings_saved_before_a_setting_existed_count_as_its_default(tmp_path):
    root = tmp_path / "steps"
    root.mkdir()
    old = {k: str(v) for k, v in vars(bench_curves.parse_args([])).items()
           if k not in ("batch_size", "train_text_encoder_ti")}
    (root / "settings.json").write_text(json.dumps(old))
    (root / "results.jsonl").write_text("{}\n")
    bench_curves.check_settings(root, bench_curves.parse_args([]))  # ran at batch size 4, as hard-coded before
    with pytest.raises(SystemExit, match="--batch_size 4 -> 8"):
        bench_curves.check_settings(root, bench_curves.parse_args(["--batch_size", "8"]))
    with pytest.raises(SystemExit, match="--train_text_encoder_ti False -> True"):
        bench_curves.check_settings(root, bench_curves.parse_args(["--train_text_encoder_ti"]))


def test_dreambooth_prior_and_base_rows_serve_every_pool(tmp_path):
    rows = _front_rows()
    noisy = [r | {"pool": "noisy", "clip_t": r["clip_t"] - 0.1} for r in rows if r["method"] == "random"]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + noisy))
    loaded = bench_curves.load_rows(tmp_path)
    # the noisy pool gets DreamBooth's and the base's rows, not random's clean ones
    assert sorted({(r["pool"], r["method"]) for r in loaded}) == [
        ("clean", "base"), ("clean", "dreambooth"), ("clean", "random"),
        ("noisy", "base"), ("noisy", "dreambooth"), ("noisy", "random")]
    assert len(loaded) == len(rows) + len(noisy) + 9
    table = bench_curves.matched_table(loaded, "dreambooth", "dino", ("clip_t",))
    clean = next(l for l in table.splitlines() if l.startswith("| clean | 5 | 0.240 | random"))
    noisy_line = next(l for l in table.splitlines() if l.startswith("| noisy | 5 | 0.240 | random"))
    assert clean == "| clean | 5 | 0.240 | random | 3 | +0.1500 ± 0.0300* |"
    # noisy random at DINO 0.24 (between its points at 0.2 and 0.6): 0.78 on a, 0.84 on b, against
    # DreamBooth's 0.76: subject means 0.02 and 0.08 -> +0.05 ± 0.03, within 2 SE
    assert noisy_line == "| noisy | 5 | 0.240 | random | 3 | +0.0500 ± 0.0300 |"
    assert bench_curves.row_key("noisy", 5, "prior", "a", 0, 2) == bench_curves.row_key("clean", 5, "prior", "a", 0, 2)
    assert bench_curves.row_key("noisy", 5, "albat", "a", 0, 2) != bench_curves.row_key("clean", 5, "albat", "a", 0, 2)


def test_rows_of_several_pools_get_one_plot_each(tmp_path, monkeypatch):
    rows = _front_rows()
    noisy = [r | {"pool": "noisy", "clip_t": r["clip_t"] - 0.1} for r in rows if r["method"] == "random"]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + noisy))
    plotted = []
    monkeypatch.setattr(bench_curves, "tradeoff_plot", lambda rows, path, pool=None: plotted.append(
        (path.name, pool, sorted({r["method"] for r in rows if r["pool"] == (pool or "clean")}))))
    bench_curves.write_tables(tmp_path, 0.5)
    assert plotted == [("tradeoff.png", None, ["base", "dreambooth", "random"]),
                       ("tradeoff-clean.png", "clean", ["base", "dreambooth", "random"]),
                       ("tradeoff-noisy.png", "noisy", ["base", "dreambooth", "random"])]


def test_albat_bottom_keeps_the_lowest_albat_scores_and_leaves_skipped_candidates_skipped(tmp_path):
    from dreambat.albat import ManifestRecord, read_manifest, write_manifest
    from dreambat.albat.selection.base import scored_best_first

    from benchmarks.bench_curves import bottom_manifest

    scores = [0.3, -0.2, None, 0.9, -0.7, 0.1]
    albat = tmp_path / "albat" / "selection.jsonl"
    albat.parent.mkdir()
    write_manifest([ManifestRecord(i, f"k{i}", score=z, status="scored" if z is not None else "skipped",
                                   reason=None if z is not None else "corrupt_image", selected=i in (0, 3))
                    for i, z in enumerate(scores)], albat, fingerprint={"run": "albat"})
    records = read_manifest(bottom_manifest(albat, tmp_path / "bottom" / "selection.jsonl"))
    assert [r.key for r in records] == [f"k{i}" for i in range(6)]
    assert [r.score for r in records] == [-0.3, 0.2, None, -0.9, 0.7, -0.1]
    assert records[2].status == "skipped" and records[2].reason == "corrupt_image"
    assert all(r.selected is None for r in records)
    assert [r.key for r in scored_best_first(records)[:2]] == ["k4", "k1"]  # the two lowest ALBAT scores
