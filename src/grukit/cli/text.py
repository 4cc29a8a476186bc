"""``grukit text fit | predict | evaluate``: text classification with :class:`grukit.tasks.TextClassifier`."""

from __future__ import annotations

import argparse
import json
import sys

from grukit.cli import common, launch
from grukit.cli.common import add_parser, amount, positive_int
from grukit.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json")


def register(tasks) -> None:
    actions = common.add_task(
        tasks, "text", "text classification (sentiment, topics, intents) from raw strings",
        "Classify texts with a recurrent network: a tokenizer fitted on the training texts, an "
        "embedding, a GRU (or --cell) and a sigmoid/softmax output. Labels may be any strings or "
        "integers; predictions answer in the same names.",
        """
          grukit text fit --train train.csv --text-column text --label-column label --test test.csv --out runs/mr
          grukit text predict runs/mr "what a fine film" "a dull mess"
          grukit text evaluate runs/mr --test test.csv
        """)

    fit = add_parser(actions, "fit", "train a classifier on a labelled CSV/TSV/JSONL file and save it",
                     "Train a TextClassifier on the labelled texts of --train (CSV, TSV or JSONL, optionally "
                     ".gz) and save it in --out. A share of the training texts (--validation) is held out, "
                     "stratified, for early stopping; with --test the saved model is scored on that file beside "
                     "the majority-class baseline.", """
          grukit text fit --train reviews.csv --text-column review --label-column sentiment --out runs/reviews
          grukit text fit --train train.csv --test test.csv --preset sentences --cell lstm --epochs 10 --out runs/lstm
          grukit text fit --train train.jsonl --epochs 3 --nproc 2 --out runs/two-processes
        """)
    data = fit.add_argument_group("data")
    data.add_argument("--train", required=True, metavar="FILE", help="labelled training texts (.csv, .tsv, .jsonl)")
    data.add_argument("--test", metavar="FILE",
                      help="labelled test texts, scored after training (read and checked before it: their labels "
                           "must occur in --train)")
    data.add_argument("--text-column", default="text", metavar="NAME", help="column (or JSON key) of the texts")
    data.add_argument("--label-column", default="label", metavar="NAME", help="column (or JSON key) of the labels")
    data.add_argument("--validation", type=amount, default=None, metavar="AMOUNT",
                      help="fraction (0.1) or count of training texts held out for early stopping; 0 for none "
                           "(default: the preset's, 0.1)")
    data.add_argument("--patience", type=int, default=None, metavar="N",
                      help="epochs without improvement of the validation loss before stopping (restoring the best "
                           "weights) (default: the preset's, 2; off with --validation 0)")
    network = fit.add_argument_group("text model")
    network.add_argument("--preset", choices=("default", "sentences", "documents"), default="default",
                         help="settings for short texts (sentences: Bidirectional(GRU(64)), 60 tokens) or long ones "
                              "(documents: Bidirectional(GRU(128)) max-pooled, 400 tokens, 10,000 words); "
                              "the options below override it")
    network.add_argument("--bidirectional", action="store_true", default=None, help="read each text both ways")
    network.add_argument("--pooling", choices=("last", "max", "mean"), default=None,
                         help="what the output layer reads: the recurrent layer's output at the last token, or the "
                              "max / mean of its outputs over all tokens (default: the preset's)")
    network.add_argument("--maxlen", type=positive_int, default=None, metavar="N",
                         help="tokens kept per text (default: the preset's; the plain default is the 95th "
                              "percentile of the training texts)")
    network.add_argument("--num-words", type=positive_int, default=None, metavar="N",
                         help="vocabulary size, padding and out-of-vocabulary ids included")
    network.add_argument("--min-count", type=positive_int, default=None, metavar="N",
                         help="words seen fewer times in training are out of vocabulary")
    network.add_argument("--embedding-dim", type=positive_int, default=None, metavar="N", help="embedding size")
    network.add_argument("--embeddings", metavar="FILE", help="pretrained GloVe / word2vec text vectors")
    network.add_argument("--freeze-embeddings", action="store_true", help="keep the pretrained vectors fixed")
    network.add_argument("--dropout", type=float, default=None, metavar="P", help="dropout before the output layer")
    common.add_training_options(fit, epochs=None, batch_size=None, learning_rate=None, units=None)
    common.add_runtime_options(fit)
    fit.set_defaults(handler=run_fit, prepare=prepare_fit)

    predict = add_parser(actions, "predict", "label new texts with a saved classifier",
                         "Print the predicted label and its probability for each text: texts given as "
                         "arguments, the lines of --file (or a column of a CSV/TSV/JSONL --file), or the lines "
                         "of stdin.", """
          grukit text predict runs/mr "a gorgeous, witty film" "a dull mess"
          grukit text predict runs/mr --file new_reviews.txt            # one text per line
          grukit text predict runs/mr --file new.csv --text-column review --json
          cat texts.txt | grukit text predict runs/mr
        """)
    predict.add_argument("run", metavar="RUN", help="run directory written by `grukit text fit`")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    predict.add_argument("--file", metavar="FILE",
                         help="texts to classify: one per line, or a column of a .csv/.tsv/.jsonl file; - for stdin")
    predict.add_argument("--text-column", default=None, metavar="NAME",
                         help="the texts' column when --file is a table (default: the one used at fit)")
    predict.add_argument("--json", action="store_true", help="one JSON object per text with every class's probability")
    predict.add_argument("--batch-size", type=positive_int, default=256, metavar="N", help="texts per forward pass")
    common.add_runtime_options(predict)
    predict.set_defaults(handler=run_predict)

    evaluate = add_parser(actions, "evaluate", "score a saved classifier on labelled texts",
                          "Accuracy, precision, recall, F1 (and ROC-AUC for two classes) of a saved classifier on "
                          "a labelled file, beside the majority-class baseline, as a markdown table.", """
          grukit text evaluate runs/mr --test test.csv
          grukit text evaluate runs/mr --test test.jsonl --text-column review --label-column sentiment --json
        """)
    evaluate.add_argument("run", metavar="RUN", help="run directory written by `grukit text fit`")
    evaluate.add_argument("--test", required=True, metavar="FILE", help="labelled texts (.csv, .tsv, .jsonl)")
    evaluate.add_argument("--text-column", default=None, metavar="NAME", help="default: the one used at fit")
    evaluate.add_argument("--label-column", default=None, metavar="NAME", help="default: the one used at fit")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    common.add_runtime_options(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


# -- reading -----------------------------------------------------------------------------------------

def read_labelled(path: str, text_column: str, label_column: str, option: str) -> tuple[list[str], list]:
    """Texts and their labels in their own names (ints when every label is an integer)."""
    from grukit.data import read_table

    with common.option_names({"text_column= ": "--text-column ", "label_column= ": "--label-column "}):
        texts, ids, mapping = read_table(common.require_file(path, option), text_column=text_column,
                                         label_column=label_column)
    names = {index: value for value, index in mapping.items()}
    labels = [names[i] for i in ids]
    try:
        labels = [int(label) for label in labels]
    except ValueError:
        pass
    return texts, labels


def read_column(path: str, column: str) -> list[str]:
    """One column of a CSV/TSV file (header line) or one key of a JSONL file, as strings."""
    import csv
    import io

    from grukit.data._files import read_text

    source = common.require_file(path, "--file")
    text = read_text(source)
    lower = source.name.lower().removesuffix(".gz")
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        values = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {number} is not valid JSON ({error.msg})") from error
            if not isinstance(record, dict) or column not in record:
                raise DataError(f"{path}: line {number} has no key {column!r}; pass --text-column with the key of "
                                "the texts")
            values.append(str(record[column]))
        return values
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if lower.endswith((".tsv", ".tab")) else ",")
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: the file is empty; expected a header line naming the columns")
    if column not in header:
        raise DataError(f"{path}: no column {column!r} in the header (line 1); the columns are "
                        f"{', '.join(map(repr, header))}; pass --text-column one of them")
    at = header.index(column)
    try:
        return [row[at] for row in reader if row and len(row) > at]
    except csv.Error as error:
        raise DataError(f"{path}: line {reader.line_num} is not valid CSV ({error})") from error


