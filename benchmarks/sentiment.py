"""The tutorial sentiment model on real IMDB reviews: accuracy per epoch and time per epoch, grukit
against Keras 3 (JAX backend) and plain PyTorch, in one run.

    Sequential([Input((200,)), Embedding(10_000, 128), <Cell>(128), Dense(1, sigmoid)])
    compile("adam", "binary_crossentropy", ["accuracy"]); fit(batch_size=32) for --epochs epochs

Data: the 25,000 training and 25,000 test reviews in ../shared/data/imdb, tokenized once with
grukit.data.WordTokenizer(num_words=10_000) and cut to 200 tokens with pad_sequences; every
model below gets the same integer arrays. The last --validation-split of the training reviews
(Keras's validation_split: the end of the list, before shuffling) is held out, and
EarlyStopping(monitor=--monitor, restore_best_weights=True) picks the epoch: the "selected" test
accuracy is that of the restored weights. The test set is never used for selection; the test
accuracy after every epoch is reported beside it.

Rows, each trained from scratch with the same data and seed:
  grukit   grukit.models.Sequential with grukit.layers.GRU / SimpleRNN / LSTM (--cells)
  keras    keras.Sequential with keras.layers.Embedding / GRU / Dense, KERAS_BACKEND=jax, in a
           subprocess (the backend must be chosen before Keras is imported); its epoch time is
           measured on --keras-batches batches after a compiling pass, and it trains fully only if
           its epochs fit in --keras-budget seconds
  torch    torch.nn.Embedding + torch.nn.GRU + torch.nn.Linear, a hand-written loop, torch.optim.Adam
           with torch's defaults; its epoch time is measured on --torch-batches batches and
           extrapolated, and it trains fully only if 3 such epochs fit in --torch-budget seconds
A peer that is skipped still gets its row, saying why; extrapolated times are marked as such.

s/epoch is the training pass only (first batch to last, the validation pass excluded), median
over the epochs. The machine is shared: the share of the CPUs used by other processes during each
row is recorded, and the times carry that noise. Writes OUT/sentiment.json and OUT/sentiment.md
atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
MAXLEN, VOCABULARY, UNITS, EMBEDDING, BATCH = 200, 10_000, 128, 128, 32
TARGET = 0.885
NOTICEABLE_LOAD = 0.05   # other processes' share of the CPUs from which the report warns about the times
PEERS = ("keras", "torch")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sentiment", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m benchmarks.sentiment                       # the full comparison, ~1 hour\n"
               "  python -m benchmarks.sentiment --cells GRU --peers none --out /tmp/s\n"
               "  python -m benchmarks.sentiment --punctuation keep --truncating post --no-mask-zero")
    parser.add_argument("--cells", default="GRU,SimpleRNN,LSTM",
                        help="grukit.layers cells, comma-separated, or 'none' (default %(default)s)")
    parser.add_argument("--peers", default="keras,torch",
                        help="peers for the GRU row: keras, torch, comma-separated, or 'none' (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="weights, batch order (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default %(default)s)")
    text = parser.add_argument_group("text preparation")
    text.add_argument("--punctuation", choices=("keep", "drop"), default="drop",
                      help="punctuation marks as tokens, or dropped as Keras's tokenizers do (default %(default)s)")
    text.add_argument("--truncating", choices=("pre", "post"), default="pre",
                      help="pre keeps a review's last 200 tokens, post its first 200 (default %(default)s)")
    text.add_argument("--padding", choices=("pre", "post"), default="pre",
                      help="side of the zeros for short reviews (default %(default)s)")
    text.add_argument("--mask-zero", action=argparse.BooleanOptionalAction, default=True,
                      help="Embedding(mask_zero=True): the recurrent layer skips the padding (default on)")
    parser.add_argument("--bucket-by-length", action="store_true",
                        help="grukit rows: fit(bucket_by_length=True), batches of similar length, each run only "
                             "up to its longest review; results go to sentiment_bucketed.{json,md}")
    selection = parser.add_argument_group("epoch selection")
    selection.add_argument("--validation-split", type=float, default=0.1,
                           help="last fraction of the training reviews held out for selection; 0 trains on all "
                                "and selects nothing (default %(default)s)")
    selection.add_argument("--monitor", choices=("val_loss", "val_accuracy"), default="val_loss",
                           help="what EarlyStopping(restore_best_weights=True) watches (default %(default)s)")
    peers = parser.add_argument_group("peers")
    peers.add_argument("--keras-batches", type=int, default=100,
                       help="batches timed for Keras's s/epoch, after a compiling pass (default %(default)s)")
    peers.add_argument("--keras-budget", type=float, default=1800.0,
                       help="train Keras fully only if all its epochs take at most this many seconds by "
                            "the extrapolation (default %(default)s)")
    peers.add_argument("--torch-batches", type=int, default=100,
                       help="batches timed for plain PyTorch's s/epoch (default %(default)s)")
    peers.add_argument("--torch-budget", type=float, default=900.0,
                       help="train plain PyTorch fully only if all its epochs take at most this many "
                            "seconds by the extrapolation (default %(default)s)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the imdb_*.csv.gz shards")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.cells = [] if args.cells == "none" else [c.strip() for c in args.cells.split(",") if c.strip()]
    args.peers = [] if args.peers == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    for cell in args.cells:
        if cell not in ("GRU", "SimpleRNN", "LSTM"):
            parser.error(f"--cells: unknown cell {cell!r}; use GRU, SimpleRNN, LSTM")
    for peer in args.peers:
        if peer not in PEERS:
            parser.error(f"--peers: unknown peer {peer!r}; use {', '.join(PEERS)} or none")
    if not 0.0 <= args.validation_split < 1.0:
        parser.error(f"--validation-split must lie in [0, 1), got {args.validation_split}")
    if args.epochs < 1 or args.threads < 1:
        parser.error("--epochs and --threads must be at least 1")
    return args


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------

def load(args) -> dict:
    """Integer arrays for every model: x/y (training part), x_val/y_val (held out), x_test/y_test."""
    import numpy as np

    from grukit.data import WordTokenizer, pad_sequences, read_imdb
    texts, labels = read_imdb(args.data, split="train")
    test_texts, test_labels = read_imdb(args.data, split="test")
    tokenizer = WordTokenizer(num_words=VOCABULARY, punctuation=args.punctuation == "keep").fit(texts)

    def prepare(items):
        sequences = tokenizer.texts_to_sequences(items)
        lengths = np.array([len(s) for s in sequences])
        x = pad_sequences(sequences, maxlen=MAXLEN, padding=args.padding, truncating=args.truncating)
        return x, lengths

    x, lengths = prepare(texts)
    x_test, _ = prepare(test_texts)
    y = np.asarray(labels, np.float32)[:, None]
    y_test = np.asarray(test_labels, np.float32)[:, None]
    train_count = int(np.floor(len(x) * (1.0 - args.validation_split)))
    data = {"x": x[:train_count], "y": y[:train_count], "x_val": x[train_count:], "y_val": y[train_count:],
            "x_test": x_test, "y_test": y_test}
    data["summary"] = {
        "tokenizer": repr(tokenizer), "train": train_count, "validation": len(x) - train_count,
        "test": len(x_test), "median_tokens": float(np.median(lengths)),
        "share_longer_than_maxlen": float(np.mean(lengths > MAXLEN)),
        "oov_share": float(np.mean(x[x != 0] == 1))}
    return data


# -- grukit ----------------------------------------------------------------------------------------

def _epoch_clock(test_eval):
    """A callback that times each epoch's training pass and evaluates the test set after it."""
    from grukit.train.callbacks import Callback

    class EpochClock(Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = self.last_batch = time.perf_counter()

        def on_batch_end(self, batch, logs=None):
            self.last_batch = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            record = {"epoch": epoch + 1, "seconds": self.last_batch - self.start,
                      "seconds_with_validation": time.perf_counter() - self.start,
                      "train_loss": logs.get("loss"), "train_accuracy": logs.get("accuracy"),
                      "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy")}
            record.update(test_eval())
            self.epochs.append(record)
            progress(_epoch_line(self.label, record))

    return EpochClock()


