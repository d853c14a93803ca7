"""The bundled DreamBench templates and the two prompt forms built from them."""

import json

import pytest

from dreambat.errors import ConfigError
from dreambat.eval.prompts import DreamBenchPrompts, clip_t_prompt, generation_prompt


def test_bundled_templates():
    prompts = DreamBenchPrompts.load()
    assert len(prompts.object) == len(prompts.live) == 25
    assert len(set(prompts.object)) == len(set(prompts.live)) == 25
    assert prompts.object[:10] == prompts.live[:10] and prompts.object[-5:] == prompts.live[-5:]
    assert "a {0} {1} in the jungle" in prompts.object and "a {0} {1} in a chef outfit" in prompts.live
    assert all("{0}" in t and "{1}" in t for t in prompts.object + prompts.live)
    assert len(prompts.subjects) == 30 and prompts.subjects["dog2"] == ("dog", True)
    assert sum(live for _, live in prompts.subjects.values()) == 9
    assert prompts.is_live("dog") and prompts.is_live("fluffy cat") and not prompts.is_live("backpack")


def test_generation_and_clip_t_prompts():
    assert generation_prompt("a {0} {1} in the snow", "sks", "dog") == "a sks dog in the snow"
    assert clip_t_prompt("a {0} {1} in the snow", "dog") == "a dog in the snow"
    assert clip_t_prompt("a cube shaped {0} {1}", "stuffed animal") == "a cube shaped stuffed animal"


def test_bad_prompt_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        DreamBenchPrompts.load(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompts": {"object": ["a {0} in {2}"], "live": ["a {0} {1}"]}}))
    with pytest.raises(ConfigError, match="must contain"):
        DreamBenchPrompts.load(bad)
    bad.write_text(json.dumps({"object": []}))
    with pytest.raises(ConfigError, match="not a DreamBench prompt file"):
        DreamBenchPrompts.load(bad)
