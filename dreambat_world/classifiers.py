"""Ground-truth attribute classifiers of the world: shape, colour, pattern and background colour.

The procedural world knows what every image shows, so a small CNN trained on freshly rendered
single-object scenes (see :mod:`.evaluator_training`) reads those attributes back from any image
- a subject photo or a sample of the backbone. That gives two DreamBench-style scores without
any learned similarity:

* **subject fidelity**: do the images show the subject's shape, colour and pattern?
* **prompt fidelity**: do they show what the prompt asked (a background colour, a new colour)?

Labels are those of the scene's *main object*: the largest one (the last drawn on ties), so
scenes with a small distractor still have one unambiguous answer. Training uses single-object
scenes only; :func:`main_object_labels` applies the same rule to any scene's attributes.

Stripes and checks paint exactly half of an object in each of its two colours, so which one is
the "object colour" and which the "pattern colour" is a convention the image cannot show. A
classifier with a ``pattern_color`` head therefore scores colours order-free on objects it sees
as striped or checkered: the asked colour must be one of the two it reads (see
:meth:`AttributeClassifier.agreement`).

Files (``save`` / ``load``): ``classifier_config.json`` (:class:`ClassifierConfig`) and
``model.safetensors`` (float16 weights, about 0.2 MB).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from dreambat.errors import ConfigError, ModelNotFoundError

from .synthetic import COLORS, PATTERNS, SHAPES, Design, Subject

CONFIG_FILE = "classifier_config.json"
WEIGHTS_FILE = "model.safetensors"


HALF_AND_HALF_PATTERNS: tuple[str, ...] = ("striped", "checkered")
"""Patterns that cover half the object in each colour (the painters in ``dreambat_world.synthetic.tables``)."""


def default_heads() -> dict[str, list[str]]:
    """Head name -> class labels, from the world's attribute tables.

    ``pattern_color`` is trained on patterned objects only (a plain object has none).
    """
    return {
        "shape": list(SHAPES),
        "color": list(COLORS),
        "pattern": list(PATTERNS),
        "pattern_color": list(COLORS),
        "background": list(COLORS),
    }


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and label sets of an :class:`AttributeNet`.

    Attributes:
        heads: head name -> its class labels (order = logit index).
        image_size: side the images are resized to before the network (the world's 32 px).
        channels: widths of the three conv stages (each ends in a 2x max-pool).
        hidden: width of the shared fully connected layer before the heads.
    """

    heads: dict[str, list[str]] = field(default_factory=default_heads)
    image_size: int = 32
    channels: tuple[int, int, int] = (16, 32, 64)
    hidden: int = 64

    def __post_init__(self) -> None:
        if not self.heads or any(len(labels) < 2 for labels in self.heads.values()):
            raise ConfigError(f"ClassifierConfig.heads needs at least one head with >= 2 labels; got {self.heads}.")
        if self.image_size < 8 or self.image_size % 8:
            raise ConfigError(f"ClassifierConfig.image_size must be a multiple of 8 (>= 8), got {self.image_size}.")
        if len(self.channels) != 3 or min(self.channels) < 1 or self.hidden < 1:
            raise ConfigError(f"ClassifierConfig needs three positive channels and hidden >= 1; got {self}.")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClassifierConfig:
        data = json.loads(text)
        data["channels"] = tuple(data.get("channels", (16, 32, 64)))
        return cls(**data)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class AttributeNet(nn.Module):
    """A 5-conv CNN with one linear head per attribute.

    ``forward(pixels [N, 3, S, S] in [-1, 1]) -> {head: logits [N, n_labels]}``.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        a, b, c = config.channels
        self.config = config
        self.features = nn.Sequential(
            _conv(3, a), _conv(a, a), nn.MaxPool2d(2),
            _conv(a, b), _conv(b, b), nn.MaxPool2d(2),
            _conv(b, c), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c * (config.image_size // 8) ** 2, config.hidden), nn.ReLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(config.hidden, len(labels))
                                    for name, labels in config.heads.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(pixels)
        return {name: head(features) for name, head in self.heads.items()}


def images_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> ``[N, 3, size, size]`` float32 in [-1, 1] (bicubic resize when needed)."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32))
    if not arrays:
        raise ValueError("images_to_tensor got no images.")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def main_object_labels(attributes: Mapping[str, Any]) -> dict[str, str]:
    """The labels of a scene (its ``attributes()`` dict): main (largest) object and background.

    ``pattern_color`` is present only when the main object has a pattern.
    """
    objects = attributes["objects"]
    if not objects:
        raise ValueError("main_object_labels: the scene has no objects.")
    main = max(reversed(objects), key=lambda o: float(o.get("size", 0.5)))
    pattern = main.get("pattern", "plain")
    labels = {"shape": main["shape"], "color": main["color"], "pattern": pattern,
              "background": attributes["background"]}
    if pattern != "plain":
        labels["pattern_color"] = main.get("pattern_color", "white")
    return labels


class AttributeClassifier:
    """Predicts each head's label for PIL images; scores subject and prompt fidelity."""

    def __init__(self, net: AttributeNet, *, device: str | torch.device = "cpu", batch_size: int = 64):
        self.net = net.eval().to(device)
        self.config = net.config
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 64) -> AttributeClassifier:
        """Load ``classifier_config.json`` + ``model.safetensors`` from ``folder``."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise ModelNotFoundError(
                f"'{folder}' holds no attribute classifier ({CONFIG_FILE} and {WEIGHTS_FILE}); train one "
                "with `python scripts/train_world_evaluators.py classifier --out FOLDER`."
            )
        net = AttributeNet(ClassifierConfig.from_json((folder / CONFIG_FILE).read_text()))
        state = {key: value.float() for key, value in load_file(folder / WEIGHTS_FILE).items()}
        net.load_state_dict(state)
        return cls(net, device=device, batch_size=batch_size)

    def save(self, folder: str | Path) -> Path:
        """Write the config and float16 weights (BatchNorm counters kept exact) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(self.config.to_json())
        state = {key: (value.half() if value.is_floating_point() else value).contiguous().cpu()
                 for key, value in self.net.state_dict().items()}
        save_file(state, folder / WEIGHTS_FILE)
        return folder

    def logits(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """``{head: [N, n_labels]}`` float32 CPU logits."""
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in self.config.heads}
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = images_to_tensor(images[start:start + self.batch_size], self.config.image_size)
                for name, value in self.net(pixels.to(self.device)).items():
                    chunks[name].append(value.float().cpu())
        if not images:
            raise ValueError("AttributeClassifier got no images.")
        return {name: torch.cat(values) for name, values in chunks.items()}

    def predict(self, images: Sequence[Image.Image]) -> list[dict[str, str]]:
        """One ``{head: label}`` dict per image (e.g. ``{"shape": "star", "color": "purple", ...}``)."""
        indices = {name: value.argmax(dim=1).tolist() for name, value in self.logits(images).items()}
        return [{name: self.config.heads[name][indices[name][i]] for name in self.config.heads}
                for i in range(len(images))]

    def agreement(self, images: Sequence[Image.Image],
                  expected: Mapping[str, str] | Sequence[Mapping[str, str]]) -> dict[str, float]:
        """Fraction of images whose prediction equals ``expected``, per head named in it.

        ``expected`` is one dict for all images or one per image; heads it leaves out are not
        scored. Also returns ``"all"``: the fraction of images right on every expected head.

        With a ``pattern_color`` head, ``color`` and ``pattern_color`` are scored order-free on
        images predicted striped or checkered (:data:`HALF_AND_HALF_PATTERNS`): right when the
        expected colour is either of the two colours read.
        """
        return self.agreement_of(self.predict(images), expected)

    def agreement_of(self, predictions: Sequence[Mapping[str, str]],
                     expected: Mapping[str, str] | Sequence[Mapping[str, str]]) -> dict[str, float]:
        """:meth:`agreement` of predictions already made (:meth:`predict`), so one reading of
        the images can be scored and also inspected."""
        per_image = [expected] * len(predictions) if isinstance(expected, Mapping) else list(expected)
        if len(per_image) != len(predictions):
            raise ValueError(f"agreement: {len(predictions)} images but {len(per_image)} expected dicts.")
        unknown = {key for want in per_image for key in want} - set(self.config.heads)
        if unknown:
            raise ConfigError(f"No classifier head for {sorted(unknown)}; heads are {list(self.config.heads)}.")
        hits: dict[str, list[bool]] = {}
        all_right = []
        for got, want in zip(predictions, per_image):
            right = [self.matches(got, key, value) for key, value in want.items()]
            for key, ok in zip(want, right):
                hits.setdefault(key, []).append(ok)
            all_right.append(all(right))
        scores = {key: float(np.mean(values)) for key, values in hits.items()}
        scores["all"] = float(np.mean(all_right))
        return scores

    @staticmethod
    def matches(got: Mapping[str, str], key: str, value: str) -> bool:
        """Whether a prediction ``got`` shows ``value`` on head ``key``; colours order-free on
        objects read as striped or checkered (see :meth:`agreement`)."""
        if (key in ("color", "pattern_color") and "pattern_color" in got
                and got.get("pattern") in HALF_AND_HALF_PATTERNS):
            return value in (got["color"], got["pattern_color"])
        return got[key] == value

    def subject_fidelity(self, images: Sequence[Image.Image], subject: Subject | Design) -> dict[str, float]:
        """Fraction of images showing the subject's shape, colour, pattern (and all three)."""
        design = subject.design if isinstance(subject, Subject) else subject
        return self.agreement(images, {"shape": design.shape, "color": design.color, "pattern": design.pattern})

    def prompt_fidelity(self, images: Sequence[Image.Image], expected: Mapping[str, str]) -> dict[str, float]:
        """Fraction of images showing what a prompt asked, e.g. ``{"background": "blue"}``."""
        return self.agreement(images, expected)
