"""Subject folder listing, image loading and the DreamBooth preprocessing."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader

from dreambat.data.subject import SubjectDataset, collate_subject, list_subject_images
from dreambat.data.transforms import ImageTransform, load_rgb, to_rgb
from dreambat.errors import ConfigError, SubjectDataError

PROMPT = "a photo of sks dog"
SUBJECT_LOGGER = "dreambat.data.subject"


def _noise_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return PIL.Image.fromarray(pixels.numpy(), "RGB")


def _save(path: Path, image: PIL.Image.Image | None = None, **kwargs) -> Path:
    image = image if image is not None else PIL.Image.new("RGB", (32, 24), (200, 10, 10))
    image.save(path, format=kwargs.pop("format", None), **kwargs)
    return path


def _reference(image: PIL.Image.Image) -> torch.Tensor:
    """torchvision's ToTensor + Normalize([0.5], [0.5]) written out: [3, H, W] in [-1, 1]."""
    pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
    return (pixels - 0.5) / 0.5


# --- listing -------------------------------------------------------------------------------


def test_lists_accepted_extensions_in_any_case_and_ignores_the_rest(tmp_path):
    expected = ["a.jpg", "b.JPEG", "c.png", "d.WebP", "e.bmp", "f.Png"]
    formats = ["JPEG", "JPEG", "PNG", "WEBP", "BMP", "PNG"]
    for name, fmt in zip(expected, formats):
        _save(tmp_path / name, format=fmt)
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "._a.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    _save(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("good boy")
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    _save(tmp_path / "sub" / "nested.jpg")
    (tmp_path / "folder.jpg").mkdir()

    assert [p.name for p in list_subject_images(tmp_path)] == expected

    dataset = SubjectDataset(tmp_path, PROMPT, 16)
    assert [e.path.name for e in dataset.images] == expected
    assert dataset.skipped == []
    assert dataset.keys == ["a", "b", "c", "d", "e", "f"]


def test_keys_stay_unique_when_stems_collide(tmp_path):
    _save(tmp_path / "dog.jpg")
    _save(tmp_path / "dog.png")
    _save(tmp_path / "cat.png")
    dataset = SubjectDataset(tmp_path, PROMPT, 8)
    assert [dataset[i]["key"] for i in range(len(dataset))] == ["cat", "dog.jpg", "dog.png"]


# --- loading -------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    _save(tmp_path / "rotated.jpg", PIL.Image.new("RGB", (40, 20), "blue"), exif=exif)

    assert load_rgb(tmp_path / "rotated.jpg").size == (20, 40)
    with open(tmp_path / "rotated.jpg", "rb") as f:
        assert load_rgb(f).size == (20, 40)
    assert SubjectDataset(tmp_path, PROMPT, 8).images[0].image.size == (20, 40)


