import gzip
import json

import numpy as np
import pytest
import torch

from grukit.data import frame_nll, piano_roll, read_piano_rolls
from grukit.errors import ConfigError, DataError, ShapeError

TINY = {"train": [[[60, 64], [], [62]], [[108]]], "valid": [[[21, 22]]], "test": [[[]]]}


def write_json(tmp_path, data, name="tiny.json.gz"):
    path = tmp_path / name
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump(data, handle)
    return path


def test_piano_roll_of_a_literal_sequence():
    roll = piano_roll([[60, 64], [], [62]], low=60, high=64)
    np.testing.assert_array_equal(roll, [[1, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]])
    assert roll.dtype == np.float32


def test_read_json_gz_to_88_key_rolls(tmp_path):
    rolls = read_piano_rolls(write_json(tmp_path, TINY))
    assert list(rolls) == ["train", "valid", "test"]
    first, second = rolls["train"]
    assert first.shape == (3, 88) and second.shape == (1, 88)
    assert np.flatnonzero(first[0]).tolist() == [39, 43]  # MIDI 60, 64 -> columns 60 - 21, 64 - 21
    assert first[1].sum() == 0 and np.flatnonzero(first[2]).tolist() == [41]
    assert np.flatnonzero(second[0]).tolist() == [87]  # C8 = 108, the last key
    assert np.flatnonzero(rolls["valid"][0][0]).tolist() == [0, 1]
    assert rolls["test"][0].shape == (1, 88) and rolls["test"][0].sum() == 0


def test_custom_range_plain_json_and_dtype(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"train": [[[0], [3]]]}))
    rolls = read_piano_rolls(path, low=0, high=3, dtype="uint8", splits=["train"])
    np.testing.assert_array_equal(rolls["train"][0], [[1, 0, 0, 0], [0, 0, 0, 1]])
    assert rolls["train"][0].dtype == np.uint8


