"""ALBAT, the influence core: which training samples help a LoRA's adaptation loss.

It knows nothing about diffusion. A model enters through one contract, :class:`ScoringTask`
(per-sample, per-term losses of a batch); its trainable LoRA factors (found by peft's layer
types and their declared adapter weights) are the :class:`LoraBlocks`, and an adapter it cannot
score is refused with :class:`UnsupportedAdapterError`; an :class:`InverseStrategy` turns the
adaptation gradients into the preconditioned direction ``h = G⁻¹ v``; :class:`AlbatScorer` fits
``h`` on the adaptation (reference) data and scores candidates with one forward and one backward
per batch; selection rules and the crash-safe manifest turn scores into a kept set. The Stable
Diffusion task and the scoring run over LAION-style shards live in :mod:`dreambat.scoring`, on
top of this package.

Example (a peft LoRA on a small regression MLP)::

    task = RegressionTask(model)                      # loss_matrix(batch) -> [B] squared errors
    scorer = AlbatScorer(task, LoraBlocks.from_models(model), get_strategy("exact"))
    scorer.fit(adaptation_batches)                    # v, G and h from the adaptation data
    scores = scorer.score_batch(candidate_batch)      # [B]; Z > 0 predicts that x helps

The README's "ALBAT from Python" section has the complete, runnable version.
"""

from .blocks import LoraBlocks, lora_factors
from .curvature import (
    AUTO_EXACT_MAX_REF,
    DEFAULT_DAMPING,
    STRATEGIES,
    DataInfInverse,
    ExactInverse,
    IdentityInverse,
    InverseStrategy,
    check_damping,
    damping_lambda,
    describe,
    get_strategy,
    precondition,
)
from .errors import SettingError
from .gradients import (
    ContractedTerms,
    contract_batch,
    contracted_scores,
    contracted_terms,
    reference_rows,
    reference_scores,
    reference_term_norms,
    reference_term_scores,
)
from .layers import UnsupportedAdapterError, register_layer
from .manifest import (
    ManifestMismatchError,
    ManifestRecord,
    ManifestWriter,
    check_fingerprint,
    merge_manifests,
    merge_records,
    meta_path,
    read_manifest,
    write_manifest,
)
from .reliability import Reliability, split_half_reliability, spearman
from .scorer import NORMALIZATIONS, SCORING_PATHS, AlbatScorer, ScoredBatch, ScoreSummary, score_candidates
from .selection import (
    INFLUENCE,
    KEEP_SETTINGS,
    RULES,
    SCORE_KINDS,
    SIMILARITY,
    AlbatSelection,
    NearestSelection,
    NoSelection,
    RandomSelection,
    RuleNeeds,
    SelectionResult,
    SelectionRule,
    apply_selection,
    get_rule,
    register_rule,
    rule_class,
    rule_settings,
    score_statistics,
    unregister_rule,
)
from .task import ScoringTask, as_matrix, split_batch

__all__ = [
    "NORMALIZATIONS", "ContractedTerms", "contract_batch", "reference_term_norms",
    "AUTO_EXACT_MAX_REF", "DEFAULT_DAMPING", "INFLUENCE", "KEEP_SETTINGS", "RULES", "SCORE_KINDS",
    "SCORING_PATHS", "SIMILARITY", "STRATEGIES", "AlbatScorer", "AlbatSelection", "DataInfInverse",
    "ExactInverse", "IdentityInverse", "InverseStrategy", "LoraBlocks", "ManifestMismatchError",
    "ManifestRecord", "ManifestWriter", "NearestSelection", "NoSelection", "RandomSelection",
    "Reliability", "RuleNeeds", "ScoreSummary", "ScoredBatch", "ScoringTask", "SelectionResult",
    "SelectionRule", "SettingError", "UnsupportedAdapterError", "apply_selection", "check_damping", "check_fingerprint",
    "contracted_scores", "contracted_terms", "damping_lambda", "describe", "get_rule", "get_strategy", "lora_factors",
    "merge_manifests", "merge_records", "meta_path", "precondition", "read_manifest", "reference_rows",
    "reference_scores", "reference_term_scores", "register_layer", "register_rule", "rule_class",
    "rule_settings", "as_matrix", "split_batch", "score_candidates", "score_statistics", "spearman", "split_half_reliability",
    "unregister_rule", "write_manifest",
]
