"""The README's main command: the end-to-end demo on the mini-world."""

from dreambat_world.demo import run_demo


def test_demo_end_to_end(tmp_path):
    outputs = run_demo(tmp_path / "demo", steps=3, max_candidates=12, inference_steps=2, num_prompts=2)
    for name, path in outputs.items():
        assert path is not None and path.exists(), name
