"""dreambat: DreamBooth-LoRA for diffusers with Backbone Augmented Training (BAT / ALBAT)."""

__version__ = "0.1.0"