# -- fit ----------------------------------------------------------------------------------------------

def prepare_fit(args: argparse.Namespace) -> dict:
    """Read and check the data and options; build the (unfitted) classifier."""
    from grukit.tasks import TextClassifier

    common.check_run_directory(args)
    options = common.options(args, cell="cell", units="units", bidirectional="bidirectional", pooling="pooling",
                             maxlen="maxlen", num_words="num_words", min_count="min_count",
                             embedding_dim="embedding_dim", embeddings="embeddings", dropout="dropout", epochs="epochs", batch_size="batch_size",
                             learning_rate="learning_rate", validation="validation", patience="patience")
    options.update(seed=args.seed, verbose=common.verbose(args), precision=args.precision)
    if args.freeze_embeddings:
        options["embeddings_trainable"] = False
    if options.get("validation") == 0:
        options["patience"] = None
    if args.embeddings:
        common.require_file(args.embeddings, "--embeddings")
    build = {"default": TextClassifier, "sentences": TextClassifier.for_sentences,
             "documents": TextClassifier.for_documents}[args.preset]
    classifier = build(**options)
    texts, labels = read_labelled(args.train, args.text_column, args.label_column, "--train")
    test = read_labelled(args.test, args.text_column, args.label_column, "--test") if args.test else None
    if test is not None:
        # the model answers only in the training labels: a --test label outside them would fail after training
        known = set(labels)
        unseen = sorted({label for label in test[1] if label not in known}, key=str)
        if unseen:
            raise DataError(f"--test {args.test}: label(s) {', '.join(map(repr, unseen))} do not occur in --train "
                            f"{args.train} (its labels: {', '.join(map(repr, sorted(known, key=str)))}); the model "
                            "can only answer in those: drop the rows with other labels from the test file, or add "
                            "examples of them to the training file")
    return {"classifier": classifier, "texts": texts, "labels": labels, "test": test}


