"""TextClassifier: learns a keyword rule from raw strings, saves and loads, keeps label names, fits
its vocabulary on training texts only, rejects bad input with errors that say what to do."""

import json

import numpy as np
import pytest

from grukit import layers
from grukit.errors import ConfigError, DataError
from grukit.tasks import TextClassifier, TextClassifierConfig

FILLER = ("the movie was a film with actors and a plot about people in a city at night over some years "
          "while music played").split()


def keyword_corpus(count=240, seed=0, keywords=("wonderful", "awful")):
    """Texts of 4-9 filler words with one class keyword at a random place; label = the keyword's index."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(count):
        label = int(rng.integers(len(keywords)))
        words = list(rng.choice(FILLER, size=int(rng.integers(4, 10))))
        words.insert(int(rng.integers(len(words) + 1)), keywords[label])
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def small(**options):
    settings = dict(units=8, embedding_dim=8, epochs=8, batch_size=32, learning_rate=0.02, validation=0,
                    patience=None, embedding_dropout=0.0, dropout=0.0, maxlen=12, seed=0)
    settings.update(options)
    return TextClassifier(**settings)


@pytest.fixture(scope="module")
def fitted():
    texts, labels = keyword_corpus()
    return small().fit(texts, labels)


def test_learns_a_keyword_rule_to_high_accuracy(fitted):
    texts, labels = keyword_corpus(count=100, seed=1)
    result = fitted.evaluate(texts, labels)
    assert result.scores["accuracy"] >= 0.95
    assert set(result.scores) == {"accuracy", "precision", "recall", "f1", "auc"}
    assert result.scores["auc"] >= 0.98 and 0.3 < result.majority < 0.7
    assert result.probabilities.shape == (100, 2)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert "| GRU(8) |" in result.table() and json.dumps(result.to_dict())
    assert fitted.predict(["the plot was wonderful", "awful music"]).tolist() == [0, 1]


def test_network_is_embedding_recurrent_dense_with_masking(fitted):
    stack = fitted.model.layers
    assert [type(layer).__name__ for layer in stack] == ["Embedding", "GRU", "Dense"]
    assert stack[0].mask_zero and stack[0].input_dim == len(fitted.tokenizer)
    assert stack[2].units == 1 and stack[2].activation == "sigmoid"
    assert fitted.encode(["wonderful"]).shape == (1, 12)


def test_save_and_load_predict_identically_from_raw_strings(fitted, tmp_path):
    texts, labels = keyword_corpus(count=40, seed=2)
    texts.append("a never seen word zyzzyva and wonderful")
    before = fitted.predict_proba(texts)
    folder = fitted.save(tmp_path / "run")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "task.json"]
    loaded = TextClassifier.load(folder)
    np.testing.assert_array_equal(loaded.predict_proba(texts), before)
    np.testing.assert_array_equal(loaded.predict(texts), fitted.predict(texts))
    assert loaded.config == fitted.config and loaded.maxlen == fitted.maxlen
    assert loaded.tokenizer.words == fitted.tokenizer.words
    assert loaded.evaluate(texts[:-1], labels).scores == fitted.evaluate(texts[:-1], labels).scores


def test_string_labels_round_trip_and_three_classes_use_softmax(tmp_path):
    texts, ids = keyword_corpus(count=240, keywords=("wonderful", "awful", "boring"))
    names = ["pos", "neg", "meh"]
    labels = [names[i] for i in ids]
    classifier = small(cell="lstm", epochs=10).fit(texts, labels)
    assert classifier.classes == ["meh", "neg", "pos"]                       # sorted names
    assert classifier.model.layers[-1].units == 3 and classifier.model.layers[-1].activation == "softmax"
    predicted = classifier.predict(["the film was awful", "boring plot", "wonderful"])
    assert predicted.tolist() == ["neg", "meh", "pos"]
    result = classifier.evaluate(texts[:90], labels[:90])
    assert "auc" not in result.scores and result.scores["accuracy"] >= 0.9
    loaded = TextClassifier.load(classifier.save(tmp_path / "three"))
    assert loaded.classes == ["meh", "neg", "pos"]
    assert loaded.predict(["the film was awful"]).tolist() == ["neg"]


def test_classes_fix_the_order_and_the_positive_class():
    texts, ids = keyword_corpus(count=120)
    labels = ["good" if i == 0 else "bad" for i in ids]
    classifier = small(classes=["bad", "good"], epochs=2).fit(texts, labels)
    assert classifier.classes == ["bad", "good"]
    probabilities = classifier.predict_proba(["wonderful"])
    assert probabilities.shape == (1, 2)
    np.testing.assert_allclose(probabilities[0, 1], classifier.model.predict(classifier.encode(["wonderful"]))[0, 0])


def test_tokenizer_is_fitted_on_the_training_texts_only():
    texts, labels = keyword_corpus(count=200)
    classifier = small(epochs=1, validation=0.2, patience=None).fit(texts, labels)
    assert "zyzzyva" not in classifier.tokenizer
    assert classifier.encode(["zyzzyva"])[0].tolist() == [1] + [0] * 11      # OOV, then padding
    # the validation part is held out from the vocabulary too: a word only there is OOV
    marked = list(texts)
    train, held_out = classifier._split(len(texts), np.asarray(labels))
    marked[held_out[0]] += " quokka"
    again = small(epochs=1, validation=0.2, patience=None).fit(marked, labels)
    assert "quokka" not in again.tokenizer and "wonderful" in again.tokenizer
    assert len(train) == 160 and len(held_out) == 40


def test_validation_and_early_stopping_are_seeded():
    texts, labels = keyword_corpus(count=200)
    first = small(epochs=4, validation=0.2, patience=1).fit(texts, labels)
    assert "val_loss" in first.history.history and "val_accuracy" in first.history.history
    second = small(epochs=4, validation=0.2, patience=1).fit(texts, labels)
    np.testing.assert_array_equal(first.predict_proba(texts[:20]), second.predict_proba(texts[:20]))


def test_bidirectional_mgu_and_auto_maxlen():
    texts, labels = keyword_corpus(count=60)
    classifier = small(cell="mgu", bidirectional=True, maxlen=None, epochs=1).fit(texts, labels)
    assert isinstance(classifier.model.layers[1], layers.Bidirectional)
    lengths = [len(s) for s in classifier.tokenizer.texts_to_sequences(texts)]
    assert classifier.maxlen == int(np.ceil(np.percentile(lengths, 95)))
    assert "Bidirectional(MGU(8))" in classifier.evaluate(texts, labels).model_name


@pytest.mark.parametrize("pooling,layer", [("last", None), ("max", layers.GlobalMaxPooling1D),
                                           ("mean", layers.GlobalAveragePooling1D)])
def test_each_pooling_builds_and_learns_the_keyword_rule(pooling, layer):
    texts, labels = keyword_corpus()
    classifier = small(pooling=pooling).fit(texts, labels)
    stack = classifier.model.layers
    names = ["Embedding", "GRU"] + ([layer.__name__] if layer else []) + ["Dense"]
    assert [type(item).__name__ for item in stack] == names
    assert stack[1].return_sequences == (layer is not None)
    result = classifier.evaluate(*keyword_corpus(count=100, seed=1))
    assert result.scores["accuracy"] >= 0.95
    assert result.model_name == ("GRU(8)" if layer is None else f"GRU(8) + {layer.__name__}")
    assert f"| {result.model_name} |" in result.table()
    summary = classifier.model.summary(print_fn=lambda _: None)
    assert layer is None or f"({layer.__name__})" in summary and "(None, 8)" in summary


def test_pooling_is_saved_and_configs_without_it_load_as_last(fitted, tmp_path):
    texts, labels = keyword_corpus(count=120)
    pooled = small(pooling="max", bidirectional=True, epochs=2).fit(texts, labels)
    loaded = TextClassifier.load(pooled.save(tmp_path / "max"))
    assert loaded.config.pooling == "max" and loaded.config == pooled.config
    assert isinstance(loaded.model.layers[2], layers.GlobalMaxPooling1D)
    assert loaded.evaluate(texts, labels).model_name == "Bidirectional(GRU(8)) + GlobalMaxPooling1D"
    np.testing.assert_array_equal(loaded.predict_proba(texts), pooled.predict_proba(texts))
    assert TextClassifierConfig.from_dict(pooled.config.to_dict()) == pooled.config
    # a classifier saved before the option existed: its task.json has no "pooling"
    folder = fitted.save(tmp_path / "old")
    record = json.loads((folder / "task.json").read_text())
    del record["config"]["pooling"]
    (folder / "task.json").write_text(json.dumps(record))
    old = TextClassifier.load(folder)
    assert old.config.pooling == "last"
    np.testing.assert_array_equal(old.predict_proba(texts[:20]), fitted.predict_proba(texts[:20]))


def test_presets_for_sentences_and_documents():
    sentences, documents = TextClassifier.for_sentences(), TextClassifier.for_documents(units=32)
    assert sentences.config.bidirectional and sentences.config.maxlen == 60
    assert documents.config.bidirectional and documents.config.maxlen == 400 and documents.config.units == 32
    assert documents.config.num_words == 10_000
    # the documents preset is the configuration that passed 88.5% on IMDB (benchmarks/imdb_documents)
    assert sentences.config.pooling == "last" and documents.config.pooling == "max"


def test_pretrained_vectors_frozen_with_coverage_report(tmp_path):
    texts, labels = keyword_corpus(count=80)
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("wonderful 1 0 0 0\nawful 0 1 0 0\nmovie 0 0 1 0\n", encoding="utf-8")
    classifier = small(embeddings=str(vectors), embedding_dim=None, embeddings_trainable=False, epochs=1)
    classifier.fit(texts, labels)
    embedding = classifier.model.layers[0]
    assert embedding.output_dim == 4 and not embedding.embedding.weight.requires_grad
    index = classifier.tokenizer.word_index
    np.testing.assert_array_equal(embedding.embedding.weight[index["awful"]].detach().numpy(), [0, 1, 0, 0])
    assert classifier.coverage.found == 3 and classifier.coverage.total == len(classifier.tokenizer) - 2
    loaded = TextClassifier.load(classifier.save(tmp_path / "glove"))
    assert loaded.coverage["found"] == 3
    np.testing.assert_array_equal(loaded.predict_proba(texts[:5]), classifier.predict_proba(texts[:5]))


# -- bad input ---------------------------------------------------------------------------------------

def test_empty_dataset_is_a_data_error():
    with pytest.raises(DataError, match=r"fit: the dataset is empty \(0 texts\); pass at least one"):
        small().fit([], [])


def test_one_class_dataset_names_the_fix():
    texts, _ = keyword_corpus(count=20)
    with pytest.raises(DataError, match=r"only one class \('pos': 20\).*add texts of the other class"):
        small().fit(texts, ["pos"] * 20)
    with pytest.raises(DataError, match=r"only one class \(1: 20\) of classes=\[0, 1\]"):
        small(classes=[0, 1]).fit(texts, [1] * 20)


def test_a_rejected_fit_leaves_the_fitted_classifier_as_it_was(fitted):
    before = fitted.predict_proba(["wonderful", "awful"])
    with pytest.raises(DataError, match="only one class"):
        fitted.fit(["a brand new text"], ["other"])
    assert fitted.classes == [0, 1]
    np.testing.assert_array_equal(fitted.predict_proba(["wonderful", "awful"]), before)


def test_texts_and_labels_of_different_lengths():
    texts, labels = keyword_corpus(count=20)
    with pytest.raises(DataError, match="same length.*texts has 20 and labels 19"):
        small().fit(texts, labels[:-1])


def test_unknown_labels_at_evaluate(fitted):
    texts, labels = keyword_corpus(count=10)
    labels[3] = 7
    with pytest.raises(DataError, match=r"evaluate: label\(s\) 7: 1 .* fitted on, \[0, 1\]; drop those examples"):
        fitted.evaluate(texts, labels)
    with pytest.raises(DataError, match="not among the classes"):
        small(classes=["a", "b"]).fit(texts, ["a", "b", "c"] + ["a"] * 7)


def test_bad_texts_and_labels():
    with pytest.raises(DataError, match=r"texts\[1\] is int, expected str"):
        small().fit(["a b", 3], [0, 1])
    with pytest.raises(DataError, match="one string; wrap it"):
        small().fit("a wonderful film", [1])
    with pytest.raises(DataError, match=r"labels\[1\] is 0.5 \(float\); labels must be strings or ints"):
        small().fit(["a", "b"], [1, 0.5])
    with pytest.raises(DataError, match="mixes strings and ints"):
        small().fit(["a", "b"], ["pos", 0])
    with pytest.raises(DataError, match="validation=0.5 holds out.*validation=0, patience=None"):
        small(validation=0.5).fit(["a", "b", "c"], [0, 1, 1])


def test_bad_configuration_and_unfitted_use():
    with pytest.raises(ConfigError, match="cell='transformer'"):
        TextClassifier(cell="transformer")
    with pytest.raises(ConfigError, match=r"patience=2\) stops on the validation val_loss; pass validation="):
        TextClassifier(validation=0, patience=2)
    with pytest.raises(ConfigError, match=r"dropout=1.5\): expected a probability"):
        TextClassifier(dropout=1.5)
    with pytest.raises(ConfigError, match=r"pooling='attention'\): expected one of \('last', 'max', 'mean'\)"):
        TextClassifier(pooling="attention")
    with pytest.raises(ConfigError, match="pooling=None"):
        TextClassifierConfig.from_dict({"pooling": None})
    with pytest.raises(ConfigError, match="mingru.*no recurrent weights"):
        TextClassifier(cell="mingru", recurrent_dropout=0.2)
    with pytest.raises(ConfigError, match=r"predict_proba\(\) before fit\(\)"):
        TextClassifier().predict(["text"])
    with pytest.raises(ConfigError, match="unknown field"):
        TextClassifierConfig.from_dict({"units": 4, "layers": 2})


# -- real data ---------------------------------------------------------------------------------------

@pytest.mark.data
@pytest.mark.slow
def test_one_polarity_fold_beats_the_majority_class_by_far(shared_data):
    from sklearn.model_selection import StratifiedKFold

    from grukit.data import read_polarity

    texts, labels = read_polarity(shared_data / "rt-polarity")
    train, test = next(StratifiedKFold(10, shuffle=True, random_state=0).split(texts, labels))
    classifier = TextClassifier.for_sentences(epochs=3, seed=0)
    classifier.fit([texts[i] for i in train], [labels[i] for i in train])
    result = classifier.evaluate([texts[i] for i in test], [labels[i] for i in test])
    assert result.majority == pytest.approx(0.5, abs=0.01)
    assert result.scores["accuracy"] >= result.majority + 0.2       # benchmarks.polarity_cv fold 0: 0.787
    assert result.scores["auc"] >= 0.8
