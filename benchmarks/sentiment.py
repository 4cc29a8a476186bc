"""The tutorial sentiment model on real IMDB reviews: accuracy and time per epoch.

    Sequential([Input((200,)), Embedding(10_000, 128), <Cell>(128), Dense(1, sigmoid)])
    compile(adam, binary_crossentropy, accuracy); fit(batch_size=32) for --epochs epochs

Reads the 25,000 training and 25,000 test reviews from ../shared/data/imdb, tokenizes with
grukit.data (10,000-word vocabulary, 200 tokens, Keras's pre-padding), trains each requested cell
in the same run and reports test accuracy after every epoch and the seconds per epoch. Writes
OUT/sentiment.json and OUT/sentiment.md atomically.

    python -m benchmarks.sentiment --cells GRU,LSTM,SimpleRNN --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .report import write_atomic

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sentiment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="GRU,LSTM,SimpleRNN", help="grukit.layers cells (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mask-zero", action="store_true", help="Embedding(mask_zero=True): skip the padding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the imdb_*.csv.gz shards")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def load(data: Path):
    from grukit.data import WordTokenizer, pad_sequences, read_imdb
    texts, labels = read_imdb(data, split="train")
    test_texts, test_labels = read_imdb(data, split="test")
    tokenizer = WordTokenizer(num_words=10_000).fit(texts)
    x = pad_sequences(tokenizer.texts_to_sequences(texts), maxlen=200)
    x_test = pad_sequences(tokenizer.texts_to_sequences(test_texts), maxlen=200)
    return x, np.asarray(labels, np.float32)[:, None], x_test, np.asarray(test_labels, np.float32)[:, None]


def run_cell(cell: str, data, args) -> dict:
    from grukit import layers
    from grukit.models import Sequential
    x, y, x_test, y_test = data
    torch.manual_seed(args.seed)
    model = Sequential([layers.Input((200,)), layers.Embedding(10_000, 128, mask_zero=args.mask_zero),
                        getattr(layers, cell)(128), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    epochs = []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        model.fit(x, y, epochs=epoch + 1, initial_epoch=epoch, batch_size=32, seed=args.seed, verbose=0)
        seconds = time.perf_counter() - start
        result = model.evaluate(x_test, y_test, batch_size=256)
        epochs.append({"epoch": epoch + 1, "seconds": seconds, "test_accuracy": result["accuracy"],
                       "test_loss": result["loss"]})
        print(f"{cell} epoch {epoch + 1}: {seconds:.1f} s, test accuracy {result['accuracy']:.4f}",
              file=sys.stderr, flush=True)
    return {"cell": cell, "parameters": model.count_params(), "epochs": epochs,
            "best_test_accuracy": max(e["test_accuracy"] for e in epochs)}


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"error: no IMDB shards at {args.data}; pass --data")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = load(args.data)
    print(f"data ready in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    results = [run_cell(cell, data, args) for cell in args.cells.split(",")]
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": args.threads,
              "mask_zero": args.mask_zero, "seed": args.seed, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "sentiment.json", json.dumps(record, indent=2))
    lines = ["# Tutorial sentiment model on IMDB", "",
             f"{record['date']}, {args.threads} threads, mask_zero={args.mask_zero}, seed {args.seed}. "
             "Target (issue 4): >= 88.5% test accuracy within 3 epochs, < 30 s per epoch.", "",
             "| cell | parameters | " + " | ".join(f"epoch {e + 1}" for e in range(args.epochs)) + " | s/epoch |",
             "|---|---|" + "---|" * args.epochs + "---|"]
    for r in results:
        accuracies = " | ".join(f"{e['test_accuracy']:.4f}" for e in r["epochs"])
        median = float(np.median([e["seconds"] for e in r["epochs"]]))
        lines.append(f"| {r['cell']} | {r['parameters']:,} | {accuracies} | {median:.1f} |")
    write_atomic(args.out / "sentiment.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
