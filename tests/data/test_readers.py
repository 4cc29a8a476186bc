import csv
import gzip
import io
import json
import tarfile

import pytest

from grukit.data import read_imdb, read_polarity, read_table
from grukit.errors import ConfigError, DataError

REVIEWS = {  # (split, label folder, id, rating): text
    ("train", "pos", 0, 9): "Bromwell High is a cartoon comedy.<br /><br />Great!",
    ("train", "pos", 10, 8): "Loved it, café scenes \u2013 superb",
    ("train", "pos", 2, 7): 'Fine, "quoted", and\nmulti-line',
    ("train", "neg", 0, 1): "Awful.",
    ("train", "neg", 2, 3): "Meh, not good",
    ("test", "pos", 0, 10): "Wonderful",
    ("test", "neg", 5, 2): "Boring",
}
# sorted by (id, label): neg before pos for the same id
TRAIN = [("Awful.", 0), ("Bromwell High is a cartoon comedy.<br /><br />Great!", 1), ("Meh, not good", 0),
         ('Fine, "quoted", and\nmulti-line', 1), ("Loved it, café scenes \u2013 superb", 1)]


def make_tree(root):
    for (split, label, review_id, rating), text in REVIEWS.items():
        folder = root / "aclImdb" / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{review_id}_{rating}.txt").write_text(text, encoding="utf-8")
    unsup = root / "aclImdb" / "train" / "unsup"
    unsup.mkdir()
    (unsup / "0_0.txt").write_text("unlabelled", encoding="utf-8")
    (root / "aclImdb" / "train" / "urls_pos.txt").write_text("http://x", encoding="utf-8")
    return root


def make_shards(folder, split, rows_per_shard=2):
    rows = [(i, label, text) for i, (text, label) in enumerate(TRAIN)]
    for shard in range(0, len(rows), rows_per_shard):
        with gzip.open(folder / f"imdb_{split}_{shard // rows_per_shard}.csv.gz", "wt", encoding="utf-8",
                       newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["id", "label", "rating", "text"])
            for review_id, label, text in rows[shard:shard + rows_per_shard]:
                writer.writerow([review_id, label, 5, text])


def expected():
    return [t for t, _ in TRAIN], [label for _, label in TRAIN]


def test_imdb_folder_tree(tmp_path):
    make_tree(tmp_path)
    assert read_imdb(tmp_path, "train") == expected()
    assert read_imdb(tmp_path / "aclImdb", "train") == expected()
    assert read_imdb(tmp_path, "test") == (["Wonderful", "Boring"], [1, 0])


def test_imdb_tarball_read_without_extracting(tmp_path):
    make_tree(tmp_path / "src")
    archive = tmp_path / "dl" / "aclImdb_v1.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "aclImdb", arcname="aclImdb")
    assert read_imdb(archive, "train") == expected()
    assert read_imdb(archive.parent, "test") == (["Wonderful", "Boring"], [1, 0])  # a folder holding it
    assert sorted(p.name for p in archive.parent.iterdir()) == ["aclImdb_v1.tar.gz"]
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.tar.gz: corrupt or truncated archive"):
        read_imdb(truncated)


