"""The accuracy cost of grukit's bfloat16 mode on real tasks: the same model trained in float32 and in
the bfloat16 mode, from the same initial weights, batch order and seed, scored on the same held-out data.

The bfloat16 mode (grukit/nn/bfloat16.py) is what a float32 grukit layer computes inside
``torch.autocast("cpu", dtype=torch.bfloat16)``: the input projection (forward and both gradients),
every step's recurrent product (forward and grad h) and the recurrent-weight gradient take bfloat16
operands with float32 accumulation and round their results to bfloat16, as torch's autocast does;
the gates, the state and the outputs stay float32. Only the recurrent layer's call
runs under autocast here; the embedding lookup (inside the layer, ``embedding=``), the nn.Linear head,
the loss (on ``y_pred.float()``), backward and the Adam step run outside it, in float32. The held-out
data are scored in the precision the model was trained in; the bfloat16-trained weights are also
scored in float32 (the JSON's ``metric_float32_eval``), which separates the training effect from the
inference effect.

Tasks (``--tasks``, each ``<data>-<cell>``), data from ../shared/data (a missing file skips its task):
  airline   airline passengers, 144 months: the last 24 held out; log, scaled on the training part,
            windows of 24 months -> the next 12 as changes from the last month (grukit.tasks.Forecaster's
            recipe, benchmarks/forecasting.py); <Cell>(64) -> Linear(12), MSE, Adam 1e-3, batch 16,
            200 epochs. Metric: MAE in passengers over the held-out windows (lower is better).
  sunspots  monthly sunspots, 2,820 months: the last 10% held out; scaled, 48 months -> the next 12;
            <Cell>(64) -> Linear(12), batch 64, 40 epochs (a fixed count: no early stopping). MAE in
            sunspots.
  imdb      aclImdb: a fixed random 5,000 of the training reviews, scored on a fixed random 5,000 test
            reviews; grukit.data.WordTokenizer(10,000 words, punctuation dropped) fitted on the 5,000,
            the last 200 tokens (post-padded, lengths= skips the padding); Embedding(10,000, 128) ->
            <Cell>(128) -> Linear(1), BCE with logits, batch 32, 3 epochs. Metric: test accuracy.
Every task runs for each seed (weights, batch order) in both precisions, float32 first, and reports
the mean, the sample standard deviation over seeds and every seed's value, and the difference
bfloat16 - float32 of the means and per seed (paired). s/epoch is the median training pass of all
epochs of a precision (the first includes Numba's compilation). Writes OUT/bf16_accuracy.json and
.md atomically (OUT/bf16_accuracy_quick.* with --quick).

    python -m benchmarks.bf16_accuracy                       # all tasks, 3 seeds, ~10 minutes on 2 cores
    python -m benchmarks.bf16_accuracy --quick --out /tmp/b  # reduced data and epochs, 1 seed, < 1 minute
    python -m benchmarks.bf16_accuracy --tasks airline-gru,imdb-lstm --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from grukit.nn import bfloat16

from .accuracy_io import DEFAULT_OUT, SHARED_DATA, say, write_record
from .machine import OtherLoad, machine_info

NAME = "bf16_accuracy"
PRECISIONS = ("float32", "bfloat16")
TASKS = ("airline-gru", "sunspots-gru", "imdb-gru", "airline-lstm", "sunspots-lstm", "imdb-lstm")
# Per forecasting series: file, columns, held-out stretch (months or a fraction), recipe, (full, quick) epochs.
SERIES = {
    "airline": {"file": "airline-passengers.csv", "columns": ("Month", "Passengers"), "test": 24,
                "lookback": 24, "horizon": 12, "log": True, "change": True, "batch": 16, "epochs": (200, 40)},
    "sunspots": {"file": "monthly-sunspots.csv", "columns": ("Month", "Sunspots"), "test": 0.1,
                 "lookback": 48, "horizon": 12, "log": False, "change": False, "batch": 64, "epochs": (40, 3)},
}
IMDB = {"reviews": (5000, 1000), "maxlen": 200, "words": 10_000, "embedding": 128, "units": 128, "batch": 32,
        "epochs": (3, 1)}


@dataclass
class Task:
    """Prepared data of one dataset: inputs and targets as tensors, the held-out inputs, and ``score``
    (the model's held-out outputs -> the metric)."""

    data: str
    description: str
    metric: str
    better: str               # "lower" or "higher"
    train: tuple              # (x, lengths or None, y)
    test: tuple               # (x, lengths or None)
    score: Callable[[torch.Tensor], float]
    loss: Callable
    net: dict                 # Net's arguments besides the cell
    batch: int
    epochs: int


class Net(nn.Module):
    """[embedding ->] a grukit GRU or LSTM -> nn.Linear on its final state. Only the recurrent layer's
    call runs under autocast (``bf16``); the head stays float32 outside it."""

    def __init__(self, cell: str, inputs: int, units: int, outputs: int, vocabulary: int | None = None):
        super().__init__()
        from grukit.nn import GRU, LSTM
        self.embedding = nn.Embedding(vocabulary, inputs) if vocabulary else None
        self.rnn = {"gru": GRU, "lstm": LSTM}[cell](inputs, units, batch_first=True)
        self.head = nn.Linear(units, outputs)

    def forward(self, x, lengths=None, bf16: bool = False):
        embedding = None if self.embedding is None else self.embedding.weight
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, state = self.rnn(x, lengths=lengths, embedding=embedding)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h[-1].float())


