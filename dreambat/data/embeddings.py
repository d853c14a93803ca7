"""Precomputed CLIP image embeddings in the layout clip-retrieval writes beside LAION and img2dataset
output: ``FOLDER/img_emb/img_emb_<n>.npy`` (one float row per sample) and
``FOLDER/metadata/metadata_<n>.parquet`` (the same rows' metadata, one of whose columns holds the
webdataset key), matched by ``<n>``.

:class:`EmbeddingTopK` streams the parts one at a time (a memory-mapped array, in chunks) and keeps a
running top-k of cosine similarity to a query: its memory is the k best plus the set of keys seen
(to tell a pool sample without an embedding from one that was not kept), not the vectors.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

EMBEDDINGS_DIR, METADATA_DIR = "img_emb", "metadata"
_NUMBER = re.compile(r"_(\d+)\.(?:npy|parquet)$")
DEFAULT_KEY_COLUMN = "key"


@dataclass(frozen=True)
class EmbeddingPart:
    """One numbered pair of files: the embeddings and their metadata."""

    number: int
    embeddings: Path
    metadata: Path


def embedding_parts(folder: str | Path) -> list[EmbeddingPart]:
    """The numbered (embeddings, metadata) pairs of ``folder``, in number order.

    Raises:
        DataError: the folder or either subfolder is missing, it holds no embeddings, or a part has
            one file without the other.
    """
    folder = Path(folder)
    where = f"{folder} (clip-retrieval's layout: {EMBEDDINGS_DIR}/img_emb_0.npy with {METADATA_DIR}/metadata_0.parquet)"
    if not folder.is_dir():
        raise DataError(f"--shortlist_embeddings {folder} is not a folder; give the folder holding {where}.")
    found: dict[str, dict[int, Path]] = {}
    for sub, suffix in ((EMBEDDINGS_DIR, ".npy"), (METADATA_DIR, ".parquet")):
        found[sub] = {}
        for path in sorted((folder / sub).glob(f"*{suffix}")):
            match = _NUMBER.search(path.name)
            if match:
                found[sub][int(match.group(1))] = path
    embeddings, metadata = found[EMBEDDINGS_DIR], found[METADATA_DIR]
    if not embeddings:
        raise DataError(f"No embeddings (*.npy) under {folder / EMBEDDINGS_DIR}; --shortlist_embeddings expects {where}.")
    lonely = sorted(set(embeddings) ^ set(metadata))
    if lonely:
        n = lonely[0]
        have = embeddings.get(n) or metadata.get(n)
        raise DataError(f"{have} has no partner file (part {n}): every {EMBEDDINGS_DIR}/*_{n}.npy needs "
                        f"{METADATA_DIR}/*_{n}.parquet and the other way round, rows in the same order.")
    return [EmbeddingPart(n, embeddings[n], metadata[n]) for n in sorted(embeddings)]


def read_keys(part: EmbeddingPart, key_column: str = DEFAULT_KEY_COLUMN) -> list[str]:
    """The key column of a part's metadata, as strings."""
    pq = _parquet()
    if key_column not in pq.read_schema(part.metadata).names:
        check_embeddings(part.embeddings.parent.parent, key_column)  # raises, naming the columns
    return [str(k) for k in pq.read_table(part.metadata, columns=[key_column]).column(key_column).to_pylist()]


def check_embeddings(folder: str | Path, key_column: str = DEFAULT_KEY_COLUMN) -> list[EmbeddingPart]:
    """:func:`embedding_parts`, and every part's metadata holding ``key_column``: what can be checked
    before any model loads (schemas only; no row is read)."""
    parts = embedding_parts(folder)
    pq = _parquet()
    for part in parts:
        names = pq.read_schema(part.metadata).names
        if key_column not in names:
            raise DataError(f"{part.metadata} has no column {key_column!r} (it has {', '.join(names)}); pass "
                            "--shortlist_key_column with the column that holds the webdataset keys.")
        _check_rows(part, np.load(part.embeddings, mmap_mode="r").shape, pq.read_metadata(part.metadata).num_rows)
    return parts


def _check_rows(part: EmbeddingPart, shape: tuple, rows: int) -> None:
    if len(shape) != 2 or shape[0] != rows:
        raise DataError(f"{part.embeddings} holds an array of shape {tuple(shape)} but {part.metadata} lists "
                        f"{rows} rows: the two files of a part must describe the same rows.")


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise DataError("Reading --shortlist_embeddings needs pyarrow for the metadata parquet files: "
                        "pip install 'dreambat[laion]' (or pyarrow).") from None
    return pq


def read_part(part: EmbeddingPart, key_column: str = DEFAULT_KEY_COLUMN) -> tuple[list[str], np.ndarray]:
    """A part's keys and its ``[rows, D]`` embeddings (memory-mapped); their row counts must agree."""
    keys = read_keys(part, key_column)
    vectors = np.load(part.embeddings, mmap_mode="r")
    _check_rows(part, vectors.shape, len(keys))
    return keys, vectors


@dataclass
class EmbeddingTopK:
    """A running top-``k`` of cosine similarity between embedding rows and a unit ``query``.

    Ties are broken by the order rows arrive in (the earlier row wins), so a result does not depend
    on how the parts are chunked.

    Attributes:
        rows: embedding rows seen; ``duplicates``: rows whose key was seen before (the first is kept).
        keys: every key seen.
    """

    query: np.ndarray
    k: int
    chunk: int = 65536
    rows: int = 0
    duplicates: int = 0
    keys: set[str] = field(default_factory=set)
    _heap: list[tuple[float, int, str]] = field(default_factory=list)

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if vectors.shape[1] != self.query.shape[0]:
            raise DataError(f"The precomputed embeddings are {vectors.shape[1]}-dimensional, the query of "
                            f"--clip_model is {self.query.shape[0]}-dimensional: pass the --clip_model and "
                            "--clip_pretrained that computed them.")
        for start in range(0, len(keys), self.chunk):
            block = np.asarray(vectors[start:start + self.chunk], dtype=np.float32)
            norms = np.linalg.norm(block, axis=1)
            cosines = (block @ self.query) / np.maximum(norms, 1e-12)
            for key, cosine in zip(keys[start:start + self.chunk], cosines.tolist()):
                order = self.rows
                self.rows += 1
                if key in self.keys:
                    self.duplicates += 1
                    continue
                self.keys.add(key)
                item = (cosine, -order, key)
                if len(self._heap) < self.k:
                    heapq.heappush(self._heap, item)
                elif item > self._heap[0]:
                    heapq.heapreplace(self._heap, item)

    def add_parts(self, parts: list[EmbeddingPart], key_column: str = DEFAULT_KEY_COLUMN) -> None:
        for part in parts:
            self.add(*read_part(part, key_column))

    def best(self) -> dict[str, float]:
        """The kept keys and their cosines, best first."""
        return {key: cosine for cosine, _, key in sorted(self._heap, reverse=True)}
