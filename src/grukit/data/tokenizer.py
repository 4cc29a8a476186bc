"""Word-level tokenizer and vocabulary, built on HuggingFace `tokenizers` (WordLevel model).

What a token is (the whole pipeline, in order):

1. Normalize: every HTML line break ``<br />``, ``<br/>``, ``<br>`` becomes a space (aclImdb
   reviews are full of them; ``strip_html=False`` keeps them); the typographic apostrophe ``’``
   becomes ``'``; lower-case (``lower=False`` keeps case). No Unicode normalization beyond that
   (NFKC would add markedly to the encoding time for no gain on these corpora).
2. Split on whitespace, then split each piece into *words* and *punctuation*:

   - a word is a run of letters, digits or underscores (Unicode-aware: ``café``, ``ça``, ``21st``),
     and an apostrophe *between* two such runs stays inside it: ``don't``, ``it's``,
     ``rock'n'roll`` are single tokens;
   - every other character is a token of its own: ``"!!!"`` is three ``"!"`` tokens, ``"well-made"``
     is ``well - made``, ``"3.5/10"`` is ``3 . 5 / 10``, ``"students'"`` is ``students '``.

   So ``"I DON'T like it!!!<br />Well-made."`` becomes
   ``i don't like it ! ! ! well - made .``.

Ids follow Keras's ``Tokenizer(num_words=..., oov_token=...)`` convention: 0 is padding (never a
word), 1 is the out-of-vocabulary id, and words get 2, 3, ... by falling frequency in the texts
given to ``fit``; words of equal frequency are ordered by their Unicode code points, so the same
texts always give the same ids whatever their order. ``num_words`` caps the *id space*, padding and
OOV included, exactly like Keras: ``num_words=10_000`` keeps the 9,998 most frequent words, every
id is below 10,000, and ``Embedding(10_000, dim)`` fits it.

``fit`` and ``texts_to_sequences`` run in the library's Rust code on all cores. A process that
forks after using them (a DataLoader with workers) gets a warning from ``tokenizers`` and runs
single-threaded in the children; set ``TOKENIZERS_PARALLELISM=false`` to silence it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from grukit.data._files import atomic_write_text, read_json
from grukit.errors import ConfigError, DataError

PAD_TOKEN = "<pad>"
OOV_TOKEN = "<oov>"
PAD_ID = 0
OOV_ID = 1
FORMAT = "grukit.WordTokenizer"
FORMAT_VERSION = 1
ENCODE_BATCH = 2048

# A word: letters/digits/underscore, with inner apostrophes; anything else non-space: one character.
WORD_ONLY_PATTERN = r"\w+(?:'\w+)*"
WORD_PATTERN = WORD_ONLY_PATTERN + r"|[^\w\s]"
HTML_BREAK_PATTERN = r"<br\s*/?>"


def _check_texts(texts, argument: str) -> list[str]:
    if isinstance(texts, str):
        raise ConfigError(f"WordTokenizer: {argument} must be a list of texts, got one string; wrap it: [text]")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"WordTokenizer: {argument}[{index}] is {type(text).__name__}, expected str; "
                            f"convert or drop that item")
    return texts


class WordTokenizer:
    """Word-level tokenizer with a frequency-ranked, size-capped vocabulary.

    Args:
        num_words: size of the id space (padding 0 and OOV 1 included), like Keras's
            ``Tokenizer(num_words=...)``; ``None`` keeps every word seen by ``fit``.
        lower: lower-case the text first.
        strip_html: turn ``<br />`` line breaks into spaces.
        min_count: words seen fewer times than this in ``fit`` are out of vocabulary.
        punctuation: keep punctuation marks as tokens; ``False`` drops them (``well - made`` becomes
            ``well made``), as Keras's ``Tokenizer`` and ``TextVectorization`` do.

    Example::

        tokenizer = WordTokenizer(num_words=10_000).fit(train_texts)
        ids = tokenizer.texts_to_sequences(["I don't like it!"])   # one list of 5 ids
        x = pad_sequences(ids, maxlen=200)                          # (1, 200) int64
        tokenizer.save("run/tokenizer.json")
    """

    def __init__(self, num_words: int | None = None, *, lower: bool = True, strip_html: bool = True,
                 min_count: int = 1, punctuation: bool = True):
        if num_words is not None and (isinstance(num_words, bool) or not isinstance(num_words, int) or num_words < 3):
            raise ConfigError(f"WordTokenizer: num_words must be None or an int >= 3 (padding, OOV and at least one "
                              f"word), got {num_words!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ConfigError(f"WordTokenizer: min_count must be an int >= 1, got {min_count!r}")
        self.num_words = num_words
        self.lower = bool(lower)
        self.strip_html = bool(strip_html)
        self.min_count = min_count
        self.punctuation = bool(punctuation)
        self._tokenizer = self._build()
        self._words: list[str] | None = None

    # -- pipeline --------------------------------------------------------------------------------
    def _build(self, vocab: dict[str, int] | None = None) -> Tokenizer:
        model = models.WordLevel(vocab or {PAD_TOKEN: PAD_ID, OOV_TOKEN: OOV_ID}, unk_token=OOV_TOKEN)
        tokenizer = Tokenizer(model)
        steps = []
        if self.strip_html:
            steps.append(normalizers.Replace(Regex(HTML_BREAK_PATTERN), " "))
        steps.append(normalizers.Replace("\u2019", "'"))
        if self.lower:
            steps.append(normalizers.Lowercase())
        tokenizer.normalizer = normalizers.Sequence(steps)
        # invert=True: the pattern matches the tokens, and what lies between them (whitespace) is dropped.
        # Without punctuation, the marks fall between the matches and are dropped with the whitespace.
        pattern = WORD_PATTERN if self.punctuation else WORD_ONLY_PATTERN
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
        return tokenizer

    def tokenize(self, text: str) -> list[str]:
        """The tokens of one text, before the vocabulary: what ``fit`` counts."""
        normalized = self._tokenizer.normalizer.normalize_str(text)
        return [piece for piece, _ in self._tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]

    # -- vocabulary ------------------------------------------------------------------------------
    def fit(self, texts: Iterable[str]) -> "WordTokenizer":
        """Build the vocabulary from ``texts`` (replacing any earlier one); returns self."""
        texts = _check_texts(texts, "texts")
        trainer = trainers.WordLevelTrainer(
            vocab_size=self.num_words if self.num_words is not None else 2**31 - 1,
            min_frequency=self.min_count, special_tokens=[PAD_TOKEN, OOV_TOKEN], show_progress=False)
        tokenizer = self._build()
        tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
        vocab = tokenizer.get_vocab(with_added_tokens=False)
        if len(vocab) <= 2:
            raise DataError(f"WordTokenizer.fit: the {len(texts)} texts contain no word seen at least "
                            f"min_count={self.min_count} times; pass non-empty texts or lower min_count")
        self._tokenizer = tokenizer
        self._words = None
        return self

    @property
    def fitted(self) -> bool:
        return self._tokenizer.get_vocab_size(with_added_tokens=False) > 2

    def _require_fitted(self, what: str) -> None:
        if not self.fitted:
            raise ConfigError(f"WordTokenizer.{what}: the vocabulary is empty; call fit(texts) or load(path) first")

    @property
    def words(self) -> list[str]:
        """Every token by id: ``words[0] == "<pad>"``, ``words[1] == "<oov>"``, then by falling frequency."""
        if self._words is None:
            vocab = self._tokenizer.get_vocab(with_added_tokens=False)
            self._words = [word for word, _ in sorted(vocab.items(), key=lambda item: item[1])]
        return self._words

    @property
    def word_index(self) -> dict[str, int]:
        """word -> id for every word in the vocabulary (padding and OOV included)."""
        return self._tokenizer.get_vocab(with_added_tokens=False)

    def __len__(self) -> int:
        """The size of the id space: every id produced is below it (the ``input_dim`` of an Embedding)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __contains__(self, word: str) -> bool:
        return self._tokenizer.token_to_id(word) is not None

    # -- encoding --------------------------------------------------------------------------------
    def texts_to_sequences(self, texts: Iterable[str]) -> list[list[int]]:
        """The ids of each text (words not in the vocabulary give 1), encoded in parallel by the library."""
        self._require_fitted("texts_to_sequences")
        texts = _check_texts(texts, "texts")
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)
        # Batches of a few thousand: each Encoding also holds its token strings and offsets, and
        # keeping 25,000 of them alive at once doubles the time (measured on aclImdb).
        sequences = []
        for start in range(0, len(texts), ENCODE_BATCH):
            sequences += [encoding.ids for encoding in encode(texts[start:start + ENCODE_BATCH],
                                                              add_special_tokens=False)]
        return sequences

    def sequences_to_texts(self, sequences: Iterable[Sequence[int]]) -> list[str]:
        """Tokens joined by spaces; padding (0) is dropped and OOV shows as ``<oov>``."""
        self._require_fitted("sequences_to_texts")
        words, size = self.words, len(self.words)
        texts = []
        for index, sequence in enumerate(sequences):
            ids = [int(i) for i in sequence]
            bad = [i for i in ids if not 0 <= i < size]
            if bad:
                raise DataError(f"WordTokenizer.sequences_to_texts: sequence {index} has id {bad[0]}, outside "
                                f"[0, {size}); the ids come from another vocabulary")
            texts.append(" ".join(words[i] for i in ids if i != PAD_ID))
        return texts

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "num_words": self.num_words, "lower": self.lower,
                "strip_html": self.strip_html, "min_count": self.min_count, "punctuation": self.punctuation,
                "words": self.words}

    @classmethod
    def from_dict(cls, data: dict, source: str = "WordTokenizer.from_dict") -> "WordTokenizer":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{source}: not a grukit WordTokenizer file (expected \"format\": \"{FORMAT}\"); "
                            f"save one with WordTokenizer.save(path)")
        if data.get("version") != FORMAT_VERSION:
            raise DataError(f"{source}: tokenizer format version {data.get('version')!r}, this grukit reads "
                            f"version {FORMAT_VERSION}; upgrade grukit or re-save the tokenizer")
        words = data.get("words")
        if (not isinstance(words, list) or words[:2] != [PAD_TOKEN, OOV_TOKEN]
                or not all(isinstance(w, str) for w in words) or len(set(words)) != len(words)):
            raise DataError(f"{source}: \"words\" must be a list of distinct strings starting with "
                            f"{PAD_TOKEN!r}, {OOV_TOKEN!r}; the file is damaged, re-save the tokenizer")
        try:
            tokenizer = cls(data.get("num_words"), lower=data.get("lower", True),
                            strip_html=data.get("strip_html", True), min_count=data.get("min_count", 1),
                            punctuation=data.get("punctuation", True))
        except ConfigError as error:
            raise DataError(f"{source}: {error}") from error
        tokenizer._tokenizer = tokenizer._build({word: index for index, word in enumerate(words)})
        return tokenizer

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary and settings as JSON, atomically (temporary file, then rename)."""
        self._require_fitted("save")
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=0))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordTokenizer":
        return cls.from_dict(read_json(path, "the tokenizer"), source=str(path))

    def __repr__(self) -> str:
        size = len(self) if self.fitted else 0
        return (f"WordTokenizer(num_words={self.num_words}, lower={self.lower}, strip_html={self.strip_html}, "
                f"min_count={self.min_count}, punctuation={self.punctuation}, vocabulary={size})")


__all__ = ["WordTokenizer", "PAD_ID", "OOV_ID", "PAD_TOKEN", "OOV_TOKEN"]
