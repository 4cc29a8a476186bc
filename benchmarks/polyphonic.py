"""Polyphonic music modelling (Chung et al. 2014, section 4): NLL per time step on JSB Chorales and
Nottingham for a GRU, an LSTM and a tanh RNN of about 20K parameters each, trained in the same run.

    model:  grukit.nn.<cell>(88, H, batch_first=True) -> Linear(H, 88) -> one logit per piano key
            GRU(reset_after=False) H=46 (Chung et al.'s GRU: reset gate before the recurrent matrix),
            LSTM H=38, tanh RNN H=86: the unit counts that give each about the GRU's 22.8K parameters
    data:   grukit.data.read_piano_rolls, 88-key rolls (column = MIDI note - 21)
    input:  an all-zero frame, then frames 1..T-1; target: frames 1..T (the model predicts every frame
            from the ones before it)
    loss:   Bernoulli NLL summed over the 88 notes, averaged over the frames of the batch
    train:  Adam, gradient-norm clipping, batches of similar-length sequences in shuffled order;
            early stopping on the validation NLL; the test NLL is that of the best validation epoch.

NLL per time step is grukit.data.frame_nll: the total NLL of a split divided by its number of frames
(frames pooled over sequences). Two columns are reported from the same model: "frames 2..T" leaves out
each sequence's first frame (predicted from silence), the convention of the widely used benchmark
code (Bai et al.'s TCN repository: input frames 1..T-1, targets 2..T); "all frames" counts every frame.
Early stopping uses the "frames 2..T" figure. Writes OUT/polyphonic.json and OUT/polyphonic.md; rows of
datasets not run this time are kept from the previous OUT/polyphonic.json.

    python -m benchmarks.polyphonic                       # both datasets, three cells
    python -m benchmarks.polyphonic --datasets jsb_chorales --cells GRU --max-epochs 5
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .accuracy_io import DEFAULT_OUT, SHARED_DATA, say, write_record

DATA = SHARED_DATA / "polyphonic-music"
FILES = {"jsb_chorales": "jsb_chorales.json.gz", "nottingham": "nottingham.json.gz"}
TITLES = {"jsb_chorales": "JSB Chorales", "nottingham": "Nottingham"}
# Chung et al. (2014), Table 2, test NLL per time step
PUBLISHED = {"jsb_chorales": {"RNN": 9.10, "GRU": 8.54, "LSTM": 8.67},
             "nottingham": {"RNN": 3.13, "GRU": 3.23, "LSTM": 3.20}}
UNITS = {"GRU": 46, "LSTM": 38, "RNN": 86}
LABELS = {"GRU": "GRU (reset before)", "LSTM": "LSTM", "RNN": "tanh RNN"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.polyphonic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="jsb_chorales,nottingham", help="default %(default)s")
    parser.add_argument("--cells", default="GRU,LSTM,RNN", help="default %(default)s")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="epoch limit (default 200 for JSB, 50 for Nottingham)")
    parser.add_argument("--patience", type=int, default=None,
                        help="epochs without a better validation NLL before stopping (default 20 JSB, 10 Nottingham)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default 8)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (default %(default)s)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="train on windows of this many steps, the state carried from one window to the next "
                             "(truncated BPTT; default: whole sequences for JSB, 100 for Nottingham)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout on the recurrent outputs before the read-out (default 0)")
    parser.add_argument("--input-dropout", type=float, default=None,
                        help="dropout on the input frames in training, notes randomly silenced (default 0.2 JSB, 0 Nottingham)")
    parser.add_argument("--lr-decay", type=float, default=0.5,
                        help="multiply the learning rate by this after --lr-patience epochs without a better "
                             "validation NLL (1 disables; default %(default)s)")
    parser.add_argument("--lr-patience", type=int, default=None, help="default 5 JSB, 3 Nottingham")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the *.json.gz files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


DEFAULTS = {"jsb_chorales": {"max_epochs": 200, "patience": 20, "batch_size": 8, "lr": 3e-3, "chunk": 0,
                             "dropout": 0.0, "input_dropout": 0.2, "lr_patience": 5},
            "nottingham": {"max_epochs": 50, "patience": 10, "batch_size": 8, "lr": 3e-3, "chunk": 100,
                           "dropout": 0.0, "input_dropout": 0.0, "lr_patience": 3}}


def settings(dataset: str, args) -> dict:
    chosen = dict(DEFAULTS[dataset])
    for key in chosen:
        value = getattr(args, key)
        if value is not None:
            chosen[key] = value
    chosen.update(clip=args.clip, lr_decay=args.lr_decay)
    return chosen


class MusicModel(torch.nn.Module):
    """A recurrent layer and a linear read-out: one logit per note for the next frame."""

    def __init__(self, cell: str, notes: int, dropout: float = 0.0, input_dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.input_dropout = torch.nn.Dropout(input_dropout)
        import grukit.nn as gnn
        hidden = UNITS[cell]
        if cell == "GRU":
            self.recurrent = gnn.GRU(notes, hidden, batch_first=True, reset_after=False)
        elif cell == "LSTM":
            self.recurrent = gnn.LSTM(notes, hidden, batch_first=True)
        else:
            self.recurrent = gnn.RNN(notes, hidden, batch_first=True, nonlinearity="tanh")
        self.readout = torch.nn.Linear(hidden, notes)

    def forward(self, x, lengths=None, state=None):
        output, state = self.recurrent(self.input_dropout(x), state, lengths=lengths)
        return self.readout(self.dropout(output)), state


def batches_by_length(rolls: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Indices grouped so that a batch holds sequences of similar length (little padding)."""
    order = np.argsort([len(r) for r in rolls], kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padded_batch(rolls: list[np.ndarray], index: np.ndarray):
    """(inputs, targets, lengths): inputs are the targets shifted right by one, behind a zero frame."""
    from grukit.data import pad_sequences
    chosen = [rolls[i] for i in index]
    lengths = np.array([len(r) for r in chosen], dtype=np.int64)
    targets = pad_sequences(chosen, padding="post", truncating="post", dtype="float32")
    inputs = np.zeros_like(targets)
    inputs[:, 1:] = targets[:, :-1]
    return torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(lengths)


def masked_nll(logits, targets, lengths):
    """Mean over the valid frames of the NLL summed over notes (the training loss)."""
    per_note = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    mask = torch.arange(targets.shape[1])[None, :] < lengths[:, None]
    return (per_note.sum(-1) * mask).sum() / mask.sum()


def evaluate_split(model, rolls: list[np.ndarray], batch_size: int = 64) -> dict:
    """NLL per time step over a whole split, frames pooled: all frames, and frames 2..T."""
    from grukit.data import frame_nll
    model.eval()
    total_all = total_rest = 0.0
    frames_all = frames_rest = 0
    with torch.no_grad():
        for index in batches_by_length(rolls, batch_size):
            inputs, targets, lengths = padded_batch(rolls, index)
            logits, _ = model(inputs, lengths)
            per_frame = frame_nll(logits.numpy(), targets.numpy(), lengths.numpy(), reduction="none")
            total_all += per_frame.sum()
            total_rest += per_frame[:, 1:].sum()
            frames_all += int(lengths.sum())
            frames_rest += int((lengths - 1).sum())
    return {"nll": total_rest / frames_rest, "nll_all_frames": total_all / frames_all}


def train_epoch(model, optimizer, rolls, config, generator) -> float:
    model.train()
    batches = batches_by_length(rolls, config["batch_size"])
    order = torch.randperm(len(batches), generator=generator).tolist()
    total, frames = 0.0, 0
    for b in order:
        inputs, targets, lengths = padded_batch(rolls, batches[b])
        chunk = config["chunk"] or inputs.shape[1]
        state = None
        for start in range(0, inputs.shape[1], chunk):
            window = (lengths - start).clamp(0, chunk)
            live = window > 0
            if not live.any():
                break
            if not live.all():  # sequences already finished leave the batch
                inputs, targets, lengths, window = inputs[live], targets[live], lengths[live], window[live]
                state = None if state is None else _select_state(state, live)
            x = inputs[:, start:start + chunk]
            y = targets[:, start:start + chunk]
            logits, state = model(x, window, state)
            loss = masked_nll(logits, y, window)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
            optimizer.step()
            state = _detach_state(state)
            count = int(window.sum())
            total += loss.item() * count
            frames += count
    return total / frames


def _detach_state(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _select_state(state, live):
    return tuple(s[:, live] for s in state) if isinstance(state, tuple) else state[:, live]


def run_cell(dataset: str, cell: str, splits: dict, config: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    model = MusicModel(cell, splits["train"][0].shape[1], config["dropout"], config["input_dropout"])
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config["lr_decay"],
                                                           patience=config["lr_patience"])
    generator = torch.Generator().manual_seed(seed)
    best = {"valid": math.inf}
    best_state = None
    history = []
    waited = 0
    start = time.perf_counter()
    for epoch in range(1, config["max_epochs"] + 1):
        train_nll = train_epoch(model, optimizer, splits["train"], config, generator)
        valid = evaluate_split(model, splits["valid"])
        history.append({"epoch": epoch, "train_nll": train_nll, "valid_nll": valid["nll"],
                        "lr": optimizer.param_groups[0]["lr"]})
        if config["lr_decay"] < 1:
            scheduler.step(valid["nll"])
        improved = valid["nll"] < best["valid"]
        if improved:
            best = {"valid": valid["nll"], "valid_all_frames": valid["nll_all_frames"], "epoch": epoch}
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
            waited = 0
        else:
            waited += 1
        say(f"{TITLES[dataset]} {cell} epoch {epoch}: train {train_nll:.3f}, valid {valid['nll']:.3f}"
            f"{' *' if improved else ''} ({time.perf_counter() - start:.0f} s)")
        if not math.isfinite(train_nll):
            break
        if waited >= config["patience"]:
            break
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    test = evaluate_split(model, splits["test"])
    say(f"{TITLES[dataset]} {cell}: best epoch {best['epoch']}, valid {best['valid']:.3f}, "
        f"test {test['nll']:.3f} (all frames {test['nll_all_frames']:.3f})")
    return {"dataset": dataset, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cell": cell, "units": UNITS[cell],
            "parameters": parameters,
            "best_epoch": best["epoch"], "epochs_run": len(history), "seconds": seconds,
            "valid_nll": best["valid"], "valid_nll_all_frames": best["valid_all_frames"],
            "test_nll": test["nll"], "test_nll_all_frames": test["nll_all_frames"],
            "published_test_nll": PUBLISHED[dataset][cell], "history": history}


def keep_previous(path: Path, record: dict) -> None:
    """Add to ``record`` the rows and settings of the datasets it lacks from an earlier run's JSON."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for dataset, config in previous.get("settings", {}).items():
        if dataset not in record["settings"]:
            record["settings"][dataset] = config
            record["results"] += [r for r in previous.get("results", []) if r.get("dataset") == dataset]
    order = list(FILES)
    record["results"].sort(key=lambda r: order.index(r["dataset"]) if r["dataset"] in order else len(order))


def window_text(chunk: int) -> str:
    return f"truncated BPTT windows of {chunk} steps" if chunk else "whole sequences"


def markdown(record: dict) -> str:
    lines = ["# Polyphonic music: NLL per time step (nats, lower is better)", "",
             f"{record['threads']} thread(s), seed {record['seed']}. Targets (issue 5): JSB GRU "
             "test NLL <= 8.54 with about 20K parameters. Test NLL at the epoch of the best validation NLL. "
             "\"frames 2..T\": every frame but each sequence's first (TCN-repository convention); "
             "\"all frames\": including the first frame, predicted from silence. Frames pooled over sequences.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in record["results"]):
        config = record["settings"][dataset]
        rows = [r for r in record["results"] if r["dataset"] == dataset]
        lines += [f"## {TITLES[dataset]}", "",
                  f"Run {rows[0].get('date', '?')}. Adam lr {config['lr']:g} (times {config['lr_decay']:g} after "
                  f"{config['lr_patience']} epochs without progress), batch {config['batch_size']} sequences, input "
                  f"dropout {config.get('input_dropout', 0):g}, dropout {config['dropout']:g} before the read-out, "
                  f"clip {config['clip']:g}, {window_text(config['chunk'])}, early stopping patience "
                  f"{config['patience']}, at most {config['max_epochs']} epochs.", "",
                  "| model | units | parameters | best epoch | valid NLL | test NLL (frames 2..T) | "
                  "test NLL (all frames) | Chung et al. 2014 | minutes |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {LABELS[r['cell']]} | {r['units']} | {r['parameters']:,} | {r['best_epoch']} | "
                         f"{r['valid_nll']:.2f} | {r['test_nll']:.2f} | {r['test_nll_all_frames']:.2f} | "
                         f"{r['published_test_nll']:.2f} | {r['seconds'] / 60:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    from grukit.data import read_piano_rolls
    torch.set_num_threads(args.threads)
    record = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": args.threads, "seed": args.seed,
              "settings": {}, "results": []}
    for dataset in args.datasets.split(","):
        path = args.data / FILES[dataset]
        if not path.is_file():
            sys.exit(f"error: {path} not found; pass --data the folder holding {FILES[dataset]}")
        splits = read_piano_rolls(path)
        config = settings(dataset, args)
        record["settings"][dataset] = config
        say(f"{TITLES[dataset]}: " + ", ".join(f"{k} {len(v)} sequences / {sum(map(len, v))} frames"
                                             for k, v in splits.items()))
        for cell in args.cells.split(","):
            record["results"].append(run_cell(dataset, cell, splits, config, args.seed))
            save(args.out, record)  # after every model, so that an interrupted run keeps what it finished
    write_record(args.out, "polyphonic", record, markdown(record))


def save(out: Path, record: dict) -> None:
    from .report import write_atomic
    keep_previous(out / "polyphonic.json", record)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "polyphonic.json", json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
