"""bench_identifier: the identifier's distance from the class prompt, before and after pivotal tuning."""

import json

from benchmarks import bench_identifier
from dreambat.training.config import TrainConfig
from dreambat.training.dreambooth import run_dreambooth
from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR, SUBJECTS_DIR


def test_distances_of_sks_random_start_and_a_trained_lora(tmp_path):
    subject = "dotted_purple_star"
    lora = tmp_path / "runs" / "clean" / subject / "seed0" / "dreambooth"
    run_dreambooth(TrainConfig(
        pretrained_model_name_or_path=str(ASSETS_DIR / BACKBONE_DIR),
        instance_data_dir=str(ASSETS_DIR / SUBJECTS_DIR / subject / "train"), instance_prompt="a photo of TOK star",
        output_dir=str(lora), seed=0, train_batch_size=2, max_train_steps=2, checkpointing_steps=1,
        learning_rate=1e-3, report_to="none", train_text_encoder_ti=True))
    bench_identifier.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    rows = [json.loads(line) for line in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    kinds = [r["identifier"] for r in rows]
    assert kinds.count("sks") == kinds.count("new tokens, random start") == 14
    trained = [r for r in rows if r["identifier"] == "new tokens, trained"]
    assert len(trained) == 1 and trained[0]["subject"] == subject  # checkpoint-1 and -2 are not counted
    sks = next(r for r in rows if r["identifier"] == "sks" and r["subject"] == subject)
    # "sks" reads like the article "a"; new tokens do not, and a class-word change is far in both
    assert sks["to_class_prompt"] < 0.2 < trained[0]["to_class_prompt"]
    assert min(sks["class_word_change"], trained[0]["class_word_change"]) > 0.3
    assert "| sks | 14 |" in (tmp_path / "out" / "table.md").read_text()
