"""Next-step density of binary multi-label sequences: polyphonic music as piano rolls (Chung et al. 2014,
section 4), or any sequence of 0/1 frames (active sensors, tags per time step).

The model reads frames ``0..t`` and gives every one of the K labels (notes) an independent Bernoulli
probability of being on in frame ``t + 1``::

    Sequential([Input((None, K)), Dropout(input_dropout), <Cell>(units, return_sequences=True),
                [Dropout(dropout)], Dense(K)])           # K logits per step, sigmoid -> probabilities

A roll ``(T, K)`` is fed as an all-zero frame followed by its frames ``1..T-1`` (0-based ``0..T-2``)
and its targets are all its ``T`` frames, so the first frame is predicted from silence, every
later one from all the frames before it (as benchmarks/polyphonic.py does). ``cell=`` picks "gru",
"lstm", "rnn", "mgu" or "mingru"; the default is Chung et al.'s GRU, ``GRU(46, reset_after=False)``
(the reset gate applied before the recurrent matrix), about 22.8K parameters for 88 notes.

**NLL per time step** (:func:`grukit.data.frame_nll`): a frame's NLL is the sum over the K notes of
``-(y log p + (1 - y) log(1 - p))`` in nats, and the mean is over **all frames of all sequences
pooled** (total NLL / total frames; a long sequence weighs more than a short one). ``evaluate``
reports it over every frame (``nll``) and over frames 2..T of each sequence (``nll_after_first``,
the convention of the widely used benchmark code, which leaves out the frame predicted from silence),
beside the same two numbers for a **per-note frequency baseline**: each note on independently with
its frequency in the training frames (additive smoothing 0.5).

Training (defaults: JSB Chorales in benchmarks/polyphonic.py): Adam at 3e-3, global gradient-norm
clipping at 1, batches of 8 sequences of similar length in shuffled order, input dropout 0.2 (notes
randomly silenced in the inputs), the learning rate halved after ``lr_patience`` epochs without a
better validation NLL, early stopping after ``patience`` such epochs (the best epoch's weights
restored). The validation NLL (frames 2..T) is computed on ``validation_rolls`` given to ``fit``,
else on a seeded ``validation`` share of the training rolls.

**Sampling** (``sample(length, seed=)``) runs the recurrent layer's streaming path
(``layer.streamer()``: one compiled kernel call per frame, the state kept inside; ``layer.step``
under ``torch.no_grad()`` for configurations the streamer does not cover), so a roll of n frames
costs O(n): each frame's notes are drawn as independent Bernoullis and fed back as the next input.

Example::

    from grukit.data import read_piano_rolls
    from grukit.tasks import NextStepDensity

    rolls = read_piano_rolls("../shared/data/polyphonic-music/jsb_chorales.json.gz")   # 88 notes
    model = NextStepDensity(epochs=200, seed=0).fit(rolls["train"], validation_rolls=rolls["valid"])
    print(model.evaluate(rolls["test"]).table())     # beside the per-note frequency's 11.06 nats per frame
    roll = model.sample(64, seed=1)                   # (64, 88) of 0/1
    model.save("runs/jsb"); NextStepDensity.load("runs/jsb")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from grukit import layers
from grukit.data.music import frame_nll
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.models import Sequential
from grukit.tasks.base import ConfigRecord, Task, cell_class, check_seed, recurrent_layer
from grukit.tasks.char_lm import CharLM
from grukit.tasks.sequence_classifier import (check_int, check_number, masked_forward,
                                              sequence_list)
from grukit.train import Adam, Callback, EarlyStopping, ReduceLROnPlateau
from grukit.train.loop import check_precision

EVAL_BATCH = 64
SMOOTHING = 0.5


@dataclass
class NextStepDensityConfig(ConfigRecord):
    """Everything that defines a NextStepDensity (saved in ``task.json``).

    Network: ``cell``, ``units``, ``input_dropout`` (on the input frames, training only), ``dropout``
    (on the recurrent outputs before the read-out), ``cell_options`` (extra arguments of the
    recurrent layer; None: ``{"reset_after": False}`` for the GRU, as Chung et al., else ``{}``).
    Training: ``epochs`` (at most), ``patience`` (epochs without a better validation NLL before
    stopping; None trains all ``epochs`` and keeps the last weights), ``lr_patience`` and ``lr_decay``
    (the learning rate times ``lr_decay`` after that many epochs without progress; ``lr_decay=1`` never),
    ``batch_size`` (sequences, grouped by length), ``learning_rate`` (Adam), ``clipnorm`` (global
    gradient-norm clipping, None for none), ``validation`` (share or count of the training rolls held
    out when ``fit`` gets no ``validation_rolls``; 0 for none), ``seed``, ``verbose``.
    ``precision``: "float32", or "mixed_bfloat16" to train the recurrent layer in grukit's bfloat16
    mode (``fit(precision=...)``; fast on CPUs with BF16 units); predictions run in float32.
    """

    cell: str = "gru"
    units: int = 46
    input_dropout: float = 0.2
    dropout: float = 0.0
    epochs: int = 200
    patience: int | None = 20
    lr_patience: int = 5
    lr_decay: float = 0.5
    batch_size: int = 8
    learning_rate: float = 3e-3
    clipnorm: float | None = 1.0
    validation: int | float = 0.1
    seed: int = 0
    verbose: int = 0
    precision: str = "float32"
    cell_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_precision(self.precision, "NextStepDensity")
        owner = "NextStepDensity"
        for name in ("units", "epochs", "batch_size", "lr_patience"):
            check_int(owner, name, getattr(self, name), 1)
        if self.patience is not None:
            check_int(owner, "patience", self.patience, 1)
        check_number(owner, "input_dropout", self.input_dropout, 0, 1, " (a probability)")
        check_number(owner, "dropout", self.dropout, 0, 1, " (a probability)")
        check_number(owner, "learning_rate", self.learning_rate, 1e-12)
        check_number(owner, "lr_decay", self.lr_decay, 1e-12, 1 + 1e-12, " (1 keeps the rate)")
        if self.clipnorm is not None:
            check_number(owner, "clipnorm", self.clipnorm, 1e-12, what=" or None")
        if isinstance(self.validation, float):
            check_number(owner, "validation", self.validation, 0, 1, " (a share of the rolls) or an int count")
        else:
            check_int(owner, "validation", self.validation, 0)
        if self.cell_options is None:
            self.cell_options = {"reset_after": False} if cell_class(self.cell) is layers.GRU else {}
        cell_class(self.cell)


def roll_list(rolls, what: str) -> list[np.ndarray]:
    """Rolls as float64 ``(T_i, K)`` 0/1 arrays (checked as :func:`sequence_list` does, and binary)."""
    if isinstance(rolls, dict):
        raise DataError(f"{what}: got a dict (keys {sorted(rolls)}): pass one split's list of rolls, e.g. "
                        "rolls['train'] of read_piano_rolls(...)")
    if isinstance(rolls, (np.ndarray, torch.Tensor)) and np.ndim(rolls) == 2:
        raise ShapeError(f"{what}: got one 2-D array {tuple(np.shape(rolls))}; pass a list of rolls: [roll]")
    rolls = sequence_list(rolls, None, what)
    for index, roll in enumerate(rolls):
        if not np.isin(roll, (0.0, 1.0)).all():
            other = float(roll[~np.isin(roll, (0.0, 1.0))][0])
            raise DataError(f"{what}: sequences[{index}] holds {other:g}; a roll must be 0/1 (1: the note sounds "
                            "in that frame); threshold or binarise it first, e.g. (roll > 0)")
    return rolls


def shifted_batch(rolls: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps (N, T) int64, inputs (N, T, K) float32, targets (N, T, K) float32)``: the targets are the
    rolls post-padded with -1, the inputs the same frames shifted right by one behind a zero frame."""
    lengths = np.array([len(r) for r in rolls])
    targets = np.full((len(rolls), int(lengths.max()), rolls[0].shape[1]), -1.0, dtype=np.float32)
    for i, roll in enumerate(rolls):
        targets[i, :len(roll)] = roll
    inputs = np.zeros_like(targets)
    inputs[:, 1:] = np.maximum(targets[:, :-1], 0.0)
    steps = (np.arange(targets.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    inputs *= steps[:, :, None]
    return steps, inputs, targets


def pooled_frame_loss(y_true: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-sequence NLL sums scaled so that their batch mean is the batch's NLL per valid frame (frames
    pooled); targets of -1 are padding. ``logits`` may be shorter in time (the batch was cut)."""
    targets = y_true[:, :logits.shape[1]]
    valid = (targets[..., 0] >= 0).to(logits.dtype)
    per_note = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.clamp(min=0), reduction="none")
    per_sequence = (per_note.sum(dim=-1) * valid).sum(dim=1)
    return per_sequence * (len(targets) / valid.sum().clamp(min=1))


class _ValidationNLL(Callback):
    """Puts ``val_nll`` (NLL per frame, frames 2..T) into the epoch's logs, before the callbacks that watch it."""

    def __init__(self, task: "NextStepDensity", rolls: list[np.ndarray]) -> None:
        super().__init__()
        self.task, self.rolls = task, rolls

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["val_nll"] = float(self.task._scores(self.model, self.rolls)["nll_after_first"])


@dataclass
class DensityEvaluation:
    """NLL per time step (nats per frame, frames pooled over sequences) of the model and of the per-note
    frequency baseline: ``scores[name] = {"nll": all frames, "nll_after_first": frames 2..T}``;
    ``frames``: the frames counted by ``nll``; ``sequences``."""

    scores: dict[str, dict[str, float]]
    frames: int
    sequences: int
    model_name: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "frames": self.frames, "sequences": self.sequences, "scores": self.scores}

    def table(self) -> str:
        """A markdown table: NLL per frame over all frames and over frames 2..T, model and baseline."""
        names = {"model": self.model_name, "note_frequency": "per-note frequency"}
        lines = ["| model | NLL per frame (all frames) | NLL per frame (frames 2..T) |", "|---|---:|---:|"]
        for key, score in self.scores.items():
            lines.append(f"| {names.get(key, key)} | {score['nll']:.4f} | {score['nll_after_first']:.4f} |")
        return "\n".join(lines)


class NextStepDensity(Task):
    """A recurrent next-frame density over binary multi-label sequences: ``NextStepDensity(cell="gru",
    units=46, ...)`` (the arguments of :class:`NextStepDensityConfig`; the module docstring has the
    model, the NLL convention and the training recipe).

    Shapes: ``fit(rolls)``, ``evaluate(rolls)`` and ``predict_proba(rolls)`` take a list of N rolls
    ``(T_i, K)`` of 0/1; the network reads ``(N, T, K)`` frames (a zero frame first) with an
    ``(N, T)`` step mask and returns ``(N, T, K)`` logits; ``predict_proba`` returns one ``(T_i + 1, K)``
    array per roll, row t the probabilities of frame t given frames ``< t`` (row ``T_i``: the frame after
    the roll); ``sample(length)`` returns ``(length, K)`` of 0/1.

    Example::

        roll = np.tile(np.eye(4), (8, 1))                        # notes 0, 1, 2, 3, 0, 1, ... (32, 4)
        model = NextStepDensity(units=16, epochs=80, batch_size=2, learning_rate=2e-2, input_dropout=0,
                                patience=None, validation=0).fit([roll] * 8)
        model.sample(8, seed=0)                                    # the staircase: np.tile(np.eye(4), (2, 1))
    """

    def __init__(self, cell: str = "gru", units: int = 46, **options) -> None:
        self.config = NextStepDensityConfig(cell=cell, units=units, **options)
        self.model: Sequential | None = None
        self.notes: int | None = None
        self.note_frequency: np.ndarray | None = None
        self.history = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "NextStepDensity":
        return cls(**NextStepDensityConfig.from_dict(config).to_dict())

    def build_model(self, notes: int) -> Sequential:
        """``[Input((None, K)), Dropout(input_dropout), <Cell>(units, return_sequences=True), Dropout(dropout),
        Dense(K)]`` (the dropouts only when > 0); the outputs are logits."""
        config = self.config
        stack: list[Any] = [layers.Input((None, notes))]
        if config.input_dropout:
            stack.append(layers.Dropout(config.input_dropout))
        stack.append(recurrent_layer(config.cell, config.units, return_sequences=True, **config.cell_options))
        if config.dropout:
            stack.append(layers.Dropout(config.dropout))
        stack.append(layers.Dense(notes))
        return Sequential(stack, name="next_step_density")

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, rolls, validation_rolls=None, *, distributed: bool = False) -> "NextStepDensity":
        """Train on ``rolls`` (N rolls ``(T_i, K)`` of 0/1), early-stopping on the NLL of
        ``validation_rolls`` (else of a seeded ``validation`` share of ``rolls``; with neither, or with
        ``patience=None``, all ``epochs`` are trained). Also counts the per-note frequency baseline on
        the training rolls. Returns self; ``self.history`` is the History (``val_nll`` per epoch).
        ``distributed=True``: data-parallel over the processes of a torchrun launch (grukit.train.fit)."""
        config = self.config
        rolls = roll_list(rolls, "NextStepDensity.fit")
        notes = rolls[0].shape[1]
        if validation_rolls is not None:
            validation_rolls = roll_list(validation_rolls, "NextStepDensity.fit: validation_rolls")
            if validation_rolls[0].shape[1] != notes:
                raise ShapeError(f"NextStepDensity.fit: validation_rolls have {validation_rolls[0].shape[1]} notes, "
                                 f"the training rolls {notes}; use the same note range (low=/high= of "
                                 "read_piano_rolls)")
        elif config.validation:
            held = (int(config.validation) if isinstance(config.validation, int)
                    else int(round(config.validation * len(rolls))))
            if held >= len(rolls):
                raise DataError(f"NextStepDensity.fit: validation={config.validation} holds out {held} of "
                                f"{len(rolls)} rolls, leaving none to train on; pass more rolls, validation_rolls=, "
                                "or validation=0")
            if held:
                order = np.random.default_rng(config.seed).permutation(len(rolls))
                validation_rolls = [rolls[i] for i in np.sort(order[:held])]
                rolls = [rolls[i] for i in np.sort(order[held:])]
        frames = np.concatenate(rolls)
        # every check passed: from here on this object describes the new fit
        self.model, self.notes = None, notes
        self.note_frequency = (frames.sum(axis=0) + SMOOTHING) / (len(frames) + 2 * SMOOTHING)
        steps, inputs, targets = shifted_batch(rolls)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = self.build_model(notes)
        model.compile(optimizer=Adam(learning_rate=config.learning_rate, global_clipnorm=config.clipnorm),
                      loss=pooled_frame_loss)
        callbacks: list[Callback] = []
        if validation_rolls is not None:
            callbacks.append(_ValidationNLL(self, validation_rolls))
            if config.lr_decay < 1:
                callbacks.append(ReduceLROnPlateau(monitor="val_nll", mode="min", factor=config.lr_decay,
                                                   patience=config.lr_patience))
            if config.patience is not None:
                callbacks.append(EarlyStopping(monitor="val_nll", mode="min", patience=config.patience,
                                               restore_best_weights=True))
        self.history = model.fit((steps, inputs), targets, epochs=config.epochs, batch_size=config.batch_size,
                                 seed=config.seed, verbose=config.verbose, bucket_by_length=True,
                                 forward=masked_forward, callbacks=callbacks, distributed=distributed,
                                 precision=config.precision)
        model.eval()
        self.model = model
        return self

    # -- scoring -------------------------------------------------------------------------------
    def _logit_batches(self, model: Sequential, rolls: list[np.ndarray]):
        """``(rolls' indices, logits (n, T, K) float64, targets, steps)`` per batch of similar lengths."""
        order = np.argsort([len(r) for r in rolls], kind="stable")
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for begin in range(0, len(order), EVAL_BATCH):
                    index = order[begin:begin + EVAL_BATCH]
                    steps, inputs, targets = shifted_batch([rolls[i] for i in index])
                    logits = masked_forward(model, (torch.from_numpy(steps), torch.from_numpy(inputs)))
                    yield index, logits.double().numpy(), targets, steps
        finally:
            model.train(training)

    def _scores(self, model: Sequential, rolls: list[np.ndarray]) -> dict[str, float]:
        total = first = 0.0
        frames = 0
        for _, logits, targets, steps in self._logit_batches(model, rolls):
            lengths = steps.sum(axis=1)
            per_frame = frame_nll(logits, np.maximum(targets, 0), lengths, reduction="none")
            total, first, frames = total + per_frame.sum(), first + per_frame[:, 0].sum(), frames + int(lengths.sum())
        after = frames - len(rolls)
        return {"nll": total / frames, "nll_after_first": (total - first) / after if after else math.nan}

    def _baseline(self, rolls: list[np.ndarray]) -> dict[str, float]:
        log_p, log_q = np.log(self.note_frequency), np.log1p(-self.note_frequency)
        per_frame = [-(roll @ log_p + (1 - roll) @ log_q) for roll in rolls]
        total, first = sum(f.sum() for f in per_frame), sum(f[0] for f in per_frame)
        frames = sum(len(f) for f in per_frame)
        after = frames - len(rolls)
        return {"nll": total / frames, "nll_after_first": (total - first) / after if after else math.nan}

    def _checked(self, rolls, what: str) -> list[np.ndarray]:
        self.require_fitted(what)
        rolls = roll_list(rolls, f"NextStepDensity.{what}")
        if rolls[0].shape[1] != self.notes:
            raise ShapeError(f"NextStepDensity.{what}: the rolls have {rolls[0].shape[1]} notes, the model was fitted "
                             f"on {self.notes}; use the same note range (low=/high= of read_piano_rolls)")
        return rolls

    def evaluate(self, rolls) -> DensityEvaluation:
        """NLL per time step (nats per frame, all frames of all rolls pooled; also over frames 2..T) of the
        model and of the per-note frequency baseline on ``rolls``. Returns a :class:`DensityEvaluation`."""
        rolls = self._checked(rolls, "evaluate")
        scores = {"model": self._scores(self.model, rolls), "note_frequency": self._baseline(rolls)}
        name = f"{cell_class(self.config.cell).__name__}({self.config.units})"
        return DensityEvaluation(scores, int(sum(len(r) for r in rolls)), len(rolls), name)

    def predict_proba(self, rolls) -> list[np.ndarray]:
        """For each roll ``(T_i, K)``, the ``(T_i + 1, K)`` probabilities that each note sounds in frame t given
        frames ``< t`` (row 0: from silence; row ``T_i``: the frame after the roll)."""
        rolls = self._checked(rolls, "predict_proba")
        extended = [np.concatenate([roll, np.zeros((1, roll.shape[1]))]) for roll in rolls]
        result: list[np.ndarray | None] = [None] * len(rolls)
        for index, logits, _, steps in self._logit_batches(self.model, extended):
            for row, i in enumerate(index):
                result[i] = 1.0 / (1.0 + np.exp(-logits[row, :int(steps[row].sum())]))
        return result

    # -- sampling ------------------------------------------------------------------------------
    def _parts(self):
        """(None, the recurrent grukit.nn layer, None): the shape CharLM.streaming_step reads."""
        return None, next(layer for layer in self.model.stack if isinstance(layer, layers.Recurrent)).recurrent, None

    # ``step(frame (K,)) -> output (units,)``: the layer's Streamer (compiled kernels) where it covers the
    # configuration, else ``layer.step`` under no_grad; a fresh state per call. Shared with CharLM.
    streaming_step = CharLM.streaming_step

    def sample(self, length: int, seed: int | None = None, prompt=None) -> np.ndarray:
        """Generate ``length`` frames ``(length, K)`` of 0/1: each note drawn as a Bernoulli of its
        probability given the frames before, the frame fed back as the next input. ``prompt``: an optional
        roll ``(T, K)`` to continue (not included in the result). The same ``seed`` (int) gives the same roll;
        None draws fresh entropy. O(length): one streaming step per frame.

        Example::

            model.sample(100, seed=0)                    # (100, 88) float32
        """
        self.require_fitted("sample")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ConfigError(f"NextStepDensity.sample(length={length!r}): expected an int >= 0 (frames to "
                              "generate)")
        frames = [] if prompt is None else list(self._checked([prompt], "sample")[0])
        head = self.model.stack[-1].linear
        weight = head.weight.detach().numpy().astype(np.float64)   # (K, H)
        bias = head.bias.detach().numpy().astype(np.float64)
        dtype = head.weight.detach().numpy().dtype
        step = self.streaming_step()
        rng = np.random.default_rng(check_seed(seed, "NextStepDensity.sample", allow_none=True))
        frame = np.zeros(self.notes, dtype=dtype)
        for given in frames:
            step(frame)
            frame = np.asarray(given, dtype=dtype)
        result = np.zeros((length, self.notes), dtype=np.float32)
        for t in range(length):
            logits = weight @ step(frame) + bias
            frame = (rng.random(self.notes) < 1.0 / (1.0 + np.exp(-logits))).astype(dtype)
            result[t] = frame
        return result

    # -- saving (plumbing in Task) -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"notes": self.notes, "note_frequency": self.note_frequency.tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.notes = int(state["notes"])
        self.note_frequency = np.asarray(state["note_frequency"], dtype=np.float64)


__all__ = ["NextStepDensity", "NextStepDensityConfig", "DensityEvaluation", "pooled_frame_loss", "shifted_batch"]
