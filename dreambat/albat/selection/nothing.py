"""``none``: keep nothing (plain DreamBooth-LoRA)."""

from __future__ import annotations

from collections.abc import Sequence

from ..manifest import ManifestRecord
from .base import RuleNeeds, SelectionResult, SelectionRule, count_positive, register_rule


@register_rule
class NoSelection(SelectionRule):
    """Keep nothing: plain DreamBooth-LoRA on the subject photos alone."""

    name = "none"
    needs = RuleNeeds(candidates=False)
    summary = None
    help = "plain DreamBooth-LoRA"

    def select(self, records: Sequence[ManifestRecord]) -> SelectionResult:
        return SelectionResult([], threshold=None, requested=None, kept=0, n_positive=count_positive(records))
