"""The selection → training hand-off: the final LoRA trains on exactly the manifest's kept rows."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from dreambat.albat.manifest import read_manifest
from dreambat.bat.backbone_data import SelectedBackboneDataset
from dreambat.bat.pipeline import run_bat
from dreambat.cli import parse_run_config
from dreambat.data.records import candidate_record, record_caption
from dreambat.data.shard_writer import write_shards
from dreambat.data.shards import ShardReader
from dreambat.errors import DataError
from dreambat.training import loop
from dreambat_world.synthetic import backbone_records
from tests.conftest import REPO

STEPS, BATCH, GAMMA, KEEP = 12, 2, 0.5, 4


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("handoff") / "shard-00000.tar"
    write_shards(list(backbone_records(10, seed=5, size=32)), path)
    return str(path)


def test_the_final_training_reads_the_kept_rows_no_more_no_less(tiny_backbone, shard, tmp_path, monkeypatch):
    read = []
    original = loop.training_loss

    def recording(backbone, config, batch, text_encoder, unet, **kwargs):
        read.extend(zip(batch["sources"], batch["keys"], batch["prompts"]))
        return original(backbone, config, batch, text_encoder, unet, **kwargs)

    monkeypatch.setattr(loop, "training_loss", recording)
    out = tmp_path / "out"
    run_bat(parse_run_config([
        "--pretrained_model_name_or_path", str(tiny_backbone), "--instance_data_dir", str(REPO / "assets" / "subject"),
        "--instance_prompt", "a photo of sks star", "--output_dir", str(out), "--seed", "0",
        "--train_batch_size", str(BATCH), "--max_train_steps", str(STEPS), "--backbone_shards", shard,
        "--selection", "random", "--num_backbone_samples", str(KEEP), "--augmentation_ratio", str(GAMMA)]))

    records = read_manifest(out / "selection.jsonl")
    kept = {r.key: record_caption(r) for r in records if r.selected}
    assert len(records) == 10 and len(kept) == KEEP
    backbone_rows = [(key, prompt) for source, key, prompt in read if source == "backbone"]
    assert {key for key, _ in backbone_rows} == set(kept)  # every kept image, and nothing else
    assert all(prompt == kept[key] for key, prompt in backbone_rows)  # each with its own caption
    subject_rows = [prompt for source, _, prompt in read if source == "subject"]
    assert set(subject_rows) == {"a photo of sks star"}
    assert len(read) == STEPS * BATCH
    # as often as the sampler says: the report's count (from the plan) is what was read, and the
    # share is γ within three binomial standard deviations
    report = json.loads((out / "bat_report.json").read_text())
    assert report["counts"]["training_samples"] == {"backbone": len(backbone_rows), "subject": len(subject_rows)}
    slots = STEPS * BATCH
    assert abs(len(backbone_rows) - GAMMA * slots) <= 3 * math.sqrt(slots * GAMMA * (1 - GAMMA))
    # each kept image about equally often: a permutation per pass, so counts differ by at most the passes
    counts = Counter(key for key, _ in backbone_rows)
    assert max(counts.values()) - min(counts.values()) <= math.ceil(slots / KEEP)


def test_the_dataset_holds_the_selected_rows_only_and_names_a_vanished_one(shard):
    samples = list(ShardReader(shard))
    records = [candidate_record(s.index, s.key, s.url, s.caption, float(s.index), selected=s.index % 3 == 0)
               for s in samples]
    data = SelectedBackboneDataset(records, 32)
    assert data.keys == [s.key for s in samples if s.index % 3 == 0]
    assert [data[i]["prompt"] for i in range(len(data))] == [s.caption for s in samples if s.index % 3 == 0]
    assert tuple(data[0]["pixel_values"].shape) == (3, 32, 32)
    gone = [*records, candidate_record(99, "not-in-the-shard", samples[0].url, "a caption", 1.0, selected=True)]
    with pytest.raises(DataError, match=r"1 selected backbone candidate\(s\) are no longer readable.*not-in-the-shard"):
        SelectedBackboneDataset(gone, 32)
