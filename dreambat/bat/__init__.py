"""Backbone Augmented Training: the five stages of a BAT run (the README's "Stages") on top of the
DreamBooth-LoRA trainer (:mod:`dreambat.training`) and the ALBAT engine (:mod:`dreambat.albat`)."""
