"""A CLIP byte-level BPE tokenizer whose vocabulary and merges are written locally.

Real Stable Diffusion checkpoints ship CLIP's 49,408-token vocabulary; we cannot download it, so
the tiny backbone gets a vocabulary made here: every byte (alone and word-final), plus one merge
chain per word of a given word list, so those words become single tokens while any other text still
tokenizes (down to single bytes). The format is CLIP's own, so ``CLIPTokenizer`` and every
diffusers pipeline treat it like the real thing.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from transformers import CLIPTokenizer

from ..constants import CLIP_MODEL_MAX_LENGTH

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
WORD_END = "</w>"

# Words every tiny tokenizer knows besides the caller's: DreamBooth's rare identifier, the class
# words and prompt fillers users type in examples.
BASE_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "in", "on", "with", "and", "photo", "picture", "image", "sks", "dog",
    "cat", "toy", "object", "background", "front", "top", "left", "right", "bottom", "center",
)


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    offset = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + offset)
            offset += 1
    return mapping


def _train_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges learned on ``words`` (each counted once) until every word is one token.

    Hand-written merge chains conflict (the merge ``r i`` of "right" would split "striped"), so the
    merges are learned the usual way: repeatedly merge the most frequent adjacent pair everywhere.
    Applying the merges by rank, as ``CLIPTokenizer`` does, then reproduces the learned
    segmentation, so each word collapses to one token. Ties go to the lexicographically smallest
    pair, so the same words give the same merges (and token ids) in every process; the
    ``tokenizers`` trainer breaks ties by hash order, which differs between processes.
    """
    table = byte_to_unicode()
    pieces = [[table[b] for b in word.encode("utf-8")] for word in words]
    for symbols in pieces:
        symbols[-1] += WORD_END
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in pieces:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        joined = best[0] + best[1]
        for index, symbols in enumerate(pieces):
            if len(symbols) < 2:
                continue
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            pieces[index] = out


def build_vocab_and_merges(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and BPE merges that make each of ``words`` one token.

    Returns:
        vocab: token -> id; ids 0..511 are the bytes (plain, then word-final), followed by the
            merged tokens in merge order and finally the two special tokens, as in CLIP's file.
        merges: ordered merge pairs.
    """
    table = byte_to_unicode()
    unique = [w for w in dict.fromkeys(w.strip().lower() for w in words) if w and " " not in w]
    merges = _train_merges(unique) if unique else []
    tokens = [table[b] for b in range(256)] + [table[b] + WORD_END for b in range(256)]
    tokens += [left + right for left, right in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}, merges


def build_clip_tokenizer(words: Iterable[str] = ()) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` knowing :data:`BASE_WORDS` and ``words`` as single tokens.

    ``model_max_length`` is CLIP's 77: a tokenizer built from raw files would otherwise default to
    an effectively unbounded length and pipelines would not pad prompts to the text encoder's size.
    """
    vocab, merges = build_vocab_and_merges([*BASE_WORDS, *words])
    return _clip_tokenizer(vocab, merges)


def _clip_tokenizer(vocab: dict[str, int], merges: list) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` over ``vocab`` and ``merges`` with CLIP's special tokens and length."""
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=CLIP_MODEL_MAX_LENGTH,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
    )


# CLIP's released vocabulary: 256 bytes, 256 word-final bytes, 48,894 merges, 2 special tokens.
CLIP_NUM_MERGES = 49152 - 256 - 2


def build_real_clip_tokenizer(bpe_path: str | None = None) -> CLIPTokenizer:
    """The real CLIP (ViT-L/14, Stable Diffusion 1.x) tokenizer, built offline.

    open_clip ships CLIP's BPE merges (``bpe_simple_vocab_16e6.txt.gz``); CLIP's 49,408-token
    vocabulary is derived from them: the byte symbols in CLIP's order (printable bytes first), the
    same with the word-end marker, one token per merge in rank order, then ``<|startoftext|>`` and
    ``<|endoftext|>`` (ids 49406 and 49407). No download is needed.

    Args:
        bpe_path: the merges file; default: the one installed with open_clip.
    """
    import gzip

    if bpe_path is None:
        from open_clip.tokenizer import default_bpe

        bpe_path = default_bpe()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:CLIP_NUM_MERGES + 1]]
    symbols = list(byte_to_unicode().values())
    tokens = symbols + [s + WORD_END for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    return _clip_tokenizer({token: i for i, token in enumerate(tokens)}, merges)
