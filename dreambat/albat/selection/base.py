"""What a selection rule is: the result it returns, what it declares it needs, and the registry.

A rule is one class: it declares its :class:`RuleNeeds` (which scores it ranks by, which keep
settings it takes, whether one is required) and a one-line ``summary``; everything around it (the
settings' validation, the run's stages, the fingerprints, the report, the command line's choices)
reads those declarations from :data:`RULES` instead of comparing rule names. Adding a rule is one
class and one :func:`register_rule`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import SettingError
from ..manifest import ManifestRecord

# Scores a rule can rank by. INFLUENCE: ALBAT scores, which need a surrogate LoRA fitted on the
# subject. SIMILARITY: the cosine of each candidate's image embedding to the subject photos', which
# needs an image encoder.
INFLUENCE = "influence"
SIMILARITY = "similarity"
SCORE_KINDS = (INFLUENCE, SIMILARITY)

# How many candidates to keep: the settings a rule may take (at most one at a time).
KEEP_SETTINGS = ("threshold", "num_samples", "fraction")


@dataclass(frozen=True)
class SelectionResult:
    """What a rule kept.

    Attributes:
        selected_indices: manifest ``index`` values of the kept candidates, sorted.
        threshold: the effective η (lowest kept score) for score thresholds and top-N; ``None``
            otherwise or if nothing was kept.
        requested: the number of candidates asked for (top-N or fraction), ``None`` for a threshold.
        kept: ``len(selected_indices)``.
        n_positive: scored candidates with Z > 0 (predicted to help).
        message: a warning for the user, e.g. fewer helpful candidates than requested.
    """

    selected_indices: list[int]
    threshold: float | None
    requested: int | None
    kept: int
    n_positive: int
    message: str | None = None


@dataclass(frozen=True)
class RuleNeeds:
    """What a rule needs before it can select, declared once on the rule's class.

    Attributes:
        scores: the scores it ranks by (:data:`INFLUENCE`, :data:`SIMILARITY`) or ``None`` for a
            rule that reads no score (it can run on a pool listed without scoring).
        keep: the keep settings it takes, a subset of :data:`KEEP_SETTINGS` (at most one is given).
        keep_required: one of ``keep`` must be given.
        default_keep: the keep setting used when none is given (e.g. ``{"threshold": 0.0}``).
        default_keep_reads_scores: without a keep setting the rule sizes its choice from the
            records' scores (random keeps as many as have Z > 0), so it then needs scored records.
        options: other keyword settings the rule's constructor takes (``"force"``, ``"seed"``).
        candidates: ``False`` for a rule that keeps nothing and needs no candidate pool.
    """

    scores: str | None = None
    keep: tuple[str, ...] = ()
    keep_required: bool = False
    default_keep: Mapping[str, Any] = field(default_factory=dict)
    default_keep_reads_scores: bool = False
    options: tuple[str, ...] = ()
    candidates: bool = True

    def __post_init__(self) -> None:
        if self.scores is not None and self.scores not in SCORE_KINDS:
            raise ValueError(f"RuleNeeds.scores must be one of {SCORE_KINDS} or None, got {self.scores!r}")
        unknown = set(self.keep) - set(KEEP_SETTINGS)
        if unknown:
            raise ValueError(f"RuleNeeds.keep names unknown keep settings {sorted(unknown)}")


class SelectionRule(ABC):
    """Decides which candidates of a manifest are kept.

    Subclasses set ``name`` (how users choose it), ``needs`` (:class:`RuleNeeds`), ``summary``
    (how a report names what it keeps by, e.g. ``"ALBAT influence scores"``; ``None`` for a rule
    that keeps nothing) and ``help`` (one phrase for a command line's help), and implement
    :meth:`select`.
    """

    name: ClassVar[str]
    needs: ClassVar[RuleNeeds]
    summary: ClassVar[str | None]
    help: ClassVar[str] = ""

    @abstractmethod
    def select(self, records: Sequence[ManifestRecord]) -> SelectionResult:
        """Choose among ``records``; skipped or unscorable records are never chosen."""


RULES: dict[str, type[SelectionRule]] = {}


def register_rule(rule: type[SelectionRule]) -> type[SelectionRule]:
    """Add ``rule`` to :data:`RULES` under ``rule.name`` (usable as a class decorator).

    Raises:
        ValueError: the class declares no ``name``/``needs``/``summary``, or the name is taken by
            another class.
    """
    for attribute in ("name", "needs", "summary"):
        if not hasattr(rule, attribute):
            raise ValueError(f"Selection rule {rule.__name__} declares no {attribute!r}.")
    if not isinstance(rule.needs, RuleNeeds):
        raise ValueError(f"{rule.__name__}.needs must be a RuleNeeds, got {type(rule.needs).__name__}.")
    taken = RULES.get(rule.name)
    if taken is not None and taken is not rule:
        raise ValueError(f"Selection rule name {rule.name!r} is taken by {taken.__name__}.")
    RULES[rule.name] = rule
    return rule


def unregister_rule(name: str) -> None:
    """Remove the rule called ``name`` from :data:`RULES` (for plug-ins and tests)."""
    RULES.pop(name, None)


def rule_class(name: str) -> type[SelectionRule]:
    """The registered rule class called ``name``; :class:`SettingError` (``unknown``) if none is."""
    try:
        return RULES[name]
    except KeyError:
        raise SettingError("selection rule", "name", name, "unknown", ", ".join(RULES)) from None


def rule_settings(name: str, given: Mapping[str, Any], *, options: Mapping[str, Any] = {}) -> dict[str, Any]:
    """The constructor keywords of rule ``name`` from the keep settings ``given`` (``None`` values
    count as not given) and ``options`` (ignored where the rule does not declare them).

    Checks against the rule's :class:`RuleNeeds`: at most one keep setting, only those the rule
    takes, one when it requires one; the rule's ``default_keep`` fills in when none is given.

    Raises:
        SettingError: ``unknown`` rule, ``unexpected`` keep setting, ``conflict`` or ``missing``.
    """
    rule = rule_class(name)
    needs, owner = rule.needs, f"selection rule {name!r}"
    keep = {k: v for k, v in given.items() if v is not None}
    if len(keep) > 1:
        raise SettingError(owner, ", ".join(keep), tuple(keep.values()), "conflict", ", ".join(needs.keep or keep))
    for setting, value in keep.items():
        if setting not in needs.keep:
            raise SettingError(owner, setting, value, "unexpected", ", ".join(needs.keep))
    if not keep and needs.keep_required:
        raise SettingError(owner, "", None, "missing", ", ".join(needs.keep))
    settings = dict(keep or needs.default_keep)
    settings.update({k: v for k, v in options.items() if k in needs.options})
    return settings


def get_rule(name: str, **settings: Any) -> SelectionRule:
    """The selection rule called ``name``, built with ``settings`` (its constructor's keywords).

    Raises:
        SettingError: unknown name, or a setting the rule does not take.
    """
    rule = rule_class(name)
    accepted = set(rule.needs.keep) | set(rule.needs.options)
    for setting, value in settings.items():
        if setting not in accepted:
            raise SettingError(f"selection rule {name!r}", setting, value, "unexpected",
                               ", ".join(sorted(accepted)))
    return rule(**settings)


def scored_best_first(records: Sequence[ManifestRecord]) -> list[ManifestRecord]:
    """Records with a finite score, ordered best first: (score desc, index asc)."""
    return sorted((r for r in records if r.has_score), key=lambda r: (-r.score, r.index))


def count_positive(records: Sequence[ManifestRecord]) -> int:
    """Scored records with Z > 0."""
    return sum(1 for r in records if r.has_score and r.score > 0)


def count_from_fraction(fraction: float, pool: int) -> int:
    """round(fraction · pool), halves rounded up, and at least 1 for a non-empty pool."""
    return max(1, math.floor(fraction * pool + 0.5)) if pool else 0


def check_keep(owner: str, num_samples: int | None, fraction: float | None, *, minimum: int = 1) -> None:
    """A count must be an integer >= ``minimum``; a fraction a number in (0, 1]."""
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < minimum):
        raise SettingError(owner, "num_samples", num_samples, "invalid", f"an integer >= {minimum}")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise SettingError(owner, "fraction", fraction, "invalid", "a number in (0, 1]")