def forecasting(name: str, quick: bool) -> Task:
    from grukit.data.timeseries import SeriesScaler, make_windows, part_size, read_series
    spec = SERIES[name]
    values = read_series(SHARED_DATA / "timeseries" / spec["file"], *spec["columns"]).values   # (T, 1)
    test_start = len(values) - part_size(spec["test"], len(values), "test")
    transformed = np.log(values) if spec["log"] else values
    scaler = SeriesScaler("standard").fit(transformed[:test_start])
    scaled = scaler.transform(transformed)
    lookback, horizon = spec["lookback"], spec["horizon"]

    def windows(**span):
        w = make_windows(scaled, lookback, horizon, **span)
        anchor = w.x[:, -1] if spec["change"] else np.zeros((len(w), 1))   # (N, 1)
        return (torch.from_numpy((w.x - anchor[:, None]).astype(np.float32)),
                torch.from_numpy((w.y[..., 0] - anchor).astype(np.float32)), anchor)

    x, y, _ = windows(end=test_start)
    x_test, _, anchor = windows(start=test_start)
    actual = make_windows(values, lookback, horizon, start=test_start).y[..., 0]

    def mae(outputs: torch.Tensor) -> float:
        forecast = scaler.inverse_transform((outputs.double().numpy() + anchor)[..., None])[..., 0]
        return float(np.abs((np.exp(forecast) if spec["log"] else forecast) - actual).mean())

    return Task(name, f"{len(values)} months, trained on the first {test_start}, {len(x)} windows; scored on "
                      f"{len(actual)} windows whose {horizon} targets lie in the last {len(values) - test_start}; "
                      f"lookback {lookback}" + (", log values" if spec["log"] else "")
                      + (", predicting changes from the last month" if spec["change"] else ""),
                "MAE", "lower", (x, None, y), (x_test, None), mae, nn.functional.mse_loss,
                {"inputs": 1, "units": 64, "outputs": horizon}, spec["batch"], spec["epochs"][quick])


