import json

from dreambat.cli import main
from tests.conftest import ASSETS


def test_make_backbone_command(tmp_path, capsys):
    assert main(["make-backbone", str(tmp_path / "sd"), "--size", "test"]) == 0
    assert json.loads((tmp_path / "sd" / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert "tiny 'test'" in capsys.readouterr().out


def test_shards_command_reports_counts(capsys):
    assert main(["shards", str(ASSETS / "backbone" / "shard-00000.tar"), "--show", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and "300" in out[-1]


def test_shards_command_missing_shard_is_a_clear_error(tmp_path, capsys):
    assert main(["shards", str(tmp_path / "shard-{00000..00001}.tar")]) == 2
    err = capsys.readouterr().err
    assert "shard-00000.tar" in err and "shard-00001.tar" in err
