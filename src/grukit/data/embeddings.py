"""Pretrained word vectors in the GloVe / word2vec text format, mapped onto a vocabulary.

The format: one word per line followed by its values, separated by single spaces
(``the 0.418 0.24968 -0.41242 ...``). word2vec's text files start with a header line
``<count> <dim>``; it is recognised and skipped. Gzip-compressed files (``.gz``) are read directly.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grukit.data._files import GZIP_MAGIC
from grukit.data.tokenizer import OOV_ID, PAD_ID, WordTokenizer
from grukit.errors import ConfigError, DataError


@dataclass(frozen=True)
class EmbeddingCoverage:
    """How much of a vocabulary a vectors file covers.

    ``found`` counts vocabulary words (padding and OOV excluded) that got a pretrained vector,
    ``total`` is the number of such words, ``missing`` lists the most frequent words that did not
    (lowest ids first, at most ``missing_shown``), ``lowercase_matches`` counts words matched only
    through a differently-cased entry of the file (e.g. vocabulary ``paris`` from file ``Paris``).
    """

    path: str
    dim: int
    found: int
    total: int
    missing: list[str] = field(default_factory=list)
    lowercase_matches: int = 0

    @property
    def share(self) -> float:
        return self.found / self.total if self.total else 0.0

    def __str__(self) -> str:
        text = (f"{self.found:,} of {self.total:,} vocabulary words ({self.share:.1%}) have a pretrained "
                f"{self.dim}-d vector in {self.path}")
        if self.lowercase_matches:
            text += f" ({self.lowercase_matches:,} through a differently-cased entry)"
        if self.missing:
            text += "; most frequent missing: " + ", ".join(self.missing)
        return text


def _vocabulary_words(vocabulary) -> list[str | None]:
    """The word of every id, ``None`` for padding and OOV (which get no pretrained vector)."""
    if isinstance(vocabulary, WordTokenizer):
        words = list(vocabulary.words)
        if len(words) <= 2:
            raise ConfigError("load_word_vectors: the tokenizer has no vocabulary; call fit(texts) first")
        words[PAD_ID] = words[OOV_ID] = None
        return words
    if isinstance(vocabulary, Mapping):
        size = max(vocabulary.values(), default=-1) + 1
        words: list[str | None] = [None] * max(size, 2)
        for word, index in vocabulary.items():
            if not isinstance(index, (int, np.integer)) or index < 0:
                raise ConfigError(f"load_word_vectors: vocabulary[{word!r}] = {index!r}, ids must be ints >= 0")
            if index not in (PAD_ID, OOV_ID):
                words[index] = word
        return words
    if isinstance(vocabulary, Sequence) and not isinstance(vocabulary, str):
        return [None if index in (PAD_ID, OOV_ID) else word for index, word in enumerate(vocabulary)]
    raise ConfigError(f"load_word_vectors: vocabulary must be a WordTokenizer, a word->id mapping or a list of words "
                      f"by id, got {type(vocabulary).__name__}")


def _open_lines(path: Path):
    with open(path, "rb") as handle:
        compressed = handle.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _decode_word(raw: bytes, path: Path, line_number: int, offset: int, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: line {line_number} is not valid {encoding} at byte offset "
                        f"{offset + error.start}; pass the file's real encoding as encoding=... "
                        f"(word2vec files from other tools are sometimes latin-1)") from error


def load_word_vectors(path: str | os.PathLike, vocabulary, dim: int | None = None, *, seed: int = 0,
                      init_scale: float = 0.05, encoding: str = "utf-8", missing_shown: int = 10,
                      lowercase_fallback: bool = True) -> tuple[np.ndarray, EmbeddingCoverage]:
    """An embedding matrix for ``vocabulary`` from a GloVe / word2vec text file.

    Args:
        path: the vectors file (plain or gzip).
        vocabulary: a fitted ``WordTokenizer``, a ``{word: id}`` mapping, or a list of words by id.
            Ids 0 (padding) and 1 (OOV) never take a pretrained vector.
        dim: the expected vector size; ``None`` takes it from the file (header or first line).
        seed: seeds the U(-init_scale, init_scale) initialisation of rows without a vector.
        lowercase_fallback: a vocabulary word absent from the file takes the vector of the first
            entry that lower-cases to it (for cased files such as word2vec's GoogleNews).

    Returns:
        ``(matrix, coverage)``: ``matrix`` is float32 ``(len(vocabulary), dim)``: row 0 zeros, rows of
        words found hold their vectors, every other row (OOV included) is random; ``coverage`` is an
        ``EmbeddingCoverage`` (found, total, share, most frequent missing words).

    Raises DataError naming the file and line for a line with the wrong number of values, values
    that are not numbers, or bytes that are not valid in ``encoding``.

    Example::

        matrix, coverage = load_word_vectors("glove.6B.100d.txt", tokenizer)
        print(coverage)      # 9,512 of 9,998 vocabulary words (95.1%) have a pretrained 100-d vector ...
        embedding = torch.nn.Embedding.from_pretrained(torch.from_numpy(matrix), freeze=False, padding_idx=0)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path to the word vectors")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise ConfigError(f"load_word_vectors: dim must be None or an int >= 1, got {dim!r}")
    words = _vocabulary_words(vocabulary)
    wanted = {word: index for index, word in enumerate(words) if word is not None}
    lowered: dict[str, list[int]] = {}
    if lowercase_fallback:
        for word, index in wanted.items():
            lowered.setdefault(word.lower(), []).append(index)

    dim_source = "the dim argument"
    vectors: dict[int, np.ndarray] = {}
    from_lowercase: dict[int, np.ndarray] = {}
    offset = 0
    with _open_lines(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line_offset, offset = offset, offset + len(raw)
            stripped = raw.rstrip(b"\r\n").rstrip(b" ")
            if not stripped:
                continue
            fields = stripped.split(b" ")
            if line_number == 1 and len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
                header_dim = int(fields[1])
                if dim is not None and dim != header_dim:
                    raise DataError(f"{path}: the header line says {header_dim} values per word, dim={dim} was "
                                    f"asked; pass dim={header_dim} or the right file")
                dim, dim_source = header_dim, "the header line"
                continue
            if dim is None:
                dim, dim_source = len(fields) - 1, f"line {line_number}"
                if dim < 1:
                    raise DataError(f"{path}: line {line_number} has a word and no values; expected "
                                    f"'word v1 v2 ...'")
            if len(fields) - 1 != dim:
                # GloVe 840B has a few "words" containing spaces: more fields, the second not a number.
                if len(fields) - 1 > dim and not _is_number(fields[1]):
                    continue
                raise DataError(f"{path}: line {line_number} has {len(fields) - 1} values after the word, "
                                f"expected {dim} (from {dim_source}); the file is truncated or damaged, or "
                                f"pass the right dim")
            word = _decode_word(fields[0], path, line_number, line_offset, encoding)
            index = wanted.get(word)
            fallback = None if index is not None else lowered.get(word.lower())
            if index is None and not fallback:
                continue
            try:
                vector = np.array(fields[1:], dtype=np.float32)
            except ValueError as error:
                raise DataError(f"{path}: line {line_number} (word {word!r}) has a value that is not a number "
                                f"({error}); the file is damaged") from error
            if index is not None:
                vectors.setdefault(index, vector)
            else:
                for candidate in fallback:
                    from_lowercase.setdefault(candidate, vector)
    if dim is None:
        raise DataError(f"{path}: the file has no vectors; expected lines 'word v1 v2 ...'")

    rng = np.random.default_rng(seed)
    matrix = rng.uniform(-init_scale, init_scale, size=(len(words), dim)).astype(np.float32)
    matrix[PAD_ID] = 0.0
    lowercase_matches = 0
    for index in range(len(words)):
        if index in vectors:
            matrix[index] = vectors[index]
        elif index in from_lowercase:
            matrix[index] = from_lowercase[index]
            lowercase_matches += 1
    found_rows = vectors.keys() | from_lowercase.keys()
    missing = [words[i] for i in range(len(words)) if words[i] is not None and i not in found_rows][:missing_shown]
    coverage = EmbeddingCoverage(path=str(path), dim=dim, found=len(found_rows), total=len(wanted),
                                 missing=missing, lowercase_matches=lowercase_matches)
    return matrix, coverage


def _is_number(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


__all__ = ["load_word_vectors", "EmbeddingCoverage"]
