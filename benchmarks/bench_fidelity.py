#!/usr/bin/env python
"""How faithful are ALBAT's curvature approximations? Rank correlations on a model small enough
for the true Hessian, as functions of LoRA rank and damping.

Model: an MLP (8 -> 32 -> 32 -> 1, tanh) "pretrained" on a broad regression task, then a LoRA on
all three layers (both A and B trained, as in a real surrogate) fitted for a few hundred Adam steps
to a small adaptation set drawn from a shifted teacher. Candidates: inputs from the broad
distribution, half labelled by the adaptation teacher (related), half by an unrelated one.

For each (rank, damping c, seed) the script computes the scores of every candidate with the
engine's own code (``reference_rows`` -> ``precondition`` -> ``contracted_scores``) for
``exact`` (damped empirical Fisher, per block), ``datainf`` and ``identity``, and the influence
with the full curvature of the adaptation loss over all LoRA parameters (``Z = vᵀ (M + Λ)⁻¹ g_x``,
Λ the same per-block damping, D×D and solved densely) for M = the **true Hessian** and M = the
**Gauss-Newton** matrix (its positive semi-definite part), and reports Spearman correlations and
how many related candidates each score puts in its top half.

    python benchmarks/bench_fidelity.py --out benchmarks/results/fidelity.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn


from benchmarks._measure import REPO  # noqa: E402
from dreambat.albat import LoraBlocks  # noqa: E402
from dreambat.albat import damping_lambda, get_strategy, precondition  # noqa: E402
from dreambat.albat import contracted_scores, reference_rows  # noqa: E402

F64 = torch.float64
D_IN, HIDDEN = 8, 32


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(D_IN, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, 1)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x))))).squeeze(-1)


class RegressionTask:
    """Per-sample squared error: the ScoringTask contract with one term per sample."""

    def __init__(self, model):
        self.model = model

    def loss_matrix(self, batch):
        x, y = batch
        return (self.model(x) - y).pow(2)

    def batch_size(self, batch):
        return len(batch[0])


def teacher(gen):
    w1, w2 = torch.randn(D_IN, 16, dtype=F64, generator=gen), torch.randn(16, dtype=F64, generator=gen)
    return lambda x: torch.sin(x @ w1 / np.sqrt(D_IN)) @ w2 / 4


def setup(rank: int, seed: int, n_adapt: int, n_cand: int, lora_steps: int):
    from peft import LoraConfig, get_peft_model

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    broad, shifted, unrelated = teacher(gen), teacher(gen), teacher(gen)
    base = MLP().double()
    x_pre = torch.randn(2000, D_IN, dtype=F64, generator=gen)
    opt = torch.optim.Adam(base.parameters(), lr=3e-3)
    for _ in range(600):  # "pretraining" on the broad task
        opt.zero_grad()
        F.mse_loss(base(x_pre), broad(x_pre)).backward()
        opt.step()
    # adaptation target: the broad task plus a shifted component, on a shifted input region
    target = lambda x: broad(x) + 0.5 * shifted(x)  # noqa: E731
    x_adapt = torch.randn(n_adapt, D_IN, dtype=F64, generator=gen) * 0.7 + 0.5
    y_adapt = target(x_adapt) + 0.05 * torch.randn(n_adapt, dtype=F64, generator=gen)
    x_cand = torch.randn(n_cand, D_IN, dtype=F64, generator=gen)
    half = n_cand // 2
    y_cand = torch.cat([target(x_cand[:half]), broad(x_cand[half:]) + 0.5 * unrelated(x_cand[half:])])
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=rank, target_modules=["fc1", "fc2", "fc3"],
                                            init_lora_weights="gaussian")).double()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    opt = torch.optim.Adam(lora, lr=3e-3)
    for _ in range(lora_steps):  # the surrogate: short, not converged
        opt.zero_grad()
        F.mse_loss(model(x_adapt), y_adapt).backward()
        opt.step()
    return model, (x_adapt, y_adapt), (x_cand, y_cand)


def full_curvature_scores(task, blocks, adapt, cand, rows, damping):
    """Z = vᵀ (M + Λ)⁻¹ g_x with M the exact Hessian ("hessian") and the Gauss-Newton matrix ("ggn")
    of the mean adaptation loss over all LoRA parameters."""
    params = list(blocks.params)
    sizes = [p.numel() for p in params]
    loss = task.loss_matrix(adapt).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    H = torch.zeros(len(flat), len(flat), dtype=F64)
    for i in range(len(flat)):
        row = torch.autograd.grad(flat[i], params, retain_graph=True)
        H[i] = torch.cat([r.reshape(-1) for r in row])
    H = 0.5 * (H + H.T)
    lam = torch.cat([torch.full((s,), damping_lambda(rows[name], damping), dtype=F64)
                     for name, s in zip(blocks.names, sizes)])
    v = torch.cat([rows[name].double().mean(0) for name in blocks.names])
    # Gauss-Newton: for (f - y)², the PSD part 2 ∇f ∇fᵀ of the Hessian, averaged over the adaptation set
    jac = torch.stack([flat_grad(task.model(adapt[0][i:i + 1]).sum(), params) for i in range(len(adapt[0]))])
    G = 2 * jac.T @ jac / len(jac)
    cand_grads = torch.stack([flat_grad(task.loss_matrix((cand[0][i:i + 1], cand[1][i:i + 1])).sum(), params)
                              for i in range(len(cand[0]))])
    out = {name: cand_grads @ torch.linalg.solve(M + torch.diag(lam), v) for name, M in (("hessian", H), ("ggn", G))}
    eig = torch.linalg.eigvalsh(H)
    return out, {"D": len(flat), "negative_eigenvalues": int((eig < 0).sum()),
                 "min_eig_over_mean_lambda": float(eig.min() / lam.mean())}


def flat_grad(value, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)])


def measure(rank: int, damping: float, seed: int, args) -> dict:
    model, adapt, cand = setup(rank, seed, args.n_adapt, args.n_cand, args.lora_steps)
    task = RegressionTask(model)
    blocks = LoraBlocks.from_models(model)
    rows = reference_rows(task, blocks, [adapt])
    scores = {name: contracted_scores(task, blocks, precondition(rows, get_strategy(name, damping)), cand)
              for name in ("exact", "datainf", "identity")}
    curvature, info = full_curvature_scores(task, blocks, adapt, cand, rows, damping)
    scores.update(curvature)

    def rho(a, b):
        return float(spearmanr(scores[a].numpy(), scores[b].numpy()).statistic)

    related = torch.arange(args.n_cand) < args.n_cand // 2
    return {"rank": rank, "damping": damping, "seed": seed, **info,
            "datainf_vs_exact": rho("datainf", "exact"), "exact_vs_hessian": rho("exact", "hessian"),
            "datainf_vs_hessian": rho("datainf", "hessian"), "identity_vs_hessian": rho("identity", "hessian"),
            "exact_vs_ggn": rho("exact", "ggn"), "datainf_vs_ggn": rho("datainf", "ggn"),
            "identity_vs_ggn": rho("identity", "ggn"), "ggn_vs_hessian": rho("ggn", "hessian"),
            **{f"related_in_top_half_{name}": float(related[scores[name].argsort(descending=True)[: args.n_cand // 2]]
                                                    .double().mean()) for name in scores}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--dampings", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n_adapt", type=int, default=40)
    p.add_argument("--n_cand", type=int, default=200)
    p.add_argument("--lora_steps", type=int, default=300)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/fidelity.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    started, rows = time.time(), []
    for rank in args.ranks:
        for damping in args.dampings:
            for seed in args.seeds:
                rows.append(measure(rank, damping, seed, args))
            cell = [r for r in rows if r["rank"] == rank and r["damping"] == damping]
            print(f"rank {rank:2d} c {damping:<5}: " + ", ".join(
                f"{k} {np.mean([r[k] for r in cell]):.3f}" for k in
                ("datainf_vs_exact", "exact_vs_ggn", "datainf_vs_ggn", "exact_vs_hessian", "ggn_vs_hessian")), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "seconds": round(time.time() - started, 1),
                                    "settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
