"""A LAION-like version of the world pool: the same records with a seeded tail of web noise.

Real LAION pairs are noisy. Many alt-texts barely describe their image or name a wrong detail,
images carry watermarks and text overlays or are heavily compressed, some are off-domain, and
near-duplicates recur. :func:`noisy_record` gives record ``i`` of the clean pool
(:func:`dreambat_world.pool_record.world_record`) such a fate with the probabilities of
:class:`NoiseConfig`. The draw is seeded by ``(seed + NoiseConfig.seed_offset, i)``, so a record's
noise does not depend on which shard writes it. The clean pool stays available, and the world
backbone is the one pretrained on the clean pool.

Every record says what happened to it in ``metadata["noise"]``, the ground truth an analysis of
a selection needs:

* ``"caption"``: ``"clean"``, ``"mismatched"`` (the caption of an unrelated scene) or
  ``"partly_wrong"`` (one attribute of one object named wrongly, e.g. "red" for a blue star);
* ``"image"``: ``"clean"``, ``"jpeg"`` (quality 8-25), ``"blur"``, ``"overlay"`` (a text band or
  watermark over part of the scene) or ``"offdomain"`` (a texture with no object; its caption
  describes a scene it does not show);
* ``"duplicate_of"``: the key of the earlier record this one near-duplicates (shifted by a pixel
  and recompressed), else ``None``.

``metadata["attributes"]`` always describes what the *image* shows (no objects for an off-domain
image), and ``metadata["caption_attributes"]`` what the *caption* describes when the two differ.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dreambat.errors import ConfigError

from .pool_record import world_record
from .synthetic import COLORS, SHAPES, SceneSpec, caption, random_scene, record_rng

CAPTION_FATES = ("clean", "mismatched", "partly_wrong")
IMAGE_FATES = ("clean", "jpeg", "blur", "overlay", "offdomain")


@dataclass(frozen=True)
class NoiseConfig:
    """Probabilities of each kind of noise (independent draws per record).

    Attributes:
        mismatched_caption: the caption describes an unrelated scene.
        partly_wrong_caption: one colour or shape word of the caption is wrong.
        degraded_image: the image is JPEG-crushed, blurred or overlaid with text (one of the three).
        offdomain_image: the image is a texture with no object (caption as drawn for the scene).
        near_duplicate: the record repeats one of the previous ``duplicate_window`` records.
        duplicate_window: how far back a near-duplicate's original may lie.
        seed_offset: added to the pool seed for the noise draws.

    With the defaults about 26 % of the captions do not match their image (mismatched,
    partly wrong or off-domain), 15 % of the images are degraded and 3 % are near-duplicates.
    """

    mismatched_caption: float = 0.12
    partly_wrong_caption: float = 0.10
    degraded_image: float = 0.15
    offdomain_image: float = 0.04
    near_duplicate: float = 0.03
    duplicate_window: int = 200
    seed_offset: int = 9_000_011

    def __post_init__(self) -> None:
        rates = (self.mismatched_caption, self.partly_wrong_caption, self.degraded_image, self.offdomain_image,
                 self.near_duplicate)
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ConfigError(f"NoiseConfig rates must lie in [0, 1]; got {self}.")
        if self.mismatched_caption + self.partly_wrong_caption > 1.0:
            raise ConfigError("NoiseConfig: mismatched_caption + partly_wrong_caption must be <= 1.")
        if self.duplicate_window < 1:
            raise ConfigError(f"NoiseConfig.duplicate_window must be >= 1, got {self.duplicate_window}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noisy_record(index: int, seed: int, noise: NoiseConfig, size: int = 32, max_objects: int = 2) -> dict[str, Any]:
    """Record ``index`` of the noisy pool of ``seed``: the clean record with its drawn noise applied.

    Returns the same fields as :func:`dreambat_world.pool_record.world_record`, with ``metadata["noise"]``.
    """
    rng = record_rng(seed + noise.seed_offset, index)
    draws = rng.random(5)
    duplicate_of = None
    if index > 0 and draws[4] < noise.near_duplicate:
        original = int(rng.integers(max(0, index - noise.duplicate_window), index))
        record = world_record(original, seed, size, max_objects)
        duplicate_of = record["key"]
        record["image"] = _near_copy(record["image"], rng)
        key = f"{index:09d}"
        record["key"] = key
        record["metadata"] = {**record["metadata"], "key": key, "url": record["metadata"]["url"].rsplit("/", 1)[0]
                              + f"/{key}"}
    else:
        record = world_record(index, seed, size, max_objects)
    metadata = dict(record["metadata"])
    attributes = metadata["attributes"]
    scene = SceneSpec.from_attributes(attributes)
    fate = {"caption": "clean", "image": "clean", "duplicate_of": duplicate_of}

    if draws[0] < noise.mismatched_caption:
        other = random_scene(rng, max_objects=max_objects)
        record["caption"] = caption(other, rng)
        metadata["caption_attributes"] = other.attributes()
        fate["caption"] = "mismatched"
    elif draws[0] < noise.mismatched_caption + noise.partly_wrong_caption:
        wrong = _one_attribute_wrong(scene, rng)
        record["caption"] = caption(wrong, rng)
        metadata["caption_attributes"] = wrong.attributes()
        fate["caption"] = "partly_wrong"

    if draws[1] < noise.offdomain_image:
        record["image"] = _offdomain(size, rng)
        metadata.setdefault("caption_attributes", attributes)
        metadata["attributes"] = {"count": 0, "shapes": [], "colors": [], "patterns": [],
                                  "background": None, "background_texture": None, "objects": []}
        fate["image"] = "offdomain"
    elif draws[2] < noise.degraded_image:
        kind = ("jpeg", "blur", "overlay")[int(rng.integers(3))]
        record["image"] = _degrade(record["image"], kind, rng)
        fate["image"] = kind

    metadata["caption"] = record["caption"]
    metadata["noise"] = fate
    record["metadata"] = metadata
    return record


def is_clean(metadata: dict[str, Any]) -> bool:
    """True for a record whose caption matches its image and whose image is not degraded."""
    fate = metadata.get("noise") or {}
    return fate.get("caption", "clean") == "clean" and fate.get("image", "clean") == "clean"


def _one_attribute_wrong(scene: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """``scene`` with the colour or the shape of one object replaced by another value."""
    objects = list(scene.objects)
    which = int(rng.integers(len(objects)))
    obj = objects[which]
    if rng.random() < 0.5:
        options = [c for c in COLORS if c not in (obj.color, obj.pattern_color, scene.background)]
        objects[which] = replace(obj, color=str(rng.choice(options)))
    else:
        options = [s for s in SHAPES if s != obj.shape]
        objects[which] = replace(obj, shape=str(rng.choice(options)))
    return replace(scene, objects=tuple(objects))


def _near_copy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A one-pixel shift (wrapping) and a JPEG round trip at quality 70-90."""
    shifted = np.roll(np.asarray(image), shift=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1))
    return _jpeg(Image.fromarray(shifted), int(rng.integers(70, 91)))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _degrade(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    if kind == "jpeg":
        return _jpeg(image, int(rng.integers(8, 26)))
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.2, 2.2))))
    # overlay: a band of text-like blocks (a caption burnt in, or a watermark) over a third of the image
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    band = max(3, h // 4)
    top = int(rng.integers(0, h - band + 1))
    ink = tuple(int(v) for v in rng.integers(0, 256, 3))
    if rng.random() < 0.5:  # solid band with "letters"
        draw.rectangle([0, top, w, top + band], fill=tuple(255 - v for v in ink))
    x = int(rng.integers(0, 3))
    while x < w - 1:
        glyph = int(rng.integers(1, 3))
        draw.rectangle([x, top + 1, x + glyph - 1, top + band - 2], fill=ink)
        x += glyph + int(rng.integers(1, 3))
    return out


def _offdomain(size: int, rng: np.random.Generator) -> Image.Image:
    """A smooth random colour field with noise: no object, nothing the captions name."""
    coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    field += rng.normal(0, 18, field.shape)
    return Image.fromarray(field.clip(0, 255).astype(np.uint8))
