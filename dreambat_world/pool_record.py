"""One record of the world's clean backbone pool, the floor that the pool writer and its noisy twin share.

Record ``i`` of seed ``s`` is a captioned scene of random objects drawn from ``record_rng(s, i)``
alone, and no object shows a world subject's design. :mod:`dreambat_world.data` writes these
records as shards; :mod:`dreambat_world.noisy_pool` gives them LAION-like noise. Both import this
module, and it imports neither.
"""

from __future__ import annotations

from typing import Any

from .subjects import PHOTO_SIZE, matches_any_subject
from .synthetic import caption, random_scene, record_rng, render

POOL_URL_PREFIX = "synthetic://world"
"""Records' ``url`` is ``POOL_URL_PREFIX/<seed>/<key>``."""


def world_record(index: int, seed: int, size: int = PHOTO_SIZE, max_objects: int = 2) -> dict[str, Any]:
    """Backbone record ``index``: ``{"key", "image", "caption", "metadata"}`` for ``write_shards``.

    ``image`` is a ``size`` x ``size`` RGB PIL image; ``metadata["attributes"]`` is the scene's
    :meth:`~dreambat_world.synthetic.SceneSpec.attributes`. No object shows a world subject's design.
    """
    rng = record_rng(seed, index)
    scene = random_scene(rng, exclude=matches_any_subject, max_objects=max_objects)
    text = caption(scene, rng)
    key = f"{index:09d}"
    return {
        "key": key,
        "image": render(scene, size, rng),
        "caption": text,
        "metadata": {
            "key": key, "status": "success", "url": f"{POOL_URL_PREFIX}/{seed}/{key}",
            "caption": text, "width": size, "height": size, "original_width": size,
            "original_height": size, "error_message": None, "attributes": scene.attributes(),
        },
    }
