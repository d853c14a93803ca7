"""Streaming scorer: manifest lines, non-finite losses counted and recorded, resume skips."""

from dataclasses import dataclass

import torch

from dreambat.albat.curvature import get_strategy
from dreambat.albat.manifest import ManifestWriter, read_manifest
from dreambat.albat.scorer import AlbatScorer, score_candidates


@dataclass
class Candidate:
    index: int
    key: str
    url: str
    caption: str
    x: torch.Tensor
    y: float


def _collate(candidates):
    return torch.stack([c.x for c in candidates]), torch.tensor([c.y for c in candidates])


def _scorer(mlp_task):
    task, blocks = mlp_task
    scorer = AlbatScorer(task, blocks, get_strategy("exact"))
    x, y = torch.randn(4, 6), torch.randn(4)
    report = scorer.fit([(x, y)])
    assert report["n_ref"] == 4 and report["num_params"] == blocks.num_params
    return scorer


def _candidates(n, nan_at=()):
    generator = torch.Generator().manual_seed(3)
    return [
        Candidate(i, f"k{i}", "shard.tar", f"c{i}", torch.randn(6, generator=generator),
                  float("nan") if i in nan_at else float(i % 3))
        for i in range(n)
    ]


def test_nonfinite_candidate_is_skipped_counted_and_recorded(mlp_task, tmp_path):
    scorer = _scorer(mlp_task)
    with ManifestWriter(tmp_path / "m.jsonl", fingerprint={"t": 1}) as writer:
        summary = score_candidates(scorer, _candidates(7, nan_at={4}), _collate, writer, batch_size=3)
    assert summary.scored == 6 and summary.skipped_nonfinite == 1
    records = read_manifest(tmp_path / "m.jsonl")
    assert [r.index for r in records] == list(range(7))
    bad = records[4]
    assert bad.status == "skipped" and bad.score is None and bad.reason == "nonfinite_loss"
    assert all(r.score is not None for r in records if r.index != 4)


def test_resume_skips_what_is_done_and_scores_the_same(mlp_task, tmp_path):
    scorer = _scorer(mlp_task)
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path, fingerprint={"t": 1}) as writer:
        score_candidates(scorer, _candidates(4), _collate, writer, batch_size=2)
    with ManifestWriter(path, fingerprint={"t": 1}) as writer:
        summary = score_candidates(scorer, _candidates(9), _collate, writer, batch_size=2)
    assert summary.resumed == 4 and summary.scored == 5
    with ManifestWriter(tmp_path / "fresh.jsonl", fingerprint={"t": 1}) as writer:
        score_candidates(scorer, _candidates(9), _collate, writer, batch_size=5)
    resumed, fresh = read_manifest(path), read_manifest(tmp_path / "fresh.jsonl")
    assert [r.key for r in resumed] == [r.key for r in fresh]
    for a, b in zip(resumed, fresh):
        assert abs(a.score - b.score) <= 1e-6 * max(1.0, abs(b.score))


def test_no_candidates_writes_nothing(mlp_task, tmp_path):
    scorer = _scorer(mlp_task)
    with ManifestWriter(tmp_path / "m.jsonl", fingerprint={"t": 1}) as writer:
        summary = score_candidates(scorer, [], _collate, writer)
    assert summary.scored == 0 and (tmp_path / "m.jsonl").read_text() == ""
