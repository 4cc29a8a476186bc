"""Classification of variable-length multivariate sequences (speakers, gestures, sensor traces, ECGs).

``SequenceClassifier`` owns everything between raw sequences and a label:

1. the sequences: a list of N arrays ``(T_i, C)`` (a 1-D array is one channel), an array
   ``(N, T, C)`` with ``lengths=(N,)`` (steps past a sequence's length are ignored), or a
   :class:`grukit.data.TimeSeriesDataset` from :func:`grukit.data.read_ts` (labels and class names
   come with it);
2. per-channel standardisation, ``(v - mean) / std`` with the mean and deviation of the
   **training frames only** (all steps of all training sequences pooled;
   :class:`grukit.data.timeseries.SeriesScaler`), saved with the model;
3. the network, ``Sequential([Input((None, C)), <Cell>(units), Dropout(dropout), Dense(k, "softmax")])``,
   fed a padded batch and a step mask: the recurrent layer skips the padding and the classifier
   reads each sequence's state after its last valid step, so the padding never changes a result
   (each batch is also cut to its longest member);
4. the label names: ints or strings, numbered in the order of ``classes=[...]``, of a
   TimeSeriesDataset's ``class_names``, or sorted; ``predict`` answers in those names.

Defaults: the recipe that reaches 97-98% test accuracy on JapaneseVowels (UEA, 270 training
utterances of 12 LPC channels, 9 speakers; benchmarks/japanese_vowels.py): 64 units, Adam at
3e-3, batches of 16 in a seeded shuffled order, Gaussian noise of std 0.2 added to the standardised
inputs in training (``noise``), dropout 0.3 on the final state, and the number of epochs chosen by
stratified ``folds``-fold cross-validation on the training data: each fold trains for up to
``epochs`` epochs, the epoch with the lowest validation loss averaged over the folds wins
(``self.cv_curve``, ``self.chosen_epochs``), and the model is then trained on all the training data
for that many epochs. The folds use the scaler of all the training data. ``folds=None`` skips the
cross-validation and trains exactly ``epochs`` epochs (k + 1 times faster).

``evaluate`` reports accuracy and the macro averages over classes of precision, recall and F1
(:mod:`grukit.train.metrics`), beside the majority-class accuracy.

Example::

    from grukit.data import read_ts
    from grukit.tasks import SequenceClassifier

    train = read_ts("../shared/data/japanese-vowels/JapaneseVowels_TRAIN.ts")
    test = read_ts("../shared/data/japanese-vowels/JapaneseVowels_TEST.ts")
    classifier = SequenceClassifier(cell="gru", seed=0).fit(train)   # epochs chosen by 5-fold CV
    print(classifier.evaluate(test).table())                          # accuracy 0.978 (seed 0)
    classifier.predict(test.sequences[:3])                            # class names, e.g. array(['1', ...])
    classifier.save("runs/vowels"); SequenceClassifier.load("runs/vowels")
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from grukit import layers
from grukit.data.timeseries import SeriesScaler
from grukit.data.ts_format import TimeSeriesDataset
from grukit.errors import ConfigError, DataError, ShapeError
from grukit.models import Sequential
from grukit.tasks.base import ConfigRecord, Task, cell_class, recurrent_layer
from grukit.tasks.text_classifier import TextEvaluation
from grukit.train import Adam, get_metric
from grukit.train.loop import check_precision
from grukit.train.losses import SparseCategoricalCrossentropy


def check_int(owner: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{owner}({name}={value!r}): expected an int >= {low}")


def check_number(owner: str, name: str, value, low: float, high: float | None = None, what: str = "") -> None:
    """``low <= value`` (``< high`` if given), a finite int or float."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and math.isfinite(value) and value >= low and (high is None or value < high))
    if not ok:
        span = f"in [{low:g}, {high:g})" if high is not None else f">= {low:g}"
        raise ConfigError(f"{owner}({name}={value!r}): expected a number {span}{what}")


