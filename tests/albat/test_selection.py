"""Selection rules (albat / random / none), the registry, and score statistics."""

import math

import numpy as np
import pytest

from dreambat.albat.manifest import ManifestRecord
from dreambat.albat.selection import (
    RULES,
    AlbatSelection,
    NoSelection,
    RandomSelection,
    SelectionResult,
    apply_selection,
    get_rule,
    score_statistics,
)
from dreambat.errors import ConfigError


def _rec(index, score, status="scored"):
    return ManifestRecord(index=index, key=f"k{index}", source={"url": "s.tar", "caption": "c"}, score=score, status=status,
                          reason=None if status == "scored" else "corrupt_image")


# index: score. Two ties at 2.0 (indices 3 and 7), a zero, negatives, a NaN and skipped ones.
SCORES = {0: 0.5, 1: -1.0, 2: 3.0, 3: 2.0, 4: 0.0, 5: -0.2, 6: 1.0, 7: 2.0, 8: math.nan, 9: 0.1}
RECORDS = [_rec(i, s) for i, s in SCORES.items()] + [_rec(10, None, "skipped"), _rec(11, 99.0, "skipped")]
POSITIVE = {0, 2, 3, 6, 7, 9}


def test_threshold():
    result = AlbatSelection(threshold=1.0).select(RECORDS)
    assert result.selected_indices == [2, 3, 6, 7]
    assert result.kept == 4 and result.requested is None and result.n_positive == len(POSITIVE)
    assert result.threshold == 1.0 and result.message is None


def test_threshold_zero_keeps_only_positive():
    result = AlbatSelection(threshold=0.0).select(RECORDS)
    assert set(result.selected_indices) == POSITIVE
    assert "1 candidates" in result.message and "force=True" in result.message  # Z == 0 at index 4


def test_negative_threshold_needs_force():
    assert set(AlbatSelection(threshold=-0.5).select(RECORDS).selected_indices) == POSITIVE
    forced = AlbatSelection(threshold=-0.5, force=True).select(RECORDS)
    assert forced.selected_indices == sorted(POSITIVE | {4, 5}) and forced.message is None


def test_top_n_exact_count_with_ties():
    # ranked (score desc, index asc): 2 (3.0), 3 (2.0), 7 (2.0), 6, 0, 9
    result = AlbatSelection(num_samples=2).select(RECORDS)
    assert result.selected_indices == [2, 3] and result.kept == 2 and result.requested == 2
    assert result.threshold == 2.0 and result.message is None
    assert AlbatSelection(num_samples=3).select(RECORDS).selected_indices == [2, 3, 7]
    shuffled = list(reversed(RECORDS))
    assert AlbatSelection(num_samples=2).select(shuffled).selected_indices == [2, 3]


def test_fraction():
    scored = 9  # finite scores; NaN and skipped do not count
    result = AlbatSelection(fraction=0.34).select(RECORDS)  # round(3.06) = 3
    assert result.requested == round(0.34 * scored) == 3 and result.selected_indices == [2, 3, 7]
    tiny = AlbatSelection(fraction=0.01).select(RECORDS)
    assert tiny.requested == 1 and tiny.selected_indices == [2]
    assert AlbatSelection(fraction=0.5).select([]).kept == 0


def test_never_keeps_nonpositive_and_says_so():
    result = AlbatSelection(num_samples=8).select(RECORDS)
    assert set(result.selected_indices) == POSITIVE and result.kept == len(POSITIVE)
    assert result.requested == 8
    assert "8" in result.message and str(len(POSITIVE)) in result.message and "force=True" in result.message
    forced = AlbatSelection(num_samples=8, force=True).select(RECORDS)
    assert forced.selected_indices == sorted(POSITIVE | {4, 5}) and forced.message is None
    assert forced.threshold == -0.2
    everything = AlbatSelection(fraction=1.0, force=True).select(RECORDS)
    assert everything.kept == 9
    too_many = AlbatSelection(num_samples=50, force=True).select(RECORDS)
    assert too_many.kept == 9 and "only 9" in too_many.message


def test_all_negative_keeps_nothing():
    result = AlbatSelection(num_samples=3).select([_rec(0, -1.0), _rec(1, -2.0)])
    assert result.selected_indices == [] and result.threshold is None and result.n_positive == 0
    assert "only 0" in result.message


def test_skipped_and_nan_never_selected():
    for rule in (AlbatSelection(threshold=-100, force=True), AlbatSelection(num_samples=100, force=True),
                 AlbatSelection(fraction=1.0, force=True)):
        assert not {8, 10, 11} & set(rule.select(RECORDS).selected_indices)


@pytest.mark.parametrize("kwargs", [{}, {"threshold": 1.0, "num_samples": 3}, {"num_samples": 3, "fraction": 0.5},
                                    {"threshold": 0.0, "fraction": 0.5}])
def test_exactly_one_of(kwargs):
    with pytest.raises(ConfigError, match="exactly one"):
        AlbatSelection(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"fraction": -0.1}, "fraction"),
    ({"num_samples": 0}, "num_samples"), ({"num_samples": 2.5}, "num_samples"),
    ({"threshold": math.nan}, "threshold"),
])
def test_invalid_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AlbatSelection(**kwargs)


