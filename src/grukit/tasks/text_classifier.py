"""Text classification (sentiment, topics, intents) with a recurrent network, from raw strings.

``TextClassifier`` owns everything between raw text and a label:

1. a :class:`grukit.data.WordTokenizer`, fitted on the training texts only (the validation part
   carved from them for early stopping is unseen too), so a word that only occurs in test data is
   out of vocabulary (id 1), as it would be for a new user's text;
2. :func:`grukit.data.pad_sequences` to ``maxlen`` tokens (``truncating="pre"`` keeps a long
   text's end, ``padding="post"`` puts the zeros after it);
3. the network, ``Sequential([Input((maxlen,)), Embedding(vocabulary, dim, mask_zero=True),
   Dropout(embedding_dropout), [Bidirectional](<Cell>(units)), [pooling], Dropout(dropout), Dense(...)])``:
   the recurrent layer skips the padding (``mask_zero``); ``pooling="last"`` reads its output at each
   text's last token, ``"max"`` / ``"mean"`` reduce its outputs at all tokens (padding excluded) with
   ``GlobalMaxPooling1D`` / ``GlobalAveragePooling1D``; the output is ``Dense(1, "sigmoid")``
   with binary cross-entropy for two classes and ``Dense(k, "softmax")`` with sparse categorical
   cross-entropy for more. The embedding is random (Keras's U(-0.05, 0.05)) or starts from
   pretrained GloVe / word2vec vectors (``embeddings="glove.6B.100d.txt"``, through
   :func:`grukit.data.load_word_vectors`; the coverage report is kept in ``self.coverage``), frozen
   (``embeddings_trainable=False``) or fine-tuned;
4. the label names: labels may be strings (``"pos"``) or ints; they are sorted (or taken in the
   order of ``classes=[...]``) and numbered 0..k-1, and ``predict`` answers in the original names.
   For two classes the second one is the positive class of precision / recall / F1 / ROC-AUC.

Everything fitted (tokenizer vocabulary and settings, maxlen, class names, the coverage report)
is saved in ``task.json`` beside the model, so ``TextClassifier.load(folder)`` predicts
identically from raw strings.

Defaults for short sentences vs long documents (``TextClassifier.for_sentences()`` /
``.for_documents()``; keyword arguments override any setting):

=====================  =================================  ================================
setting                sentences (MR, SST, tweets)        documents (IMDB reviews)
=====================  =================================  ================================
maxlen                 60 tokens (all but 1 MR sentence)  400 tokens, keeping the end
vocabulary             words seen twice (min_count=2)     10,000 most frequent (num_words)
network                Bidirectional(GRU(64))             Bidirectional(GRU(128))
reading the outputs    the last token's (pooling="last")  max over all tokens (pooling="max")
embedding              128-d, dropout 0.4                 128-d, dropout 0.2
dropout before output  0.5                                0.2
training               batch 64, up to 20 epochs          batch 64, up to 10 epochs
selection              10% validation, patience 2         10% validation, patience 2
=====================  =================================  ================================

Short texts leave little signal per example, so they get the stronger regularisation; long documents
are cut (a review's verdict tends to come last) and their GRU's outputs at every token are max-pooled,
so the gradient reaches every part of the review and not only its end. The plain constructor's defaults
sit between the two (one direction, ``pooling="last"``), with ``maxlen=None`` choosing the 95th
percentile of the training texts' lengths. The documents preset is the best of the configurations in
``python -m benchmarks.imdb_documents``: on IMDB it scored 89.2% and 88.7% test accuracy (seeds 0 and 1),
against 88.2% for one direction with max pooling and the same vocabulary, and 87.7% for the earlier
preset (one direction, last output, 20,000 words). An epoch costs about twice one direction's.

Example::

    from grukit.data import read_polarity
    from grukit.tasks import TextClassifier

    texts, labels = read_polarity("../shared/data/rt-polarity")          # 10,662 sentences, 0/1
    classifier = TextClassifier.for_sentences(cell="gru", seed=0)
    classifier.fit(texts[:9000], labels[:9000])                          # tokenizer on these only
    classifier.evaluate(texts[9000:], labels[9000:]).scores              # accuracy, precision, ..., auc
    classifier.predict(["a gorgeous , witty film", "a dull mess"])       # array([1, 0])
    classifier.save("runs/mr"); TextClassifier.load("runs/mr")          # predicts identically
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grukit import layers
from grukit.data import WordTokenizer, load_word_vectors, pad_sequences
from grukit.errors import ConfigError, DataError
from grukit.models import Sequential
from grukit.tasks.base import ConfigRecord, Task, cell_class, recurrent_layer
from grukit.train import Adam, EarlyStopping, get_loss, get_metric
from grukit.train.loop import check_precision

MONITORS = ("val_loss", "val_accuracy")
POOLINGS = {"last": None, "max": layers.GlobalMaxPooling1D, "mean": layers.GlobalAveragePooling1D}
AUTO_MAXLEN_PERCENTILE = 95


@dataclass
class TextClassifierConfig(ConfigRecord):
    """Everything that defines a TextClassifier (saved in ``task.json``).

    Text: ``num_words`` (id space of the vocabulary, padding and OOV included; None keeps every
    word), ``min_count`` (rarer training words are OOV), ``lower``, ``strip_html``, ``punctuation``
    (keep marks as tokens), ``maxlen`` (tokens per text; None: the 95th percentile of the training
    texts), ``padding`` / ``truncating`` ("pre" or "post", as :func:`grukit.data.pad_sequences`).
    Network: ``cell`` ("gru", "lstm", "rnn", "mgu", "mingru"), ``units``, ``bidirectional``,
    ``pooling`` ("last": the recurrent layer's output at each text's last token; "max" / "mean":
    its outputs at every token, ``return_sequences=True``, reduced by ``GlobalMaxPooling1D`` /
    ``GlobalAveragePooling1D`` over the valid steps; configs saved without the key load as "last"),
    ``embedding_dim`` (None: 128, or the vectors file's size), ``embeddings`` (path of a GloVe /
    word2vec text file, or None for random), ``embeddings_trainable``, ``embedding_dropout``
    (after the embedding), ``dropout`` (before the output), ``recurrent_dropout``, ``cell_options``
    (extra arguments of the recurrent layer). Labels: ``classes`` (the label names in id order;
    None sorts the training labels). Training: ``epochs``, ``batch_size``, ``learning_rate`` (Adam),
    ``clipnorm`` (global gradient clipping, None for none), ``validation`` (fraction or count of
    the training texts held out, stratified, for early stopping; 0 for none), ``patience`` (epochs
    without improvement of ``monitor`` before stopping, restoring the best weights; None trains
    all ``epochs``), ``bucket_by_length`` (batches of similar lengths: faster, as little padding
    as possible), ``seed`` (weights, split, batch order, dropout), ``verbose``.
    ``precision``: "float32", or "mixed_bfloat16" to train the recurrent layer in grukit's bfloat16
    mode (``fit(precision=...)``; fast on CPUs with BF16 units); predictions run in float32.
    """

    cell: str = "gru"
    units: int = 64
    bidirectional: bool = False
    pooling: str = "last"
    embedding_dim: int | None = None
    embeddings: str | None = None
    embeddings_trainable: bool = True
    embedding_dropout: float = 0.2
    dropout: float = 0.3
    recurrent_dropout: float = 0.0
    num_words: int | None = 20_000
    min_count: int = 1
    lower: bool = True
    strip_html: bool = True
    punctuation: bool = True
    maxlen: int | None = None
    padding: str = "post"
    truncating: str = "pre"
    classes: list[Any] | None = None
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    clipnorm: float | None = 5.0
    validation: int | float = 0.1
    patience: int | None = 2
    monitor: str = "val_loss"
    bucket_by_length: bool = True
    seed: int = 0
    verbose: int = 0
    precision: str = "float32"
    cell_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_precision(self.precision, "TextClassifier")
        for name in ("units", "epochs", "batch_size", "min_count"):
            _check_int(name, getattr(self, name), 1)
        for name in ("embedding_dim", "maxlen"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if self.num_words is not None:
            _check_int("num_words", self.num_words, 3)
        if self.patience is not None:
            _check_int("patience", self.patience, 0)
        for name in ("embedding_dropout", "dropout", "recurrent_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"TextClassifier({name}={value!r}): expected a probability in [0, 1)")
        for name in ("padding", "truncating"):
            if getattr(self, name) not in ("pre", "post"):
                raise ConfigError(f"TextClassifier({name}={getattr(self, name)!r}): expected 'pre' or 'post'")
        if not isinstance(self.pooling, str) or self.pooling not in POOLINGS:
            raise ConfigError(f"TextClassifier(pooling={self.pooling!r}): expected one of {tuple(POOLINGS)} (the "
                              "recurrent layer's last output, or the max / mean of its outputs over the valid steps)")
        if self.monitor not in MONITORS:
            raise ConfigError(f"TextClassifier(monitor={self.monitor!r}): expected one of {MONITORS}")
        if not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            raise ConfigError(f"TextClassifier(learning_rate={self.learning_rate!r}): expected a number > 0")
        if self.clipnorm is not None and not (isinstance(self.clipnorm, (int, float)) and self.clipnorm > 0):
            raise ConfigError(f"TextClassifier(clipnorm={self.clipnorm!r}): expected a number > 0 or None")
        validation = self.validation
        if isinstance(validation, bool) or not isinstance(validation, (int, float)) or validation < 0 or (
                isinstance(validation, float) and validation >= 1):
            raise ConfigError(f"TextClassifier(validation={validation!r}): expected a fraction in [0, 1) or a "
                              "count >= 0 of training texts to hold out")
        if self.patience is not None and not validation:
            raise ConfigError(f"TextClassifier(patience={self.patience}) stops on the validation {self.monitor}; "
                              "pass validation= (a fraction or count of the training texts) too, or patience=None")
        cell_class(self.cell)
        if self.recurrent_dropout and not cell_class(self.cell).cell.recurrent_dropout:
            raise ConfigError(f"TextClassifier(cell={self.cell!r}, recurrent_dropout={self.recurrent_dropout}): "
                              "this cell has no recurrent weights to drop from; use dropout= instead")
        if self.classes is not None:
            self.classes = _label_list(self.classes, "TextClassifier(classes=...)")
            if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
                raise ConfigError(f"TextClassifier(classes={self.classes!r}): expected at least two distinct "
                                  "label names, in the order of their ids")



# Presets: see the module docstring's table.
SENTENCES = dict(units=64, bidirectional=True, embedding_dim=128, embedding_dropout=0.4, dropout=0.5,
                 num_words=None, min_count=2, maxlen=60, epochs=20, batch_size=64, validation=0.1, patience=2)
DOCUMENTS = dict(units=128, bidirectional=True, pooling="max", embedding_dim=128, embedding_dropout=0.2,
                 dropout=0.2, num_words=10_000, maxlen=400, truncating="pre", epochs=10, batch_size=64,
                 validation=0.1, patience=2)


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"TextClassifier({name}={value!r}): expected an int >= {low}")


def _label_value(value, where: str):
    """A label as a plain JSON-ready value: str, or int (numpy ints and whole floats included)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int)):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise DataError(f"{where} is {value!r} ({type(value).__name__}); labels must be strings or ints "
                    "(class names or ids); convert them, and drop examples without a label")


