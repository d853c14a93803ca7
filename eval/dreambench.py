#!/usr/bin/env python
"""DreamBench evaluation: generate, score DINO / CLIP-I / CLIP-T, write tables and a bar chart.

    python eval/dreambench.py --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --lora_dir runs/dog-lora --method_name dreambooth --subject dreambench/dataset/dog=dog \
        --num_images 4 --output_dir results/dreambench

Same flags as ``dreambat eval``; ``--help`` lists them. The work is in ``dreambat.eval``.
"""

from __future__ import annotations

import sys

from dreambat.eval.cli import dreambench_main


def main(argv: list[str] | None = None) -> int:
    return dreambench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
