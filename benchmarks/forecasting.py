"""The recurrent Forecaster on real monthly series, beside the baselines it has to beat.

For each series the last stretch is held out (airline passengers: the last 24 months; monthly
sunspots: the last 10%). grukit.tasks.Forecaster trains the tutorial model (GRU(64) -> Dense(horizon))
on everything before it, the scaler fitted on the training part only, and forecasts `horizon`
months at once for every window whose targets lie in the held-out stretch. The same windows are
forecast by last value (naive), seasonal naive (m = 12) and a linear autoregression fitted by least
squares on the network's own inputs and targets. Scores in original units: MAE, RMSE, sMAPE (%) and
MASE (scale: the in-sample seasonal-naive MAE, m = 12, of the training series; Hyndman & Koehler
2006). Everything is seeded. Writes OUT/forecasting.json and OUT/forecasting.md atomically.

    python -m benchmarks.forecasting                    # GRU on both series, a few minutes on 2 cores
    python -m benchmarks.forecasting --cells gru,lstm --series airline
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from .report import write_atomic

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries"
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

# Per series: the file, its columns, the held-out stretch, and the Forecaster's settings.
SERIES = {
    "airline": {
        "file": "airline-passengers.csv", "date_column": "Month", "value_column": "Passengers", "test": 24,
        "why": "trend with multiplicative yearly seasonality: log values, changes from the last month",
        "forecaster": {"lookback": 24, "horizon": 12, "season": 12, "log": True, "predict_change": True,
                       "epochs": 200, "batch_size": 16},
    },
    "sunspots": {
        "file": "monthly-sunspots.csv", "date_column": "Month", "value_column": "Sunspots", "test": 0.1,
        "why": "the ~11-year solar cycle, no yearly season (m = 12 is the monthly-data convention here, so "
               "seasonal naive is a lag-12 forecast); zeros, so no log; early stopping on the last 10% "
               "of the training part",
        "forecaster": {"lookback": 48, "horizon": 12, "season": 12, "epochs": 60, "batch_size": 64,
                       "validation": 0.1, "patience": 10},
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.forecasting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", default=",".join(SERIES), help="comma-separated, of %(default)s")
    parser.add_argument("--cells", default="gru", help="comma-separated cells: gru, lstm, rnn, mgu, mingru "
                                                       "(default %(default)s)")
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every series' epochs (e.g. 0.1 for a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the CSV files (default %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_series(name: str, cell: str, args) -> dict:
    from grukit.data.timeseries import read_series
    from grukit.tasks import Forecaster

    spec = SERIES[name]
    series = read_series(args.data / spec["file"], spec["date_column"], spec["value_column"])
    options = dict(spec["forecaster"])
    options["epochs"] = max(1, round(options["epochs"] * args.epochs_scale))
    forecaster = Forecaster(cell=cell, units=args.units, seed=args.seed, **options)
    test_steps = spec["test"] if isinstance(spec["test"], int) else round(spec["test"] * len(series))
    history = series.values[:-test_steps]
    say(f"{name}: {len(series)} months ({series.dates[0]} .. {series.dates[-1]}), training on the first "
        f"{len(history)}, testing on the last {test_steps}; {cell.upper()}({args.units}), up to "
        f"{options['epochs']} epochs")
    start = time.perf_counter()
    forecaster.fit(history)
    seconds = time.perf_counter() - start
    losses = forecaster.history.history["loss"]
    say(f"{name}: trained {len(losses)} epochs in {seconds:.1f} s, final training loss {losses[-1]:.4f}")
    result = forecaster.evaluate(series, test=test_steps)
    say(result.table())
    return {"series": name, "file": spec["file"], "cell": cell, "why": spec["why"],
            "length": len(series), "first": str(series.dates[0]), "last": str(series.dates[-1]),
            "train_steps": len(history), "test_steps": test_steps,
            "test_from": str(series.dates[len(history)]),
            "config": forecaster.config.to_dict(), "epochs_run": len(losses), "train_seconds": round(seconds, 2),
            "final_loss": losses[-1], "evaluation": result.to_dict(), "table": result.table()}


def markdown(results: list[dict], machine: dict) -> str:
    lines = ["# Forecasting: recurrent Forecaster vs baselines on real monthly series", "",
             "`python -m benchmarks.forecasting` (grukit.tasks.Forecaster). Each series' last stretch is held out; "
             "every forecaster predicts `horizon` months at once for every window whose targets all lie in it, "
             "in original units. MASE is scaled by the in-sample seasonal-naive MAE (m = 12) of the training "
             "part (Hyndman & Koehler 2006): below 1 beats what seasonal naive achieved in-sample. sMAPE in "
             "percent (0-200). The linear AR is least squares on the network's own inputs and targets.", "",
             f"Machine: {machine['processor'] or machine['machine']}, torch {machine['torch']}, "
             f"{machine['threads']} threads, seed {machine['seed']}.", ""]
    for result in results:
        config, evaluation = result["config"], result["evaluation"]
        lines += [f"## {result['series']} ({result['file']}), {result['cell'].upper()}", "",
                  f"{result['length']} months {result['first']} .. {result['last']}; trained on {result['train_steps']}, "
                  f"tested from {result['test_from']} ({result['test_steps']} months, {evaluation['windows']} windows); "
                  f"lookback {config['lookback']}, horizon {config['horizon']}, log {config['log']}, "
                  f"predict_change {config['predict_change']}; {result['epochs_run']} epochs in "
                  f"{result['train_seconds']:.0f} s. Why these settings: {result['why']}.", "",
                  result["table"], ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    names = [n.strip() for n in args.series.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SERIES))
    if unknown:
        sys.exit(f"error: unknown series {unknown}; choose from {sorted(SERIES)}")
    if not args.data.is_dir():
        sys.exit(f"error: no time series folder at {args.data}; pass --data")
    torch.set_num_threads(args.threads)
    machine = {"python": platform.python_version(), "machine": platform.machine(),
               "processor": platform.processor(), "torch": torch.__version__, "threads": args.threads,
               "seed": args.seed}
    results = []
    started = time.perf_counter()
    for cell in [c.strip() for c in args.cells.split(",") if c.strip()]:
        for name in names:
            results.append(run_series(name, cell, args))
    machine["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "forecasting.json", json.dumps({"machine": machine, "results": results}, indent=2))
    write_atomic(args.out / "forecasting.md", markdown(results, machine))
    say(f"wrote {args.out / 'forecasting.json'} and {args.out / 'forecasting.md'} "
        f"({machine['total_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
