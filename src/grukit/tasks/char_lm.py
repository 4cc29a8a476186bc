"""A character-level language model: learn any UTF-8 text, measure it in bits per character, and
generate text one character at a time (the "generation / chatbot" use case).

The model is the tutorial's::

    Sequential([Input((L,)), Embedding(V, embedding_dim), GRU(units, return_sequences=True),
                TimeDistributed(Dense(V))])

trained with sparse categorical cross-entropy on the logits (``from_logits=True``): chunks of ``L =
sequence_length`` character ids ``(N, L)`` predict the same chunks shifted by one character ``(N, L)``
(:func:`grukit.data.char_chunks`). ``cell=`` picks "gru", "lstm", "rnn", "mgu" or "mingru".

Characters come from :class:`grukit.data.CharVocabulary` built on the training text, in code-point
order; ``unknown="\\ufffd"`` (default) is added to it and stands for characters the training text
lacks (in held-out text and prompts; pass ``unknown=None`` to make those an error instead).

**Evaluation** (``evaluate(text)``) carries the recurrent state across the whole text: every character
after the first is predicted from all the characters before it (the first has no prediction). It
reports the mean cross-entropy per character in nats, bits per character (nats / ln 2) and
perplexity (e^nats), beside two baselines counted exactly on the training text with additive
smoothing (``smoothing=0.5``, the Jeffreys-Perks estimate, over the vocabulary):
unigram ``p(c) = (n(c) + a) / (N + a V)`` and bigram ``p(c | b) = (n(b c) + a) / (n(b .) + a V)``.

**Generation** (``generate(prompt, length, temperature, top_k, seed)``) runs the recurrent layer's
streaming path (``layer.streamer()``: one compiled kernel call per character, the state kept
inside; ``layer.step`` under ``torch.no_grad()`` for configurations the streamer does not cover), so
generating n characters costs O(n), not the O(n^2) of re-running the growing text. Each step samples
from ``softmax(logits / temperature)``, restricted to the ``top_k`` most likely characters if given;
``top_k=1`` is greedy (argmax) decoding and small temperatures approach it. The same ``seed`` gives
the same text.

Example::

    from grukit.data import read_corpus
    from grukit.tasks import CharLM

    lm = CharLM(sequence_length=100, units=256, epochs=5).fit(read_corpus("train.txt"))
    print(lm.evaluate(read_corpus("valid.txt")).table())      # bits/char beside unigram and bigram
    print(lm.generate("The movie was ", length=200, temperature=0.8, seed=0))
    lm.save("runs/charlm"); CharLM.load("runs/charlm")
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grukit import layers
from grukit.data.text_corpus import CharVocabulary, char_chunks, read_corpus
from grukit.data.timeseries import part_size
from grukit.errors import ConfigError, DataError
from grukit.models import Sequential
from grukit.tasks.base import ConfigRecord, Task, cell_class, check_seed, recurrent_layer
from grukit.train import Adam
from grukit.train.loop import check_precision
from grukit.train.losses import SparseCategoricalCrossentropy

_BLOCK = 4096  # characters per forward call when scoring a long text (the state is carried between blocks)


@dataclass
class CharLMConfig(ConfigRecord):
    """Everything that defines a CharLM (saved in ``task.json``).

    ``sequence_length``: characters per training chunk (L); ``stride``: step between chunk starts
    (default L: consecutive chunks); ``embedding_dim``, ``units``, ``cell``: the model;
    ``min_count``: characters rarer than this in the training text become ``unknown``; ``unknown``:
    the stand-in character (None: unknown characters raise DataError); ``validation``: the last part of
    the training text (count of characters or fraction) held out for the validation loss; ``epochs``,
    ``batch_size``, ``learning_rate`` (Adam); ``smoothing``: the baselines' additive smoothing;
    ``seed``; ``cell_options``: extra arguments of the recurrent layer.
    ``precision``: "float32", or "mixed_bfloat16" to train the recurrent layer in grukit's bfloat16
    mode (``fit(precision=...)``; fast on CPUs with BF16 units); predictions run in float32.
    """

    sequence_length: int = 100
    stride: int | None = None
    embedding_dim: int = 64
    units: int = 256
    cell: str = "gru"
    min_count: int = 1
    unknown: str | None = "\ufffd"
    validation: int | float = 0.05
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    smoothing: float = 0.5
    seed: int = 0
    verbose: int = 0
    precision: str = "float32"
    cell_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_precision(self.precision, "CharLM")
        for name in ("sequence_length", "embedding_dim", "units", "min_count", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"CharLM({name}={value!r}): expected an int >= 1")
        if self.stride is not None and (isinstance(self.stride, bool) or not isinstance(self.stride, int)
                                        or self.stride < 1):
            raise ConfigError(f"CharLM(stride={self.stride!r}): expected an int >= 1 or None (= sequence_length)")
        if not (math.isfinite(self.smoothing) and self.smoothing > 0):
            raise ConfigError(f"CharLM(smoothing={self.smoothing!r}): expected a number > 0 (additive smoothing "
                              "of the unigram and bigram baselines)")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"CharLM(learning_rate={self.learning_rate!r}): expected a number > 0")
        part_size(self.validation, 100, "validation")
        cell_class(self.cell)



class CharNgram:
    """Unigram (``order=1``) or bigram (``order=2``) character model counted exactly from ids, with
    additive smoothing ``alpha`` over ``vocabulary_size`` characters:
    ``p(c) = (n(c) + a) / (N + a V)``, ``p(c | b) = (n(b c) + a) / (n(b .) + a V)``.

    Example::

        unigram = CharNgram(1).fit(np.array([0, 0, 1]), vocabulary_size=2)
        unigram.nats(np.array([1, 0]))      # -log p(0) = -log((2 + 0.5) / (3 + 1))
    """

    def __init__(self, order: int = 1, alpha: float = 0.5) -> None:
        if order not in (1, 2):
            raise ConfigError(f"CharNgram(order={order!r}): expected 1 (unigram) or 2 (bigram)")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"CharNgram(alpha={alpha!r}): expected a number > 0")
        self.order, self.alpha = order, float(alpha)
        self.counts: np.ndarray | None = None   # (V,) or (V, V): counts[b, c] = n(b c)

    def fit(self, ids, vocabulary_size: int) -> "CharNgram":
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) < self.order:
            raise DataError(f"CharNgram(order={self.order}).fit: {len(ids)} characters are too few")
        if self.order == 1:
            self.counts = np.bincount(ids, minlength=vocabulary_size).astype(np.float64)
        else:
            pairs = ids[:-1] * vocabulary_size + ids[1:]
            self.counts = np.bincount(pairs, minlength=vocabulary_size ** 2).astype(np.float64).reshape(
                vocabulary_size, vocabulary_size)
        return self

    def nats(self, ids) -> float:
        """Mean ``-log p`` of the characters ``ids[1:]`` (the positions a language model predicts)."""
        if self.counts is None:
            raise ConfigError("CharNgram.nats() before fit(); fit it on the training ids first")
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) < 2:
            raise DataError(f"CharNgram.nats: {len(ids)} character(s); at least 2 are needed (the first has no "
                            "prediction)")
        size = self.counts.shape[-1]
        if self.order == 1:
            log_p = np.log(self.counts[ids[1:]] + self.alpha) - math.log(self.counts.sum() + self.alpha * size)
        else:
            before = self.counts.sum(axis=1)
            log_p = (np.log(self.counts[ids[:-1], ids[1:]] + self.alpha)
                     - np.log(before[ids[:-1]] + self.alpha * size))
        return float(-log_p.mean())

    def to_dict(self) -> dict[str, Any]:
        """Sparse counts: ``[[index, count], ...]`` over the flattened count array."""
        flat = self.counts.reshape(-1)
        nonzero = np.flatnonzero(flat)
        return {"order": self.order, "alpha": self.alpha, "size": int(self.counts.shape[-1]),
                "counts": [[int(i), int(flat[i])] for i in nonzero]}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "CharNgram":
        model = cls(state["order"], state["alpha"])
        size = state["size"]
        flat = np.zeros(size ** model.order, dtype=np.float64)
        for index, count in state["counts"]:
            flat[index] = count
        model.counts = flat.reshape((size,) * model.order)
        return model


@dataclass
class CharLMEvaluation:
    """Cross-entropy per character of the model and the baselines on the same text.

    ``scores``: ``{"model" | "unigram" | "bigram": {"nats", "bits_per_character", "perplexity"}}``;
    ``characters``: how many characters were predicted (the text's length minus 1).
    """

    scores: dict[str, dict[str, float]]
    characters: int
    model_name: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "characters": self.characters, "scores": self.scores}

    def table(self) -> str:
        """A markdown table: one row per model, nats/char, bits/char, perplexity."""
        names = {"model": self.model_name, "unigram": "unigram (counts)", "bigram": "bigram (counts)"}
        lines = ["| model | nats/char | bits/char | perplexity |", "|---|---:|---:|---:|"]
        for key, score in self.scores.items():
            lines.append(f"| {names.get(key, key)} | {score['nats']:.4f} | {score['bits_per_character']:.4f} | "
                         f"{score['perplexity']:.3f} |")
        return "\n".join(lines)


def _entropy_scores(nats: float) -> dict[str, float]:
    return {"nats": nats, "bits_per_character": nats / math.log(2), "perplexity": math.exp(nats)}


def _as_text(data, what: str) -> str:
    """A str is the text itself; a path (os.PathLike, e.g. pathlib.Path) is read as UTF-8."""
    if isinstance(data, os.PathLike):
        return read_corpus(data)
    if not isinstance(data, str):
        raise DataError(f"CharLM.{what}: expected the text (str) or a file path (pathlib.Path), got "
                        f"{type(data).__name__}")
    return data


class CharLM(Task):
    """A character-level language model: ``CharLM(sequence_length=100, units=256, cell="gru", ...)``
    (the arguments of :class:`CharLMConfig`; the module docstring has the details).

    Shapes: ``fit``/``evaluate``/``predict`` take a text (str, or a ``pathlib.Path`` to a UTF-8 file;
    a str is always the text itself, never a file name); the network reads ids ``(N, L)`` and returns
    logits ``(N, L, V)``; ``predict(text)`` returns ``(len(text), V)`` probabilities, row i the
    distribution of the character after ``text[:i + 1]``; ``generate`` returns a str of ``length``
    characters (the continuation, without the prompt).

    Example::

        lm = CharLM(sequence_length=16, units=32, epochs=50).fit("hello world! " * 40)
        lm.generate("hel", length=20, top_k=1)       # 'lo world! hello world' (greedy)
    """

    def __init__(self, sequence_length: int = 100, units: int = 256, cell: str = "gru", **options) -> None:
        self.config = CharLMConfig(sequence_length=sequence_length, units=units, cell=cell, **options)
        self.model: Sequential | None = None
        self.vocabulary: CharVocabulary | None = None
        self.unigram: CharNgram | None = None
        self.bigram: CharNgram | None = None
        self.history = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CharLM":
        return cls(**CharLMConfig.from_dict(config).to_dict())

    def build_model(self, vocabulary_size: int) -> Sequential:
        """``[Input((L,)), Embedding(V, embedding_dim), <Cell>(units, return_sequences=True),
        TimeDistributed(Dense(V))]``, the last layer's outputs being logits."""
        config = self.config
        return Sequential([layers.Input((config.sequence_length,)),
                           layers.Embedding(vocabulary_size, config.embedding_dim),
                           recurrent_layer(config.cell, config.units, return_sequences=True, **config.cell_options),
                           layers.TimeDistributed(layers.Dense(vocabulary_size))])

    def _encode(self, text: str, what: str) -> np.ndarray:
        return self.vocabulary.encode(text, source=f"CharLM.{what}")

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, text, *, distributed: bool = False) -> "CharLM":
        """Build the vocabulary from ``text`` (str, or a pathlib.Path of a UTF-8 file), train on all but its
        last ``validation`` part (the validation loss is logged on that) and count the unigram and bigram
        baselines on the same training part. Returns self; ``self.history`` is the History.
        ``distributed=True``: data-parallel over the processes of a torchrun launch (grukit.train.fit)."""
        config = self.config
        text = _as_text(text, "fit")
        held = part_size(config.validation, len(text), "validation")
        train_text = text[:len(text) - held]
        length = config.sequence_length
        if len(train_text) < length + 1:
            raise DataError(f"CharLM.fit: the training text has {len(train_text)} characters (of {len(text)}, the "
                            f"last {held} held out for validation), but one chunk needs sequence_length + 1 = "
                            f"{length + 1}; pass more text, a smaller sequence_length or validation=0")
        self.vocabulary = CharVocabulary.from_text(train_text, min_count=config.min_count, unknown=config.unknown)
        ids = self._encode(train_text, "fit")
        x, y = char_chunks(ids, length, config.stride)
        fit_options: dict[str, Any] = {}
        if held >= length + 1:
            fit_options["validation_data"] = char_chunks(self._encode(text[len(train_text):], "fit"), length)
        size = len(self.vocabulary)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = self.build_model(size)
        model.compile(optimizer=Adam(learning_rate=config.learning_rate),
                      loss=SparseCategoricalCrossentropy(from_logits=True))
        self.history = model.fit(x, y, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                                 verbose=config.verbose, distributed=distributed, precision=config.precision,
                                 **fit_options)
        model.eval()
        self.model = model
        self.unigram = CharNgram(1, config.smoothing).fit(ids, size)
        self.bigram = CharNgram(2, config.smoothing).fit(ids, size)
        return self

    # -- scoring -------------------------------------------------------------------------------
    def _parts(self):
        model = self.model
        embedding, recurrent, head = model.layers
        return embedding, recurrent.recurrent, head

    def _logits(self, ids: np.ndarray) -> np.ndarray:
        """``(L, V)`` float64 logits after each of the ids, the state carried over the whole sequence."""
        embedding, recurrent, head = self._parts()
        outputs, state = [], None
        with torch.no_grad():
            for begin in range(0, len(ids), _BLOCK):
                block = torch.from_numpy(np.ascontiguousarray(ids[begin:begin + _BLOCK]))[None]
                vectors, _ = embedding(block)
                sequence, state = recurrent(vectors, state)
                logits, _ = head(sequence)
                outputs.append(logits[0].double().numpy())
        return np.concatenate(outputs)

    def predict(self, text) -> np.ndarray:
        """``(len(text), V)`` probabilities: row i is the distribution of the character after ``text[:i + 1]``
        (columns in ``self.vocabulary.chars`` order)."""
        self.require_fitted("predict")
        text = _as_text(text, "predict")
        if not text:
            raise DataError("CharLM.predict: the text is empty; pass at least one character")
        logits = self._logits(self._encode(text, "predict"))
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def evaluate(self, text) -> CharLMEvaluation:
        """Cross-entropy per character (nats, bits, perplexity) of the model, the unigram and the bigram on
        ``text`` (str, or a pathlib.Path of a UTF-8 file): every character after the first, predicted from all
        the characters before it. Returns a :class:`CharLMEvaluation`."""
        self.require_fitted("evaluate")
        text = _as_text(text, "evaluate")
        if len(text) < 2:
            raise DataError(f"CharLM.evaluate: the text has {len(text)} character(s); at least 2 are needed (the "
                            "first has no prediction)")
        ids = self._encode(text, "evaluate")
        logits = self._logits(ids[:-1])
        peak = logits.max(axis=1)
        log_norm = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        nats = float((log_norm - logits[np.arange(len(logits)), ids[1:]]).mean())
        scores = {"model": _entropy_scores(nats), "unigram": _entropy_scores(self.unigram.nats(ids)),
                  "bigram": _entropy_scores(self.bigram.nats(ids))}
        name = f"{cell_class(self.config.cell).__name__}({self.config.units})"
        return CharLMEvaluation(scores, len(ids) - 1, name)

    # -- generation ----------------------------------------------------------------------------
    def streaming_step(self):
        """``step(vector) -> output``: the recurrent layer advanced by one frame ``(embedding_dim,)`` with the
        state kept inside, a fresh state per call of this method. The layer's Streamer (compiled kernels,
        numpy in and out) where it covers the configuration, else ``layer.step`` under no_grad."""
        _, recurrent, _ = self._parts()
        try:
            return recurrent.streamer().step
        except ConfigError:  # e.g. non-default activations: the streamer runs the fused kernels only
            state = None

            def step(vector: np.ndarray) -> np.ndarray:
                nonlocal state
                with torch.no_grad():
                    output, state = recurrent.step(torch.from_numpy(vector), state)
                return output.numpy()
            return step

    def generate(self, prompt: str, length: int = 200, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> str:
        """Sample ``length`` characters after ``prompt`` (a non-empty str), one at a time from
        ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely characters (None: all).
        ``top_k=1`` is greedy decoding; ``seed`` (int) makes the text reproducible, None draws fresh entropy.
        O(len(prompt) + length): each character is one streaming step of the recurrent layer.

        Example::

            lm.generate("The movie ", length=100, temperature=0.7, top_k=20, seed=1)
        """
        self.require_fitted("generate")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ConfigError(f"CharLM.generate(length={length!r}): expected an int >= 0 (characters to generate)")
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating))
                or not math.isfinite(temperature) or temperature <= 0):
            raise ConfigError(f"CharLM.generate(temperature={temperature!r}): expected a finite number > 0 (1 samples "
                              "the model's distribution, smaller is more conservative); for greedy decoding pass "
                              "top_k=1")
        size = len(self.vocabulary)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                                  or not 1 <= top_k <= size):
            raise ConfigError(f"CharLM.generate(top_k={top_k!r}): expected None or an int in [1, {size}] (the "
                              "vocabulary's size)")
        if not isinstance(prompt, str) or not prompt:
            raise ConfigError(f"CharLM.generate(prompt={prompt!r}): expected a non-empty str; the model predicts "
                              "the next character from at least one character (start with e.g. '\\n')")
        embedding, _, head = self._parts()
        vectors = embedding.embedding.weight.detach().numpy()                 # (V, E)
        weight = head.layer.linear.weight.detach().numpy().astype(np.float64)  # (V, H)
        bias = head.layer.linear.bias.detach().numpy().astype(np.float64)
        step = self.streaming_step()
        rng = np.random.default_rng(check_seed(seed, "CharLM.generate", allow_none=True))
        output = None
        for index in self._encode(prompt, "generate").tolist():
            output = step(vectors[index])
        chosen = []
        for position in range(length):
            logits = weight @ output + bias
            index = _sample(logits, temperature, top_k, rng)
            chosen.append(index)
            if position + 1 < length:
                output = step(vectors[index])
        return self.vocabulary.decode(np.asarray(chosen, dtype=np.int64))

    # -- saving (plumbing in Task) -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary.to_dict(), "unigram": self.unigram.to_dict(),
                "bigram": self.bigram.to_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.vocabulary = CharVocabulary.from_dict(state["vocabulary"], source="task.json")
        self.unigram = CharNgram.from_dict(state["unigram"])
        self.bigram = CharNgram.from_dict(state["bigram"])


def _sample(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> int:
    """One id from ``softmax(logits / temperature)`` over the ``top_k`` largest logits; always one draw
    from ``rng`` so that the stream of draws does not depend on the settings."""
    draw = rng.random()
    if top_k == 1:
        return int(np.argmax(logits))
    scaled = logits / temperature
    if top_k is not None:
        cutoff = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= cutoff, scaled, -np.inf)
    scaled = scaled - scaled.max()
    cumulative = np.cumsum(np.exp(scaled))
    return int(min(np.searchsorted(cumulative, draw * cumulative[-1], side="right"), len(logits) - 1))


__all__ = ["CharLM", "CharLMConfig", "CharLMEvaluation", "CharNgram"]