def imdb(quick: bool) -> Task:
    from grukit.data import WordTokenizer, pad_sequences, read_imdb
    count, maxlen = IMDB["reviews"][quick], IMDB["maxlen"]
    rng = np.random.default_rng(0)   # one fixed subset for every seed

    def subset(split: str):
        texts, labels = read_imdb(SHARED_DATA / "imdb", split)
        chosen = rng.choice(len(texts), count, replace=False)
        return [texts[i] for i in chosen], torch.tensor([labels[i] for i in chosen], dtype=torch.float32)

    (texts, y), (test_texts, test_y) = subset("train"), subset("test")
    tokenizer = WordTokenizer(num_words=IMDB["words"], punctuation=False).fit(texts)

    def encode(batch):
        ids = torch.from_numpy(pad_sequences(tokenizer.texts_to_sequences(batch), maxlen=maxlen, padding="post"))
        return ids, (ids != 0).sum(1).clamp(min=1)

    def accuracy(logits: torch.Tensor) -> float:
        return float(((logits[:, 0] > 0).float() == test_y).float().mean())

    return Task("imdb", f"{count:,} training reviews, {count:,} test reviews (random, fixed), "
                        f"{len(tokenizer):,} words, last {maxlen} tokens",
                "accuracy", "higher", (*encode(texts), y[:, None]), encode(test_texts), accuracy,
                nn.functional.binary_cross_entropy_with_logits,
                {"inputs": IMDB["embedding"], "units": IMDB["units"], "outputs": 1, "vocabulary": len(tokenizer)},
                IMDB["batch"], IMDB["epochs"][quick])


def missing_file(data: str) -> Path | None:
    """The first data file of ``data`` that is absent, or None."""
    needed = ([SHARED_DATA / "imdb" / "imdb_train_0.csv.gz", SHARED_DATA / "imdb" / "imdb_test_0.csv.gz"]
              if data == "imdb" else [SHARED_DATA / "timeseries" / SERIES[data]["file"]])
    return next((path for path in needed if not path.is_file()), None)


@functools.cache
def prepare(data: str, quick: bool) -> Task:
    return imdb(quick) if data == "imdb" else forecasting(data, quick)


def predict(model: Net, inputs: tuple, bf16: bool, batch: int = 500) -> torch.Tensor:
    x, lengths = inputs
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch], None if lengths is None else lengths[i:i + batch], bf16).float()
                          for i in range(0, len(x), batch)])