@dataclass
class SequenceClassifierConfig(ConfigRecord):
    """Everything that defines a SequenceClassifier (saved in ``task.json``).

    Network: ``cell`` ("gru", "lstm", "rnn", "mgu", "mingru"), ``units``, ``dropout`` (on the final
    state, before the output layer), ``cell_options`` (extra arguments of the recurrent layer).
    Inputs: ``standardize`` (per-channel, fitted on the training frames). Labels: ``classes`` (names
    in id order; None: a TimeSeriesDataset's class names, else the sorted training labels).
    Training: ``epochs`` (with ``folds``: the most epochs the cross-validation considers; without:
    the epochs trained), ``folds`` (stratified cross-validation folds choosing the epoch count; None
    or 0 for none), ``batch_size``, ``learning_rate`` (Adam), ``clipnorm`` (global gradient clipping,
    None for none), ``noise`` (std of the Gaussian noise on the standardised inputs in training),
    ``seed`` (folds, weights, batch order, noise, dropout), ``verbose``.
    ``precision``: "float32", or "mixed_bfloat16" to train the recurrent layer in grukit's bfloat16
    mode (``fit(precision=...)``; fast on CPUs with BF16 units); predictions run in float32.
    """

    cell: str = "gru"
    units: int = 64
    dropout: float = 0.3
    noise: float = 0.2
    standardize: bool = True
    classes: list[Any] | None = None
    epochs: int = 80
    folds: int | None = 5
    batch_size: int = 16
    learning_rate: float = 3e-3
    clipnorm: float | None = None
    seed: int = 0
    verbose: int = 0
    precision: str = "float32"
    cell_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_precision(self.precision, "SequenceClassifier")
        owner = "SequenceClassifier"
        for name in ("units", "epochs", "batch_size"):
            check_int(owner, name, getattr(self, name), 1)
        if self.folds == 0:
            self.folds = None
        if self.folds is not None:
            check_int(owner, "folds", self.folds, 2)
        check_number(owner, "dropout", self.dropout, 0, 1, " (a probability)")
        check_number(owner, "noise", self.noise, 0, what=" (the std of the training input noise; 0 for none)")
        check_number(owner, "learning_rate", self.learning_rate, 1e-12)
        if self.clipnorm is not None:
            check_number(owner, "clipnorm", self.clipnorm, 1e-12, what=" or None")
        cell_class(self.cell)
        if self.classes is not None:
            self.classes = label_list(self.classes, "SequenceClassifier(classes=...)")
            if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
                raise ConfigError(f"SequenceClassifier(classes={self.classes!r}): expected at least two distinct "
                                  "label names, in the order of their ids")


# -- data ---------------------------------------------------------------------------------------

def label_list(labels, what: str) -> list:
    """Labels as plain JSON-ready values, all str or all int (numpy scalars and whole floats become int)."""
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
        raise DataError(f"{what} must be a list of labels (strings or ints), got {type(labels).__name__}")
    values = []
    for index, value in enumerate(labels):
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataError(f"{what}[{index}] is {value!r} ({type(value).__name__}); labels must be strings or ints "
                            "(class names or ids): convert them, and drop sequences without a label")
        values.append(value)
    if len({type(v) for v in values}) > 1:
        raise DataError(f"{what} mixes strings and ints; use one kind for every label")
    return values


