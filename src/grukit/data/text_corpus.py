"""Character-level language-model data: read a text file, map characters to ids and back, and cut
the id stream into ``(input, target)`` chunks where the target is the input shifted by one character.

Example::

    text = read_corpus("input.txt")                        # DataError names the line of a bad byte
    vocabulary = CharVocabulary.from_text(text)
    ids = vocabulary.encode(text)                          # (L,) int64
    inputs, targets = char_chunks(ids, length=100)         # (N, 100), (N, 100); targets[:, t] = inputs[:, t + 1]
    vocabulary.decode(inputs[0])                           # the first 100 characters
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from grukit.data._files import atomic_write_text, read_json, read_text
from grukit.errors import ConfigError, DataError

FORMAT = "grukit.CharVocabulary"
FORMAT_VERSION = 1


def read_corpus(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The whole text of a file (gzip-compressed or not), decoded strictly.

    Raises :class:`~grukit.errors.DataError` for bytes that are not valid ``encoding`` (naming the file,
    the line and the byte offset, and suggesting ``encoding=``) and for an empty file. Line endings are
    kept as they are; a leading byte-order mark is dropped.
    """
    text = read_text(path, encoding)
    if not text:
        raise DataError(f"{path}: the file is empty; a character language model needs text to learn from")
    return text


def _position(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"line {line}, column {column}"


def _describe(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X})"


