"""Readers for labelled text: aclImdb (folder tree, original tarball, CSV shards or a CSV file),
the sentence-polarity dataset (MR), and any CSV / TSV / JSONL table.

Every reader returns plain lists, ``texts`` (str) and ``labels`` (int), decodes strictly (a bad
byte raises ``DataError`` with its offset and a suggested ``encoding=``), and raises ``DataError``
for an empty dataset or, with ``require_classes=k``, for one with fewer than k classes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from grukit.data._files import check_labelled, decode, read_text
from grukit.errors import ConfigError, DataError

IMDB_SPLITS = ("train", "test")
IMDB_LABELS = {"neg": 0, "pos": 1}
IMDB_REVIEW_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")
# The CSV forms of aclImdb in the wild: grukit's shards (text,label 0/1) and the common
# "IMDB Dataset.csv" (review,sentiment positive/negative).
IMDB_TEXT_COLUMNS = ("text", "review")
IMDB_LABEL_COLUMNS = ("label", "sentiment")
IMDB_LABEL_VALUES = {"0": 0, "neg": 0, "negative": 0, "1": 1, "pos": 1, "positive": 1}

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                 ".json": "jsonl"}


# -- generic tables --------------------------------------------------------------------------------

def _table_format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in ("csv", "tsv", "jsonl"):
            raise ConfigError(f"read_table: format must be 'csv', 'tsv', 'jsonl' or None (from the file name), "
                              f"got {format!r}")
        return format
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in TABLE_FORMATS:
        return TABLE_FORMATS[suffixes[-1]]
    raise ConfigError(f"read_table: cannot tell the format of {path.name} from its name; pass format='csv', "
                      f"'tsv' or 'jsonl'")


def _pick_column(path: Path, names: Sequence[str], wanted: str | Sequence[str], role: str, where: str) -> str:
    candidates = [wanted] if isinstance(wanted, str) else list(wanted)
    for candidate in candidates:
        if candidate in names:
            return candidate
    shown = ", ".join(repr(n) for n in names) or "none"
    asked = " or ".join(repr(c) for c in candidates)
    raise DataError(f"{path}: {where} has no {role} column {asked}; the columns found are {shown}; "
                    f"pass {role}_column= one of them")


def _label_key(value):
    """Labels compare as text, so CSV "1", JSON 1 and a labels=[0, 1] mapping meet."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _iter_csv(path: Path, text: str, delimiter: str, text_column, label_column):
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; expected a header line naming the columns")
        text_name = _pick_column(path, header, text_column, "text", "the header (line 1)")
        label_name = _pick_column(path, header, label_column, "label", "the header (line 1)")
        text_at, label_at = header.index(text_name), header.index(label_name)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}: line {reader.line_num} has {len(row)} fields, the header has "
                                f"{len(header)}; fix the quoting of that line (a text with the delimiter must be "
                                f"in double quotes)")
            yield reader.line_num, row[text_at], row[label_at]
    except csv.Error as error:
        raise DataError(f"{path}: line {reader.line_num} is not valid CSV ({error}); fix the quoting") from error


def _iter_jsonl(path: Path, text: str, text_column, label_column):
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {line_number}, column {error.colno} is not valid JSON ({error.msg}); "
                            f"each line must be one JSON object") from error
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {line_number} is a JSON {type(record).__name__}, expected an object "
                            f"{{\"text\": ..., \"label\": ...}}")
        names = list(record)
        where = f"line {line_number}"
        text_value = record[_pick_column(path, names, text_column, "text", where)]
        label_value = record[_pick_column(path, names, label_column, "label", where)]
        if not isinstance(text_value, str):
            raise DataError(f"{path}: line {line_number}: the text is {type(text_value).__name__}, expected a "
                            f"string; fix or drop that line")
        if not isinstance(label_value, (str, int, float, bool)):
            raise DataError(f"{path}: line {line_number}: the label is {type(label_value).__name__}, expected a "
                            f"string or number")
        yield line_number, text_value, label_value


def _read_rows(path: Path, text_column, label_column, format: str | None, encoding: str):
    form = _table_format(path, format)
    text = read_text(path, encoding)
    if form == "jsonl":
        return list(_iter_jsonl(path, text, text_column, label_column))
    return list(_iter_csv(path, text, "," if form == "csv" else "\t", text_column, label_column))


def _sort_labels(keys):
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def _label_mapping(labels) -> dict[str, int]:
    if isinstance(labels, Mapping):
        mapping = {}
        for value, index in labels.items():
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ConfigError(f"read_table: labels[{value!r}] = {index!r}; label ids must be ints >= 0")
            mapping[_label_key(value)] = index
        return mapping
    if isinstance(labels, Sequence) and not isinstance(labels, str):
        return {_label_key(value): index for index, value in enumerate(labels)}
    raise ConfigError(f"read_table: labels must be None, a list of label values (id = position) or a "
                      f"{{value: id}} mapping, got {type(labels).__name__}")


