"""Adding a selection rule is one class and one registration: a rule registered here runs end to end
through ``dreambat score`` and ``train_dreambooth_bat.py`` (their in-process entry points), with no
other file touched."""

import json

import pytest

from dreambat.albat import (
    INFLUENCE,
    RuleNeeds,
    SelectionResult,
    SelectionRule,
    SettingError,
    read_manifest,
    register_rule,
    unregister_rule,
)
from dreambat.cli import parse_run_config, score_main, train_main
from dreambat.data.shard_writer import write_shards
from dreambat_world.synthetic import backbone_records
from tests.bat.test_pipeline import _flags


class OddRanks(SelectionRule):
    """Ranks by influence and keeps the 1st, 3rd, 5th, ... best of the top 2N (a toy rule)."""

    name = "odd_ranks"
    needs = RuleNeeds(scores=INFLUENCE, keep=("num_samples",), keep_required=True)
    summary = "every other ALBAT rank"
    help = "toy"

    def __init__(self, *, num_samples):
        if num_samples < 1:
            raise SettingError("selection rule 'odd_ranks'", "num_samples", num_samples, "invalid", "an integer >= 1")
        self.num_samples = num_samples

    def select(self, records):
        ranked = sorted((r for r in records if r.has_score), key=lambda r: (-r.score, r.index))
        kept = ranked[: 2 * self.num_samples : 2]
        return SelectionResult(sorted(r.index for r in kept), None, self.num_samples, len(kept),
                               sum(r.has_score and r.score > 0 for r in records))


class LongestCaptions(SelectionRule):
    """Reads no score: keeps the N candidates with the longest captions (a toy rule)."""

    name = "longest_captions"
    needs = RuleNeeds(keep=("num_samples",), keep_required=True)
    summary = "the longest captions"
    help = "toy"

    def __init__(self, *, num_samples):
        self.num_samples = num_samples

    def select(self, records):
        pool = sorted((r for r in records if r.status != "skipped"), key=lambda r: (-len(r.source["caption"]), r.index))
        kept = pool[: self.num_samples]
        return SelectionResult(sorted(r.index for r in kept), None, self.num_samples, len(kept), 0)


@pytest.fixture
def toy_rules():
    for rule in (OddRanks, LongestCaptions):
        register_rule(rule)
    yield
    for rule in (OddRanks, LongestCaptions):
        unregister_rule(rule.name)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin-shards") / "shard-00000.tar"
    write_shards(list(backbone_records(10, seed=2, size=32)), path)
    return str(path)


def _expected(records, rule):
    return rule.select([r for r in records]).selected_indices


def test_a_registered_rule_runs_through_train_dreambooth_bat(toy_rules, tiny_backbone, subject_dir, tmp_path, shard):
    out = tmp_path / "bat"
    flags = _flags(tiny_backbone, subject_dir, out, shard, "--report_to", "none", "--selection", "odd_ranks",
                   "--num_backbone_samples", "3", validation=False)
    assert train_main(flags, prog="train_dreambooth_bat.py") == 0
    records = read_manifest(out / "selection.jsonl")
    assert all(r.has_score for r in records)  # it declared influence scores: the surrogate was trained and scored
    assert [r.index for r in records if r.selected] == _expected(records, OddRanks(num_samples=3))
    report = json.loads((out / "bat_report.json").read_text())
    assert report["stages"]["surrogate"] == "ran" and report["stages"]["score"] == "ran"
    assert report["counts"]["selected"] == 3 and report["counts"]["training_samples"]["backbone"] > 0
    assert "every other ALBAT rank" in (out / "README.md").read_text()
    # Rerunning with another registered rule reuses the surrogate and the scores (only selection changes).
    again = _flags(tiny_backbone, subject_dir, out, shard, "--report_to", "none", "--selection", "albat",
                   "--num_backbone_samples", "2", validation=False)
    assert train_main(again, prog="train_dreambooth_bat.py") == 0
    report = json.loads((out / "bat_report.json").read_text())
    assert report["stages"]["surrogate"] == "reused" and report["stages"]["score"] == "reused"


def test_a_rule_without_scores_needs_no_surrogate(toy_rules, tiny_backbone, subject_dir, tmp_path, shard):
    out = tmp_path / "bat"
    flags = _flags(tiny_backbone, subject_dir, out, shard, "--report_to", "none", "--selection", "longest_captions",
                   "--num_backbone_samples", "4", validation=False)
    assert train_main(flags, prog="train_dreambooth_bat.py") == 0
    report = json.loads((out / "bat_report.json").read_text())
    assert report["stages"]["surrogate"] == "skipped" and report["stages"]["score"] == "skipped"
    records = read_manifest(out / "selection.jsonl")
    assert all(r.score is None for r in records)
    assert [r.index for r in records if r.selected] == _expected(records, LongestCaptions(num_samples=4))
    assert not (out / "surrogate").exists()


def test_a_registered_rule_runs_through_dreambat_score(toy_rules, tiny_backbone, subject_dir, tmp_path, shard):
    surrogate = tmp_path / "surrogate"
    assert train_main(_flags(tiny_backbone, subject_dir, surrogate, shard, "--report_to", "none",
                             "--selection", "none", validation=False)) == 0
    out = tmp_path / "scores"
    flags = ["--pretrained_model_name_or_path", str(tiny_backbone), "--instance_data_dir", str(subject_dir),
             "--instance_prompt", "a photo of sks star", "--backbone_shards", shard, "--output_dir", str(out),
             "--surrogate_lora", str(surrogate), "--num_score_timesteps", "2", "--reference_draws", "2",
             "--score_batch_size", "4", "--selection", "odd_ranks", "--num_backbone_samples", "2"]
    assert score_main(flags, prog="dreambat score") == 0
    records = read_manifest(out / "selection.jsonl")
    assert [r.index for r in records if r.selected] == _expected(records, OddRanks(num_samples=2))
    report = json.loads((out / "score_report.json").read_text())
    assert report["counts"]["selected"] == 2 and report["settings"]["selection"]["selection"] == "odd_ranks"


def test_the_rule_declarations_drive_the_checks(toy_rules, tiny_backbone, subject_dir, tmp_path, shard, capsys):
    base = _flags(tiny_backbone, subject_dir, tmp_path / "x", shard, validation=False)
    with pytest.raises(SystemExit):  # keep_required: refused while parsing, with the rule's own words
        parse_run_config(base + ["--selection", "odd_ranks"])
    assert "--selection odd_ranks keeps a count: pass --num_backbone_samples" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a keep setting it does not take
        parse_run_config(base + ["--selection", "odd_ranks", "--backbone_fraction", "0.5"])
    assert "--selection odd_ranks does not take --backbone_fraction: use --num_backbone_samples" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # its own value check, worded with the flag
        parse_run_config(base + ["--selection", "odd_ranks", "--num_backbone_samples", "0"])
    assert "--num_backbone_samples must be an integer >= 1, got 0" in capsys.readouterr().err
    settings = parse_run_config(base + ["--selection", "longest_captions", "--num_backbone_samples", "1"])
    assert not settings.needs_surrogate and not settings.needs_scoring and settings.gamma == 0.5
    unregister_rule("longest_captions")
    with pytest.raises(SystemExit):
        parse_run_config(base + ["--selection", "longest_captions", "--num_backbone_samples", "1"])
    assert "invalid choice: 'longest_captions'" in capsys.readouterr().err