class CharVocabulary:
    """A fixed set of characters, id = position in ``chars``.

    ``unknown``: a character of the vocabulary that characters outside it are encoded as (for example
    ``"\\ufffd"``); with ``None`` (default) encoding such a character raises ``DataError`` naming it and
    where it is.

    Example::

        vocabulary = CharVocabulary.from_text("hello")    # chars ('e', 'h', 'l', 'o')
        vocabulary.encode("hell")                         # array([1, 0, 2, 2])
        vocabulary.decode([1, 3])                         # 'ho'
    """

    def __init__(self, chars: Iterable[str], unknown: str | None = None) -> None:
        chars = tuple(chars)
        for char in chars:
            if not isinstance(char, str) or len(char) != 1:
                raise ConfigError(f"CharVocabulary(chars=...): every item must be one character, got {char!r}")
        if not chars:
            raise ConfigError("CharVocabulary(chars=...): the vocabulary is empty; build it with "
                              "CharVocabulary.from_text(text) from a non-empty text")
        repeated = [c for c, n in collections.Counter(chars).items() if n > 1]
        if repeated:
            raise ConfigError(f"CharVocabulary(chars=...): characters listed twice: "
                              f"{', '.join(map(_describe, repeated))}")
        if unknown is not None and unknown not in chars:
            raise ConfigError(f"CharVocabulary(unknown={unknown!r}): the unknown character must be one of the "
                              "chars; add it to them")
        self.chars = chars
        self.unknown = unknown
        self.index = {char: i for i, char in enumerate(chars)}
        codepoints = np.array([ord(c) for c in chars], dtype=np.int64)
        self._order = np.argsort(codepoints)
        self._sorted = codepoints[self._order]

    @classmethod
    def from_text(cls, text: str, min_count: int = 1, unknown: str | None = None) -> "CharVocabulary":
        """The characters of ``text`` seen at least ``min_count`` times, in code-point order (so the
        same text always gives the same ids). ``unknown``, if given, is added when the text lacks it."""
        if not isinstance(text, str) or not text:
            raise DataError(f"CharVocabulary.from_text: expected a non-empty str, got "
                            f"{type(text).__name__ if not isinstance(text, str) else 'an empty string'}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"CharVocabulary.from_text(min_count={min_count!r}): expected an int >= 1")
        counts = collections.Counter(text)
        chars = {c for c, n in counts.items() if n >= min_count}
        if unknown is not None:
            chars.add(unknown)
        if not chars:
            raise DataError(f"CharVocabulary.from_text: no character occurs {min_count} times or more; "
                            "lower min_count")
        return cls(sorted(chars), unknown)

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self.index

    def encode(self, text: str, source: str = "text") -> np.ndarray:
        """``(L,)`` int64 ids of the ``L`` characters of ``text``; ``source`` names it in errors."""
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        where = np.searchsorted(self._sorted, codepoints).clip(0, len(self._sorted) - 1)
        known = self._sorted[where] == codepoints
        ids = self._order[where]
        if not known.all():
            if self.unknown is None:
                first = int(np.flatnonzero(~known)[0])
                missing = sorted({text[i] for i in np.flatnonzero(~known)[:1000]})
                raise DataError(f"{source}: character {_describe(text[first])} at {_position(text, first)} is not in "
                                f"the vocabulary ({len(missing)} unknown character(s), e.g. "
                                f"{', '.join(map(_describe, missing[:5]))}); build the vocabulary from this text too "
                                "or pass unknown= a replacement character")
            ids = np.where(known, ids, self.index[self.unknown])
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        """The text of a 1-D sequence of ids."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise DataError(f"CharVocabulary.decode: expected a 1-D sequence of integer ids, got shape {ids.shape} "
                            f"dtype {ids.dtype}")
        bad = (ids < 0) | (ids >= len(self.chars))
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            raise DataError(f"CharVocabulary.decode: id {int(ids[position])} at position {position} is outside "
                            f"[0, {len(self.chars) - 1}]; the ids come from another vocabulary")
        return "".join(self.chars[i] for i in ids.tolist())

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "chars": "".join(self.chars), "unknown": self.unknown}

    @classmethod
    def from_dict(cls, data: dict, source: str = "CharVocabulary.from_dict") -> "CharVocabulary":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{source}: not a grukit CharVocabulary file (expected \"format\": \"{FORMAT}\"); "
                            "save one with CharVocabulary.save(path)")
        if data.get("version") != FORMAT_VERSION:
            raise DataError(f"{source}: vocabulary format version {data.get('version')!r}, this grukit reads "
                            f"version {FORMAT_VERSION}; upgrade grukit or re-save the vocabulary")
        try:
            return cls(data.get("chars") or "", data.get("unknown"))
        except ConfigError as error:
            raise DataError(f"{source}: {error}; the file is damaged, re-save the vocabulary") from error

    def save(self, path: str | os.PathLike) -> Path:
        """Write the characters as JSON, atomically (temporary file, then rename)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharVocabulary":
        return cls.from_dict(read_json(path, "the vocabulary"), source=str(path))

    def __repr__(self) -> str:
        return f"CharVocabulary(size={len(self)}, unknown={self.unknown!r})"


def char_chunks(ids, length: int, stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut an id stream into next-character training pairs.

    Chunk ``i`` starts at ``i * stride`` (default ``stride = length``: consecutive, non-overlapping
    inputs); ``inputs[i] = ids[s : s + length]`` and ``targets[i] = ids[s + 1 : s + length + 1]``.
    A tail too short for a whole chunk is dropped. Returns two ``(N, length)`` int64 arrays, views
    copied into fresh memory.

    Example::

        char_chunks(np.arange(8), length=3)     # inputs [[0, 1, 2], [3, 4, 5]], targets [[1, 2, 3], [4, 5, 6]]
    """
    for name, value in (("length", length), ("stride", stride)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ConfigError(f"char_chunks({name}={value!r}): expected an int >= 1")
    stride = length if stride is None else stride
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise DataError(f"char_chunks: ids must be 1-D (one stream of character ids), got shape {ids.shape}")
    if len(ids) < length + 1:
        raise DataError(f"char_chunks: {len(ids)} ids are too few for one chunk of length {length} (which needs "
                        f"{length + 1}, the target running one past the input); pass a smaller length")
    count = (len(ids) - length - 1) // stride + 1
    starts = np.arange(count) * stride
    window = np.arange(length)
    inputs = ids[starts[:, None] + window].astype(np.int64)
    targets = ids[starts[:, None] + window + 1].astype(np.int64)
    return inputs, targets


__all__ = ["CharVocabulary", "read_corpus", "char_chunks"]