def test_random_same_count_reproducible_and_valid():
    pool = [_rec(i, float(i % 5) - 2) for i in range(200)] + [_rec(200 + i, None, "skipped") for i in range(50)]
    albat = AlbatSelection(num_samples=20).select(pool)
    rule = RandomSelection.matching(albat, seed=3)
    first = rule.select(pool)
    assert first.kept == albat.kept == len(first.selected_indices) == len(set(first.selected_indices))
    assert first.selected_indices == sorted(first.selected_indices)
    assert RandomSelection(num_samples=20, seed=3).select(list(reversed(pool))) == first
    assert RandomSelection(num_samples=20, seed=4).select(pool).selected_indices != first.selected_indices
    assert all(i < 200 for i in first.selected_indices)
    assert first.selected_indices != AlbatSelection(num_samples=20).select(pool).selected_indices


def test_random_needs_no_scores_and_skips_invalid():
    unscored = [_rec(i, None) for i in range(10)] + [_rec(10, None, "skipped")]
    assert RandomSelection(fraction=1.0).select(unscored).selected_indices == list(range(10))
    result = RandomSelection(num_samples=20).select(RECORDS)  # NaN (8) and skipped (10, 11) are not usable
    assert result.selected_indices == [0, 1, 2, 3, 4, 5, 6, 7, 9] and "only 9" in result.message
    assert RandomSelection(fraction=0.5).select(RECORDS).kept == 5  # round(4.5) rounds half up
    assert RandomSelection().select(RECORDS).kept == len(POSITIVE)  # default: as many as ALBAT's Z > 0
    assert RandomSelection.matching(SelectionResult([], None, 3, 0, 0)).select(RECORDS).kept == 0
    with pytest.raises(ConfigError, match="at most one"):
        RandomSelection(num_samples=3, fraction=0.5)
    with pytest.raises(ConfigError, match="fraction"):
        RandomSelection(fraction=2.0)


def test_none_keeps_nothing():
    result = NoSelection().select(RECORDS)
    assert result.selected_indices == [] and result.kept == 0 and result.n_positive == len(POSITIVE)


def test_registry():
    assert set(RULES) == {"albat", "clip", "random", "none"}
    assert isinstance(get_rule("albat", threshold=0.0), AlbatSelection)
    assert isinstance(get_rule("random", num_samples=2, seed=1), RandomSelection)
    assert isinstance(get_rule("none"), NoSelection)
    with pytest.raises(ConfigError, match="albat, clip, random, none"):
        get_rule("influence")
    with pytest.raises(ConfigError, match="selection rule .none. does not take num_samples"):
        get_rule("none", num_samples=3)


def test_score_statistics_against_numpy():
    stats = score_statistics(RECORDS)
    scores = np.array([s for s in SCORES.values() if not math.isnan(s)])
    assert stats["total"] == 12 and stats["scored"] == 9 and stats["skipped"] == 3
    assert stats["n_positive"] == int((scores > 0).sum()) == len(POSITIVE)
    assert stats["mean"] == pytest.approx(scores.mean())
    assert stats["std"] == pytest.approx(scores.std())
    assert stats["min"] == -1.0 and stats["max"] == 3.0
    for q in (5, 25, 50, 75, 95):
        assert stats["quantiles"][f"p{q}"] == pytest.approx(np.percentile(scores, q))
    empty = score_statistics([_rec(0, None, "skipped")])
    assert empty["scored"] == 0 and empty["mean"] is None and empty["quantiles"]["p50"] is None


def test_apply_selection():
    result = AlbatSelection(threshold=1.0).select(RECORDS)
    flagged = apply_selection(RECORDS, result)
    assert [r.index for r in flagged] == [r.index for r in RECORDS]
    assert {r.index for r in flagged if r.selected} == {2, 3, 6, 7}
    assert all(r.selected is False for r in flagged if r.index not in {2, 3, 6, 7})
    assert all(r.selected is None for r in RECORDS)  # the inputs are not modified


def test_clip_rule_keeps_the_most_similar_whatever_their_sign():
    from dreambat.albat.selection import NearestSelection

    records = [ManifestRecord(i, f"k{i}", s) for i, s in enumerate([-0.2, -0.1, -0.5, -0.05])]
    assert get_rule("clip", num_samples=2).select(records).selected_indices == [1, 3]
    with pytest.raises(ConfigError, match="needs one of: num_samples, fraction"):
        NearestSelection()


def test_the_gradient_norm_cap_leaves_out_junk_like_candidates():
    norms = [1.0, 1.1, 0.9, 5.0, 1.0, 8.0, 1.2, None]  # median of the finite norms: 1.05
    records = [ManifestRecord(i, f"k{i}", float(10 - i), grad_norm=n) for i, n in enumerate(norms)]
    result = AlbatSelection(num_samples=4, max_norm_ratio=2.0).select(records)
    assert result.selected_indices == [0, 1, 2, 4]  # 3 and 5 (norms 5 and 8 > 2.1) are not eligible
    assert "2 candidate(s) with a gradient norm above 2x" in result.message
    assert AlbatSelection(num_samples=4).select(records).selected_indices == [0, 1, 2, 3]
    assert AlbatSelection(fraction=0.5, max_norm_ratio=2.0).select(records).kept == 4  # a fraction of all scored
    unnormed = [ManifestRecord(i, f"k{i}", float(i + 1)) for i in range(3)]  # no norms recorded: nothing is left out
    assert AlbatSelection(num_samples=3, max_norm_ratio=1.0).select(unnormed).kept == 3
    with pytest.raises(ConfigError, match="max_norm_ratio must be a finite number > 0"):
        AlbatSelection(num_samples=3, max_norm_ratio=0.0)
