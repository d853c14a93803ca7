"""The metrics against plain double loops, and against the evaluators' own encoders."""

import math

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from dreambat.eval.metrics import (
    clip_i_score, clip_t_score, cosine_matrix, dino_score, div_score, mean_paired_cosine, mean_pairwise_cosine,
    pres_score,
)


def _cos(u, v) -> float:
    u, v = u.double(), v.double()
    return float(u @ v / (u.norm() * v.norm()))


def _images(n, seed=0, size=40):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)) for _ in range(n)]


def test_pairwise_mean_equals_double_loop():
    a, b = torch.randn(5, 7), torch.randn(3, 7) * 4
    loop = sum(_cos(a[i], b[j]) for i in range(5) for j in range(3)) / 15
    assert mean_pairwise_cosine(a, b) == pytest.approx(loop, abs=1e-12)
    assert dino_score(a, b) == clip_i_score(a, b) == mean_pairwise_cosine(a, b)
    assert cosine_matrix(a, b).shape == (5, 3)


def test_self_comparison_skips_the_diagonal():
    a = torch.randn(4, 6)
    loop = sum(_cos(a[i], a[j]) for i in range(4) for j in range(4) if i != j) / 12
    assert mean_pairwise_cosine(a) == pytest.approx(loop, abs=1e-12)
    assert math.isnan(mean_pairwise_cosine(a[:1]))


def test_paired_mean_equals_loop_and_broadcasts_one_text():
    images, texts = torch.randn(6, 5), torch.randn(6, 5)
    loop = sum(_cos(images[i], texts[i]) for i in range(6)) / 6
    assert clip_t_score(images, texts) == pytest.approx(loop, abs=1e-12)
    one = sum(_cos(images[i], texts[0]) for i in range(6)) / 6
    assert mean_paired_cosine(images, texts[:1]) == pytest.approx(one, abs=1e-12)
    with pytest.raises(ValueError):
        mean_paired_cosine(images, texts[:2])


def test_raw_cosine_is_not_scaled_or_clipped():
    a = torch.tensor([[1.0, 0.0]])
    assert mean_pairwise_cosine(a, -a) == pytest.approx(-1.0)
    assert mean_pairwise_cosine(a, 3 * a) == pytest.approx(1.0)


def test_pres_is_the_cosine_with_the_real_photos_by_hand():
    class_images = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    real = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # cosines: (1, 0) with (1, 0) and (0, 1): 1 and 0; (1, 1)/√2 with both: 1/√2 each
    assert pres_score(class_images, real) == pytest.approx((1 + 0 + 2 / math.sqrt(2)) / 4, abs=1e-12)
    assert pres_score(class_images[:1], real[:1]) == pytest.approx(1.0)


def test_div_is_one_minus_the_mean_cosine_over_distinct_pairs_by_hand():
    assert div_score(torch.tensor([[1.0, 2.0]] * 3)) == pytest.approx(0.0, abs=1e-12)  # identical images
    assert div_score(torch.tensor([[1.0, 0.0], [0.0, 5.0]])) == pytest.approx(1.0)  # orthogonal
    assert div_score(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)  # opposite
    three = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    # pairs: (e1, d) 1/√2, (e1, e2) 0, (d, e2) 1/√2, each counted in both orders
    assert div_score(three) == pytest.approx(1 - (2 / math.sqrt(2)) / 3, abs=1e-12)
    assert math.isnan(div_score(three[:1]))


def test_identical_images_score_one(dino, clip):
    image = _images(1)[0]
    generated, real = [image] * 4, [image.copy() for _ in range(3)]
    assert dino_score(dino.embed_images(generated), dino.embed_images(real)) == pytest.approx(1.0, abs=1e-5)
    assert clip_i_score(clip.embed_images(generated), clip.embed_images(real)) == pytest.approx(1.0, abs=1e-5)
    assert div_score(dino.embed_images(generated)) == pytest.approx(0.0, abs=1e-5)
    assert pres_score(dino.embed_images(generated), dino.embed_images(real)) == pytest.approx(1.0, abs=1e-5)


def test_embeddings_do_not_depend_on_batch_size(dino, clip):
    images = _images(5, seed=1)
    for encoder in (dino, clip):
        batched = encoder.embed_images(images)  # batch_size 3: batches of 3 and 2
        single = torch.cat([encoder.embed_images([image]) for image in images])
        assert batched.shape == (5, 32) and batched.dtype == torch.float32
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_clip_t_matches_the_model_own_encoders(clip, tiny_evaluators):
    images, prompts = _images(3, seed=2), ["a star in the jungle", "a red star", "a star on the beach"]
    open_clip.add_model_config(tiny_evaluators.clip_model)
    name = tiny_evaluators.clip_model.stem
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(tiny_evaluators.clip_pretrained))
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    with torch.no_grad():
        direct = [_cos(model.encode_image(preprocess(image)[None])[0], model.encode_text(tokenizer([text]))[0])
                  for image, text in zip(images, prompts)]
    score = clip_t_score(clip.embed_images(images), clip.embed_texts(prompts))
    assert score == pytest.approx(sum(direct) / 3, abs=1e-5)


def test_dino_embedding_is_the_cls_token_after_dino_preprocessing(dino, tiny_evaluators):
    from transformers import ViTModel

    image = _images(1, seed=3, size=90)[0]  # 98 x 90: the short side is the height
    side = 64  # the tiny ViT's image_size; the protocol resizes to 256/224 of it (73), then centre-crops
    resized = image.resize((int(98 * 73 / 90), 73), Image.Resampling.BICUBIC)  # short side 73
    left, top = round((resized.width - side) / 2), round((resized.height - side) / 2)
    pixels = np.asarray(resized.crop((left, top, left + side, top + side)), dtype=np.float32) / 255
    pixels = (pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    reference = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None]
    torch.testing.assert_close(dino.transform(image)[None], reference, atol=1e-5, rtol=0)
    model = ViTModel.from_pretrained(tiny_evaluators.dino_model).eval()
    with torch.no_grad():
        cls = model(pixel_values=dino.transform(image)[None]).last_hidden_state[:, 0]
    torch.testing.assert_close(dino.embed_images([image]), cls, atol=1e-5, rtol=1e-4)