def _labelled(path: Path, rows, labels, source: str):
    """Map raw labels to ids: with the given mapping (an unknown value is an error), or sorted."""
    if labels is None:
        mapping = {key: index for index, key in enumerate(_sort_labels({_label_key(r[2]) for r in rows} - {""}))}
    else:
        mapping = _label_mapping(labels)
    texts, ids = [], []
    for line_number, text, label in rows:
        key = _label_key(label)
        if key not in mapping:
            known = ", ".join(repr(k) for k in mapping) or "none"
            what = "an empty label" if key == "" else f"the unknown label {key!r}"
            raise DataError(f"{source}: line {line_number} has {what}; the known labels are {known}; fix that line "
                            f"or add the label to labels=")
        texts.append(text)
        ids.append(mapping[key])
    return texts, ids, mapping


def read_table(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
               format: str | None = None, *, labels=None, require_classes: int | None = None,
               encoding: str = "utf-8") -> tuple[list[str], list[int], dict[str, int]]:
    """Texts and label ids from a CSV, TSV or JSONL file (each may be gzip-compressed).

    The format comes from the name (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``, with or
    without ``.gz``) unless ``format=`` says it. CSV and TSV need a header line naming the columns.

    Labels: with ``labels=None`` the distinct values are sorted (numerically when they are all
    integers, else as text) and numbered 0, 1, ...; ``labels=["neg", "pos"]`` or
    ``labels={"neg": 0, "pos": 1}`` fixes the ids, and a value outside it is an error. Label values
    are compared as stripped text, so CSV ``1`` and JSON ``1`` are the same label.

    Returns ``(texts, labels, mapping)`` where ``mapping`` is ``{label value: id}``.

    Example::

        texts, labels, mapping = read_table("reviews.csv.gz", text_column="review", label_column="sentiment")
        # mapping == {"negative": 0, "positive": 1}
    """
    path = Path(path)
    rows = _read_rows(path, text_column, label_column, format, encoding)
    texts, ids, mapping = _labelled(path, rows, labels, str(path))
    check_labelled(str(path), texts, ids, require_classes, {index: value for value, index in mapping.items()})
    return texts, ids, mapping


# -- aclImdb ---------------------------------------------------------------------------------------

def _check_split(split: str) -> None:
    if split not in IMDB_SPLITS:
        raise ConfigError(f"read_imdb: split must be 'train' or 'test', got {split!r}")


def _imdb_from_tree(root: Path, split: str, encoding: str):
    reviews = []
    for label_name, label in IMDB_LABELS.items():
        folder = root / split / label_name
        if not folder.is_dir():
            continue
        for file in folder.iterdir():
            match = IMDB_REVIEW_NAME.match(file.name)
            if match:
                reviews.append((int(match.group(1)), label, file))
    reviews.sort(key=lambda item: item[:2])
    return [decode(file.read_bytes(), str(file), encoding) for _, _, file in reviews], [r[1] for r in reviews]


def _imdb_from_tar(path: Path, split: str, encoding: str):
    reviews = []
    try:
        # Streaming mode reads the archive once, front to back, and extracts nothing to disk.
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                parts = member.name.split("/")
                if (not member.isfile() or len(parts) < 3 or parts[-3] != split
                        or parts[-2] not in IMDB_LABELS):
                    continue
                match = IMDB_REVIEW_NAME.match(parts[-1])
                if not match:
                    continue
                raw = archive.extractfile(member).read()
                text = decode(raw, f"{path}:{member.name}", encoding)
                reviews.append((int(match.group(1)), IMDB_LABELS[parts[-2]], text))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{path}: corrupt or truncated archive ({error}); delete it and download it again "
                        f"(grukit.data.fetch('imdb') checks the checksum)") from error
    reviews.sort(key=lambda item: item[:2])
    return [r[2] for r in reviews], [r[1] for r in reviews]


def _imdb_from_tables(files: list[Path], encoding: str):
    texts, labels = [], []
    for file in files:
        rows = _read_rows(file, IMDB_TEXT_COLUMNS, IMDB_LABEL_COLUMNS, None, encoding)
        file_texts, file_labels, _ = _labelled(file, rows, IMDB_LABEL_VALUES, str(file))
        texts += file_texts
        labels += file_labels
    return texts, labels


def _shard_order(path: Path):
    number = re.search(r"_(\d+)\.", path.name)
    return (int(number.group(1)) if number else -1, path.name)


