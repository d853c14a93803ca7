#!/usr/bin/env python
"""Render prompts x seeds with the base model and one or more LoRAs into one captioned PNG grid.

    python eval/sample_grid.py --pretrained_model_name_or_path outputs/demo/backbone \
        --lora_dir outputs/demo/lora --prompt "a photo of sks star" \
        --prompt "a photo of sks star on a blue background" --num_images 4 --output grid.png

By default rows are (prompt, method) pairs, base model first, and column i uses seed ``--seed + i``
in every row. Repeat ``--lora_dir`` (with ``--method_name``) to put several LoRAs side by side;
``--layout methods_x_prompts`` gives one row per method instead. Same flags as ``dreambat grid``.
"""

from __future__ import annotations

import sys

from dreambat.eval.cli import grid_main


def main(argv: list[str] | None = None) -> int:
    return grid_main(argv)


if __name__ == "__main__":
    sys.exit(main())
