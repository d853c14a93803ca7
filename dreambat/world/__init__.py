"""The mini-world in which backbone-augmented training can be measured offline.

Every ingredient of the paper's setting exists here for real, made by the project itself from
the procedural image world of :mod:`dreambat.synthetic`:

* :mod:`.subjects` - a dozen held-out DreamBooth subjects (designs the backbone never sees) and
  their deterministic train / held-out photos;
* :mod:`.prompts` - DreamBench-style prompts for the world with their expected attributes;
* :mod:`.data` - the backbone pool (LAION-style shards) and the bundled assets;
* :mod:`.pretrain` - pre-training the tiny Stable Diffusion backbone on that pool;
* evaluators (attribute classifiers, CLIP- and DINO-role encoders) in their own modules.

Import from the submodules; this package imports nothing heavy on its own.
"""