def _is_tar(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz"))


def read_imdb(path_or_dir: str | os.PathLike, split: str = "train", *, require_classes: int | None = 2,
              encoding: str = "utf-8") -> tuple[list[str], list[int]]:
    """The aclImdb reviews of one split as ``(texts, labels)``, label 1 = positive, 0 = negative.

    ``path_or_dir`` may be any of the forms the dataset comes in; the form is detected:

    - the original folder tree: a folder holding ``{train,test}/{pos,neg}/<id>_<rating>.txt``, or its
      parent holding ``aclImdb/``;
    - the original archive ``aclImdb_v1.tar.gz`` (read in one streaming pass, nothing extracted), or
      a folder holding it;
    - CSV shards ``imdb_{split}_<k>.csv[.gz]`` in a folder (the ``../shared/data/imdb`` form,
      columns ``id,label,rating,text``), read in shard order;
    - one CSV / TSV / JSONL file with a ``text`` or ``review`` column and a ``label`` or
      ``sentiment`` column (values 0/1, neg/pos or negative/positive). A single file has no splits:
      ``split`` is ignored and the whole file is returned.

    The tree and the archive are returned sorted by (id, label), the order of the shards, so every
    form of the same split gives the same lists. Review text is returned as stored, ``<br />``
    included (``WordTokenizer`` removes it).

    Example::

        texts, labels = read_imdb("../shared/data/imdb", split="train")    # 25,000 reviews
        texts, labels = read_imdb(fetch("imdb"), split="test")              # from the original archive
    """
    _check_split(split)
    path = Path(path_or_dir)
    if path.is_file():
        if _is_tar(path):
            texts, labels = _imdb_from_tar(path, split, encoding)
        else:
            texts, labels = _imdb_from_tables([path], encoding)
    elif path.is_dir():
        root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
        shards = sorted((p for p in path.glob(f"imdb_{split}_*.csv*") if p.is_file()), key=_shard_order)
        archives = sorted(p for p in path.glob("aclImdb*.tar*") if p.is_file())
        if any((root / split / label).is_dir() for label in IMDB_LABELS):
            texts, labels = _imdb_from_tree(root, split, encoding)
        elif shards:
            texts, labels = _imdb_from_tables(shards, encoding)
        elif archives:
            texts, labels = _imdb_from_tar(archives[0], split, encoding)
        else:
            found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
            raise DataError(f"{path}: no aclImdb data for split {split!r} here (found: {found}); expected "
                            f"aclImdb/{split}/pos and neg folders, imdb_{split}_*.csv.gz shards or "
                            f"aclImdb_v1.tar.gz; get the archive with grukit.data.fetch('imdb')")
    else:
        raise DataError(f"{path}: no such file or folder; pass the aclImdb folder, aclImdb_v1.tar.gz or a CSV file")
    check_labelled(f"{path} (split {split!r})", texts, labels, require_classes)
    return texts, labels


# -- sentence polarity (MR) ------------------------------------------------------------------------

POLARITY_FILES = (("rt-polarity.neg", 0), ("rt-polarity.pos", 1))


def read_polarity(directory: str | os.PathLike, *, encoding: str = "utf-8",
                  require_classes: int | None = 2) -> tuple[list[str], list[int]]:
    """Pang & Lee's sentence polarity dataset v1.0 ("MR") as ``(texts, labels)``.

    ``directory`` holds ``rt-polarity.pos`` and ``rt-polarity.neg`` (or is the parent of the
    ``rt-polaritydata/`` folder the original tarball extracts to). One sentence per line; the label
    is the file's: 1 for ``.pos``, 0 for ``.neg``. Returned in file order, negatives first, each
    sentence stripped of surrounding whitespace, blank lines skipped.

    Cornell's original files are Windows-1252 (cp1252), not UTF-8; read them with
    ``encoding="cp1252"``. Reading them as UTF-8 raises ``DataError`` naming the byte offset.

    Example::

        texts, labels = read_polarity("../shared/data/rt-polarity")            # 10,662 sentences
        texts, labels = read_polarity("rt-polaritydata", encoding="cp1252")    # the original bytes
    """
    root = Path(directory)
    if (root / "rt-polaritydata").is_dir() and not (root / POLARITY_FILES[0][0]).exists():
        root = root / "rt-polaritydata"
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; pass the folder holding rt-polarity.pos and rt-polarity.neg")
    texts, labels = [], []
    for name, label in POLARITY_FILES:
        file = root / name
        if not file.is_file():
            continue
        # split("\n"), not splitlines(): cp1252 read as latin-1 turns 0x85 into U+0085, a line break to splitlines.
        for line in read_text(file, encoding).split("\n"):
            line = line.strip()
            if line:
                texts.append(line)
                labels.append(label)
    if not any((root / name).is_file() for name, _ in POLARITY_FILES):
        raise DataError(f"{root}: neither rt-polarity.pos nor rt-polarity.neg is here; pass the folder that holds them")
    check_labelled(str(root), texts, labels, require_classes)
    return texts, labels


__all__ = ["read_imdb", "read_polarity", "read_table"]
