"""Recurrent anomaly detection on a real series with injected (synthetic) anomalies, beside baselines.

There is no labelled anomaly set among the shared data, so the evaluation is built honestly: the
daily minimum temperatures of Melbourne 1981-1990 (3650 days) are split in time. The detector
(grukit.tasks.AnomalyDetector) trains on the first 7 years, less their last 20%, and calibrates its
threshold (the 0.99 quantile of its scores) on that held-out 20%: normal data only, never trained on.
The last 3 years are the test part, into which SYNTHETIC anomalies are injected with a seeded
generator (grukit.tasks.inject_anomalies): spikes (one day moved by 3-5 std of the training part),
level shifts (5-15 days moved by 1.5-3 std) and flat lines (5-15 days stuck at the previous day's
value, a frozen sensor), at least 10 clean days apart. Every changed day is labelled anomalous.
This is repeated for several injection seeds on the same trained detectors.

Scores are per day (per time step) on the test part: precision, recall and F1 of the flags and
ROC-AUC of the scores, for the GRU detector (forecast error and/or sequence-autoencoder
reconstruction error) and two baselines calibrated the same way: a rolling z-score over the previous
30 days and the last-value forecast error. Recall per anomaly kind and the share of days flagged on
the clean (uninjected) test part are reported too. Writes OUT/anomaly.json and OUT/anomaly.md
atomically.

    python -m benchmarks.anomaly                          # GRU, both methods, a few minutes on 2 cores
    python -m benchmarks.anomaly --methods forecast --cells gru,lstm --injection-seeds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .report import write_atomic

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FILE, DATE_COLUMN, VALUE_COLUMN = "daily-min-temperatures.csv", "Date", "Temp"
TRAIN_DAYS = 2555   # rows 1981-01-01 .. 1987-12-31 (the file has 365 rows a year: 31 December of leap years is absent)
KINDS = ("spike", "level_shift", "flat_line")
LABELS = {"model": None, "rolling_zscore": "rolling z-score (30 days)", "seasonal_naive": "last-value forecast error"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anomaly", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="forecast,reconstruction", help="comma-separated (default %(default)s)")
    parser.add_argument("--cells", default="gru", help="comma-separated: gru, lstm, rnn, mgu, mingru (default %(default)s)")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--window", type=int, default=30, help="days per window (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quantile", type=float, default=0.99, help="threshold quantile (default %(default)s)")
    parser.add_argument("--spikes", type=int, default=10)
    parser.add_argument("--level-shifts", type=int, default=5)
    parser.add_argument("--flat-lines", type=int, default=5)
    parser.add_argument("--injection-seeds", type=int, default=5, help="injections 0..N-1 (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default %(default)s: the models are tiny; a second thread only waits)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the CSV (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def evaluate_injections(detector, values: np.ndarray, args) -> dict:
    """The detector and the baselines on the test part of each injected copy, and on the clean one."""
    from grukit.tasks import inject_anomalies

    test_days = len(values) - TRAIN_DAYS
    runs = []
    for injection in range(args.injection_seeds):
        injected = inject_anomalies(values, spikes=args.spikes, level_shifts=args.level_shifts,
                                    flat_lines=args.flat_lines, start=TRAIN_DAYS, seed=injection)
        result = detector.evaluate(injected.values, injected.labels, test=test_days)
        per_kind, events_found = {}, {}
        position = {step: i for i, step in enumerate(result.steps.tolist())}
        for name, flags in result.flags.items():
            per_kind[name] = {kind: float(flags[injected.kind_labels(kind)[result.steps]].mean())
                              for kind in KINDS}
            found = {kind: [] for kind in KINDS}   # an event counts as found when any of its days is flagged
            for event in injected.events:
                days = [position[d] for d in range(event["start"], event["start"] + event["length"]) if d in position]
                found[event["kind"]].append(bool(days) and bool(flags[days].any()))
            events_found[name] = {kind: float(np.mean(hits)) if hits else float("nan") for kind, hits in found.items()}
        runs.append({"injection_seed": injection, "events": injected.events,
                     "anomalous_days": int(result.labels.sum()), "evaluation": result.to_dict(),
                     "recall_by_kind": per_kind, "events_found": events_found, "table": result.table()})
    clean = detector.evaluate(values, np.zeros(len(values)), test=test_days)
    flagged_clean = {name: score["flagged"] / len(clean.steps) for name, score in clean.scores.items()}
    detectors = list(runs[0]["evaluation"]["scores"])
    summary = {}
    for name in detectors:
        summary[name] = {metric: _mean_std([run["evaluation"]["scores"][name][metric] for run in runs])
                         for metric in ("precision", "recall", "f1", "roc_auc")}
        summary[name]["recall_by_kind"] = {kind: _mean_std([run["recall_by_kind"][name][kind] for run in runs])
                                           for kind in KINDS}
        summary[name]["events_found"] = {kind: _mean_std([run["events_found"][name][kind] for run in runs])
                                         for kind in KINDS}
        summary[name]["flagged_clean"] = flagged_clean[name]
        summary[name]["threshold"] = runs[0]["evaluation"]["scores"][name]["threshold"]
    return {"runs": runs, "summary": summary, "test_days": int(len(clean.steps)), "model_name": clean.model_name}


def _mean_std(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std())}


def run(method: str, cell: str, series, args) -> dict:
    from grukit.tasks import AnomalyDetector

    values = series.values[:, 0]
    detector = AnomalyDetector(method=method, window=args.window, cell=cell, units=args.units, epochs=args.epochs,
                               quantile=args.quantile, calibration=0.2, seed=args.seed, verbose=2)
    say(f"{method}/{cell}: training {cell.upper()}({args.units}) on days 0..{TRAIN_DAYS - 1} "
        f"({series.dates[0]} .. {series.dates[TRAIN_DAYS - 1]}), threshold calibrated on the last 20% of them; "
        f"{args.epochs} epochs")
    start = time.perf_counter()
    detector.fit(values[:TRAIN_DAYS])
    seconds = time.perf_counter() - start
    say(f"{method}/{cell}: trained in {seconds:.1f} s; threshold {detector.threshold:.4f} from "
        f"{detector.calibration_steps} normal days; evaluating {args.injection_seeds} injections")
    result = evaluate_injections(detector, values, args)
    say(summary_table(result))
    return {"method": method, "cell": cell, "config": detector.config.to_dict(), "train_seconds": round(seconds, 2),
            "final_loss": detector.history.history["loss"][-1],
            "final_val_loss": detector.history.history.get("val_loss", [None])[-1],
            "calibration_days": detector.calibration_steps, **result}


def summary_table(result: dict) -> str:
    lines = ["| detector | precision | recall | F1 | ROC-AUC | day recall: spikes / level shifts / flat lines "
             "| events found: spikes / level shifts / flat lines | flagged on clean test |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, score in result["summary"].items():
        cells = [f"{score[m]['mean']:.3f} ± {score[m]['std']:.3f}" for m in ("precision", "recall", "f1", "roc_auc")]
        cells.append(" / ".join(f"{score['recall_by_kind'][kind]['mean']:.2f}" for kind in KINDS))
        cells.append(" / ".join(f"{score['events_found'][kind]['mean']:.2f}" for kind in KINDS))
        label = LABELS.get(name) or result["model_name"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {score['flagged_clean']:.1%} |")
    return "\n".join(lines)


def markdown(results: list[dict], machine: dict, args, series) -> str:
    lines = ["# Anomaly detection: recurrent detectors vs baselines, with INJECTED anomalies", "",
             "`python -m benchmarks.anomaly` (grukit.tasks.AnomalyDetector). **The anomalies are synthetic**: "
             "no labelled anomaly set is available, so documented anomalies were injected into real data "
             "with a seeded generator (`grukit.tasks.inject_anomalies`).", "",
             f"Data: {FILE}, daily minimum temperatures in Melbourne, {series.dates[0]} .. {series.dates[-1]} "
             f"({len(series)} days). The detectors train on days 0..{TRAIN_DAYS - 1} (1981-1987) less their last "
             "20%, which calibrates the thresholds (normal data only, never trained on; rule: the "
             f"{args.quantile} quantile of the scores). Test: the remaining {len(series) - TRAIN_DAYS} days "
             "(1988-1990), with, per injection seed, "
             f"{args.spikes} spikes (1 day, +-3..5 std), {args.level_shifts} level shifts (5-15 days, +-1.5..3 std) "
             f"and {args.flat_lines} flat lines (5-15 days held at the day before), std = that of the training "
             f"days ({series.values[:TRAIN_DAYS].std():.2f} C), >= 10 clean days between anomalies. Every changed day is labelled anomalous "
             "(flat lines can change a day by very little: they are the hard case).", "",
             "Scores per day on the test days that every detector scores: precision, recall, F1 of the "
             "flags and ROC-AUC of the scores, mean ± std over "
             f"{args.injection_seeds} injection seeds (the same trained detectors); recall by kind (share of the "
             "kind's days flagged) and events found (share of the kind's anomalies with at least one day "
             "flagged); the share "
             "of days flagged on the clean, uninjected test part (the calibration's false-alarm rate; "
             f"{1 - args.quantile:.0%} is the target). Baselines: rolling z-score over the previous "
             f"{args.window} days, and the squared last-value forecast error, thresholds by the same rule on the "
             "same calibration days.", "",
             f"Machine: {machine['processor'] or machine['machine']}, torch {machine['torch']}, "
             f"{machine['threads']} threads, training seed {machine['seed']}; {machine['total_seconds']:.0f} s "
             "in all.", ""]
    for result in results:
        config = result["config"]
        lines += [f"## {result['model_name']} (window {config['window']} days, {config['epochs']} epochs, "
                  f"{result['train_seconds']:.0f} s)", "",
                  f"Threshold {result['summary']['model']['threshold']:.4f} from {result['calibration_days']} "
                  f"calibration days; final training loss {result['final_loss']:.4f}, validation (calibration "
                  f"part) loss {result['final_val_loss']:.4f}.", "", summary_table(result), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    from grukit.data.timeseries import read_series

    path = args.data / FILE
    if not path.is_file():
        sys.exit(f"error: no {FILE} in {args.data}; pass --data")
    torch.set_num_threads(args.threads)
    series = read_series(path, DATE_COLUMN, VALUE_COLUMN)
    machine = {"python": platform.python_version(), "machine": platform.machine(),
               "processor": platform.processor(), "torch": torch.__version__, "threads": args.threads,
               "seed": args.seed}
    started = time.perf_counter()
    results = []
    for cell in [c.strip() for c in args.cells.split(",") if c.strip()]:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            results.append(run(method, cell, series, args))
    machine["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_atomic(args.out / "anomaly.json", json.dumps({"machine": machine, "settings": settings,
                                                         "train_days": TRAIN_DAYS, "results": results}, indent=1))
    write_atomic(args.out / "anomaly.md", markdown(results, machine, args, series))
    say(f"wrote {args.out / 'anomaly.json'} and {args.out / 'anomaly.md'} ({machine['total_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