def _epoch_line(label: str, record: dict) -> str:
    val = (f", val loss {record['val_loss']:.4f} accuracy {record['val_accuracy']:.4f}"
           if record.get("val_loss") is not None else "")
    return (f"  {label} epoch {record['epoch']}: {record['seconds']:.1f} s{val}, "
            f"test accuracy {record['test_accuracy']:.4f}")


def _selected(epochs: list[dict], monitor: str) -> int | None:
    """The epoch (1-based) EarlyStopping(restore_best_weights=True) keeps: first best of ``monitor``."""
    values = [e.get(monitor) for e in epochs]
    if any(v is None for v in values):
        return None
    best = min(values) if monitor.endswith("loss") else max(values)
    return values.index(best) + 1


def run_grukit(cell: str, data: dict, args) -> dict:
    import torch

    from grukit import layers
    from grukit.models import Sequential
    from grukit.train.callbacks import EarlyStopping
    torch.manual_seed(args.seed)
    model = Sequential([layers.Input((MAXLEN,)), layers.Embedding(VOCABULARY, EMBEDDING, mask_zero=args.mask_zero),
                        getattr(layers, cell)(UNITS), layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])

    def test_eval():
        result = model.evaluate(data["x_test"], data["y_test"], batch_size=256)
        return {"test_accuracy": result["accuracy"], "test_loss": result["loss"]}

    clock = _epoch_clock(test_eval)
    clock.label = f"grukit {cell}"
    callbacks = [clock]
    validation = None
    if args.validation_split > 0:
        validation = (data["x_val"], data["y_val"])
        callbacks.append(EarlyStopping(monitor=args.monitor, patience=args.epochs, restore_best_weights=True))
    model.fit(data["x"], data["y"], epochs=args.epochs, batch_size=BATCH, seed=args.seed, verbose=0,
              validation_data=validation, callbacks=callbacks, bucket_by_length=args.bucket_by_length)
    row = {"impl": "grukit", "layer": f"grukit.layers.{cell}", "cell": cell, "parameters": model.count_params(),
           "epochs": clock.epochs}
    if validation is not None:
        restored = test_eval()
        row.update(selected_epoch=_selected(clock.epochs, args.monitor), selected_test_accuracy=restored["test_accuracy"])
        progress(f"  grukit {cell}: restored epoch {row['selected_epoch']} ({args.monitor}), "
                 f"test accuracy {restored['test_accuracy']:.4f}")
    return row


