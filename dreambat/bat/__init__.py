"""Backbone Augmented Training: the five stages of a BAT run (SPEC section 2) on top of the
DreamBooth-LoRA trainer (:mod:`dreambat.training`) and the ALBAT engine (:mod:`dreambat.albat`)."""
