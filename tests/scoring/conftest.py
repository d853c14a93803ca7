"""A tiny scoring world: a random non-zero surrogate LoRA and a shard of good and bad candidates."""

import pytest
import torch

from dreambat.backbone.tiny import build_tiny_components
from dreambat.data.shard_writer import write_shards
from dreambat.lora import add_unet_lora, save_lora
from dreambat_world.synthetic import backbone_records

N_GOOD = 10


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone):
    """A surrogate LoRA (random, non-zero) and a shard of 10 good + 2 bad candidates."""
    root = tmp_path_factory.mktemp("score")
    unet = build_tiny_components("test", seed=0)["unet"]
    torch.manual_seed(0)
    add_unet_lora(unet, rank=2, init_lora_weights=False)
    save_lora(root / "surrogate", unet)
    records = list(backbone_records(N_GOOD, seed=1, size=32))
    records.insert(3, {"key": "corrupt", "image": b"not a jpeg", "caption": "broken"})
    records.insert(7, {"key": "nocaption", "image": records[0]["image"], "caption": None})
    write_shards(records, root / "shard-00000.tar")
    return {"backbone": tiny_backbone, "surrogate": root / "surrogate", "shard": str(root / "shard-00000.tar")}