def sequence_list(data, lengths, what: str) -> list[np.ndarray]:
    """Sequences as a list of float64 ``(T_i, C)`` arrays, checked: at least one, none empty, the same
    channel count everywhere, finite values."""
    if isinstance(data, TimeSeriesDataset):
        data = data.sequences
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if isinstance(data, np.ndarray) and data.dtype != object:
        if data.ndim != 3:
            raise ShapeError(f"{what}: an array of sequences must be (N, T, C), got shape {data.shape}; pass a list "
                             "of (T_i, C) arrays, wrap a single sequence in a list, or add a channel axis "
                             "(x[..., None]) to univariate (N, T) data")
        if lengths is None:
            lengths = np.full(len(data), data.shape[1])
        lengths = np.asarray(lengths)
        if lengths.shape != (len(data),) or not np.issubdtype(lengths.dtype, np.integer):
            raise ShapeError(f"{what}: lengths= must be ({len(data)},) ints (valid steps per sequence), got shape "
                             f"{lengths.shape} dtype {lengths.dtype}")
        if len(lengths) and ((lengths < 1).any() or (lengths > data.shape[1]).any()):
            raise DataError(f"{what}: lengths= must lie in [1, {data.shape[1]}] (T of the padded array), got "
                            f"{lengths.min()}..{lengths.max()}")
        data = [data[i, :int(n)] for i, n in enumerate(lengths)]
    elif lengths is not None:
        raise ConfigError(f"{what}: lengths= goes with a padded array (N, T, C); a list of sequences carries its "
                          "own lengths, so drop lengths=")
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise DataError(f"{what}: expected a list of (T_i, C) arrays, an (N, T, C) array or a TimeSeriesDataset, "
                        f"got {type(data).__name__}")
    sequences = []
    for index, item in enumerate(data):
        try:
            array = np.asarray(item, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise DataError(f"{what}: sequences[{index}] is not numeric ({error}); each sequence must be a (T, C) "
                            "array of numbers") from None
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise ShapeError(f"{what}: sequences[{index}] has shape {array.shape}, expected (T, C): time steps by "
                             "channels (a 1-D array is one channel)")
        if len(array) == 0:
            raise DataError(f"{what}: sequences[{index}] is empty (0 time steps); drop it, every sequence needs at "
                            "least one step")
        if sequences and array.shape[1] != sequences[0].shape[1]:
            raise ShapeError(f"{what}: sequences[{index}] has {array.shape[1]} channels but sequences[0] has "
                             f"{sequences[0].shape[1]}; every sequence needs the same channels in the same order "
                             "(time first, channels last: transpose a (C, T) array with .T)")
        bad = ~np.isfinite(array)
        if bad.any():
            step, channel = (int(v) for v in np.argwhere(bad)[0])
            raise DataError(f"{what}: sequences[{index}] holds NaN or infinite values ({int(bad.sum())}, the first "
                            f"at step {step}, channel {channel}); impute them (e.g. carry the last value forward) "
                            "or drop that sequence")
        sequences.append(array)
    if not sequences:
        raise DataError(f"{what}: no sequences (0 given); pass at least one (T, C) array")
    return sequences


def padded_with_steps(sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, x)``: ``steps`` ``(N, T)`` int64, 1 on valid steps; ``x`` ``(N, T, C)`` float32, post-padded
    with zeros (T = the longest sequence)."""
    lengths = np.array([len(s) for s in sequences])
    x = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[1]), dtype=np.float32)
    for i, sequence in enumerate(sequences):
        x[i, :len(sequence)] = sequence
    steps = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    return steps, x


def masked_forward(model: Sequential, xs: tuple, noise: float = 0.0) -> torch.Tensor:
    """Run ``model``'s layers on ``xs = (steps (N, T), x (N, T, C))``, the steps mask passed to the
    recurrent layer (padding skipped); the batch is cut to its longest sequence, and in training
    Gaussian noise of std ``noise`` is added to ``x``."""
    steps, x = xs
    valid = steps.bool()
    longest = int(valid.any(dim=0).nonzero().max()) + 1
    x, valid = x[:, :longest], valid[:, :longest]
    if noise and model.training:
        x = x + noise * torch.randn_like(x)
    output, mask = x, valid
    for layer in model.stack:
        output, mask = layer(output, mask)
    return output


def stratified_folds(ids: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint, sorted index arrays covering ``ids`` (class ids), each holding about 1/folds
    of every class, shuffled by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(folds)]
    for label in np.unique(ids):
        members = np.flatnonzero(ids == label)
        members = members[torch.randperm(len(members), generator=generator).numpy()]
        for k in range(folds):
            parts[k].append(members[k::folds])
    return [np.sort(np.concatenate(part)) for part in parts]


class SequenceEvaluation(TextEvaluation):
    """Scores of a SequenceClassifier on labelled sequences (the fields and ``table()`` of
    :class:`grukit.tasks.TextEvaluation`).

    ``scores``: ``accuracy`` and the macro averages over classes of ``precision``, ``recall`` and ``f1``
    (:mod:`grukit.train.metrics`); ``majority``: the accuracy of always answering the most frequent
    training class; ``probabilities`` ``(N, k)``; ``predicted``, ``actual``: ``(N,)`` class ids;
    ``classes``: the names of ids 0..k-1.
    """


class SequenceClassifier(Task):
    """A recurrent classifier of variable-length multivariate sequences: ``SequenceClassifier(cell="gru",
    units=64, ...)`` (the arguments of :class:`SequenceClassifierConfig`; the module docstring has the
    recipe).

    Shapes: ``fit(sequences, labels)`` takes N sequences ``(T_i, C)`` (a list, an ``(N, T, C)`` array with
    ``lengths=``, or a TimeSeriesDataset without ``labels``) and N labels; the network reads a padded
    ``(N, T, C)`` batch with its ``(N, T)`` step mask and outputs ``(N, k)`` probabilities;
    ``predict_proba`` returns ``(N, k)`` (columns in the order of ``classes``), ``predict`` ``(N,)`` names.

    Example::

        rng = np.random.default_rng(0)
        sequences = [rng.normal(size=(rng.integers(5, 20), 2)) for _ in range(200)]
        labels = ["up" if s[:, 0].mean() > 0 else "down" for s in sequences]
        classifier = SequenceClassifier(units=16, folds=None, epochs=30).fit(sequences, labels)
        classifier.predict([np.ones((7, 2))])          # array(['up'], dtype='<U4')
    """

    def __init__(self, cell: str = "gru", units: int = 64, **options) -> None:
        self.config = SequenceClassifierConfig(cell=cell, units=units, **options)
        self.model: Sequential | None = None
        self.scaler: SeriesScaler | None = None
        self.classes: list[Any] | None = None
        self.channels: int | None = None
        self.train_counts: dict[str, int] | None = None
        self.chosen_epochs: int | None = None
        self.cv_curve: list[float] | None = None
        self.history = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SequenceClassifier":
        return cls(**SequenceClassifierConfig.from_dict(config).to_dict())

    # -- data --------------------------------------------------------------------------------
    def _examples(self, sequences, labels, lengths, what: str) -> tuple[list[np.ndarray], list, tuple]:
        """(sequences, labels, class names a TimeSeriesDataset brings or ())."""
        names: tuple = ()
        if isinstance(sequences, TimeSeriesDataset):
            if labels is not None:
                raise ConfigError(f"SequenceClassifier.{what}: a TimeSeriesDataset brings its own labels; drop "
                                  "labels=")
            if sequences.labels is None or not sequences.class_names:
                raise DataError(f"SequenceClassifier.{what}: the TimeSeriesDataset has no class labels (an unlabelled "
                                "or regression .ts file); read a file with '@classLabel true ...'")
            names = tuple(sequences.class_names)
            labels = [names[int(i)] for i in sequences.labels]
        elif labels is None:
            raise DataError(f"SequenceClassifier.{what}: labels are missing; pass one label per sequence "
                            "(or a labelled TimeSeriesDataset)")
        sequences = sequence_list(sequences, lengths, f"SequenceClassifier.{what}")
        labels = label_list(labels, f"SequenceClassifier.{what}: labels")
        if len(sequences) != len(labels):
            raise DataError(f"SequenceClassifier.{what}: {len(sequences)} sequences but {len(labels)} labels; pass "
                            "one label per sequence (were they sliced or filtered separately?)")
        return sequences, labels, names

    def _label_ids(self, labels: list, classes: list, what: str) -> np.ndarray:
        index = {name: i for i, name in enumerate(classes)}
        unknown = Counter(label for label in labels if label not in index)
        if unknown:
            listing = ", ".join(f"{label!r}: {count}" for label, count in sorted(unknown.items(), key=str))
            raise DataError(f"SequenceClassifier.{what}: label(s) {listing} (name: count) are not among the classes "
                            f"{classes}; drop those sequences, or refit with them in the training data (or in "
                            "classes=[...])")
        return np.array([index[label] for label in labels], dtype=np.int64)

    def encode(self, sequences, lengths=None, what: str = "encode") -> tuple[np.ndarray, np.ndarray]:
        """Raw sequences -> the network's inputs ``(steps (N, T) int64, x (N, T, C) float32)``, standardised."""
        self.require_fitted(what)
        sequences = sequence_list(sequences, lengths, f"SequenceClassifier.{what}")
        if sequences[0].shape[1] != self.channels:
            raise ShapeError(f"SequenceClassifier.{what}: the sequences have {sequences[0].shape[1]} channels, the "
                             f"classifier was fitted on {self.channels}; pass the same channels in the same order")
        return self._inputs(sequences)

    def _inputs(self, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.scaler is not None:
            sequences = [self.scaler.transform(s) for s in sequences]
        return padded_with_steps(sequences)

    # -- fit ---------------------------------------------------------------------------------
    def build_model(self, channels: int, classes: int) -> Sequential:
        """``Sequential([Input((None, C)), <Cell>(units), Dropout(dropout), Dense(k, "softmax")])``."""
        config = self.config
        stack: list[Any] = [layers.Input((None, channels)),
                            recurrent_layer(config.cell, config.units, **config.cell_options)]
        if config.dropout:
            stack.append(layers.Dropout(config.dropout))
        stack.append(layers.Dense(classes, activation="softmax"))
        return Sequential(stack, name="sequence_classifier")

    def _train(self, inputs, ids, epochs: int, validation=None, distributed: bool = False):
        """A fresh model (seeded) trained for ``epochs``; returns (model, History)."""
        config = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = self.build_model(inputs[1].shape[-1], len(self.classes))
        model.compile(optimizer=Adam(learning_rate=config.learning_rate, global_clipnorm=config.clipnorm),
                      loss=SparseCategoricalCrossentropy())
        options = {} if validation is None else {"validation_data": validation}
        history = model.fit(inputs, ids, epochs=epochs, batch_size=config.batch_size, seed=config.seed,
                            verbose=config.verbose, forward=partial(masked_forward, noise=config.noise),
                            distributed=distributed, precision=config.precision, **options)
        model.eval()
        return model, history

    def fit(self, sequences, labels=None, lengths=None, *, distributed: bool = False) -> "SequenceClassifier":
        """Fit the scaler on the training frames, choose the epoch count by cross-validation (unless
        ``folds=None``) and train on all the sequences. ``sequences``: N ``(T_i, C)`` arrays, an
        ``(N, T, C)`` array with ``lengths=``, or a labelled TimeSeriesDataset (then no ``labels``);
        ``labels``: N ints or strings. Returns self; ``self.history`` is the final training History.
        ``distributed=True``: data-parallel over the processes of a torchrun launch (grukit.train.fit)."""
        config = self.config
        sequences, labels, names = self._examples(sequences, labels, lengths, "fit")
        counts = Counter(labels)
        classes = list(config.classes) if config.classes is not None else (
            [name for name in names] if names else sorted(counts))
        ids = self._label_ids(labels, classes, "fit")
        if len(counts) < 2:
            raise DataError(f"SequenceClassifier.fit: the labels hold only one class ({next(iter(counts))!r}, "
                            f"{len(labels)} times); a classifier needs examples of at least two classes")
        if config.folds is not None and len(sequences) < config.folds:
            raise DataError(f"SequenceClassifier.fit: {len(sequences)} sequences are too few for folds="
                            f"{config.folds} cross-validation; pass more data, fewer folds, or folds=None with "
                            "a fixed epochs=")
        frames = np.concatenate(sequences)
        scaler = SeriesScaler("standard").fit(frames) if config.standardize and len(frames) > 1 else None
        # every check passed: from here on this classifier describes the new fit
        self.model, self.scaler, self.classes, self.channels = None, scaler, classes, frames.shape[1]
        self.train_counts = {str(name): int(counts.get(name, 0)) for name in classes}
        steps, x = self._inputs(sequences)
        epochs, self.cv_curve = config.epochs, None
        if config.folds is not None:
            curves = []
            for held in stratified_folds(ids, config.folds, config.seed):
                keep = np.ones(len(ids), dtype=bool)
                keep[held] = False
                _, history = self._train((steps[keep], x[keep]), ids[keep], config.epochs,
                                         validation=((steps[held], x[held]), ids[held]), distributed=distributed)
                curves.append(history.history["val_loss"])
            self.cv_curve = [float(v) for v in np.mean(curves, axis=0)]
            epochs = int(np.argmin(self.cv_curve)) + 1
        self.chosen_epochs = epochs
        self.model, self.history = self._train((steps, x), ids, epochs, distributed=distributed)
        return self

    # -- predict / evaluate --------------------------------------------------------------------
    def predict_proba(self, sequences, lengths=None, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, k)`` (columns in the order of ``classes``)."""
        model = self.require_fitted("predict_proba")
        inputs = self.encode(sequences, lengths, "predict_proba")
        return model.predict(inputs, batch_size=batch_size, forward=masked_forward)

    def predict(self, sequences, lengths=None, batch_size: int = 256) -> np.ndarray:
        """The most probable class name of each sequence: ``(N,)``, in the labels' own kind."""
        return np.asarray(self.classes)[self.predict_proba(sequences, lengths, batch_size).argmax(axis=1)]

    def evaluate(self, sequences, labels=None, lengths=None, batch_size: int = 256) -> SequenceEvaluation:
        """Accuracy and macro precision / recall / F1 on labelled sequences (as ``fit`` takes them), beside
        the majority-class baseline. Labels unseen at fit raise DataError."""
        self.require_fitted("evaluate")
        sequences, labels, _ = self._examples(sequences, labels, lengths, "evaluate")
        ids = self._label_ids(labels, self.classes, "evaluate")
        probabilities = self.predict_proba(sequences, batch_size=batch_size)
        loss = SparseCategoricalCrossentropy()
        scores = {name: get_metric(name, loss)(ids, probabilities) for name in ("accuracy", "precision", "recall", "f1")}
        majority = max(range(len(self.classes)), key=lambda i: self.train_counts[str(self.classes[i])])
        name = f"{cell_class(self.config.cell).__name__}({self.config.units})"
        return SequenceEvaluation(scores, float(np.mean(ids == majority)), probabilities,
                                  probabilities.argmax(axis=1), ids, list(self.classes), name)

    # -- saving (plumbing in Task) -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"classes": self.classes, "channels": self.channels, "train_counts": self.train_counts,
                "scaler": None if self.scaler is None else self.scaler.to_dict(),
                "chosen_epochs": self.chosen_epochs, "cv_curve": self.cv_curve}

    def load_state(self, state: dict[str, Any]) -> None:
        self.classes = label_list(state["classes"], "task.json: classes")
        self.channels = int(state["channels"])
        self.train_counts = dict(state["train_counts"])
        self.scaler = None if state["scaler"] is None else SeriesScaler.from_dict(state["scaler"])
        self.chosen_epochs, self.cv_curve = state.get("chosen_epochs"), state.get("cv_curve")


__all__ = ["SequenceClassifier", "SequenceClassifierConfig", "SequenceEvaluation", "stratified_folds",
           "masked_forward", "padded_with_steps"]
