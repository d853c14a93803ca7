"""The mini-world in which backbone-augmented training can be measured offline.

It sits beside the product: it imports :mod:`dreambat` like any user would, and nothing in
:mod:`dreambat` imports it (open_clip's library / training-scripts split).

Every ingredient of the paper's setting exists here for real, made by the project itself from
the procedural image world of :mod:`dreambat_world.synthetic`:

* :mod:`.subjects` - a dozen held-out DreamBooth subjects (designs the backbone never sees) and
  their deterministic train / held-out photos;
* :mod:`.prompts` - DreamBench-style prompts for the world with their expected attributes;
* :mod:`.data` - the backbone pool (LAION-style shards of :mod:`.pool_record` records, optionally
  with the web noise of :mod:`.noisy_pool`) and the bundled assets;
* :mod:`.pretrain` - pre-training the tiny Stable Diffusion backbone on that pool;
* evaluators (attribute classifiers, CLIP- and DINO-role encoders) in their own modules;
* :mod:`.demo` - the README's end-to-end demo (``python -m dreambat_world demo``).

Import from the submodules; this package imports nothing heavy on its own.
"""
