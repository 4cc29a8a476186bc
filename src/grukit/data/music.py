"""Polyphonic music as piano rolls (JSB Chorales, Nottingham, MuseData, Piano-midi.de) and the
per-time-step negative log-likelihood these benchmarks report.

Boulanger-Lewandowski et al. (2012) distributed each dataset as train / valid / test lists of
sequences; a sequence is a list of time steps and a step is the set of MIDI note numbers sounding
then (an empty step is silence). :func:`read_piano_rolls` reads that structure from JSON
(``{"train": [[[60, 64], [62], []], ...], "valid": ..., "test": ...}``, optionally gzip-compressed)
or from the MATLAB ``.mat`` files (``traindata`` / ``validdata`` / ``testdata`` cells of ``T x 88``
0/1 matrices), and returns binary piano rolls.

Note range (the roll's columns). The default is the 88 keys of a piano, MIDI 21 (A0) to 108 (C8),
column ``note - 21``: the layout of the original ``.mat`` files, and one that holds all four
datasets (their notes span 31-93, 43-96, 21-105, 21-108 for Nottingham, JSB, MuseData and
Piano-midi). Chung et al. (2014) instead gave their models inputs up to each set's highest MIDI note
(JSB 96, Nottingham 93, MuseData 105, Piano-midi 108). The two layouts differ only by columns that
are never on; a trained model drives those to probability ~0, so they add next to nothing to the
NLL, but pass ``low=`` / ``high=`` to reproduce another layout exactly.

This module uses numpy only (no torch), like the rest of ``grukit.data``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from grukit.data._files import decode, read_bytes
from grukit.errors import ConfigError, DataError, ShapeError

SPLITS = ("train", "valid", "test")
PIANO_LOW = 21   # A0
PIANO_HIGH = 108  # C8
MAT_SPLITS = {"train": "traindata", "valid": "validdata", "test": "testdata"}
# The input sizes Chung et al. (2014) report: each dataset's highest MIDI note.
CHUNG_2014_INPUT_SIZES = {"jsb_chorales": 96, "nottingham": 93, "musedata": 105, "piano_midi": 108}
LOG_PROBABILITY_FLOOR = -100.0  # torch.nn.functional.binary_cross_entropy's clamp of log(p)


def _check_range(low: int, high: int) -> None:
    if not (isinstance(low, int) and isinstance(high, int)) or not 0 <= low <= high <= 127:
        raise ConfigError(f"note range low={low!r}, high={high!r}: expected MIDI note numbers with "
                          "0 <= low <= high <= 127 (the 88 piano keys are low=21, high=108)")


def piano_roll(steps: Sequence[Sequence[int]], low: int = PIANO_LOW, high: int = PIANO_HIGH, dtype="float32",
               source: str = "piano_roll") -> np.ndarray:
    """One sequence of note sets as a binary roll ``(T, high - low + 1)``: ``roll[t, note - low] = 1``.

    A note outside ``[low, high]`` raises :class:`~grukit.errors.DataError` naming the step; ``source``
    prefixes the message (the readers pass the file, split and sequence).

    Example::

        piano_roll([[60, 64], [], [62]], low=60, high=64)
        # [[1, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
    """
    _check_range(low, high)
    roll = np.zeros((len(steps), high - low + 1), dtype=dtype)
    for t, notes in enumerate(steps):
        if not isinstance(notes, (list, tuple, np.ndarray)):
            raise DataError(f"{source}, step {t}: expected a list of MIDI note numbers, got "
                            f"{type(notes).__name__} {notes!r}")
        for note in notes:
            if isinstance(note, bool) or not isinstance(note, (int, np.integer)):
                if isinstance(note, float) and note.is_integer():
                    note = int(note)
                else:
                    raise DataError(f"{source}, step {t}: note {note!r} is not an integer MIDI note number")
            if not low <= note <= high:
                raise DataError(f"{source}, step {t}: MIDI note {note} is outside the roll's range "
                                f"[{low}, {high}]; pass low=/high= that include it")
            roll[t, note - low] = 1
    return roll


def _rolls_from_json(path: Path, low: int, high: int, dtype, splits: Sequence[str]) -> dict[str, list[np.ndarray]]:
    text = decode(read_bytes(path), str(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: line {error.lineno}, column {error.colno} is not valid JSON ({error.msg}); "
                        "the file may be truncated, copy it again") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{\"train\": [...], \"valid\": [...], \"test\": [...]}}, "
                        f"got a {type(data).__name__}")
    rolls = {}
    for split in splits:
        if split not in data:
            raise DataError(f"{path}: no split {split!r}; the file has {sorted(data)}; pass splits= to read others")
        sequences = data[split]
        if not isinstance(sequences, list):
            raise DataError(f"{path}: split {split!r} is a {type(sequences).__name__}, expected a list of sequences")
        rolls[split] = []
        for index, steps in enumerate(sequences):
            where = f"{path}: split {split!r}, sequence {index}"
            if not isinstance(steps, list):
                raise DataError(f"{where}: expected a list of time steps, got {type(steps).__name__}")
            rolls[split].append(piano_roll(steps, low, high, dtype, where))
    return rolls


def _rolls_from_mat(path: Path, low: int, high: int, dtype, splits: Sequence[str]) -> dict[str, list[np.ndarray]]:
    import scipy.io  # only for .mat files

    try:
        data = scipy.io.loadmat(path)
    except Exception as error:  # scipy raises several types for a corrupt file
        raise DataError(f"{path}: cannot read as a MATLAB .mat file ({error}); the file may be corrupt") from error
    rolls = {}
    for split in splits:
        key = MAT_SPLITS.get(split, split)
        if key not in data:
            found = sorted(k for k in data if not k.startswith("__"))
            raise DataError(f"{path}: no variable {key!r} for split {split!r}; the file has {found}")
        cells = np.asarray(data[key]).ravel()
        rolls[split] = []
        for index, matrix in enumerate(cells):
            where = f"{path}: {key}, sequence {index}"
            matrix = np.asarray(matrix)
            if matrix.ndim != 2 or matrix.shape[1] != PIANO_HIGH - PIANO_LOW + 1:
                raise DataError(f"{where}: expected a (T, 88) matrix with column c = MIDI note c + 21, got shape "
                                f"{matrix.shape}")
            if not np.isin(matrix, (0, 1)).all():
                raise DataError(f"{where}: the roll has values other than 0 and 1")
            steps = [(np.flatnonzero(row) + PIANO_LOW).tolist() for row in matrix]
            rolls[split].append(piano_roll(steps, low, high, dtype, where))
    return rolls


def read_piano_rolls(path: str | os.PathLike, low: int = PIANO_LOW, high: int = PIANO_HIGH, dtype="float32",
                     splits: Sequence[str] = SPLITS) -> dict[str, list[np.ndarray]]:
    """Read a polyphonic-music dataset into binary piano rolls, per split.

    ``path``: a ``.json`` / ``.json.gz`` file (``{"train": [sequence, ...], ...}``, a sequence being a
    list of steps, a step a list of MIDI note numbers) or a Boulanger-Lewandowski ``.mat`` file.
    Returns ``{split: [roll, ...]}`` with each roll ``(T_i, high - low + 1)`` of 0/1 in ``dtype``,
    column ``note - low`` (default: the 88 piano keys, column ``note - 21``; see the module docstring).

    Raises :class:`~grukit.errors.DataError` naming the file, split, sequence and step for a note
    outside the range, a missing split, malformed JSON or a corrupt file.

    Example::

        rolls = read_piano_rolls("../shared/data/polyphonic-music/jsb_chorales.json.gz")
        len(rolls["train"]), rolls["train"][0].shape        # 229, (129, 88)
    """
    _check_range(low, high)
    path = Path(path)
    if path.suffix.lower() == ".mat":
        return _rolls_from_mat(path, low, high, dtype, splits)
    return _rolls_from_json(path, low, high, dtype, splits)


def _as_batch(name: str, array) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ShapeError(f"frame_nll: {name} must be (N, T, notes) or (T, notes), got shape {array.shape}")
    return array


def frame_nll(predictions, targets, lengths=None, *, from_logits: bool = True, reduction: str = "mean"):
    """Negative log-likelihood per time step of binary piano rolls, as Chung et al. (2014) report it.

    Every frame's notes are independent Bernoullis, so a frame's NLL (in nats) is the sum over the
    notes ``k`` of ``-(y_k log p_k + (1 - y_k) log(1 - p_k))``. ``reduction="mean"`` averages it over
    **all valid frames of all sequences pooled** (the total NLL divided by the total number of frames,
    so a long sequence weighs more than a short one; not a mean of per-sequence means). That is the
    usual convention and what the polyphonic-music benchmark code (e.g. Bai et al.'s TCN repository)
    computes; to score a whole split, pass all of it or add up ``reduction="sum"`` and divide by the
    number of frames.

    - ``predictions``: ``(N, T, K)`` (or ``(T, K)``) logits if ``from_logits`` (the numerically
      stable ``softplus`` form is used), else probabilities, whose logs are floored at -100 as
      ``torch.nn.functional.binary_cross_entropy`` does.
    - ``targets``: same shape, 0/1.
    - ``lengths``: ``(N,)`` valid frames per sequence (the first ``lengths[n]`` steps count), or None
      for all ``T``.
    - ``reduction``: ``"mean"`` (float, nats per frame), ``"sum"`` (float), or ``"none"``: the
      ``(N, T)`` per-frame NLL, 0 on padding.

    Inputs may be numpy arrays or CPU tensors without gradients; arithmetic is float64.

    Example::

        frame_nll(np.zeros((1, 2, 3)), np.ones((1, 2, 3)))   # 3 * log(2) = 2.0794...
    """
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"frame_nll(reduction={reduction!r}): expected 'mean', 'sum' or 'none'")
    predictions = _as_batch("predictions", predictions)
    targets = _as_batch("targets", targets)
    if predictions.shape != targets.shape:
        raise ShapeError(f"frame_nll: predictions {predictions.shape} and targets {targets.shape} must have the "
                         "same shape (N, T, notes)")
    if not np.isin(targets, (0.0, 1.0)).all():
        raise DataError("frame_nll: targets must be 0/1 piano rolls; found other values")
    N, T, _ = targets.shape
    if from_logits:
        # -log sigmoid(x) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x), written stably
        per_note = np.maximum(predictions, 0) - predictions * targets + np.log1p(np.exp(-np.abs(predictions)))
    else:
        if np.any((predictions < 0) | (predictions > 1)) or np.isnan(predictions).any():
            raise DataError("frame_nll: with from_logits=False the predictions must be probabilities in [0, 1]; "
                            "pass from_logits=True for raw scores")
        with np.errstate(divide="ignore"):
            log_p = np.maximum(np.log(predictions), LOG_PROBABILITY_FLOOR)
            log_q = np.maximum(np.log1p(-predictions), LOG_PROBABILITY_FLOOR)
        per_note = -(targets * log_p + (1 - targets) * log_q)
    per_frame = per_note.sum(axis=2)
    if lengths is None:
        mask = np.ones((N, T), dtype=bool)
    else:
        lengths = np.asarray(lengths)
        if lengths.shape != (N,) or not np.issubdtype(lengths.dtype, np.integer):
            raise ShapeError(f"frame_nll: lengths must be ({N},) integers, got shape {lengths.shape} "
                             f"dtype {lengths.dtype}")
        if (lengths < 0).any() or (lengths > T).any():
            raise DataError(f"frame_nll: lengths must lie in [0, {T}] (T = the padded length), got "
                            f"{lengths.min()}..{lengths.max()}")
        mask = np.arange(T)[None, :] < lengths[:, None]
    per_frame = np.where(mask, per_frame, 0.0)
    if reduction == "none":
        return per_frame
    total = float(per_frame.sum())
    if reduction == "sum":
        return total
    frames = int(mask.sum())
    if frames == 0:
        raise DataError("frame_nll: no valid frames (all lengths are 0); the mean is undefined")
    return total / frames


__all__ = ["read_piano_rolls", "piano_roll", "frame_nll", "SPLITS", "PIANO_LOW", "PIANO_HIGH",
           "CHUNG_2014_INPUT_SIZES"]
