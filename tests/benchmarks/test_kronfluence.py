"""kronfluence's identity scores against ALBAT's, through benchmarks/bench_kronfluence.py.

Skipped without the optional benchmark dependency (``pip install -e .[bench]``).
"""

import pytest
import torch

pytest.importorskip("kronfluence")

from benchmarks import bench_kronfluence  # noqa: E402


def test_row_items_are_sample_major():
    items = [{"key": "a"}, {"key": "b"}]
    rows = bench_kronfluence.row_items(items, 3)
    assert [(r["key"], r["term"]) for r in rows] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # kronfluence's torch.cuda.amp.GradScaler call
def test_kronfluence_identity_equals_albat_identity(tmp_path):
    """Same loss, same (t, ε) draws, same LoRA factors: the identity scores are the same numbers."""
    args = bench_kronfluence.parse_args([
        "--candidates", "4", "--batch_size", "4", "--num_timesteps", "2", "--rank", "2",
        "--albat", "identity", "--kronfluence", "identity", "--threads", "1", "--workdir", str(tmp_path),
    ])
    threads = torch.get_num_threads()
    try:
        results = bench_kronfluence.run(args)
    finally:
        torch.set_num_threads(threads)
    albat = torch.tensor(results["scores"]["albat_identity"], dtype=torch.float64)
    kron = torch.tensor(results["scores"]["kronfluence_identity"], dtype=torch.float64)
    assert kron.shape == albat.shape == (4,)
    vs = results["methods"]["kronfluence_identity"]["vs"]["albat_identity"]
    assert vs["spearman"] >= 0.99
    assert vs["ratio"] == pytest.approx(1.0, rel=1e-4)  # same sign and scale, not only the same ranking
    torch.testing.assert_close(kron, albat, rtol=1e-4, atol=1e-4 * float(albat.abs().max()))
