"""``clip``: the candidates most similar to the subject photos or to a prompt (a retrieval baseline)."""

from __future__ import annotations

from ..errors import SettingError
from .base import SIMILARITY, RuleNeeds, register_rule
from .influence import AlbatSelection


@register_rule
class NearestSelection(AlbatSelection):
    """Keep the N candidates with the highest similarity score (CLIP retrieval, Custom Diffusion's
    way of picking real regularisation images). A similarity is not an influence: candidates are
    kept whatever its sign, and a count (or fraction) is required. What the similarity is to (the
    subject photos, or a prompt) is the scorer's business, not the rule's.
    """

    name = "clip"
    needs = RuleNeeds(scores=SIMILARITY, keep=("num_samples", "fraction"), keep_required=True)
    summary = "CLIP similarity"
    help = ("the N candidates nearest by CLIP embedding to the subject photos, or to a prompt with "
            "--clip_query text")

    def __init__(self, *, num_samples: int | None = None, fraction: float | None = None) -> None:
        if num_samples is None and fraction is None:
            raise SettingError(f"selection rule {self.name!r}", "", None, "missing", "num_samples, fraction")
        super().__init__(num_samples=num_samples, fraction=fraction, force=True)
