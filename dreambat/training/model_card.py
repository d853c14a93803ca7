"""The model card (``README.md``) written next to trained LoRA weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..constants import LORA_WEIGHTS_NAME, MODEL_CARD_NAME
from ..files import atomic_write_text
from ..pivotal import TEXT_ENCODER_KEY, embeddings_file
from .config import TrainConfig


def write_model_card(
    output_dir: str | Path,
    config: TrainConfig,
    *,
    num_subject_images: int,
    train_steps: int,
    final_loss: float | None,
    grid_name: str | None,
    source_counts: Mapping[str, int] | None = None,
    num_class_images: int | None = None,
    resumed_from: str | None = None,
    extra_sections: Mapping[str, str] | None = None,
    pipeline_class: str = "StableDiffusionPipeline",
) -> Path:
    """Write a Hugging Face style model card with usage code and the settings that matter.

    Args:
        source_counts: training rows per source (``subject``/``backbone``/``class``).
        num_class_images: class images used for prior preservation.
        resumed_from: the checkpoint the run resumed from.
        extra_sections: more sections, heading -> markdown body, appended in order.
        pipeline_class: the diffusers pipeline the usage code loads the base with
            (``StableDiffusionXLPipeline`` for SDXL).
    """
    output_dir = Path(output_dir)
    base = config.pretrained_model_name_or_path
    loss = f"{final_loss:.4f}" if final_loss is not None else "n/a"
    samples = f"\n![validation samples]({grid_name})\n" if grid_name else ""
    prompt = config.validation_prompt or config.instance_prompt
    use = f"""pipe = {pipeline_class}.from_pretrained("{base}")
pipe.load_lora_weights("{output_dir}")"""
    new = config.new_tokens
    if new is not None:
        prompt = new.expand(prompt)
        use += f"""
# pivotal tuning: the new tokens {new.text} stand for {new.abstraction!r}
state = load_file("{embeddings_file(output_dir)}")
pipe.load_textual_inversion(state["{TEXT_ENCODER_KEY}"], token={list(new.tokens)},
                            text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)"""
    imports = f"from diffusers import {pipeline_class}"
    if new is not None:
        imports += "\nfrom safetensors.torch import load_file"
    xl_tag = "\n- stable-diffusion-xl" if "XL" in pipeline_class else ""
    card = f"""---
base_model: {base}
library_name: diffusers
license: other
instance_prompt: {config.instance_prompt}
tags:
- text-to-image
- diffusers
- lora
- dreambooth
- dreambat{xl_tag}
---

# DreamBooth LoRA trained with dreambat

LoRA weights (`{LORA_WEIGHTS_NAME}`, diffusers format) for `{base}`, trained on
{num_subject_images} subject image(s) with the instance prompt **{config.instance_prompt}**.
{samples}
## Use

```python
{imports}

{use}
image = pipe("{prompt}").images[0]
```

## Training

| setting | value |
|---|---|
| optimiser steps | {train_steps} |
| batch size x accumulation | {config.train_batch_size} x {config.gradient_accumulation_steps} |
| learning rate / schedule | {config.learning_rate} / {config.lr_scheduler} |
| LoRA rank | {config.rank} (text encoder: {"yes" if config.train_text_encoder else "no"}) |
| resolution | {config.resolution} |
| seed | {config.seed} |
| final training loss | {loss} |
{_extra_rows(config, source_counts, num_class_images, resumed_from)}
The full resolved configuration is in `dreambat_config.json`.
"""
    for heading, body in (extra_sections or {}).items():
        card += f"\n## {heading}\n\n{body.strip()}\n"
    path = output_dir / MODEL_CARD_NAME
    atomic_write_text(path, card)
    return path


def _extra_rows(
    config: TrainConfig,
    source_counts: Mapping[str, int] | None,
    num_class_images: int | None,
    resumed_from: str | None,
) -> str:
    rows = []
    if config.new_tokens is not None:
        rows.append(
            f"| pivotal tuning | {config.new_tokens.abstraction} = {config.new_tokens.text}, embeddings trained for the "
            f"first {config.train_text_encoder_ti_frac:.0%} of the steps (`{embeddings_file(Path(config.output_dir)).name}`) |"
        )
    if config.with_prior_preservation:
        rows.append(
            f"| prior preservation | {num_class_images or config.num_class_images} class images of "
            f"'{config.class_prompt}', weight {config.prior_loss_weight} |"
        )
    if source_counts:
        total = sum(source_counts.values())
        shares = ", ".join(
            f"{name} {count} ({count / total:.0%})" for name, count in sorted(source_counts.items()) if count
        )
        rows.append(f"| training rows by source | {shares} |")
    if resumed_from:
        rows.append(f"| resumed from | `{resumed_from}` |")
    return "".join(row + "\n" for row in rows)
