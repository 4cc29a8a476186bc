"""Multivariate sequence classification on JapaneseVowels (UEA): test accuracy of GRU, LSTM and tanh RNN.

    data:   grukit.data.read_ts, 270 train / 370 test utterances, 12 LPC channels, lengths 7..29,
            9 speakers; every channel standardised with the mean and deviation of the train frames
    model:  grukit.nn.<cell>(12, H, batch_first=True)(x, lengths=lengths) -> the state at each
            utterance's last valid step -> dropout -> Linear(H, 9)
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


class Classifier(torch.nn.Module):
    """Recurrent layer over the padded batch (with lengths) and a linear layer on the last valid state."""

    def __init__(self, cell: str, channels: int, hidden: int, classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        import grukit.nn as gnn
        layer = {"GRU": gnn.GRU, "LSTM": gnn.LSTM, "RNN": gnn.RNN}[cell]
        self.recurrent = layer(channels, hidden, batch_first=True)
        self.readout = torch.nn.Linear(hidden, classes)

    def forward(self, x, lengths):
        _, state = self.recurrent(x, lengths=lengths)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.readout(self.dropout(h_n[-1]))


def load(data: Path):
    """Standardised (x_train, len_train, y_train, x_test, len_test, y_test), class names."""
    from grukit.data import read_ts
    train = read_ts(data / "JapaneseVowels_TRAIN.ts")
    test = read_ts(data / "JapaneseVowels_TEST.ts")
    if train.class_names != test.class_names:
        sys.exit(f"error: train classes {train.class_names} differ from test classes {test.class_names}")
    frames = np.concatenate(train.sequences)  # only the train frames set the scale
    mean, std = frames.mean(axis=0), frames.std(axis=0)
    arrays = []
    for split in (train, test):
        scaled = type(split)([(s - mean) / std for s in split.sequences], split.labels, split.class_names)
        x, lengths = scaled.padded()
        arrays += [torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(split.labels)]
    return arrays, train


def accuracy(model, x, lengths, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x, lengths).argmax(-1) == y).float().mean())


def stratified_folds(y: torch.Tensor, folds: int, seed: int) -> list[torch.Tensor]:
    """``folds`` disjoint index sets covering ``y``, each with about 1/folds of every class."""
    generator = torch.Generator().manual_seed(seed)
    parts = [[] for _ in range(folds)]
    for label in torch.unique(y):
        members = torch.nonzero(y == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        for k in range(folds):
            parts[k].append(members[k::folds])
    return [torch.cat(p).sort().values for p in parts]


def train(cell: str, seed: int, data, classes: int, epochs: int, args, validation=None) -> tuple:
    """Train for ``epochs``; returns (model, validation loss after every epoch or [])."""
    x, lengths, y = data
    torch.manual_seed(seed)
    model = Classifier(cell, x.shape[-1], args.units, classes, args.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), args.batch_size):
            batch = order[i:i + args.batch_size]
            longest = int(lengths[batch].max())  # trim the batch's padding
            inputs = x[batch, :longest]
            if args.noise:
                inputs = inputs + args.noise * torch.randn(inputs.shape, generator=generator)
            loss = torch.nn.functional.cross_entropy(model(inputs, lengths[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if validation is not None:
            model.eval()
            with torch.no_grad():
                x_valid, lengths_valid, y_valid = validation
                curve.append(float(torch.nn.functional.cross_entropy(model(x_valid, lengths_valid), y_valid)))
    return model, curve


def run(cell: str, seed: int, arrays, classes: int, args) -> dict:
    x, lengths, y, x_test, lengths_test, y_test = arrays
    start = time.perf_counter()
    curves = []
    for k, held in enumerate(stratified_folds(y, args.folds, seed)):
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[held] = False
        _, curve = train(cell, seed, (x[keep], lengths[keep], y[keep]), classes, args.max_epochs, args,
                         validation=(x[held], lengths[held], y[held]))
        curves.append(curve)
        best = int(np.argmin(curve))
        say(f"{cell} seed {seed} fold {k + 1}/{args.folds}: lowest validation loss {curve[best]:.4f} at epoch "
            f"{best + 1} ({time.perf_counter() - start:.0f} s)")
    mean_curve = np.mean(curves, axis=0)
    epochs = int(np.argmin(mean_curve)) + 1
    model, _ = train(cell, seed, (x, lengths, y), classes, epochs, args)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(model, x_test, lengths_test, y_test)
    say(f"{cell} seed {seed}: {epochs} epochs (cross-validation loss {mean_curve[epochs - 1]:.4f}), "
        f"test accuracy {test_accuracy:.4f}")
    return {"cell": cell, "seed": seed, "parameters": sum(p.numel() for p in model.parameters()),
            "epochs": epochs, "cv_loss": float(mean_curve[epochs - 1]), "cv_curve": mean_curve.tolist(),
            "test_accuracy": test_accuracy, "test_errors": round((1 - test_accuracy) * len(y_test)),
            "seconds": seconds}


def markdown(record: dict) -> str:
    lines = ["# JapaneseVowels: test accuracy (370 utterances, 9 speakers)", "",
             f"{record['date']}, {record['threads']} threads. {record['units']} units, Adam lr {record['lr']:g}, "
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
    arrays, train = load(args.data)
    say(f"train {len(arrays[0])}, test {len(arrays[3])} utterances, {train.num_channels} channels, "
        f"{train.num_classes} classes")
    cells, seeds = args.cells.split(","), [int(s) for s in args.seeds.split(",")]
    results = [run(cell, seed, arrays, train.num_classes, args) for cell in cells for seed in seeds]
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": args.threads, "units": args.units,
              "max_epochs": args.max_epochs, "folds": args.folds, "dropout": args.dropout, "noise": args.noise,
              "batch_size": args.batch_size, "lr": args.lr, "cells": cells, "seeds": seeds,
              "results": results}
    write_record(args.out, "japanese_vowels", record, markdown(record))


if __name__ == "__main__":
    main()
