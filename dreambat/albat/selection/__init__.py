"""Selection rules: which scored backbone candidates join the training mixture.

Each rule is one class in its own module, registered in :data:`RULES` by its ``name`` and declaring
what it needs (:class:`RuleNeeds`): the scores it ranks by, the keep settings it takes, a default.

- ``albat`` (:mod:`.influence`): deterministic thresholding S(x) = 1[Z(x) >= η], with η given
  directly, or as the N-th largest score (top-N), or from a fraction of the scored pool.
  Candidates with Z <= 0 are predicted not to help and are never kept unless ``force=True``.
- ``clip`` (:mod:`.nearest`): the N candidates nearest to the subject photos by CLIP image
  embedding (a baseline a user would otherwise reach for).
- ``random`` (:mod:`.uniform`): the same number of candidates uniformly at random (seeded).
- ``none`` (:mod:`.nothing`): nothing (plain DreamBooth-LoRA).

A new rule subclasses :class:`SelectionRule`, declares ``name``, ``needs`` and ``summary``, and is
passed to :func:`register_rule`; every entry point then offers it.
"""

from .base import (
    INFLUENCE,
    KEEP_SETTINGS,
    RULES,
    SCORE_KINDS,
    SIMILARITY,
    RuleNeeds,
    SelectionResult,
    SelectionRule,
    get_rule,
    register_rule,
    rule_class,
    rule_settings,
    unregister_rule,
)
# Registration order is the order users see the rules in (--help, error messages).
from .influence import AlbatSelection  # isort: skip
from .nearest import NearestSelection  # isort: skip
from .uniform import RandomSelection  # isort: skip
from .nothing import NoSelection  # isort: skip
from .statistics import QUANTILES, apply_selection, score_statistics

__all__ = [
    "INFLUENCE", "KEEP_SETTINGS", "QUANTILES", "RULES", "SCORE_KINDS", "SIMILARITY", "AlbatSelection",
    "NearestSelection", "NoSelection", "RandomSelection", "RuleNeeds", "SelectionResult", "SelectionRule",
    "apply_selection", "get_rule", "register_rule", "rule_class", "rule_settings", "score_statistics",
    "unregister_rule",
]