# -- Keras 3 on JAX (subprocess) -------------------------------------------------------------------

def run_keras(data: dict, args, notes: list[str]) -> dict:
    import numpy as np
    row = {"impl": "keras", "layer": "keras.layers.GRU (JAX backend)", "cell": "GRU", "epochs": []}
    with tempfile.TemporaryDirectory(prefix="grukit-sentiment-") as folder:
        arrays = Path(folder) / "arrays.npz"
        np.savez(arrays, **{k: v for k, v in data.items() if k != "summary"})
        request = {"arrays": str(arrays), "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
                   "mask_zero": args.mask_zero, "monitor": args.monitor, "maxlen": MAXLEN,
                   "vocabulary": VOCABULARY, "embedding": EMBEDDING, "units": UNITS, "batch_size": BATCH,
                   "validate": args.validation_split > 0, "timed_batches": args.keras_batches,
                   "budget_seconds": args.keras_budget}
        completed = subprocess.run([sys.executable, "-m", "benchmarks.keras_sentiment", json.dumps(request)],
                                   cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "KERAS_BACKEND": "jax"})
    if completed.returncode != 0:
        notes.append(f"Keras/JAX peer failed (exit {completed.returncode}); see the run's stderr")
        row["not_run"] = f"failed (exit {completed.returncode})"
        return row
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    row.update(answer)
    return row


# -- plain PyTorch ---------------------------------------------------------------------------------

class TorchSentiment:
    """torch.nn.Embedding -> torch.nn.GRU -> torch.nn.Linear, torch's default initializers. With
    post-padding and a mask the GRU runs on packed sequences (it stops at each review's end);
    with pre-padding torch has no way to skip the leading zeros, so it reads them."""

    def __new__(cls, packed: bool):
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = torch.nn.Embedding(VOCABULARY, EMBEDDING)
                self.gru = torch.nn.GRU(EMBEDDING, UNITS, batch_first=True)
                self.linear = torch.nn.Linear(UNITS, 1)

            def forward(self, x):
                embedded = self.embedding(x)
                if packed:
                    lengths = (x != 0).sum(1).clamp(min=1).cpu()
                    embedded = torch.nn.utils.rnn.pack_padded_sequence(embedded, lengths, batch_first=True,
                                                                       enforce_sorted=False)
                _, h = self.gru(embedded)
                return self.linear(h[-1])          # logits; the sigmoid is inside the loss

        return Model()


