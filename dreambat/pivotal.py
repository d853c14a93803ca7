"""Pivotal tuning: a subject identifier made of new tokens whose embeddings are trained with the LoRA.

DreamBooth's identifier is a rare token ("sks") that the frozen text encoder already reads as
*something*; when it reads like a common word, the LoRA learns "a dog" = the subject, and every
class image of "a dog" pulls it back. Pivotal tuning (the new-token textual inversion of diffusers'
advanced DreamBooth-LoRA scripts, ``--train_text_encoder_ti``) gives the subject its own words:
``--token_abstraction TOK`` in the instance prompt stands for ``--num_new_tokens_per_abstraction``
new tokens ``<s0><s1>...``, added to the tokenizer, whose input embeddings are trained beside the
LoRA for the first ``--train_text_encoder_ti_frac`` of the steps and then frozen (the "pivot").

The trained vectors live in :class:`PivotalEmbedding`, outside the text encoder's own weights: a
forward hook on the text encoder's token embedding puts them in place of the new tokens' rows.
The frozen embedding table is never changed by training (no optimiser ever sees it), and with
several processes the vectors' gradient is averaged by hand, so the text encoder needs no
``DistributedDataParallel`` wrapper of its own.

Files, in the advanced script's format: ``<output_dir>/<output_dir name>_emb.safetensors`` holds
``{"clip_l": [num_new_tokens, dim]}``, loaded in diffusers with::

    state = safetensors.torch.load_file("out/out_emb.safetensors")
    pipe.load_textual_inversion(state["clip_l"], token=["<s0>", "<s1>"],
                                text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe("a photo of <s0><s1> dog")

The file's metadata also records the abstraction and the tokens, which :func:`load_new_tokens`
reads so that dreambat's own evaluation expands ``TOK`` in its prompts the way training did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import ConfigError

EMBEDDINGS_SUFFIX = "_emb.safetensors"
TEXT_ENCODER_KEY = "clip_l"
"""The state-dict key of the (first) CLIP text encoder's vectors, as the advanced scripts write it."""


@dataclass(frozen=True)
class NewTokens:
    """An abstraction (``"TOK"``) and the new tokens it stands for (``("<s0>", "<s1>")``)."""

    abstraction: str
    tokens: tuple[str, ...]

    @classmethod
    def make(cls, abstraction: str, count: int) -> NewTokens:
        return cls(abstraction, tuple(f"<s{i}>" for i in range(count)))

    @property
    def text(self) -> str:
        """What the abstraction becomes in a prompt: the new tokens, unspaced (``"<s0><s1>"``)."""
        return "".join(self.tokens)

    def expand(self, prompt: str) -> str:
        """``prompt`` with every occurrence of the abstraction replaced by :attr:`text`."""
        return prompt.replace(self.abstraction, self.text)


def check_new_token_settings(abstraction: str, count: int, fraction: float, instance_prompt: str) -> None:
    """Refuse pivotal-tuning settings that cannot work, naming the fix (no model needed)."""
    if not abstraction or abstraction != abstraction.strip() or any(c.isspace() for c in abstraction):
        raise ConfigError(f"--token_abstraction must be one word without spaces, got {abstraction!r}; e.g. TOK.")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"--num_new_tokens_per_abstraction must be >= 1, got {count}.")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--train_text_encoder_ti_frac must be in (0, 1], got {fraction}.")
    if abstraction not in instance_prompt:
        raise ConfigError(
            f"--train_text_encoder_ti trains new tokens for {abstraction!r}, but the instance prompt "
            f"{instance_prompt!r} does not contain it: write it where the identifier goes, e.g. "
            f"--instance_prompt 'a photo of {abstraction} dog' (or pass --token_abstraction with your identifier)."
        )


def _token_embedding(text_encoder) -> torch.nn.Embedding:
    return text_encoder.get_input_embeddings()