def test_imdb_csv_shards_and_single_files(tmp_path):
    make_shards(tmp_path, "train")
    assert len(list(tmp_path.glob("*.csv.gz"))) == 3
    assert read_imdb(tmp_path, "train") == expected()
    kaggle = tmp_path / "IMDB Dataset.csv"
    with open(kaggle, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        writer.writerows([(text, "positive" if label else "negative") for text, label in TRAIN])
    assert read_imdb(kaggle, "test") == expected()  # one file has no splits: split is ignored
    with pytest.raises(DataError, match=r"no aclImdb data for split 'test'.*imdb_train_0.csv.gz"):
        read_imdb(tmp_path, "test")


def test_imdb_errors(tmp_path):
    with pytest.raises(ConfigError, match="split"):
        read_imdb(tmp_path, "unsup")
    with pytest.raises(DataError, match="no such file or folder"):
        read_imdb(tmp_path / "nowhere")
    (tmp_path / "aclImdb" / "train" / "pos").mkdir(parents=True)
    with pytest.raises(DataError, match="no examples found"):
        read_imdb(tmp_path)
    (tmp_path / "aclImdb" / "train" / "pos" / "0_9.txt").write_text("good", encoding="utf-8")
    with pytest.raises(DataError, match=r"2 classes are needed but the data has 1 \(1: 1\)"):
        read_imdb(tmp_path)
    assert read_imdb(tmp_path, require_classes=None) == (["good"], [1])
    (tmp_path / "aclImdb" / "train" / "neg").mkdir()
    (tmp_path / "aclImdb" / "train" / "neg" / "3_1.txt").write_bytes(b"bad \xff movie")
    with pytest.raises(DataError, match=r"3_1.txt: not valid utf-8 at byte offset 4 \(line 1\).*encoding="):
        read_imdb(tmp_path)
    assert read_imdb(tmp_path, encoding="latin-1")[0] == ["good", "bad \xff movie"]


def test_polarity(tmp_path):
    (tmp_path / "rt-polarity.pos").write_bytes(b"a gem .\nsmart \x97 and warm \n\n")
    (tmp_path / "rt-polarity.neg").write_bytes(b"dull \x85 boring\r\nflat .\n")
    with pytest.raises(DataError, match=r"rt-polarity.neg: not valid utf-8 at byte offset 5 \(line 1\).*cp1252"):
        read_polarity(tmp_path)
    texts, labels = read_polarity(tmp_path, encoding="cp1252")
    assert texts == ["dull \u2026 boring", "flat .", "a gem .", "smart \u2014 and warm"]
    assert labels == [0, 0, 1, 1]
    # latin-1 maps 0x85 to U+0085, which str.splitlines() would take for a line break
    assert read_polarity(tmp_path, encoding="latin-1")[0][0] == "dull \x85 boring"
    nested = tmp_path / "outer"
    (nested / "rt-polaritydata").mkdir(parents=True)
    (nested / "rt-polaritydata" / "rt-polarity.pos").write_text("nice\n", encoding="utf-8")
    with pytest.raises(DataError, match="2 classes are needed"):
        read_polarity(nested)
    assert read_polarity(nested, require_classes=None) == (["nice"], [1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither rt-polarity.pos nor rt-polarity.neg"):
        read_polarity(tmp_path / "empty")
    with pytest.raises(DataError, match="no such folder"):
        read_polarity(tmp_path / "missing")


def test_read_table_csv_tsv_jsonl(tmp_path):
    csv_path = tmp_path / "data.csv"
    csv_path.write_text('text,label\n"good, very",pos\nbad,neg\n"multi\nline",pos\n', encoding="utf-8")
    assert read_table(csv_path) == (["good, very", "bad", "multi\nline"], [1, 0, 1], {"neg": 0, "pos": 1})
    tsv_path = tmp_path / "data.tsv.gz"
    with gzip.open(tsv_path, "wt", encoding="utf-8") as handle:
        handle.write("id\tsentence\tstars\n1\tone\t2\n2\ttwo\t10\n3\tthree\t1\n")
    texts, labels, mapping = read_table(tsv_path, text_column="sentence", label_column="stars")
    assert mapping == {"1": 0, "2": 1, "10": 2} and labels == [1, 2, 0]  # integers sort numerically
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"text": "a", "label": 1}, {"text": "b", "label": 0}, {"label": 1, "text": "c", "extra": None}]) + "\n")
    assert read_table(jsonl, require_classes=2) == (["a", "b", "c"], [1, 0, 1], {"0": 0, "1": 1})
    assert read_table(jsonl, labels=["1", "0"])[1] == [0, 1, 0]
    assert read_table(jsonl, labels={0: 5, 1: 7})[1] == [7, 5, 7]
    odd = tmp_path / "data.txt"
    odd.write_text("text,label\nx,1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="format="):
        read_table(odd)
    assert read_table(odd, format="csv")[0] == ["x"]


def test_read_table_errors(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,sentiment\nnice,positive\nawful,negative\nhmm,neutral\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"reviews.csv: the header \(line 1\) has no text column 'text'; the columns "
                                        r"found are 'review', 'sentiment'"):
        read_table(path)
    with pytest.raises(DataError, match=r"line 4 has the unknown label 'neutral'; the known labels are "
                                        r"'negative', 'positive'"):
        read_table(path, "review", "sentiment", labels=["negative", "positive"])
    assert read_table(path, "review", "sentiment")[2] == {"negative": 0, "neutral": 1, "positive": 2}
    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\na,1\nb,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"one.csv: 2 classes are needed but the data has 1 \('1': 2\)"):
        read_table(one_class, require_classes=2)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.csv: no examples found"):
        read_table(empty)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\na,1\nb,c,1\n", encoding="utf-8")
    with pytest.raises(DataError, match="ragged.csv: line 3 has 3 fields, the header has 2"):
        read_table(ragged)
    blank_label = tmp_path / "blank.csv"
    blank_label.write_text("text,label\na,1\nb, \n", encoding="utf-8")
    with pytest.raises(DataError, match="line 3 has an empty label"):
        read_table(blank_label)
    binary = tmp_path / "latin.csv"
    binary.write_bytes("text,label\nok,1\ncaf\xe9,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: not valid utf-8 at byte offset 19 \(line 3\).*encoding="):
        read_table(binary)
    assert read_table(binary, encoding="latin-1")[0] == ["ok", "caf\xe9"]
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "lbl": 0}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl: line 2 has no label column 'label'; the columns found are "
                                        r"'text', 'lbl'"):
        read_table(jsonl)
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", \n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl: line 2, column .* is not valid JSON"):
        read_table(jsonl)
    jsonl.write_text('{"text": null, "label": 1}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: the text is NoneType"):
        read_table(jsonl)
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(gzip.compress(b"text,label\na,1\n")[:15])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_table(corrupt)
