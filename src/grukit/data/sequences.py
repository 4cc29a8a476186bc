"""Padding and truncation of id sequences, with exactly Keras's ``pad_sequences`` semantics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from grukit.errors import ConfigError, DataError

_SIDES = ("pre", "post")


def pad_sequences(sequences: Sequence, maxlen: int | None = None, padding: str = "pre", truncating: str = "pre",
                  value=0, dtype="int64") -> np.ndarray:
    """Stack sequences of different lengths into one ``(N, maxlen)`` array (``(N, maxlen, *item)`` if
    the items are arrays themselves), like ``keras.utils.pad_sequences``.

    - ``maxlen=None`` uses the longest sequence's length.
    - ``truncating="pre"`` drops the *start* of longer sequences (keeps the last ``maxlen`` items),
      ``"post"`` drops the end.
    - ``padding="pre"`` puts ``value`` before a shorter sequence, ``"post"`` after it.
    - empty sequences become a row of ``value``; ``maxlen=0`` gives an ``(N, 0)`` array (Keras fails
      on it).

    The defaults match Keras's (``"pre"`` both ways, value 0) except ``dtype``: int64 here, which is
    what ``torch.nn.Embedding`` wants; Keras's is int32.

    Example::

        pad_sequences([[1, 2, 3], [4]], maxlen=2)                  # [[2, 3], [0, 4]]
        pad_sequences([[1, 2, 3], [4]], maxlen=2, padding="post",
                      truncating="post")                           # [[1, 2], [4, 0]]
    """
    if padding not in _SIDES:
        raise ConfigError(f"pad_sequences: padding must be 'pre' or 'post', got {padding!r}")
    if truncating not in _SIDES:
        raise ConfigError(f"pad_sequences: truncating must be 'pre' or 'post', got {truncating!r}")
    if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 0):
        raise ConfigError(f"pad_sequences: maxlen must be None or an int >= 0, got {maxlen!r}")
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__"):
        raise DataError(f"pad_sequences: sequences must be a list of sequences, got {type(sequences).__name__}; "
                        f"pass a list of lists of ids")
    try:
        dtype = np.dtype(dtype)
    except TypeError as error:
        raise ConfigError(f"pad_sequences: dtype={dtype!r} is not a numpy dtype; use e.g. 'int64'") from error
    if isinstance(value, str) and dtype != object and dtype.kind not in "US":
        raise ConfigError(f"pad_sequences: value={value!r} is a string but dtype={dtype} is not; pass dtype=object "
                          f"or a string dtype")

    lengths = []
    item_shape = None
    for index, sequence in enumerate(sequences):
        try:
            length = len(sequence)
        except TypeError as error:
            raise DataError(f"pad_sequences: sequences[{index}] is {type(sequence).__name__}, which has no length; "
                            f"every item must be a list or array") from error
        lengths.append(length)
        if item_shape is None and length:
            item_shape = np.asarray(sequence).shape[1:]
    item_shape = item_shape or ()
    if maxlen is None:
        maxlen = max(lengths, default=0)

    out = np.full((len(lengths), maxlen) + tuple(item_shape), value, dtype=dtype)
    if maxlen == 0:
        return out
    for index, (sequence, length) in enumerate(zip(sequences, lengths)):
        if not length:
            continue
        kept = sequence[-maxlen:] if truncating == "pre" else sequence[:maxlen]
        kept = np.asarray(kept, dtype=dtype)
        if kept.shape[1:] != tuple(item_shape):
            raise DataError(f"pad_sequences: sequences[{index}] has items of shape {kept.shape[1:]}, the first "
                            f"non-empty sequence has {tuple(item_shape)}; all items must have one shape")
        if padding == "post":
            out[index, :len(kept)] = kept
        else:
            out[index, maxlen - len(kept):] = kept
    return out


__all__ = ["pad_sequences"]