def add_tokens(tokenizer, text_encoder, new: NewTokens) -> list[int]:
    """Add ``new.tokens`` to ``tokenizer`` (those it lacks) and grow the embedding table to match.

    Returns the tokens' ids. Added rows start as copies of the table's mean row; what they hold
    does not matter to a :class:`PivotalEmbedding`, which replaces them in the forward pass.
    """
    missing = [t for t in new.tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(list(new.tokens))
    table = _token_embedding(text_encoder)
    if len(tokenizer) > table.num_embeddings:
        old = table.num_embeddings
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        table = _token_embedding(text_encoder)
        with torch.no_grad():
            table.weight[old:] = table.weight[:old].mean(0)
    for token, token_id in zip(new.tokens, ids):
        encoded = tokenizer(token, add_special_tokens=False).input_ids
        if encoded != [token_id]:
            raise ConfigError(f"The tokenizer splits the new token {token!r} into {encoded}; it cannot hold it.")
    return list(ids)


class PivotalEmbedding(torch.nn.Module):
    """The trainable input vectors of new tokens, put in place by a hook on the token embedding.

    Args:
        tokenizer / text_encoder: the backbone's; the tokens are added to both.
        new: the abstraction and its tokens.
        initializer: a word whose embedding (mean over its tokens) starts every vector; default:
            random vectors with the table's per-dimension standard deviation, as diffusers' script does.
        generator: for the random start.
    """

    def __init__(self, tokenizer, text_encoder, new: NewTokens, *, initializer: str | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.new = new
        ids = add_tokens(tokenizer, text_encoder, new)
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        table = _token_embedding(text_encoder).weight.detach().float()
        base = table[: min(ids)]
        if initializer:
            init_ids = tokenizer(initializer, add_special_tokens=False).input_ids
            start = base[init_ids].mean(0, keepdim=True).expand(len(ids), -1).clone()
        else:
            noise = torch.randn(len(ids), table.shape[1], generator=generator).to(table.device)
            start = noise * base.std(0, keepdim=True)
        self.vectors = torch.nn.Parameter(start)
        self._handle = _token_embedding(text_encoder).register_forward_hook(self._substitute)

    def _substitute(self, module, inputs, output):
        input_ids = inputs[0]
        out = output
        for k in range(len(self.ids)):
            hit = (input_ids == self.ids[k]).unsqueeze(-1)
            out = torch.where(hit, self.vectors[k].to(out.dtype), out)
        return out

    def remove(self) -> None:
        """Detach the hook (the tokens stay in the tokenizer; their rows hold the table's mean)."""
        self._handle.remove()

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/<folder name>_emb.safetensors`` (see the module docstring)."""
        return save_new_tokens(folder, self.new, self.vectors)

    def load_vectors(self, folder: str | Path) -> None:
        """Overwrite the vectors in place from a file :meth:`save` wrote (a resumed checkpoint)."""
        path = find_embeddings(folder)
        if path is None:
            raise ConfigError(f"'{folder}' holds no new-token embeddings (*{EMBEDDINGS_SUFFIX}).")
        new, vectors = read_new_tokens(path)
        if new.tokens != self.new.tokens or vectors.shape != self.vectors.shape:
            raise ConfigError(
                f"The new-token embeddings in '{folder}' are {list(new.tokens)} {tuple(vectors.shape)}, this run trains "
                f"{list(self.new.tokens)} {tuple(self.vectors.shape)}: resume with the same --token_abstraction and "
                "--num_new_tokens_per_abstraction."
            )
        with torch.no_grad():
            self.vectors.copy_(vectors.to(self.vectors))


def embeddings_file(folder: str | Path) -> Path:
    """``folder/<folder name>_emb.safetensors``; a checkpoint folder holds its run's under the same rule."""
    folder = Path(folder)
    return folder / f"{folder.name}{EMBEDDINGS_SUFFIX}"


def find_embeddings(folder: str | Path) -> Path | None:
    """The new-token embeddings file of a LoRA folder, if it has one (any ``*_emb.safetensors``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    own = embeddings_file(folder)
    if own.is_file():
        return own
    found = sorted(folder.glob(f"*{EMBEDDINGS_SUFFIX}"))
    return found[0] if found else None


def save_new_tokens(folder: str | Path, new: NewTokens, vectors: torch.Tensor, *, path: Path | None = None) -> Path:
    """Write the vectors (and, as metadata, the abstraction and tokens) to ``path`` (default:
    :func:`embeddings_file` of ``folder``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = path or embeddings_file(folder)
    metadata = {"token_abstraction": new.abstraction, "tokens": " ".join(new.tokens)}
    save_file({TEXT_ENCODER_KEY: vectors.detach().float().cpu().contiguous()}, str(path), metadata=metadata)
    return path


def read_new_tokens(path: str | Path) -> tuple[NewTokens, torch.Tensor]:
    """The abstraction, tokens and vectors of an embeddings file (metadata absent: ``<s0>...``, no abstraction)."""
    with safe_open(str(path), framework="pt") as handle:
        if TEXT_ENCODER_KEY not in handle.keys():
            raise ConfigError(f"'{path}' has no {TEXT_ENCODER_KEY!r} tensor; it is not a pivotal-tuning embeddings file.")
        vectors = handle.get_tensor(TEXT_ENCODER_KEY)
        metadata = handle.metadata() or {}
    tokens = tuple(metadata["tokens"].split()) if "tokens" in metadata else tuple(f"<s{i}>" for i in range(len(vectors)))
    if len(tokens) != len(vectors):
        raise ConfigError(f"'{path}' names {len(tokens)} tokens for {len(vectors)} vectors.")
    return NewTokens(metadata.get("token_abstraction", ""), tokens), vectors


def load_new_tokens(folder: str | Path, tokenizer, text_encoder) -> NewTokens | None:
    """Add a LoRA folder's new tokens to ``tokenizer`` / ``text_encoder`` with their trained vectors.

    Returns the tokens (``None`` when the folder has no embeddings file). Loading another run's
    tokens over earlier ones overwrites their vectors.
    """
    path = find_embeddings(folder)
    if path is None:
        return None
    new, vectors = read_new_tokens(path)
    ids = add_tokens(tokenizer, text_encoder, new)
    table = _token_embedding(text_encoder).weight
    with torch.no_grad():
        table[ids] = vectors.to(device=table.device, dtype=table.dtype)
    return new


def expand_prompts(prompts: Iterable[str], new: NewTokens | None) -> list[str]:
    """``prompts`` with the abstraction expanded (unchanged without new tokens or abstraction)."""
    if new is None or not new.abstraction:
        return list(prompts)
    return [new.expand(p) for p in prompts]