def run_torch(data: dict, args, notes: list[str]) -> dict:
    import copy
    import math

    import numpy as np
    import torch
    packed = args.mask_zero and args.padding == "post"
    torch.manual_seed(args.seed)
    model = TorchSentiment(packed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    steps = math.ceil(len(x) / BATCH)
    row = {"impl": "torch", "layer": "torch.nn.GRU" + (" (packed sequences)" if packed else ""), "cell": "GRU",
           "parameters": sum(p.numel() for p in model.parameters()), "epochs": [], "steps_per_epoch": steps}
    if args.mask_zero and not packed:
        notes.append("plain PyTorch reads the leading padding (pre-padding cannot be packed); grukit and Keras "
                     "skip it with the mask")

    def evaluate(xs, ys):
        model.eval()
        correct, total_loss = 0, 0.0
        with torch.no_grad():
            for start in range(0, len(xs), 256):
                logits = model(torch.from_numpy(xs[start:start + 256]))
                target = torch.from_numpy(ys[start:start + 256])
                total_loss += float(loss_fn(logits, target)) * len(target)
                correct += int(((logits > 0).float() == target).sum())
        model.train()
        return total_loss / len(xs), correct / len(xs)

    def train_batches(order, count):
        start = time.perf_counter()
        for step in range(count):
            index = order[step * BATCH:(step + 1) * BATCH]
            optimizer.zero_grad()
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(x), generator=generator)
    timed = min(args.torch_batches, steps)
    seconds = train_batches(order, timed)
    per_epoch = seconds / timed * steps
    row.update(timed_batches=timed, timed_seconds=seconds, extrapolated_seconds=per_epoch)
    progress(f"  torch GRU: {timed} batches in {seconds:.1f} s -> {per_epoch:.0f} s per epoch (extrapolated)")
    if per_epoch * args.epochs > args.torch_budget:
        row["not_run"] = (f"{args.epochs} epochs would take ~{per_epoch * args.epochs / 60:.0f} min "
                          f"(> --torch-budget {args.torch_budget:.0f} s)")
        return row
    # Full training: a fresh model, so the timed batches do not count as training.
    torch.manual_seed(args.seed)
    model = TorchSentiment(packed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    best, best_state, best_epoch = None, None, None
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=generator)
        record = {"epoch": epoch + 1, "seconds": train_batches(order, steps)}
        if args.validation_split > 0:
            record["val_loss"], record["val_accuracy"] = evaluate(data["x_val"], data["y_val"])
            value = record[args.monitor]
            better = best is None or (value < best if args.monitor.endswith("loss") else value > best)
            if better:
                best, best_state, best_epoch = value, copy.deepcopy(model.state_dict()), epoch + 1
        record["test_loss"], record["test_accuracy"] = evaluate(data["x_test"], data["y_test"])
        row["epochs"].append(record)
        progress(_epoch_line("torch GRU", record))
    if best_state is not None:
        model.load_state_dict(best_state)
        row.update(selected_epoch=best_epoch, selected_test_accuracy=evaluate(data["x_test"], data["y_test"])[1])
    return row


# -- report ----------------------------------------------------------------------------------------