def _label_list(labels, what: str) -> list:
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
        raise DataError(f"{what} must be a list of labels (strings or ints), got {type(labels).__name__}")
    values = [_label_value(value, f"{what}[{index}]") for index, value in enumerate(labels)]
    kinds = {type(value) for value in values}
    if len(kinds) > 1:
        raise DataError(f"{what} mixes strings and ints ({values[[type(v) for v in values].index(str)]!r} and "
                        f"{values[[type(v) for v in values].index(int)]!r}); use one kind for every label")
    return values


def _text_list(texts, what: str) -> list[str]:
    if isinstance(texts, str):
        raise DataError(f"{what} must be a list of texts, got one string; wrap it: [text]")
    if not hasattr(texts, "__iter__"):
        raise DataError(f"{what} must be a list of texts (strings), got {type(texts).__name__}")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{what}[{index}] is {type(text).__name__}, expected str; convert or drop that item")
    return texts


def trimmed_forward(model: Sequential, xs: tuple) -> torch.Tensor:
    """Run ``model``'s layers on a batch of ids ``(N, maxlen)`` cut to the columns that hold a token in
    some row (padding is id 0 and out-of-vocabulary is 1, so only padding is 0). The recurrent layer
    skips padding anyway (``mask_zero``); cutting it saves the loop over steps where every row is
    padding: MR sentences average 22 tokens of a 60-token width, and length-bucketed batches are
    cut to their longest member."""
    ids = xs[0]
    used = (ids != 0).any(dim=0).nonzero()
    if len(used):
        ids = ids[:, int(used[0]):int(used[-1]) + 1]
    else:
        ids = ids[:, :1]
    output, mask = ids, None
    for layer in model.stack:
        output, mask = layer(output, mask)
    return output