def run(task: Task, cell: str, precision: str, seed: int) -> dict:
    """Train from the seed's initial weights and batch order in one precision; score the held-out data."""
    bf16 = precision == "bfloat16"
    torch.manual_seed(seed)
    model = Net(cell, **task.net)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = np.random.default_rng(seed)
    x, lengths, y = task.train
    epoch_seconds, losses = [], []
    for _ in range(task.epochs):
        start, total = time.perf_counter(), 0.0
        for batch in np.array_split(order.permutation(len(x)), -(-len(x) // task.batch)):
            batch = torch.from_numpy(batch)
            y_pred = model(x[batch], None if lengths is None else lengths[batch], bf16)
            loss = task.loss(y_pred.float(), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        epoch_seconds.append(time.perf_counter() - start)
        losses.append(total / len(x))
    model.eval()
    record = {"task": f"{task.data}-{cell}", "precision": precision, "seed": seed, "epochs": task.epochs,
              "train_seconds": sum(epoch_seconds), "epoch_seconds": epoch_seconds, "final_loss": losses[-1],
              "metric": task.score(predict(model, task.test, bf16))}
    if bf16:
        record["metric_float32_eval"] = task.score(predict(model, task.test, False))
    return record


def summary(runs: list[dict], seeds: list[int]) -> dict:
    """Per precision: values by seed, mean, sample sd, median s/epoch; the differences bf16 - float32."""
    result = {}
    for precision in PRECISIONS:
        values = [next(r["metric"] for r in runs if r["precision"] == precision and r["seed"] == s) for s in seeds]
        epochs = [t for r in runs if r["precision"] == precision for t in r["epoch_seconds"]]
        result[precision] = {"values": values, "mean": statistics.fmean(values),
                             "sd": statistics.stdev(values) if len(values) > 1 else None,
                             "median_epoch_seconds": statistics.median(epochs)}
    paired = [b - f for f, b in zip(result["float32"]["values"], result["bfloat16"]["values"])]
    result["difference"] = {"mean": result["bfloat16"]["mean"] - result["float32"]["mean"], "paired": paired,
                            "paired_sd": statistics.stdev(paired) if len(paired) > 1 else None}
    return result


def _value(value: float, metric: str) -> str:
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.2f}"


def _signed(value: float, metric: str) -> str:
    return f"{100 * value:+.2f} pt" if metric == "accuracy" else f"{value:+.3f}"


def verdict(s: dict, metric: str, better: str) -> str:
    diff, sd = s["difference"]["mean"], s["float32"]["sd"]
    direction = "better" if (diff < 0) == (better == "lower") else "worse"
    if diff == 0:
        return "identical"
    text = f"bfloat16 {direction} by {_signed(abs(diff), metric).lstrip('+')}"
    if sd is None:
        return text + " (one seed: no spread to compare with)"
    return text + (" (within" if abs(diff) <= sd else " (**outside**") + f" the float32 seed sd {_value(sd, metric)})"


_BACKEND_TEXT = {
    "torch": "the mode's products ran through torch's bfloat16 matmul (oneDNN) on them, the per-step ones "
             "through oneDNN's brgemm microkernel inside the compiled loops",
    "mkl": "the mode's products ran through MKL's cblas_gemm_bf16bf16f32, which widens the operands to "
           "float32 itself (on AMD CPUs even where they have BF16 units), so the mode cannot be faster here",
    "fallback": "the mode's products ran as float32 GEMMs of the widened operands (MKL's bfloat16 GEMM was "
                "not found), so the mode cannot be faster here",
}


def markdown(record: dict) -> str:
    machine, seeds = record["machine"], record["seeds"]
    bf16_units = [f for f in machine["cpu_flags"] if f in ("avx512_bf16", "amx_bf16")]
    backend = record.get("bf16_backend", "torch" if bf16_units else "mkl")   # older records lack it
    lines = [f"# bfloat16 mode: accuracy cost on real tasks{' (--quick)' if record['quick'] else ''}", "",
             f"`{record['command']}`. {machine['date']} on {machine['cpu_model']} ({machine['usable_cpus']} usable "
             f"CPUs), torch.set_num_threads({record['threads']}); "
             + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
             + f". Wall time {record['total_seconds'] / 60:.1f} min; other processes used "
               f"{record['other_load']:.0%} of the CPUs.", "",
             "**This CPU " + (f"has BF16 units ({', '.join(bf16_units)})" if bf16_units else
                              "has no BF16 units (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)")
             + "**: " + (_BACKEND_TEXT[backend] if backend in _BACKEND_TEXT else f"the products ran on {backend}")
             + "; the times below say what the mode costs on this machine.", "",
             "Each task is trained in float32 and in grukit's bfloat16 mode (a float32 layer under "
             "`torch.autocast(\"cpu\", dtype=torch.bfloat16)`: bfloat16 operands, float32 accumulation and a "
             "bfloat16 result for the input projection, every step's recurrent product and the recurrent-weight "
             "gradient) from the same initial "
             "weights, batch order and seed, for a fixed number of epochs; only the recurrent layer runs under "
             "autocast. Held-out data are scored in the training precision. sd = sample standard deviation over "
             "seeds; difference = bfloat16 - float32 (paired: per seed). MAE in the series' units (lower is better); "
             "accuracy on held-out reviews (higher is better).", "",
             f"| task | metric | float32 mean ± sd | bfloat16 mean ± sd | difference of means | paired differences "
             f"| verdict | s/epoch float32 | s/epoch bfloat16 |",
             "|---|---|---:|---:|---:|---|---|---:|---:|"]
    for name, t in record["tasks"].items():
        s, metric = t["summary"], t["metric"]
        cells = []
        for precision in PRECISIONS:
            p = s[precision]
            cells.append(_value(p["mean"], metric) + ("" if p["sd"] is None else f" ± {_value(p['sd'], metric)}"))
        paired = ", ".join(_signed(d, metric) for d in s["difference"]["paired"])
        lines.append(f"| {name} | {metric} | {cells[0]} | {cells[1]} | {_signed(s['difference']['mean'], metric)} | "
                     f"{paired} | {verdict(s, metric, t['better'])} | {s['float32']['median_epoch_seconds']:.2f} | "
                     f"{s['bfloat16']['median_epoch_seconds']:.2f} |")
    lines += ["", "## Per seed", "",
              "The bfloat16 run's weights scored in float32 too (bf16-trained, float32 eval): the training effect "
              "alone. Final loss: the training loss of the last epoch (mean over its batches).", "",
              "| task | seed | float32 | bfloat16 | bf16-trained, float32 eval | final loss float32 | "
              "final loss bfloat16 | epochs | s float32 | s bfloat16 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in record["tasks"].items():
        for seed in seeds:
            f, b = (next(r for r in t["runs"] if r["seed"] == seed and r["precision"] == p) for p in PRECISIONS)
            lines.append(f"| {name} | {seed} | {_value(f['metric'], t['metric'])} | {_value(b['metric'], t['metric'])} "
                         f"| {_value(b['metric_float32_eval'], t['metric'])} | {f['final_loss']:.4f} | "
                         f"{b['final_loss']:.4f} | {f['epochs']} | {f['train_seconds']:.1f} | "
                         f"{b['train_seconds']:.1f} |")
    lines += ["", "## Tasks", ""] + [f"- {name}: {t['description']}." for name, t in record["tasks"].items()]
    if record["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in record["skipped"].items()) + "."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bf16_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="comma-separated <data>-<cell>, data in airline, sunspots, imdb and cell in gru, lstm "
                             "(default %(default)s)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; 0 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run under a minute: 40/3/1 epochs, 1,000 reviews each way, seed 0; "
                             "writes bf16_accuracy_quick.{json,md}")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default %(default)s)")
    args = parser.parse_args(argv)
    args.tasks = [t.strip().lower() for t in args.tasks.split(",") if t.strip()]
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    for task in args.tasks:
        data, _, cell = task.partition("-")
        if data not in (*SERIES, "imdb") or cell not in ("gru", "lstm"):
            parser.error(f"unknown task {task!r}; expected <data>-<cell>, e.g. {', '.join(TASKS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = OtherLoad(sorted(os.sched_getaffinity(0)))
    started = time.perf_counter()
    tasks, skipped = {}, {}
    for name in args.tasks:
        data, _, cell = name.partition("-")
        absent = missing_file(data)
        if absent:
            skipped[name] = f"no {absent}"
            say(f"{name}: skipped, no {absent}")
            continue
        task = prepare(data, args.quick)
        runs = []
        for seed in args.seeds:
            for precision in PRECISIONS:
                runs.append(run(task, cell, precision, seed))
                r = runs[-1]
                say(f"{name} {precision:8} seed {seed}: {r['epochs']} epochs in {r['train_seconds']:.1f} s, "
                    f"final loss {r['final_loss']:.4f}, held-out {task.metric} {_value(r['metric'], task.metric)}")
        tasks[name] = {"metric": task.metric, "better": task.better, "description": task.description,
                       "batch": task.batch, "epochs": task.epochs, "runs": runs, "summary": summary(runs, args.seeds)}
    record = {"command": " ".join(["python -m benchmarks.bf16_accuracy", *(sys.argv[1:] if argv is None else argv)]),
              "machine": machine_info(), "bf16_backend": bfloat16.BACKEND, "threads": args.threads,
              "quick": args.quick, "seeds": args.seeds,
              "total_seconds": time.perf_counter() - started, "other_load": load.share(),
              "tasks": tasks, "skipped": skipped}
    write_record(args.out, NAME + ("_quick" if args.quick else ""), record, markdown(record))


if __name__ == "__main__":
    main()
