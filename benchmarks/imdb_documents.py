"""IMDB with one GRU layer through TextClassifier.for_documents: test accuracy of a few configurations.

    task:   grukit.tasks.TextClassifier.for_documents(cell="gru", seed=--seed, **overrides), one run per
            --config (e.g. --config pooling=max,maxlen=400); every other setting is the preset's
    data:   the 25,000 training and 25,000 test reviews of ../shared/data/imdb (grukit.data.read_imdb)
    fit:    the classifier holds out a stratified, seeded 10% of the training reviews (the preset's
            validation=0.1): its tokenizer and vocabulary see the other 90% only, and early stopping on
            the validation loss (patience 2, best weights restored) picks the epoch. The test reviews
            are read once per configuration, to score the selected model; nothing is chosen on them
            beyond which of the reported configurations becomes the preset's default.

Every configuration run is reported (test accuracy, F1 and ROC-AUC of the positive class, epochs
run, the epoch restored, minutes). Runs are added to OUT/imdb_documents.json (a run with the same
overrides and seed replaces the earlier one; --fresh starts a new file), and OUT/imdb_documents.md is
rewritten from it, atomically, after every run. The threads and OMP_WAIT_POLICY (default: unset,
torch's own default, which is faster since grukit's kernels run on torch's OpenMP team; the runs of
2026-11-30 in the results used PASSIVE) are set before torch is imported and recorded, with the
share of the CPUs other processes used during each run.

    python -m benchmarks.imdb_documents --config pooling=max,maxlen=400         # ~6-10 minutes on 2 cores
    python -m benchmarks.imdb_documents --config pooling=max --config pooling=mean,maxlen=600
    python -m benchmarks.imdb_documents --config pooling=last --limit 2000 --out /tmp/imdb   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from .accuracy_io import DEFAULT_OUT, SHARED_DATA, say, write_record

DATA = SHARED_DATA / "imdb"
NAME = "imdb_documents"
TARGET = 0.885   # issue 5: IMDB test accuracy with a single GRU layer


def _value(text: str):
    """A --config value: int, float, true/false/none, or the string itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_config(text: str) -> dict:
    """``"pooling=max,maxlen=400"`` -> ``{"pooling": "max", "maxlen": 400}`` (TextClassifier options)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{item!r} is not KEY=VALUE (e.g. pooling=max,maxlen=400)")
        overrides[key.strip()] = _value(value.strip())
    if not overrides:
        raise argparse.ArgumentTypeError("empty configuration; give KEY=VALUE pairs, e.g. pooling=max")
    return overrides


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.imdb_documents", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", dest="configs", action="append", type=parse_config, metavar="KEY=VALUE,...",
                        help="TextClassifier.for_documents overrides of one run, e.g. pooling=max,maxlen=400; "
                             "repeat for more runs (default: one run of pooling=max)")
    parser.add_argument("--seed", type=int, default=0,
                        help="weights, validation split, batch order (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--omp-wait-policy", choices=("passive", "active", "default"), default="default",
                        help="OMP_WAIT_POLICY, set before torch is imported; 'default' unsets it (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use only the first N training and N test reviews (a smoke run; not reported as IMDB)")
    parser.add_argument("--fresh", action="store_true", help="start a new results file instead of adding to it")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="folder of the imdb_*.csv.gz shards (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default %(default)s)")
    args = parser.parse_args(argv)
    args.configs = args.configs or [{"pooling": "max"}]
    if args.threads < 1 or (args.limit is not None and args.limit < 2):
        parser.error("--threads must be at least 1 and --limit at least 2")
    return args


def run(overrides: dict, train, test, args) -> dict:
    """Fit and score one configuration; its row of the results."""
    from grukit.tasks import TextClassifier

    from .machine import OtherLoad

    load = OtherLoad(args.cpus)
    started = time.perf_counter()
    classifier = TextClassifier.for_documents(**{"cell": "gru", "seed": args.seed, "verbose": 2, **overrides})
    with contextlib.redirect_stdout(sys.stderr):   # the per-epoch lines are progress
        classifier.fit(*train)
    fit_seconds = time.perf_counter() - started
    evaluation = classifier.evaluate(*test)
    seconds = time.perf_counter() - started
    history = classifier.history.history
    best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
    return {"overrides": overrides, "seed": args.seed, "model": evaluation.model_name,
            **{name: float(value) for name, value in evaluation.scores.items()}, "majority": evaluation.majority,
            "epochs_run": len(history["loss"]), "epoch_restored": best + 1,
            "val_loss": history["val_loss"][best], "val_accuracy": history["val_accuracy"][best],
            "parameters": classifier.model.count_params(), "vocabulary": len(classifier.tokenizer),
            "minutes": round(seconds / 60, 2), "fit_minutes": round(fit_seconds / 60, 2),
            "other_load": round(load.share(), 3), "threads": args.threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "history": history, "config": classifier.config.to_dict()}


def markdown(record: dict) -> str:
    settings, machine = record["settings"], record["machine"]
    lines = ["# IMDB, one GRU layer: TextClassifier.for_documents configurations", "",
             "`python -m benchmarks.imdb_documents` (grukit.tasks.TextClassifier.for_documents(cell=\"gru\"), "
             "every other setting the preset's unless the configuration overrides it). "
             f"{settings['train']:,} training reviews, of which a stratified, seeded 10% is held out for early "
             "stopping on the validation loss (patience 2, best weights restored) and never seen by the tokenizer; "
             f"{settings['test']:,} test reviews, read only to score each selected model. Target (issue 5): "
             f"{TARGET:.1%} test accuracy with a single GRU layer. F1 and ROC-AUC are of the positive class.", "",
             f"Machine: {machine['cpu_model']}, {settings['threads']['threads']} torch thread(s), "
             f"OMP_WAIT_POLICY={settings['threads']['environment']['OMP_WAIT_POLICY']}, torch "
             f"{machine['versions']['torch']}; shared with other work (other load: the share of these CPUs other "
             "processes used during the run).", ""]
    if settings.get("limit"):
        lines += [f"**Smoke run on the first {settings['limit']:,} reviews of each split, not IMDB figures.**", ""]
    lines += ["| configuration | model | test accuracy | F1 | ROC-AUC | epochs run | epoch restored | "
              "val accuracy | parameters | minutes | threads, OMP_WAIT_POLICY | other load | target met |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for row in record["runs"]:
        config = ", ".join(f"{key}={value}" for key, value in row["overrides"].items())
        met = "yes" if row["accuracy"] >= TARGET else "no"
        lines.append(f"| {config} (seed {row['seed']}) | {row['model']} | {row['accuracy']:.2%} | {row['f1']:.4f} | "
                     f"{row['auc']:.4f} | {row['epochs_run']} | {row['epoch_restored']} | {row['val_accuracy']:.2%} | "
                     f"{row['parameters']:,} | {row['minutes']:.1f} | {row['threads']}, {row['omp_wait_policy']} | "
                     f"{row['other_load']:.0%} | {met} |")
    lines += ["", "Rows in the order they were run; every run is listed. Minutes: wall time of the fit (tokenizer, "
              f"training, validation passes) and of scoring the {settings['test']:,} test reviews."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    from .machine import library_threads, machine_info, pin_threads

    threads = pin_threads(args.threads, args.omp_wait_policy)   # before torch and numba are imported
    args.cpus = threads["cpus"]
    import torch

    from grukit.data import read_imdb

    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        sys.exit(f"error: no IMDB data at {args.data}; pass --data (the folder of the imdb_*.csv.gz shards)")
    train, test = read_imdb(args.data, split="train"), read_imdb(args.data, split="test")
    if args.limit:
        train, test = (tuple(part[:args.limit] for part in split) for split in (train, test))
    say(f"IMDB: {len(train[0]):,} training and {len(test[0]):,} test reviews; {len(args.configs)} configuration(s); "
        f"{args.threads} thread(s), OMP_WAIT_POLICY={threads['environment']['OMP_WAIT_POLICY']}")
    path = args.out / f"{NAME}.json"
    record = None if args.fresh or not path.is_file() else json.loads(path.read_text(encoding="utf-8"))
    settings = {"train": len(train[0]), "test": len(test[0]), "limit": args.limit,
                "threads": {**threads, **library_threads()}}
    if record is None or record["settings"].get("limit") != args.limit:
        record = {"runs": []}
    record.update(machine=machine_info(), settings=settings, target=TARGET)
    for index, overrides in enumerate(args.configs, start=1):
        say(f"[{index}/{len(args.configs)}] for_documents(cell='gru', seed={args.seed}, {overrides})")
        row = run(overrides, train, test, args)
        record["runs"] = [r for r in record["runs"] if (r["overrides"], r["seed"]) != (overrides, args.seed)] + [row]
        write_record(args.out, NAME, record, markdown(record))
        say(f"[{index}/{len(args.configs)}] {overrides}: test accuracy {row['accuracy']:.2%}, F1 {row['f1']:.4f}, "
            f"ROC-AUC {row['auc']:.4f}; {row['epochs_run']} epochs, restored {row['epoch_restored']}; "
            f"{row['minutes']:.1f} min (other load {row['other_load']:.0%})")


if __name__ == "__main__":
    main()
