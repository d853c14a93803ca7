"""A small procedural image world: coloured, patterned shapes on plain or textured backgrounds.

The project cannot ship real photos, so its demo assets, tests and (later) its benchmarks are
drawn here, reproducibly from a seed:

* a *subject*: one distinctive object design (say a purple star with yellow dots) photographed
  in varied poses on varied backgrounds, standing in for a user's DreamBooth photos;
* a *backbone* pool: captioned scenes of random objects, standing in for the LAION-style
  pre-training data that backbone-augmented training draws from. The pool can be told never to
  show the subject's exact design while still showing each of its attributes (its shape, its
  colour, its pattern) on other objects.

Everything is data: the attribute tables (:data:`COLORS`, :data:`SHAPES`, :data:`PATTERNS`,
:data:`BACKGROUND_TEXTURES`) drive sampling, drawing and captioning, and captions are written
from a scene's attributes with a small fixed vocabulary (:data:`VOCABULARY`). Adding a colour,
shape or pattern is one table entry (see :func:`vocabulary` if you extend a table at run time).

Determinism: every random choice comes from a ``numpy.random.Generator`` the caller passes in
(or, for :func:`backbone_records`, one derived from the seed and the record index), so the same
seed gives byte-identical images and identical captions on every run and platform that has the
same numpy and Pillow.

Layout: :mod:`.tables` (attribute tables, shape geometry, pattern painters), :mod:`.specs`
(:class:`Design`, :class:`ObjectSpec`, :class:`SceneSpec`, :class:`Subject`), :mod:`.captions`
(:func:`caption`, :func:`vocabulary`, :data:`VOCABULARY`), :mod:`.drawing` (:func:`render`) and
:mod:`.sampling` (random scenes, subject photos, the backbone pool, :data:`DEMO_SUBJECT`).
Import the public names from this package.
"""

from __future__ import annotations

from . import captions as _captions
from . import tables as _tables
from .captions import VOCABULARY, caption, vocabulary
from .drawing import SUPERSAMPLE, render
from .sampling import (
    DEMO_SUBJECT,
    backbone_record,
    backbone_records,
    random_design,
    random_scene,
    record_rng,
    subject_images,
    subject_in_scene,
)
from .specs import Design, ObjectSpec, SceneSpec, Subject
from .tables import (
    BACKGROUND_TEXTURES,
    COLORS,
    PATTERNS,
    SHAPES,
    PatternDef,
    ShapeDef,
    TextureDef,
)

__all__ = [
    "BACKGROUND_TEXTURES",
    "COLORS",
    "DEMO_SUBJECT",
    "PATTERNS",
    "SHAPES",
    "SUPERSAMPLE",
    "VOCABULARY",
    "Design",
    "ObjectSpec",
    "PatternDef",
    "SceneSpec",
    "ShapeDef",
    "Subject",
    "TextureDef",
    "backbone_record",
    "backbone_records",
    "caption",
    "random_design",
    "random_scene",
    "record_rng",
    "render",
    "subject_images",
    "subject_in_scene",
    "vocabulary",
]

# Public names outside ``__all__`` (type aliases, sampling weights, caption words), still
# reachable as ``dreambat_world.synthetic.X`` as before the split, but not star-exported.
Point = _tables.Point
RGB = _tables.RGB
PatternPainter = _tables.PatternPainter
PATTERN_WEIGHTS = _tables.PATTERN_WEIGHTS
TEXTURE_WEIGHTS = _tables.TEXTURE_WEIGHTS
COUNT_WORDS = _captions.COUNT_WORDS
SIZE_WORDS = _captions.SIZE_WORDS
CAPTION_PREFIXES = _captions.CAPTION_PREFIXES
CAPTION_PREFIX_WEIGHTS = _captions.CAPTION_PREFIX_WEIGHTS
BACKGROUND_PREPOSITIONS = _captions.BACKGROUND_PREPOSITIONS
POSITION_PHRASES = _captions.POSITION_PHRASES
SMALL_SIZE = _captions.SMALL_SIZE
LARGE_SIZE = _captions.LARGE_SIZE