def run_fit(args: argparse.Namespace) -> int:
    job = prepare_fit(args)
    classifier, texts, labels = job["classifier"], job["texts"], job["labels"]
    common.say(args, f"read {len(texts)} training texts from {args.train} ({len(set(labels))} classes)")
    with launch.distributed_training():
        common.setup_threads(args)
        classifier.fit(texts, labels, distributed=launch.in_worker())
    if not launch.is_main():
        return 0
    record = {"command": common.command_line(), "task": "TextClassifier",
              "data": {"train": args.train, "test": args.test, "text_column": args.text_column,
                       "label_column": args.label_column},
              "processes": launch.world_size(), "history": common.history_record(classifier.history)}
    evaluation = None
    if job["test"] is not None:
        evaluation = classifier.evaluate(*job["test"])
        record["evaluation"] = evaluation.to_dict()
    out = classifier.save(common.check_run_directory(args))
    common.write_run_record(out, record)
    epochs = len(classifier.history.history.get("loss", [])) if classifier.history else 0
    print(f"saved {out} ({epochs} epoch(s); classes {classifier.classes}; vocabulary {len(classifier.tokenizer)} "
          f"ids; {classifier.maxlen} tokens per text)", flush=True)
    if evaluation is not None:
        common.print_table(f"test set {args.test} ({len(job['test'][0])} texts):", evaluation.table())
    return 0


# -- predict / evaluate ----------------------------------------------------------------------------------

def _load(run: str):
    directory = common.run_directory(run)              # before the import of torch: a wrong path answers at once
    from grukit.tasks import TextClassifier

    return TextClassifier.load(directory), common.read_run_record(directory)


def run_predict(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    texts = list(args.texts)
    if args.file:
        lower = args.file.lower().removesuffix(".gz")
        if args.file != "-" and (lower.endswith(TABLE_SUFFIXES) or args.text_column):
            classifier_record = common.read_run_record(common.run_directory(args.run))
            column = args.text_column or classifier_record.get("data", {}).get("text_column", "text")
            texts += read_column(args.file, column)
        else:
            texts += common.lines_from(args.file, "--file")
    elif not texts:
        if sys.stdin.isatty():
            raise DataError("no texts to classify: pass them as arguments, with --file FILE, or on stdin "
                            "(one per line)")
        texts = common.lines_from("-", "stdin")
    if not texts:
        raise DataError("no texts to classify: the input holds no non-empty line")
    classifier, _ = _load(args.run)
    probabilities = classifier.predict_proba(texts, batch_size=args.batch_size)
    best = probabilities.argmax(axis=1)
    for text, row, index in zip(texts, probabilities, best):
        label = classifier.classes[index]
        if args.json:
            print(json.dumps({"text": text, "label": label,
                              "probabilities": {str(c): round(float(p), 6) for c, p in zip(classifier.classes, row)}}))
        else:
            shown = text if len(text) <= 80 else text[:77] + "..."
            print(f"{label}\t{row[index]:.3f}\t{shown}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    classifier, record = _load(args.run)
    data = record.get("data", {})
    text_column = args.text_column or data.get("text_column", "text")
    label_column = args.label_column or data.get("label_column", "label")
    texts, labels = read_labelled(args.test, text_column, label_column, "--test")
    result = classifier.evaluate(texts, labels)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        common.print_table(f"{args.test} ({len(texts)} texts):", result.table())
    return 0