def _label_ids(labels: list, classes: list, what: str) -> np.ndarray:
    """Class ids (positions in ``classes``) of ``labels``; a label outside ``classes`` is a DataError."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = Counter(label for label in labels if label not in index)
    if unknown:
        raise DataError(f"TextClassifier.{what}: label(s) {_counts_text(unknown)} (name: count) are not among the "
                        f"classes {'the model was fitted on' if what != 'fit' else 'given'}, {classes}; drop those "
                        "examples, or refit with them in the training data (or in classes=[...])")
    return np.array([index[label] for label in labels], dtype=np.int64)


def _counts_text(counts: Counter) -> str:
    return ", ".join(f"{label!r}: {count}" for label, count in sorted(counts.items(), key=lambda kv: str(kv[0])))


@dataclass
class TextEvaluation:
    """Scores of a TextClassifier on labelled texts.

    ``scores``: ``accuracy``, ``precision``, ``recall``, ``f1`` (binary: of the positive class
    ``classes[1]``; more classes: macro averages) and, for two classes, ``auc`` (ROC-AUC), all from
    :mod:`grukit.train.metrics`; ``majority``: the accuracy of always answering the most frequent
    training class (the baseline to beat); ``probabilities``: ``(N, k)``; ``predicted`` and
    ``actual``: ``(N,)`` class ids; ``classes``: the names of ids 0..k-1.
    """

    scores: dict[str, float]
    majority: float
    probabilities: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    classes: list[Any]
    model_name: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "examples": int(len(self.actual)), "classes": self.classes,
                "scores": self.scores, "majority": self.majority}

    def table(self) -> str:
        """A markdown table of the scores beside the majority-class baseline."""
        names = list(self.scores)
        lines = ["| classifier | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names),
                 f"| {self.model_name} | " + " | ".join(f"{self.scores[n]:.4f}" for n in names) + " |",
                 f"| majority class | {self.majority:.4f} |" + " — |" * (len(names) - 1)]
        return "\n".join(lines)


class TextClassifier(Task):
    """A recurrent text classifier: ``TextClassifier(cell="gru", units=64, bidirectional=False, ...)``
    (the arguments of :class:`TextClassifierConfig`); presets :meth:`for_sentences` and
    :meth:`for_documents`.

    Shapes: ``fit(texts, labels)`` takes N strings and N labels; the network reads ids
    ``(N, maxlen)`` and outputs ``(N, 1)`` probabilities of ``classes[1]`` for two classes or
    ``(N, k)`` for k; ``predict_proba`` returns ``(N, k)`` in both cases and ``predict`` ``(N,)``
    class names.

    Example::

        classifier = TextClassifier.for_sentences(cell="lstm", seed=1)
        classifier.fit(["great fun", "a bore", ...], ["pos", "neg", ...])
        classifier.predict(["what fun"])          # array(['pos'], dtype='<U3')
    """

    def __init__(self, cell: str = "gru", units: int = 64, bidirectional: bool = False, **options) -> None:
        self.config = TextClassifierConfig(cell=cell, units=units, bidirectional=bidirectional, **options)
        self.model: Sequential | None = None
        self.tokenizer: WordTokenizer | None = None
        self.classes: list[Any] | None = None
        self.maxlen: int | None = None
        self.coverage = None
        self.history = None
        self.train_counts: dict[str, int] | None = None

    @classmethod
    def for_sentences(cls, **overrides) -> "TextClassifier":
        """Settings for short texts (sentences, snippets, tweets; up to ~60 tokens): see the module docstring."""
        return cls(**{**SENTENCES, **overrides})

    @classmethod
    def for_documents(cls, **overrides) -> "TextClassifier":
        """Settings for long texts (reviews, articles; hundreds of tokens): see the module docstring."""
        return cls(**{**DOCUMENTS, **overrides})

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TextClassifier":
        return cls(**TextClassifierConfig.from_dict(config).to_dict())

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def loss(self) -> str:
        return "binary_crossentropy" if self.binary else "sparse_categorical_crossentropy"

    # -- data --------------------------------------------------------------------------------
    def _examples(self, texts, labels, what: str) -> tuple[list[str], list]:
        texts = _text_list(texts, f"TextClassifier.{what}: texts")
        labels = _label_list(labels, f"TextClassifier.{what}: labels")
        if len(texts) != len(labels):
            raise DataError(f"TextClassifier.{what}: texts and labels must have the same length (one label per text), "
                            f"but texts has {len(texts)} and labels {len(labels)}; check that they were not sliced "
                            "or filtered separately")
        if not texts:
            raise DataError(f"TextClassifier.{what}: the dataset is empty (0 texts); pass at least one labelled text "
                            "per class")
        return texts, labels

    def encode(self, texts) -> np.ndarray:
        """Raw strings -> the network's ids ``(N, maxlen)`` int64 (0 padding, 1 out of vocabulary)."""
        self.require_fitted("encode")
        texts = _text_list(texts, "TextClassifier: texts")
        return self._pad(self.tokenizer.texts_to_sequences(texts))

    def _pad(self, sequences: list[list[int]]) -> np.ndarray:
        config = self.config
        return pad_sequences(sequences, maxlen=self.maxlen, padding=config.padding, truncating=config.truncating)

    def _split(self, count: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stratified, seeded (train, validation) positions of the ``validation`` hold-out."""
        from sklearn.model_selection import train_test_split

        config = self.config
        positions = np.arange(count)
        if not config.validation:
            return positions, positions[:0]
        held = config.validation if isinstance(config.validation, float) else int(config.validation)
        held_count = math.ceil(held * count) if isinstance(held, float) else held
        present = np.unique(ids)
        classes, smallest = len(present), int(np.bincount(ids)[present].min())
        if held_count < classes or count - held_count < classes or smallest < 2:
            raise DataError(f"TextClassifier.fit: validation={config.validation} holds out {held_count} of {count} "
                            f"texts, but a stratified split needs at least one text of each of the {classes} classes "
                            f"on both sides (and two of each class; the rarest has {smallest}); pass more data or "
                            "validation=0, patience=None")
        train, held_out = train_test_split(positions, test_size=held, random_state=config.seed, stratify=ids)
        return np.sort(train), np.sort(held_out)

    # -- fit / predict / evaluate ------------------------------------------------------------
    def build_model(self, vocabulary: int, weights: np.ndarray | None = None) -> Sequential:
        """``Sequential([Input((maxlen,)), Embedding, Dropout, [Bidirectional](<Cell>(units)), [pooling], Dropout,
        Dense])``; with pooling "max" / "mean" the recurrent layer returns its whole sequence."""
        config = self.config
        dim = weights.shape[1] if weights is not None else (config.embedding_dim or 128)
        options = dict(config.cell_options)
        if config.recurrent_dropout:
            options["recurrent_dropout"] = config.recurrent_dropout
        pooling = POOLINGS[config.pooling]
        recurrent = recurrent_layer(config.cell, config.units, return_sequences=pooling is not None, **options)
        stack: list[Any] = [layers.Input((self.maxlen,)),
                            layers.Embedding(vocabulary, dim, mask_zero=True, weights=weights,
                                             trainable=config.embeddings_trainable or weights is None)]
        if config.embedding_dropout:
            stack.append(layers.Dropout(config.embedding_dropout))
        stack.append(layers.Bidirectional(recurrent) if config.bidirectional else recurrent)
        if pooling is not None:
            stack.append(pooling())
        if config.dropout:
            stack.append(layers.Dropout(config.dropout))
        stack.append(layers.Dense(1, activation="sigmoid") if self.binary else
                     layers.Dense(len(self.classes), activation="softmax"))
        return Sequential(stack, name="text_classifier")

    def fit(self, texts, labels, *, distributed: bool = False) -> "TextClassifier":
        """Fit the tokenizer (on the training part only), choose ``maxlen`` if it is None, and train the
        network on ``texts`` (N strings) and ``labels`` (N strings or ints). With ``validation`` > 0,
        that share of the texts (stratified, seeded) is held out and early stopping on ``monitor``
        picks the epoch. Returns self; ``self.history`` is the training History.
        ``distributed=True``: data-parallel over the processes of a torchrun launch (grukit.train.fit)."""
        config = self.config
        texts, labels = self._examples(texts, labels, "fit")
        counts = Counter(labels)
        classes = list(config.classes) if config.classes is not None else sorted(counts)
        ids = _label_ids(labels, classes, "fit")
        if len(counts) < 2:
            among = f" of classes={classes}" if config.classes is not None else ""
            raise DataError(f"TextClassifier.fit: the labels hold only one class ({_counts_text(counts)}){among}; a "
                            "classifier needs examples of at least two classes: add texts of the other class(es), "
                            "e.g. read both the .pos and .neg files")
        train, held_out = self._split(len(texts), ids)
        tokenizer = WordTokenizer(config.num_words, lower=config.lower, strip_html=config.strip_html,
                                  min_count=config.min_count, punctuation=config.punctuation)
        tokenizer.fit([texts[i] for i in train])
        weights = coverage = None
        if config.embeddings is not None:
            weights, coverage = load_word_vectors(config.embeddings, tokenizer, config.embedding_dim, seed=config.seed)
            if config.verbose:
                print(f"TextClassifier: {coverage}", flush=True)
        # the data passed every check: from here on this classifier describes the new fit
        sequences = tokenizer.texts_to_sequences(texts)
        maxlen = config.maxlen or max(1, math.ceil(np.percentile([len(sequences[i]) for i in train],
                                                                  AUTO_MAXLEN_PERCENTILE)))
        self.model, self.tokenizer, self.classes, self.coverage = None, tokenizer, classes, coverage
        self.maxlen = int(maxlen)
        self.train_counts = {str(name): int(counts.get(name, 0)) for name in classes}
        x = self._pad(sequences)
        y = ids.astype(np.float32)[:, None] if self.binary else ids
        options: dict[str, Any] = {}
        if len(held_out):
            options["validation_data"] = (x[held_out], y[held_out])
            if config.patience is not None:
                options["callbacks"] = [EarlyStopping(monitor=config.monitor, patience=config.patience,
                                                      restore_best_weights=True)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = self.build_model(len(self.tokenizer), weights)
        model.compile(optimizer=Adam(learning_rate=config.learning_rate, global_clipnorm=config.clipnorm),
                      loss=self.loss, metrics=["accuracy"])
        self.history = model.fit(x[train], y[train], epochs=config.epochs, batch_size=config.batch_size,
                                 seed=config.seed, verbose=config.verbose,
                                 bucket_by_length=config.bucket_by_length, forward=trimmed_forward,
                                 distributed=distributed, precision=config.precision, **options)
        model.eval()
        self.model = model
        return self

    def predict_proba(self, texts, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, k)`` for N raw strings (columns in the order of ``classes``)."""
        model = self.require_fitted("predict_proba")
        x = self.encode(texts)
        if not len(x):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        output = model.predict(x, batch_size=batch_size, forward=trimmed_forward)
        return np.concatenate([1.0 - output, output], axis=1) if self.binary else output

    def predict(self, texts, batch_size: int = 256) -> np.ndarray:
        """The most probable class name of each of N raw strings: ``(N,)``, in the labels' own kind
        (strings or ints). Two classes: ``classes[1]`` where its probability exceeds 0.5."""
        probabilities = self.predict_proba(texts, batch_size)
        return np.asarray(self.classes)[probabilities.argmax(axis=1)]

    def evaluate(self, texts, labels, batch_size: int = 256) -> TextEvaluation:
        """Accuracy, precision, recall, F1 (and ROC-AUC for two classes) on N labelled texts, beside
        the majority-class baseline. Labels unseen at fit raise DataError."""
        model = self.require_fitted("evaluate")
        texts, labels = self._examples(texts, labels, "evaluate")
        ids = _label_ids(labels, self.classes, "evaluate")
        output = model.predict(self.encode(texts), batch_size=batch_size, forward=trimmed_forward)
        loss = get_loss(self.loss)
        target = ids.astype(np.float32)[:, None] if self.binary else ids
        names = ["accuracy", "precision", "recall", "f1"] + (["auc"] if self.binary else [])
        scores = {name: get_metric(name, loss)(target, output) for name in names}
        probabilities = np.concatenate([1.0 - output, output], axis=1) if self.binary else output
        majority_class = max(range(len(self.classes)), key=lambda i: self.train_counts[str(self.classes[i])])
        name = f"{cell_class(self.config.cell).__name__}({self.config.units})"
        if self.config.bidirectional:
            name = f"Bidirectional({name})"
        if self.config.pooling != "last":
            name = f"{name} + {POOLINGS[self.config.pooling].__name__}"
        return TextEvaluation(scores, float(np.mean(ids == majority_class)), probabilities,
                              probabilities.argmax(axis=1), ids, list(self.classes), name)

    # -- saving (plumbing in Task) -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        coverage = dataclasses.asdict(self.coverage) if self.coverage is not None else None
        return {"classes": self.classes, "maxlen": self.maxlen, "tokenizer": self.tokenizer.to_dict(),
                "train_counts": self.train_counts, "coverage": coverage}

    def load_state(self, state: dict[str, Any]) -> None:
        self.classes = _label_list(state["classes"], "task.json: classes")
        self.maxlen = int(state["maxlen"])
        self.tokenizer = WordTokenizer.from_dict(state["tokenizer"], source="task.json: tokenizer")
        self.train_counts = dict(state["train_counts"])
        self.coverage = state.get("coverage")


__all__ = ["TextClassifier", "TextClassifierConfig", "TextEvaluation"]
