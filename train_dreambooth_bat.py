#!/usr/bin/env python
"""DreamBooth-LoRA training with Backbone Augmented Training, for diffusers.

    accelerate launch train_dreambooth_bat.py \
        --pretrained_model_name_or_path runwayml/stable-diffusion-v1-5 \
        --instance_data_dir ./dog --instance_prompt "a photo of sks dog" \
        --output_dir ./dog-lora --max_train_steps 400

Run with --help for every flag. The work lives in the ``dreambat`` package.
"""

import sys

from dreambat.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(prog="train_dreambooth_bat.py"))
