import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from dreambat.albat.blocks import LoraBlocks
from dreambat.albat.task import as_matrix
from dreambat.albat.gradients import contracted_scores, reference_rows, reference_scores
from dreambat.errors import ConfigError
from tests.albat.conftest import RegressionTask, image_batch


def _directions(rows):
    generator = torch.Generator().manual_seed(1)
    return {name: r.mean(0) + 0.1 * torch.randn(r.shape[1], generator=generator) * r.std() for name, r in rows.items()}


def _dense_gradient(task, blocks, batch):
    blocks.zero_grad()
    as_matrix(task.loss_matrix(batch)).mean(dim=1).sum().backward()
    return blocks.flat_grads()


def test_blocks_are_every_lora_matrix(mlp_task):
    _, blocks = mlp_task
    assert len(blocks) == 4 and blocks.num_params == sum(blocks.dims) == 18 + 48 + 48 + 3
    assert all(("lora_A" in n) or ("lora_B" in n) for n in blocks.names)


def test_no_trainable_lora_is_a_clear_error():
    with pytest.raises(ConfigError, match="no trainable LoRA"):
        LoraBlocks.from_models(nn.Linear(3, 3))


def test_reference_rows_are_explicit_per_row_gradients(mlp_task):
    task, blocks = mlp_task
    x, y = torch.randn(4, 6), torch.randn(4)
    rows = reference_rows(task, blocks, [(x[:3], y[:3]), (x[3:], y[3:])])
    for i in range(4):
        expected = _dense_gradient(task, blocks, (x[i : i + 1], y[i : i + 1]))
        for name in blocks.names:
            torch.testing.assert_close(rows[name][i], expected[name])


def test_fast_path_equals_reference_on_a_non_diffusion_model(mlp_task):
    task, blocks = mlp_task
    x, y = torch.randn(5, 6), torch.randn(5)
    h = _directions(reference_rows(task, blocks, [(x, y)]))
    cx, cy = torch.randn(40, 6), torch.randn(40)
    fast = contracted_scores(task, blocks, h, (cx, cy))
    slow = reference_scores(task, blocks, h, (cx, cy))
    assert (fast - slow).abs().max() / slow.abs().max() < 1e-5
    # The reference itself: an explicit gradient dotted with h.
    g = _dense_gradient(task, blocks, (cx[:1], cy[:1]))
    explicit = sum(torch.dot(h[n].double(), g[n].double()) for n in blocks.names)
    assert torch.isclose(slow[0], explicit, rtol=1e-6)


def test_fast_path_matches_per_sample_loop_on_the_tiny_unet(unet_task):
    task, blocks = unet_task
    h = _directions(reference_rows(task, blocks, [image_batch(3, seed=0)]))
    candidates = image_batch(12, offset=100, seed=1)
    fast = contracted_scores(task, blocks, h, candidates)
    slow = reference_scores(task, blocks, h, candidates)
    relative = ((fast - slow).abs() / slow.abs().max()).max().item()
    assert relative <= 1e-4, relative
    assert spearmanr(fast, slow).statistic >= 0.999


def test_scores_do_not_depend_on_batch_size_or_order(unet_task):
    task, blocks = unet_task
    h = _directions(reference_rows(task, blocks, [image_batch(2, seed=0)]))
    batch = image_batch(6, offset=10, seed=2)
    whole = contracted_scores(task, blocks, h, batch)
    pieces = torch.cat([contracted_scores(task, blocks, h, {k: v[i : i + 2] for k, v in batch.items()}) for i in (0, 2, 4)])
    order = [5, 3, 1, 0, 2, 4]
    shuffled = contracted_scores(task, blocks, h, {
        "pixel_values": batch["pixel_values"][order],
        "prompts": [batch["prompts"][i] for i in order], "keys": [batch["keys"][i] for i in order],
    })
    scale = whole.abs().max()
    assert ((whole - pieces).abs().max() / scale) < 1e-5
    assert ((whole[order] - shuffled).abs().max() / scale) < 1e-5


def test_nonfinite_loss_gives_nan_for_that_sample_only(mlp_task):
    task, blocks = mlp_task
    x, y = torch.randn(3, 6), torch.randn(3)
    h = _directions(reference_rows(task, blocks, [(x, y)]))
    cx, cy = torch.randn(5, 6), torch.randn(5)
    clean = contracted_scores(task, blocks, h, (cx, cy))
    cy_bad = cy.clone()
    cy_bad[2] = float("nan")
    for scores in (contracted_scores(task, blocks, h, (cx, cy_bad)), reference_scores(task, blocks, h, (cx, cy_bad))):
        assert torch.isnan(scores[2])
        keep = [0, 1, 3, 4]
        torch.testing.assert_close(scores[keep], clean[keep], rtol=1e-5, atol=1e-9)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1, bias=False)
        self.head = nn.Linear(4 * 4 * 4, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1)).squeeze(-1)


def test_fast_path_dispatches_conv2d_lora_factors_by_type():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(ConvNet(), LoraConfig(r=2, target_modules=["conv1", "conv2", "head"], init_lora_weights=False))
    task, blocks = RegressionTask(model), LoraBlocks.from_models(model)
    assert {type(m) for m in blocks.modules} == {nn.Conv2d, nn.Linear}
    x, y = torch.randn(3, 3, 8, 8), torch.randn(3)
    h = _directions(reference_rows(task, blocks, [(x, y)]))
    cx, cy = torch.randn(10, 3, 8, 8), torch.randn(10)
    fast = contracted_scores(task, blocks, h, (cx, cy))
    slow = reference_scores(task, blocks, h, (cx, cy))
    assert (fast - slow).abs().max() / slow.abs().max() < 1e-5


def test_unregistered_factor_type_names_the_way_out(mlp_task):
    from dreambat.albat.layers import directional_output_for

    with pytest.raises(ConfigError, match=r"'x\.lora_A\.default\.weight' \(Embedding\).*register_layer") as info:
        directional_output_for("x.lora_A.default.weight", nn.Embedding(3, 2))
    assert "--" not in str(info.value)
