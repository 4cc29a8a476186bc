"""Sentence polarity (MR, Pang & Lee 2005): 10-fold cross-validation of grukit.tasks.TextClassifier
with random embeddings, against Kim (2014)'s CNN-rand (76.1%).

Data: ../shared/data/rt-polarity (5,331 positive + 5,331 negative sentences, read with
grukit.data.read_polarity). Folds: sklearn StratifiedKFold(--folds, shuffle=True,
random_state=--seed). In each fold the classifier sees only the training part: it holds out a
stratified 10% of it for validation, fits its tokenizer and vocabulary on the other 90%, and early
stopping on the validation loss (patience 2, best weights restored) picks the epoch. The test fold
is used once, to score the selected model.

Model: TextClassifier.for_sentences(cell=...): Embedding(vocabulary, 128, mask_zero) with dropout
0.4 -> Bidirectional(<Cell>(64)) -> dropout 0.5 -> Dense(1, sigmoid); words seen at least twice,
60 tokens; Adam 1e-3, batch 64, global clipnorm 5. Folds run in --jobs worker processes of
--threads torch threads each (on a shared 2-core machine two single-threaded workers beat one
two-threaded process by far). Writes OUT/polarity_cv.json and OUT/polarity_cv.md atomically after
every fold.

    python -m benchmarks.polarity_cv                          # GRU, 10 folds, ~13 minutes on 2 busy cores
    python -m benchmarks.polarity_cv --cells gru,lstm
    python -m benchmarks.polarity_cv --max-folds 2 --out /tmp/mr   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from .report import write_atomic

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt-polarity"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TARGET = 0.761   # Kim (2014), CNN-rand on MR, 10-fold CV
CELLS = ("gru", "lstm", "rnn", "mgu", "mingru")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.polarity_cv", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="gru", help=f"comma-separated, of {', '.join(CELLS)} (default %(default)s)")
    parser.add_argument("--folds", type=int, default=10, help="k of the stratified k-fold split (default %(default)s)")
    parser.add_argument("--max-folds", type=int, default=None,
                        help="run only the first M folds of the k (a smoke run); default all")
    parser.add_argument("--epochs", type=int, default=None, help="most epochs per fold (default: the preset's 20, "
                                                                  "early stopping ends sooner)")
    parser.add_argument("--seed", type=int, default=0, help="folds, validation split, weights (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at once, one process each "
                                                          "(default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default %(default)s)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of rt-polarity.pos/.neg (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default %(default)s)")
    args = parser.parse_args(argv)
    args.cells = [c.strip().lower() for c in args.cells.split(",") if c.strip()]
    unknown = sorted(set(args.cells) - set(CELLS))
    if unknown or not args.cells:
        parser.error(f"--cells: unknown {unknown}; choose from {', '.join(CELLS)}")
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    for name in ("jobs", "threads", "max_folds", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def run_fold(cell: str, fold: int, train: list[int], test: list[int], args_dict: dict) -> dict:
    """Train and score one fold in a worker process; returns its row."""
    from grukit.data import read_polarity
    from grukit.tasks import TextClassifier

    started = time.perf_counter()
    texts, labels = read_polarity(args_dict["data"])
    options = {"cell": cell, "seed": args_dict["seed"]}
    if args_dict["epochs"] is not None:
        options["epochs"] = args_dict["epochs"]
    classifier = TextClassifier.for_sentences(**options)
    classifier.fit([texts[i] for i in train], [labels[i] for i in train])
    evaluation = classifier.evaluate([texts[i] for i in test], [labels[i] for i in test])
    history = classifier.history.history
    best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
    return {"cell": cell, "fold": fold, **{k: float(v) for k, v in evaluation.scores.items()},
            "majority": evaluation.majority, "epochs_run": len(history["loss"]), "best_epoch": best + 1,
            "val_accuracy": history["val_accuracy"][best], "vocabulary": len(classifier.tokenizer),
            "train": len(train), "test": len(test), "seconds": round(time.perf_counter() - started, 1),
            "config": classifier.config.to_dict()}


def summary(rows: list[dict]) -> dict:
    accuracies = [r["accuracy"] for r in rows]
    return {"folds": len(rows), "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "min": min(accuracies), "max": max(accuracies),
            "f1": statistics.fmean(r["f1"] for r in rows), "auc": statistics.fmean(r["auc"] for r in rows),
            "epochs": statistics.fmean(r["epochs_run"] for r in rows),
            "fold_seconds": sum(r["seconds"] for r in rows)}


def markdown(result: dict) -> str:
    machine, settings = result["machine"], result["settings"]
    lines = ["# Sentence polarity (MR): 10-fold cross-validation, random embeddings", "",
             "`python -m benchmarks.polarity_cv` (grukit.tasks.TextClassifier.for_sentences). "
             f"{settings['examples']:,} sentences, StratifiedKFold({settings['folds']}, shuffle=True, "
             f"random_state={settings['seed']}). In each fold the tokenizer and vocabulary are fitted on the "
             "training part only (minus a stratified 10% validation split, which early stopping on the "
             "validation loss uses to pick the epoch); the test fold scores the selected model once. "
             f"Target: Kim (2014) CNN-rand, {TARGET:.1%}. Std is the sample standard deviation over folds.", "",
             f"Model: {settings['model']}.", "",
             f"Machine: {machine['processor'] or machine['machine']}, torch {machine['torch']}, {settings['jobs']} "
             f"worker process(es) x {settings['threads']} thread(s), shared with other work. Wall time "
             f"{result['wall_seconds'] / 60:.1f} min{' (partial run)' if result['partial'] else ''}.", "",
             "| cell | folds | mean accuracy ± std | min | max | mean F1 | mean ROC-AUC | mean epochs | "
             "wall minutes | target 76.1% met |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    previous_end = 0.0
    for cell, s in result["summary"].items():
        met = "yes" if s["mean"] >= TARGET else "**no**"
        minutes = (s["finished_at_seconds"] - previous_end) / 60
        previous_end = s["finished_at_seconds"]
        lines.append(f"| {cell.upper()} | {s['folds']} | {s['mean']:.2%} ± {s['std']:.2%} | {s['min']:.2%} | "
                     f"{s['max']:.2%} | {s['f1']:.4f} | {s['auc']:.4f} | {s['epochs']:.1f} | {minutes:.1f} | {met} |")
    lines += ["", "## Per fold", "",
              "| cell | fold | test accuracy | F1 | ROC-AUC | majority | epochs run | best epoch | val accuracy | "
              "vocabulary | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(result["folds"], key=lambda r: (r["cell"], r["fold"])):
        lines.append(f"| {r['cell'].upper()} | {r['fold']} | {r['accuracy']:.2%} | {r['f1']:.4f} | {r['auc']:.4f} | "
                     f"{r['majority']:.2%} | {r['epochs_run']} | {r['best_epoch']} | {r['val_accuracy']:.2%} | "
                     f"{r['vocabulary']:,} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, result: dict) -> None:
    write_atomic(out / "polarity_cv.json", json.dumps(result, indent=1) + "\n")
    write_atomic(out / "polarity_cv.md", markdown(result))


def main(argv=None) -> None:
    args = parse_args(argv)
    from sklearn.model_selection import StratifiedKFold

    import torch
    from grukit.data import read_polarity

    if not args.data.is_dir():
        sys.exit(f"error: no sentence polarity data at {args.data}; pass --data (the folder of rt-polarity.pos/.neg)")
    texts, labels = read_polarity(args.data)
    splits = list(StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(texts, labels))
    splits = splits[:args.max_folds] if args.max_folds else splits
    tasks = [(cell, fold, train.tolist(), test.tolist()) for cell in args.cells for fold, (train, test) in
             enumerate(splits)]
    args_dict = {"data": str(args.data), "seed": args.seed, "epochs": args.epochs}
    result = {"machine": {"python": platform.python_version(), "machine": platform.machine(),
                          "processor": platform.processor(), "torch": torch.__version__},
              "settings": {"folds": args.folds, "folds_run": len(splits), "seed": args.seed, "jobs": args.jobs,
                           "threads": args.threads, "examples": len(texts), "cells": args.cells,
                           "model": "Embedding(vocabulary, 128, mask_zero=True) -> Dropout(0.4) -> "
                                    "Bidirectional(<Cell>(64)) -> Dropout(0.5) -> Dense(1, sigmoid); words seen "
                                    "twice in the fold's training part, 60 tokens, Adam(1e-3, global_clipnorm=5), "
                                    "batch 64, up to 20 epochs, early stopping (val_loss, patience 2)"},
              "target": TARGET, "folds": [], "summary": {}, "partial": True, "wall_seconds": 0.0}
    say(f"MR: {len(texts):,} sentences; {len(tasks)} fold run(s) ({', '.join(args.cells)} x {len(splits)} of "
        f"{args.folds} folds) on {args.jobs} process(es) x {args.threads} thread(s)")
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")   # fresh interpreters: no forked torch/tokenizers thread pools
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_init_worker,
                             initargs=(args.threads,)) as pool:
        futures = [pool.submit(run_fold, *task, args_dict) for task in tasks]
        for done, future in enumerate(as_completed(futures), start=1):
            row = future.result()
            result["folds"].append(row)
            cell_rows = [r for r in result["folds"] if r["cell"] == row["cell"]]
            result["wall_seconds"] = round(time.perf_counter() - started, 1)
            # cells run one after the other, so a cell's time is from the previous cell's end to its last fold
            result["summary"][row["cell"]] = {**summary(cell_rows), "finished_at_seconds": result["wall_seconds"]}
            result["partial"] = done < len(tasks)
            write_results(args.out, result)
            s = result["summary"][row["cell"]]
            say(f"[{done}/{len(tasks)}] {row['cell'].upper()} fold {row['fold']}: test accuracy {row['accuracy']:.2%} "
                f"({row['epochs_run']} epochs, best {row['best_epoch']}, {row['seconds']:.0f} s); "
                f"{row['cell'].upper()} so far {s['mean']:.2%} ± {s['std']:.2%} over {s['folds']} fold(s); "
                f"{result['wall_seconds'] / 60:.1f} min elapsed")
    for cell, s in result["summary"].items():
        say(f"{cell.upper()}: {s['mean']:.2%} ± {s['std']:.2%} over {s['folds']} folds "
            f"(target {TARGET:.1%}: {'met' if s['mean'] >= TARGET else 'NOT met'})")
    say(f"wrote {args.out / 'polarity_cv.json'} and {args.out / 'polarity_cv.md'} "
        f"({result['wall_seconds'] / 60:.1f} min in all)")


if __name__ == "__main__":
    main()
