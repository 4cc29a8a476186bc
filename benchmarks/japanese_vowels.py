"""Multivariate sequence classification on JapaneseVowels (UEA): test accuracy of GRU, LSTM and tanh RNN.

    task:   grukit.tasks.SequenceClassifier with its defaults (this recipe), one per cell and seed
    data:   grukit.data.read_ts, 270 train / 370 test utterances, 12 LPC channels, lengths 7..29,
            9 speakers; every channel standardised with the mean and deviation of the train frames
    model:  Sequential([<Cell>(H) over the padded batch with its step mask -> the state at each
            utterance's last valid step -> Dropout -> Dense(9, softmax)]) (Keras-style initialisation)
    train:  Adam, cross-entropy, batches of 16 in a seeded shuffled order, Gaussian noise on the
            standardised inputs (regularisation for 270 training utterances)
    epochs: chosen by stratified k-fold cross-validation on the train set: the epoch with the lowest
            mean validation loss over the k folds; then the model is trained on all 270 utterances
            for that many epochs and scored on the test set. The test set is only read for the final
            score, never to choose anything.

Every cell is trained with several seeds in the same run (the seed fixes the folds, the initial
weights, the batch order and the noise); the table reports each seed's test accuracy and their mean.
Writes OUT/japanese_vowels.json and .md.

    python -m benchmarks.japanese_vowels
    python -m benchmarks.japanese_vowels --cells GRU --seeds 0 --max-epochs 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .accuracy_io import DEFAULT_OUT, SHARED_DATA, say, write_record

DATA = SHARED_DATA / "japanese-vowels"
LABELS = {"GRU": "GRU", "LSTM": "LSTM", "RNN": "tanh RNN"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.japanese_vowels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="GRU,LSTM,RNN", help="default %(default)s")
    parser.add_argument("--units", type=int, default=64, help="hidden units (default %(default)s)")
    parser.add_argument("--max-epochs", type=int, default=80,
                        help="longest training the cross-validation considers (default %(default)s)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="default %(default)s")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default %(default)s)")
    parser.add_argument("--dropout", type=float, default=0.3,
                        help="dropout on the final state before the linear layer (default %(default)s)")
    parser.add_argument("--noise", type=float, default=0.2,
                        help="std of Gaussian noise added to the standardised inputs in training (default %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="default %(default)s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA, help="folder of JapaneseVowels_{TRAIN,TEST}.ts")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def load(data: Path):
    """(train, test) TimeSeriesDatasets with the same class names."""
    from grukit.data import read_ts
    train = read_ts(data / "JapaneseVowels_TRAIN.ts")
    test = read_ts(data / "JapaneseVowels_TEST.ts")
    if train.class_names != test.class_names:
        sys.exit(f"error: train classes {train.class_names} differ from test classes {test.class_names}")
    return train, test


def run(cell: str, seed: int, train, test, args) -> dict:
    from grukit.tasks import SequenceClassifier
    start = time.perf_counter()
    classifier = SequenceClassifier(cell=cell.lower(), units=args.units, epochs=args.max_epochs, folds=args.folds,
                                    batch_size=args.batch_size, learning_rate=args.lr, dropout=args.dropout,
                                    noise=args.noise, seed=seed).fit(train)
    seconds = time.perf_counter() - start
    result = classifier.evaluate(test)
    epochs, curve = classifier.chosen_epochs, classifier.cv_curve
    test_accuracy = result.scores["accuracy"]
    say(f"{cell} seed {seed}: {epochs} epochs (cross-validation loss {curve[epochs - 1]:.4f}), "
        f"test accuracy {test_accuracy:.4f}, macro F1 {result.scores['f1']:.4f} ({seconds:.0f} s)")
    return {"cell": cell, "seed": seed, "parameters": classifier.model.count_params(),
            "epochs": epochs, "cv_loss": curve[epochs - 1], "cv_curve": curve,
            "test_accuracy": test_accuracy, "test_f1_macro": result.scores["f1"],
            "test_errors": round((1 - test_accuracy) * len(test)), "seconds": seconds}


def markdown(record: dict) -> str:
    lines = ["# JapaneseVowels: test accuracy (370 utterances, 9 speakers)", "",
             f"{record['date']}, {record['threads']} threads. grukit.tasks.SequenceClassifier: "
             f"{record['units']} units, Adam lr {record['lr']:g}, "
             f"batch {record['batch_size']}, dropout {record['dropout']:g}, input noise {record['noise']:g}; epochs "
             f"chosen by {record['folds']}-fold cross-validation on the train set (at most {record['max_epochs']}), "
             "then trained on all of it. Target (issue 5): GRU >= 97%.",
             "",
             "| model | parameters | epochs (CV) | " + " | ".join(f"seed {s}" for s in record["seeds"]) +
             " | mean | s per seed |",
             "|---|---:|---:|" + "---:|" * len(record["seeds"]) + "---:|---:|"]
    for cell in record["cells"]:
        runs = [r for r in record["results"] if r["cell"] == cell]
        cells = " | ".join(f"{100 * r['test_accuracy']:.1f}%" for r in runs)
        mean = 100 * float(np.mean([r["test_accuracy"] for r in runs]))
        seconds = float(np.median([r["seconds"] for r in runs]))
        epochs = ", ".join(str(r["epochs"]) for r in runs)
        lines.append(f"| {LABELS[cell]} | {runs[0]['parameters']:,} | {epochs} | {cells} | {mean:.1f}% | "
                     f"{seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if not (args.data / "JapaneseVowels_TRAIN.ts").is_file():
        sys.exit(f"error: no JapaneseVowels_TRAIN.ts in {args.data}; pass --data")
    torch.set_num_threads(args.threads)
    train, test = load(args.data)
    say(f"train {len(train)}, test {len(test)} utterances, {train.num_channels} channels, "
        f"{train.num_classes} classes")
    cells, seeds = args.cells.split(","), [int(s) for s in args.seeds.split(",")]
    results = [run(cell, seed, train, test, args) for cell in cells for seed in seeds]
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": args.threads, "units": args.units,
              "max_epochs": args.max_epochs, "folds": args.folds, "dropout": args.dropout, "noise": args.noise,
              "batch_size": args.batch_size, "lr": args.lr, "cells": cells, "seeds": seeds,
              "results": results}
    write_record(args.out, "japanese_vowels", record, markdown(record))


if __name__ == "__main__":
    main()