def _median(values):
    values = sorted(values)
    n = len(values)
    return (values[n // 2] + values[(n - 1) // 2]) / 2 if n else None


def _load_sentence(share: float) -> str:
    """What other processes took of the CPUs; the warning only where it is enough to move the times."""
    if share < NOTICEABLE_LOAD:
        return f"Other processes used {share:.0%} of these CPUs over the run (per row below)."
    return (f"Other processes were running: they used {share:.0%} of these CPUs over the run (per row below), "
            "so the s/epoch figures are inflated and noisy.")


def markdown(record: dict, args) -> str:
    setup = record["setup"]
    lines = ["# Tutorial sentiment model on IMDB", "",
             f"{record['date']}; {record['machine']['cpu_model']}, {args.threads} threads "
             f"(torch {record['threads']['torch.get_num_threads']}, numba {record['threads']['numba.get_num_threads']}"
             f"; Keras/JAX pinned to CPUs {record['threads'].get('keras_cpus', 'n/a')}). "
             + _load_sentence(record['other_load']['whole_run']), "",
             f"Data: {setup['train']:,} training reviews, {setup['validation']:,} held out for epoch selection "
             f"(the end of the training list), {setup['test']:,} test reviews. {setup['tokenizer']}; "
             f"{MAXLEN} tokens, truncating='{args.truncating}', padding='{args.padding}', "
             f"mask_zero={args.mask_zero}; median review {setup['median_tokens']:.0f} tokens, "
             f"{setup['share_longer_than_maxlen']:.0%} longer than {MAXLEN}. Seed {args.seed}, batch {BATCH}, "
             f"Adam (Keras defaults in grukit and Keras, torch defaults in plain PyTorch)."
             + (" grukit rows: fit(bucket_by_length=True)." if args.bucket_by_length else ""),
             "",
             f"Target (issue 4): >= {TARGET:.1%} test accuracy within 3 epochs. \"selected\" = the test accuracy "
             f"of the weights EarlyStopping(monitor='{args.monitor}', restore_best_weights=True) restored "
             "(chosen on the held-out training reviews, never on the test set).", "",
             "| model | parameters | " + " | ".join(f"epoch {e + 1}" for e in range(args.epochs))
             + " | selected (epoch) | s/epoch | other load | note |",
             "|---|---|" + "---|" * args.epochs + "---|---|---|---|"]
    for row in record["results"]:
        cells = []
        for e in range(args.epochs):
            epochs = row.get("epochs", [])
            cells.append(f"{epochs[e]['test_accuracy']:.2%}" if e < len(epochs) else "–")
        selected = (f"**{row['selected_test_accuracy']:.2%}** ({row['selected_epoch']})"
                    if row.get("selected_test_accuracy") is not None else "–")
        seconds = _median([e["seconds"] for e in row.get("epochs", [])])
        if seconds is not None:
            speed = f"{seconds:.0f}"
        elif row.get("extrapolated_seconds") is not None:
            speed = f"~{row['extrapolated_seconds']:.0f} (extrapolated from {row['timed_batches']} batches)"
        else:
            speed = "–"
        notes = []
        if row.get("not_run"):
            notes.append(f"accuracy not run: {row['not_run']}")
        if row.get("extrapolated_seconds") is not None and seconds is not None:
            notes.append(f"{row['timed_batches']}-batch estimate was {row['extrapolated_seconds']:.0f} s")
        if row.get("note"):
            notes.append(row["note"])
        load = row.get("other_load")
        parameters = f"{row['parameters']:,}" if row.get("parameters") else "–"
        name = f"grukit {row['cell']}" if row["impl"] == "grukit" else row["layer"]
        lines.append(f"| {name} "
                     f"| {parameters} | " + " | ".join(cells)
                     + f" | {selected} | {speed} | {'–' if load is None else f'{load:.0%}'} | {'; '.join(notes)} |")
    if record["notes"]:
        lines += [""] + [f"- {note}" for note in record["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"error: no IMDB shards at {args.data}; pass --data")
    from .machine import THREADS_ENV, OtherLoad, library_threads, machine_info
    for name in THREADS_ENV:           # before torch and numba are imported
        os.environ[name] = str(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    from .report import write_atomic

    cpus = sorted(os.sched_getaffinity(0))
    whole_run = OtherLoad(cpus)
    start = time.perf_counter()
    data = load(args)
    progress(f"data ready in {time.perf_counter() - start:.1f} s: {data['summary']}")
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
              "threads": {"requested": args.threads, **library_threads()},
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "setup": data["summary"], "results": [], "notes": [], "other_load": {}}

    stem = "sentiment_bucketed" if args.bucket_by_length else "sentiment"

    def write():
        args.out.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out / f"{stem}.json", json.dumps(record, indent=2))
        text = markdown(record, args)
        write_atomic(args.out / f"{stem}.md", text)
        return text

    def measured(label, function, *extra):
        progress(label)
        load = OtherLoad(cpus)
        row = function(*extra)
        row["other_load"] = record["other_load"][label] = load.share()
        record["results"].append(row)
        record["other_load"]["whole_run"] = whole_run.share()
        write()                     # after every row, so an interrupted run keeps what it measured

    # GRU first with its peers, then the other cells.
    cells = sorted(args.cells, key=lambda cell: cell != "GRU")
    for cell in cells[:1] if cells and cells[0] == "GRU" else []:
        measured(f"grukit {cell}", run_grukit, cell, data, args)
    if "keras" in args.peers:
        measured("keras GRU", run_keras, data, args, record["notes"])
        record["threads"]["keras_cpus"] = ",".join(map(str, record["results"][-1].get("cpus", [])))
    else:
        record["results"].append({"impl": "keras", "layer": "keras.layers.GRU (JAX backend)", "cell": "GRU",
                                  "not_run": "--peers excluded it"})
    if "torch" in args.peers:
        measured("torch GRU", run_torch, data, args, record["notes"])
    else:
        record["results"].append({"impl": "torch", "layer": "torch.nn.GRU", "cell": "GRU",
                                  "not_run": "--peers excluded it"})
    for cell in cells:
        if cell != "GRU":
            measured(f"grukit {cell}", run_grukit, cell, data, args)
    torch.set_num_threads(args.threads)
    record["other_load"]["whole_run"] = whole_run.share()
    record["threads"].update(library_threads())
    text = write()
    print(text)


if __name__ == "__main__":
    main()