@pytest.mark.parametrize(
    "mode, color, expected",
    [
        ("L", 128, (128, 128, 128)),
        ("LA", (0, 0), (255, 255, 255)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_to_rgb_converts_modes_and_composites_alpha_on_white(mode, color, expected):
    image = to_rgb(PIL.Image.new(mode, (4, 3), color))
    assert image.mode == "RGB" and image.size == (4, 3)
    assert image.getpixel((1, 1)) == expected


def test_to_rgb_handles_palette_with_transparency_and_16_bit_grey():
    palette = PIL.Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0
    rgb = to_rgb(palette)
    assert rgb.getpixel((0, 0)) == (255, 0, 0)
    assert rgb.getpixel((2, 2)) == (255, 255, 255)

    grey16 = PIL.Image.new("I;16", (2, 2), 65535)
    assert to_rgb(grey16).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode, color", [("RGBA", (0, 255, 0, 255)), ("L", 90), ("P", 3)])
def test_dataset_converts_saved_non_rgb_images(tmp_path, mode, color):
    _save(tmp_path / "x.png", PIL.Image.new(mode, (12, 10), color))
    example = SubjectDataset(tmp_path, PROMPT, 8).images[0]
    assert example.image.mode == "RGB" and example.prompt == PROMPT


# --- preprocessing -------------------------------------------------------------------------


def test_item_is_float_tensor_in_unit_range(tmp_path):
    _save(tmp_path / "noise.png", _noise_image(50, 30))
    _save(tmp_path / "white.png", PIL.Image.new("RGB", (30, 50), "white"))
    _save(tmp_path / "black.png", PIL.Image.new("RGB", (30, 30), "black"))
    dataset = SubjectDataset(tmp_path, PROMPT, 16, random_flip=True, seed=0)

    items = {item["key"]: item for item in (dataset[i] for i in range(len(dataset)))}
    for item in items.values():
        pixels = item["pixel_values"]
        assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
        assert pixels.min() >= -1.0 and pixels.max() <= 1.0
        assert item["prompt"] == PROMPT
    assert torch.equal(items["white"]["pixel_values"], torch.ones(3, 16, 16))
    assert torch.equal(items["black"]["pixel_values"], -torch.ones(3, 16, 16))
    assert items["noise"]["pixel_values"].std() > 0.1  # downscaled noise, not flat


def test_center_crop_keeps_the_centre():
    # 60x20 red image with a green stripe in columns 25..34: the shorter side is already 20, so
    # the centre crop must be exactly columns 20..39 of the original.
    image = PIL.Image.new("RGB", (60, 20), (255, 0, 0))
    image.paste((0, 255, 0), (25, 0, 35, 20))
    out = ImageTransform(20, center_crop=True)(image)

    assert torch.equal(out, _reference(image)[:, :, 20:40])
    assert out[:, 10, 10].tolist() == [-1.0, 1.0, -1.0]
    assert out[:, 10, 0].tolist() == [1.0, -1.0, -1.0]


def test_resize_matches_pil_bilinear_on_the_shorter_side():
    image = _noise_image(40, 80, seed=3)
    out = ImageTransform(20, center_crop=True)(image)

    expected = _reference(image.resize((20, 40), PIL.Image.Resampling.BILINEAR))[:, 10:30, :]
    assert out.shape == (3, 20, 20)
    assert torch.allclose(out, expected, atol=2.5 / 127.5)


def test_random_crop_and_flip_are_reproducible_by_seed(tmp_path):
    _save(tmp_path / "a.png", _noise_image(64, 48, seed=1))
    _save(tmp_path / "b.png", _noise_image(48, 70, seed=2))

    def draws(seed):
        dataset = SubjectDataset(tmp_path, PROMPT, 32, random_flip=True, seed=seed)
        return [dataset[i % 2]["pixel_values"] for i in range(8)]

    first, again, other = draws(0), draws(0), draws(1)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))
    # Successive draws of the same image differ: the generator advances.
    assert not all(torch.equal(first[0], x) for x in first[2::2])


def test_flip_mirrors_with_probability_one_half():
    image = _noise_image(16, 16, seed=4)
    plain = _reference(image)
    transform = ImageTransform(16, random_flip=True)
    generator = torch.Generator().manual_seed(0)

    flipped = 0
    for _ in range(40):
        out = transform(image, generator)
        if torch.equal(out, plain.flip(-1)):
            flipped += 1
        else:
            assert torch.equal(out, plain)
    assert 8 < flipped < 32


def test_bad_resolution_is_a_config_error():
    with pytest.raises(ConfigError, match="resolution"):
        ImageTransform(0)


# --- unreadable files ----------------------------------------------------------------------


def test_unreadable_files_are_skipped_with_one_warning(tmp_path, caplog):
    _save(tmp_path / "good.png")
    _save(tmp_path / "good2.jpg", format="JPEG")
    (tmp_path / "notes_renamed.jpg").write_text("this is not a photo")
    buffer = io.BytesIO()
    _noise_image(64, 64).save(buffer, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    with caplog.at_level(logging.WARNING, logger=SUBJECT_LOGGER):
        dataset = SubjectDataset(tmp_path, PROMPT, 8)

    records = [r for r in caplog.records if r.name == SUBJECT_LOGGER]
    assert len(records) == 1
    assert "notes_renamed.jpg" in records[0].getMessage()
    assert "truncated.jpg" in records[0].getMessage()
    assert [e.path.name for e in dataset.images] == ["good.png", "good2.jpg"]
    assert [p.name for p, _ in dataset.skipped] == ["notes_renamed.jpg", "truncated.jpg"]
    assert all(reason for _, reason in dataset.skipped)


# --- errors --------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SubjectDataError, match="does not exist") as info:
        SubjectDataset(missing, PROMPT, 8)
    assert str(missing) in str(info.value) and "--instance_data_dir" in str(info.value)


def test_path_is_a_file(tmp_path):
    photo = _save(tmp_path / "one.jpg", format="JPEG")
    with pytest.raises(SubjectDataError, match="not a folder") as info:
        SubjectDataset(photo, PROMPT, 8)
    assert str(photo) in str(info.value)


def test_empty_folder(tmp_path):
    with pytest.raises(SubjectDataError, match="it is empty") as info:
        SubjectDataset(tmp_path, PROMPT, 8)
    assert str(tmp_path) in str(info.value)


def test_folder_without_images_names_what_it_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    with pytest.raises(SubjectDataError) as info:
        list_subject_images(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "found 2 other entries: .DS_Store, notes.txt" in message
    assert "jpg" in message and "webp" in message


def test_all_images_unreadable(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(SubjectDataError) as info:
        SubjectDataset(tmp_path, PROMPT, 8)
    message = str(info.value)
    assert str(tmp_path) in message and "a.jpg" in message and "b.png" in message


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_a_config_error(tmp_path, prompt):
    _save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="--instance_prompt"):
        SubjectDataset(tmp_path, prompt, 8)


# --- batching ------------------------------------------------------------------------------


def test_collate_through_a_dataloader(tmp_path):
    for i in range(3):
        _save(tmp_path / f"img{i}.png", _noise_image(20, 24, seed=i))
    dataset = SubjectDataset(tmp_path, PROMPT, 16, seed=0)
    batches = list(DataLoader(dataset, batch_size=2, collate_fn=collate_subject))

    assert batches[0]["pixel_values"].shape == (2, 3, 16, 16)
    assert batches[0]["prompts"] == [PROMPT, PROMPT]
    assert batches[0]["keys"] == ["img0", "img1"]
    assert batches[1]["keys"] == ["img2"]
    with pytest.raises(ValueError):
        collate_subject([])