def test_mat_file_matches_json(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rolls = read_piano_rolls(write_json(tmp_path, TINY))
    cells = {}
    for split, key in (("train", "traindata"), ("valid", "validdata"), ("test", "testdata")):
        cell = np.empty((1, len(rolls[split])), dtype=object)
        for i, roll in enumerate(rolls[split]):
            cell[0, i] = roll.astype(np.float64)
        cells[key] = cell
    path = tmp_path / "tiny.mat"
    scipy_io.savemat(path, cells)
    from_mat = read_piano_rolls(path)
    for split in rolls:
        assert len(from_mat[split]) == len(rolls[split])
        for a, b in zip(from_mat[split], rolls[split]):
            np.testing.assert_array_equal(a, b)


def test_reader_errors_name_file_split_sequence_and_step(tmp_path):
    path = write_json(tmp_path, {"train": [[[60]], [[60], [20]]], "valid": [], "test": []})
    with pytest.raises(DataError, match=r"tiny\.json\.gz: split 'train', sequence 1, step 1: MIDI note 20 is "
                                        r"outside the roll's range \[21, 108\]"):
        read_piano_rolls(path)
    path = write_json(tmp_path, {"train": []}, "nosplit.json.gz")
    with pytest.raises(DataError, match=r"nosplit\.json\.gz: no split 'valid'; the file has \['train'\]"):
        read_piano_rolls(path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"train": [[[60]]\n')
    with pytest.raises(DataError, match=r"broken\.json: line 2, column 1 is not valid JSON"):
        read_piano_rolls(broken)
    with pytest.raises(DataError, match="note 60.5 is not an integer"):
        piano_roll([[60.5]])
    with pytest.raises(ConfigError, match="0 <= low <= high <= 127"):
        piano_roll([[60]], low=70, high=60)


def bernoulli_nll_literal(p, y, lengths):
    """-sum_k [y log p + (1 - y) log(1 - p)] per frame, pooled over the valid frames."""
    total, frames = 0.0, 0
    for n in range(p.shape[0]):
        for t in range(lengths[n]):
            frame = 0.0
            for k in range(p.shape[2]):
                frame -= y[n, t, k] * np.log(p[n, t, k]) + (1 - y[n, t, k]) * np.log(1 - p[n, t, k])
            total += frame
            frames += 1
    return total / frames


def random_case(seed=0, shape=(3, 5, 4)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, size=shape)
    targets = (rng.random(shape) < 0.3).astype(np.float64)
    lengths = np.array([5, 2, 3])
    return logits, targets, lengths


def test_frame_nll_matches_the_literal_formula():
    logits, targets, lengths = random_case()
    probabilities = 1 / (1 + np.exp(-logits))
    expected = bernoulli_nll_literal(probabilities, targets, lengths)
    assert frame_nll(logits, targets, lengths) == pytest.approx(expected, rel=1e-12)
    assert frame_nll(probabilities, targets, lengths, from_logits=False) == pytest.approx(expected, rel=1e-12)
    # pooled over frames (10 of them), not the mean of the three per-sequence means
    per_frame = frame_nll(logits, targets, lengths, reduction="none")
    per_sequence_mean = np.mean([per_frame[n, :lengths[n]].mean() for n in range(3)])
    assert expected != pytest.approx(per_sequence_mean, rel=1e-3)
    assert per_frame.shape == (3, 5) and (per_frame[1, 2:] == 0).all()
    assert frame_nll(logits, targets, lengths, reduction="sum") == pytest.approx(expected * 10, rel=1e-12)


def test_frame_nll_matches_torch_bce_with_logits_summed():
    logits, targets, lengths = random_case(1)
    mask = np.arange(5)[None, :] < lengths[:, None]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.from_numpy(targets), reduction="none").sum(-1)
    expected = float(bce[torch.from_numpy(mask)].sum()) / mask.sum()
    assert frame_nll(logits, targets, lengths) == pytest.approx(expected, rel=1e-12)
    assert frame_nll(torch.from_numpy(logits), torch.from_numpy(targets), torch.from_numpy(lengths)) == \
        pytest.approx(expected, rel=1e-12)


def test_frame_nll_known_value_extremes_and_no_lengths():
    assert frame_nll(np.zeros((1, 2, 3)), np.ones((1, 2, 3))) == pytest.approx(3 * np.log(2))
    assert frame_nll(np.zeros((2, 3)), np.zeros((2, 3))) == pytest.approx(3 * np.log(2))  # (T, K)
    # huge logits stay finite; a wrong certain probability costs 100 nats, as torch's clamp does
    assert frame_nll(np.array([[[1000.0, -1000.0]]]), np.array([[[1.0, 0.0]]])) == pytest.approx(0.0)
    assert frame_nll(np.array([[[0.0]]]), np.array([[[1.0]]]), from_logits=False) == pytest.approx(100.0)
    expected = torch.nn.functional.binary_cross_entropy(torch.tensor([0.0]), torch.tensor([1.0]))
    assert float(expected) == pytest.approx(100.0)


def test_frame_nll_errors():
    logits, targets, lengths = random_case()
    with pytest.raises(ShapeError, match="same shape"):
        frame_nll(logits[:, :4], targets, lengths)
    with pytest.raises(DataError, match=r"lengths must lie in \[0, 5\]"):
        frame_nll(logits, targets, np.array([6, 1, 1]))
    with pytest.raises(ShapeError, match=r"lengths must be \(3,\) integers"):
        frame_nll(logits, targets, np.array([5.0, 1, 1]))
    with pytest.raises(DataError, match="0/1 piano rolls"):
        frame_nll(logits, targets * 0.5, lengths)
    with pytest.raises(DataError, match=r"probabilities in \[0, 1\]"):
        frame_nll(logits, targets, lengths, from_logits=False)
    with pytest.raises(ConfigError, match="reduction"):
        frame_nll(logits, targets, lengths, reduction="avg")
    with pytest.raises(DataError, match="no valid frames"):
        frame_nll(logits, targets, np.zeros(3, dtype=np.int64))


COUNTS = {"jsb_chorales": ((229, 76, 77), (13_807, 4_602, 4_725), (43, 96)),
          "nottingham": ((694, 173, 170), (176_561, 45_513, 44_463), (31, 93))}


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_datasets_parse_to_the_documented_counts(shared_data, name):
    sequences, steps, (lowest, highest) = COUNTS[name]
    rolls = read_piano_rolls(shared_data / "polyphonic-music" / f"{name}.json.gz")
    assert tuple(len(rolls[s]) for s in ("train", "valid", "test")) == sequences
    assert tuple(sum(len(r) for r in rolls[s]) for s in ("train", "valid", "test")) == steps
    on = np.flatnonzero(np.concatenate([np.concatenate(v) for v in rolls.values()]).any(axis=0))
    assert (on.min() + 21, on.max() + 21) == (lowest, highest)


@pytest.mark.data
def test_real_mat_equals_json(shared_data):
    folder = shared_data / "polyphonic-music"
    from_json = read_piano_rolls(folder / "jsb_chorales.json.gz")
    from_mat = read_piano_rolls(folder / "JSB_Chorales.mat")
    for split in from_json:
        assert len(from_json[split]) == len(from_mat[split])
        assert all(np.array_equal(a, b) for a, b in zip(from_json[split], from_mat[split]))
