"""Pivotal tuning (``--train_text_encoder_ti``): new tokens, their training, files, loading, resume."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from dreambat.backbone.load import load_backbone
from dreambat.diffusion import encode_prompts, tokenize_prompts
from dreambat.errors import ConfigError
from dreambat.eval.generation import LoraSwitch
from dreambat.pivotal import NewTokens, PivotalEmbedding, load_new_tokens
from dreambat.training.config import TrainConfig
from dreambat.training.dreambooth import run_dreambooth
from tests.conftest import REPO

PROMPT = "a photo of TOK star"


def _config(tiny_backbone, subject_dir, out, **overrides):
    settings = dict(
        pretrained_model_name_or_path=str(tiny_backbone), instance_data_dir=str(subject_dir),
        instance_prompt=PROMPT, output_dir=str(out), seed=0, train_batch_size=2, max_train_steps=4,
        learning_rate=1e-2, report_to="none", train_text_encoder_ti=True, checkpointing_steps=2,
    )
    return TrainConfig(**{**settings, **overrides})


def _vectors(folder):
    return load_file(next(folder.glob("*_emb.safetensors")))["clip_l"]


@pytest.fixture(scope="module")
def ti_run(tiny_backbone, tmp_path_factory):
    subject = REPO / "assets" / "subject"
    out = tmp_path_factory.mktemp("ti") / "out"
    result = run_dreambooth(_config(tiny_backbone, subject, out, validation_prompt=PROMPT, num_validation_images=1,
                                    num_inference_steps=2))
    return result, subject


def test_new_tokens_are_trained_saved_in_diffusers_format_and_frozen_after_the_pivot(ti_run, tiny_backbone):
    result, _ = ti_run
    out = result.output_dir
    path = out / f"{out.name}_emb.safetensors"
    assert result.embeddings_path == path and path.is_file()
    with safe_open(str(path), framework="pt") as handle:
        assert list(handle.keys()) == ["clip_l"]
        assert handle.metadata() == {"token_abstraction": "TOK", "tokens": "<s0> <s1>"}
    vectors = load_file(path)["clip_l"]
    dim = load_backbone(str(tiny_backbone)).text_encoder.get_input_embeddings().embedding_dim
    assert vectors.shape == (2, dim)
    # trained for the first half (steps 1-2), then frozen: checkpoint-2 holds the final vectors,
    # and they moved away from where they started
    assert torch.equal(_vectors(out / "checkpoint-2"), vectors)
    start = PivotalEmbedding(*_tokenizer_and_encoder(tiny_backbone), NewTokens.make("TOK", 2),
                             generator=torch.Generator().manual_seed(0)).vectors.detach()
    assert not torch.allclose(start, vectors)
    card = (out / "README.md").read_text()
    assert "load_textual_inversion" in card and "<s0><s1>" in card and "TOK = <s0><s1>" in card


def _tokenizer_and_encoder(backbone_dir):
    backbone = load_backbone(str(backbone_dir))
    return backbone.tokenizer, backbone.text_encoder


def test_diffusers_loading_reads_the_subject_as_training_did(ti_run, tiny_backbone):
    """``pipe.load_textual_inversion`` (the advanced script's documented call) and dreambat's own
    loader give the same prompt embedding, and the table's other rows are left as they were."""
    result, _ = ti_run
    pipe = StableDiffusionPipeline.from_pretrained(tiny_backbone, local_files_only=True)
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    pipe.load_lora_weights(result.output_dir)
    state = load_file(result.embeddings_path)
    pipe.load_textual_inversion(state["clip_l"], token=["<s0>", "<s1>"], text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(after[: len(before)], before)
    tokenizer, text_encoder = _tokenizer_and_encoder(tiny_backbone)
    new = load_new_tokens(result.output_dir, tokenizer, text_encoder)
    assert new == NewTokens("TOK", ("<s0>", "<s1>")) and new.expand(PROMPT) == "a photo of <s0><s1> star"
    with torch.no_grad():
        ours = encode_prompts(text_encoder, tokenize_prompts(tokenizer, [new.expand(PROMPT)]))
        theirs = encode_prompts(pipe.text_encoder, tokenize_prompts(pipe.tokenizer, [new.expand(PROMPT)]))
    assert torch.allclose(ours, theirs, atol=1e-6)
    # the identifier is now its own word: far from the class prompt, unlike an unknown "TOK"
    with torch.no_grad():
        plain = encode_prompts(text_encoder, tokenize_prompts(tokenizer, ["a photo of a star"]))
    assert (ours - plain).norm() > 0


def test_evaluation_expands_the_abstraction_and_warns_when_prompts_lack_it(ti_run, tiny_backbone, caplog):
    result, _ = ti_run
    pipe = StableDiffusionPipeline.from_pretrained(tiny_backbone, local_files_only=True)
    switch = LoraSwitch(pipe)
    switch.use(result.output_dir)
    assert switch.prompts(["a TOK star in the snow"]) == ["a <s0><s1> star in the snow"]
    assert switch.prompts(["a sks star"]) == ["a sks star"]
    with caplog.at_level(logging.WARNING):
        switch.check_prompts(["a TOK star", "a photo of a star"])  # the class prompt of PRES lacks it: fine
    assert not caplog.text
    with caplog.at_level(logging.WARNING):
        switch.check_prompts(["a sks star", "a photo of a star"])
    assert "--unique_token TOK" in caplog.text
    switch.use(None)
    assert switch.prompts(["a TOK star"]) == ["a TOK star"]


def test_resume_restores_the_new_tokens(tiny_backbone, subject_dir, tmp_path):
    full = run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path / "full", train_text_encoder_ti_frac=1.0))
    split = _config(tiny_backbone, subject_dir, tmp_path / "split", train_text_encoder_ti_frac=1.0)
    run_dreambooth(dataclasses.replace(split, max_train_steps=2))
    resumed = run_dreambooth(dataclasses.replace(split, resume_from_checkpoint="latest"))
    assert resumed.resumed_from.endswith("checkpoint-2")
    assert torch.allclose(_vectors(full.output_dir), _vectors(resumed.output_dir), atol=1e-6)
    a, b = load_file(full.lora_path), load_file(resumed.lora_path)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resuming_a_run_without_new_tokens_is_refused(tiny_backbone, subject_dir, tmp_path):
    plain = _config(tiny_backbone, subject_dir, tmp_path / "out", train_text_encoder_ti=False,
                    instance_prompt="a photo of sks star", max_train_steps=2)
    run_dreambooth(plain)
    with pytest.raises(ConfigError, match="no new-token embeddings"):
        run_dreambooth(_config(tiny_backbone, subject_dir, tmp_path / "out", resume_from_checkpoint="latest"))


