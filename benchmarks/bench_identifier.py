#!/usr/bin/env python
"""How distinct is the subject's identifier to the frozen text encoder? Before and after pivotal tuning.

For an identifier ⟨id⟩ and a subject of class word W, the relative L2 distance between the text
encoder's outputs (77 x d) of

* ``"a photo of ⟨id⟩ W"`` and ``"a photo of a W"``: how far the identifier moves the prompt from the
  class prompt (small: the LoRA learns "a W" = the subject, and every class image overwrites it);
* ``"a photo of ⟨id⟩ W"`` and ``"a photo of ⟨id⟩ V"``, mean over the other class words V: the size of
  a real change of meaning, for scale.

Identifiers measured: ``sks`` (DreamBooth's rare token, which the world's captions never use),
two new tokens at their random start (``--train_text_encoder_ti`` before training), and the new
tokens of every pivotal-tuning LoRA found under ``--runs`` (``*_emb.safetensors`` next to the weights).

    python -m benchmarks.bench_identifier --runs outputs/bench_curves/ti-headroom/runs \\
        --out benchmarks/results/identifier
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks._measure import REPO, git_head, machine_info
from dreambat.backbone.load import load_backbone
from dreambat.diffusion import encode_prompts, tokenize_prompts
from dreambat.pivotal import NewTokens, PivotalEmbedding, find_embeddings, load_new_tokens
from dreambat_world.data import ASSETS_DIR, BACKBONE_DIR
from dreambat_world.subjects import WORLD_SUBJECTS, subject_by_name


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=str(ASSETS_DIR / BACKBONE_DIR))
    p.add_argument("--runs", type=Path, nargs="*", default=[],
                   help="folders searched for pivotal-tuning LoRAs (<subject>/seed*/<method>/*_emb.safetensors)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/identifier")
    return p.parse_args(argv)


class Distances:
    """Relative L2 distances between text-encoder outputs of the world backbone."""

    def __init__(self, backbone: str):
        self.backbone = load_backbone(backbone)
        self.words = sorted({s.class_word for s in WORLD_SUBJECTS})

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        b = self.backbone
        return encode_prompts(b.text_encoder, tokenize_prompts(b.tokenizer, [prompt]))[0]

    def relative(self, a: str, b: str) -> float:
        x, y = self.encode(a), self.encode(b)
        return float((x - y).norm() / y.norm())

    def measure(self, identifier: str, word: str) -> dict:
        prompt = f"a photo of {identifier} {word}"
        return {"to_class_prompt": self.relative(prompt, f"a photo of a {word}"),
                "class_word_change": float(np.mean([self.relative(prompt, f"a photo of {identifier} {other}")
                                                    for other in self.words if other != word]))}


def trained_loras(roots: list[Path]) -> list[tuple[Path, str]]:
    """(LoRA folder, subject) of every final pivotal-tuning LoRA under ``roots`` (not checkpoints)."""
    found = []
    for root in roots:
        for emb in sorted(root.rglob("*_emb.safetensors")):
            folder = emb.parent
            if folder.name.startswith("checkpoint-") or folder.name == "surrogate":
                continue
            subject = next((p.name for p in folder.parents if p.name in {s.name for s in WORLD_SUBJECTS}), None)
            if subject is not None:
                found.append((folder, subject))
    return found


def main(argv=None) -> None:
    args = parse_args(argv)
    d = Distances(args.backbone)
    rows = []
    for subject in WORLD_SUBJECTS:
        rows.append({"identifier": "sks", "subject": subject.name, **d.measure("sks", subject.class_word)})
    start = PivotalEmbedding(d.backbone.tokenizer, d.backbone.text_encoder, NewTokens.make("TOK", 2),
                             generator=torch.Generator().manual_seed(0))
    for subject in WORLD_SUBJECTS:
        rows.append({"identifier": "new tokens, random start", "subject": subject.name,
                     **d.measure(start.new.text, subject.class_word)})
    start.remove()
    for folder, subject in trained_loras(args.runs):
        new = load_new_tokens(folder, d.backbone.tokenizer, d.backbone.text_encoder)
        method = folder.name
        rows.append({"identifier": "new tokens, trained", "subject": subject, "lora": str(folder.relative_to(REPO)
                     if folder.is_relative_to(REPO) else folder), "method": method,
                     "embeddings": find_embeddings(folder).name,
                     **d.measure(new.text, subject_by_name(subject).class_word)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = ["| identifier | prompts | to the class prompt (mean ± SD) | class-word change (mean ± SD) |",
             "|---|---|---|---|"]
    for identifier in dict.fromkeys(r["identifier"] for r in rows):
        own = [r for r in rows if r["identifier"] == identifier]
        a = np.array([r["to_class_prompt"] for r in own])
        b = np.array([r["class_word_change"] for r in own])
        lines.append(f"| {identifier} | {len(own)} | {a.mean():.3f} ± {a.std():.3f} | {b.mean():.3f} ± {b.std():.3f} |")
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    (args.out / "settings.json").write_text(json.dumps({"backbone": args.backbone, "runs": [str(r) for r in args.runs],
                                                        "commit": git_head(), "machine": machine_info()}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
