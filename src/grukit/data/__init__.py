"""grukit.data: text in, padded id arrays out.

- ``WordTokenizer``: word-level tokenizer and frequency-ranked vocabulary (HuggingFace
  ``tokenizers``), padding id 0, out-of-vocabulary id 1, saved as JSON beside a model.
- ``pad_sequences``: Keras's padding and truncation, exactly.
- ``load_word_vectors``: GloVe / word2vec text vectors mapped onto a vocabulary, with a coverage report.
- ``read_imdb``, ``read_polarity``, ``read_table``: labelled texts from aclImdb (tree, tarball, CSV),
  the sentence-polarity dataset and any CSV / TSV / JSONL table.
- ``fetch``: cached, checksummed, resumable download of public archives (``fetch("imdb")``).
- ``read_ts``: UEA/UCR ``.ts`` time-series classification files, variable-length multivariate.
- ``read_piano_rolls``, ``frame_nll``: polyphonic music as binary piano rolls and the NLL per time step.
- ``CharVocabulary``, ``read_corpus``, ``char_chunks``: character-level language-model data.

This package depends on nothing in grukit but ``grukit.errors``.
"""

from grukit.data.embeddings import EmbeddingCoverage, load_word_vectors
from grukit.data.fetch import KNOWN_ARCHIVES, default_cache_dir, fetch
from grukit.data.readers import read_imdb, read_polarity, read_table
from grukit.data.music import frame_nll, piano_roll, read_piano_rolls
from grukit.data.sequences import pad_sequences
from grukit.data.text_corpus import CharVocabulary, char_chunks, read_corpus
from grukit.data.tokenizer import OOV_ID, PAD_ID, WordTokenizer
from grukit.data.ts_format import TimeSeriesDataset, read_ts

__all__ = [
    "WordTokenizer", "PAD_ID", "OOV_ID", "pad_sequences", "load_word_vectors", "EmbeddingCoverage",
    "read_imdb", "read_polarity", "read_table", "fetch", "KNOWN_ARCHIVES", "default_cache_dir",
    "read_ts", "TimeSeriesDataset", "read_piano_rolls", "piano_roll", "frame_nll",
    "CharVocabulary", "read_corpus", "char_chunks",
]