@pytest.mark.parametrize("overrides, message", [
    (dict(instance_prompt="a photo of sks star"), "does not contain it"),
    (dict(num_new_tokens_per_abstraction=0), "must be >= 1"),
    (dict(train_text_encoder_ti_frac=0.0), r"in \(0, 1\]"),
    (dict(token_abstraction="T K"), "one word"),
    (dict(text_encoder_lr=-1.0), "--text_encoder_lr must be a positive number"),
])
def test_bad_settings_are_refused_before_any_model_loads(tmp_path, subject_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path / "no-such-backbone", subject_dir, tmp_path / "out", **overrides)


SCRIPT = textwrap.dedent('''
    import sys, torch
    from dreambat.training.config import TrainConfig
    from dreambat.training import loop
    from dreambat.training.dreambooth import run_dreambooth

    seen = []
    original = loop.train_lora
    def spy(*args, pivotal=None, **kwargs):
        state = original(*args, pivotal=pivotal, **kwargs)
        seen.append(pivotal.vectors.detach().clone())
        return state
    import dreambat.training.dreambooth as dreambooth
    dreambooth.train_lora = spy
    backbone, subject, out = sys.argv[1:4]
    run_dreambooth(TrainConfig(
        pretrained_model_name_or_path=backbone, instance_data_dir=subject, instance_prompt="a photo of TOK star",
        output_dir=out + "/run", seed=0, train_batch_size=1, max_train_steps=2, learning_rate=1e-2,
        report_to="none", train_text_encoder_ti=True, train_text_encoder_ti_frac=1.0))
    torch.save(seen[0], f"{out}/vectors{torch.distributed.get_rank()}.pt")
''')


def test_two_processes_train_the_same_new_tokens(tiny_backbone, subject_dir, tmp_path):
    """Each process sees other photos; the averaged gradient keeps their vectors identical."""
    script = tmp_path / "ti.py"
    script.write_text(SCRIPT)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29561", str(script),
                           str(tiny_backbone), str(subject_dir), str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = (torch.load(tmp_path / f"vectors{i}.pt") for i in range(2))
    assert torch.equal(a, b)
    assert torch.equal(_vectors(tmp_path / "run"), a)
