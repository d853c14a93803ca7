"""Two CPU processes (torchrun, gloo): a mixture run, its checkpoints, and an exact resume.

One launch runs three trainings back to back, as a BAT run does (surrogate, then final LoRA):
an uninterrupted 4-step run, a 2-step run, and its resume to step 4.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

from safetensors.torch import load_file

from tests.conftest import REPO

SCRIPT = textwrap.dedent('''
    import dataclasses, json, sys
    import torch
    from dreambat.training.config import TrainConfig
    from dreambat.training.dreambooth import run_dreambooth

    class Backbone(torch.utils.data.Dataset):
        def __len__(self):
            return 5
        def __getitem__(self, i):
            return {"pixel_values": torch.full((3, 32, 32), i / 5 - 0.5), "prompt": f"caption {i}", "key": str(i)}

    backbone, subject, out = sys.argv[1:4]
    base = TrainConfig(
        pretrained_model_name_or_path=backbone, instance_data_dir=subject, instance_prompt="a photo of sks star",
        output_dir=out + "/full", seed=0, train_batch_size=2, max_train_steps=4, learning_rate=1e-3,
        report_to="none", checkpointing_steps=2, lora_dropout=0.1, random_flip=True, dataloader_num_workers=1,
    )
    runs = {
        "full": run_dreambooth(base, backbone_data=Backbone(), gamma=0.5),
        "first": run_dreambooth(dataclasses.replace(base, output_dir=out + "/split", max_train_steps=2),
                                backbone_data=Backbone(), gamma=0.5),
        "resumed": run_dreambooth(dataclasses.replace(base, output_dir=out + "/split", resume_from_checkpoint="latest",
                                                      dataloader_num_workers=0), backbone_data=Backbone(), gamma=0.5),
    }
    if torch.distributed.get_rank() == 0:
        summary = {k: {"counts": r.source_counts, "resumed_from": r.resumed_from} for k, r in runs.items()}
        (__import__("pathlib").Path(out) / "summary.json").write_text(json.dumps(summary))
''')


def test_two_process_mixture_checkpoints_and_exact_resume(tiny_backbone, subject_dir, tmp_path):
    script = tmp_path / "train_twice.py"
    script.write_text(SCRIPT)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29547", str(script), str(tiny_backbone),
         str(subject_dir), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    full, resumed = summary["full"], summary["resumed"]
    # 4 steps x 2 processes x batch 2 rows, split between subject and backbone by the coins.
    assert sum(full["counts"].values()) == 16 and full["counts"]["backbone"] > 0
    assert resumed["counts"] == full["counts"] and resumed["resumed_from"].endswith("checkpoint-2")
    checkpoint = tmp_path / "split" / "checkpoint-4"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    a = load_file(tmp_path / "full" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "split" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
