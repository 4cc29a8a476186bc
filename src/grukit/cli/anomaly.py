"""``grukit anomaly fit | predict | evaluate``: anomaly detection with :class:`grukit.tasks.AnomalyDetector`."""

from __future__ import annotations

import argparse
import json

import numpy as np

from grukit.cli import common, launch
from grukit.cli.common import add_parser, amount, positive_int
from grukit.cli.forecast import add_series_options, read, saved_series


def register(tasks) -> None:
    actions = common.add_task(
        tasks, "anomaly", "flag anomalous time steps of a series by forecast or reconstruction error",
        "Learn what normal looks like from a series and flag the steps whose forecast error "
        "(--method forecast) or reconstruction error (--method reconstruction) exceeds a threshold "
        "calibrated on normal data the network never trained on.",
        """
          grukit anomaly fit normal.csv --date-column Date --value-column Temp --window 30 --out runs/temp
          grukit anomaly predict runs/temp new.csv
          grukit anomaly evaluate runs/temp labelled.csv --label-column anomaly
        """)

    fit = add_parser(actions, "fit", "train a detector on normal data and calibrate its threshold",
                     "Train an AnomalyDetector on SERIES, taken as normal, and save it in --out. The last "
                     "--calibration part is never trained on: its scores set the threshold.", """
          grukit anomaly fit normal.csv --date-column Date --value-column Temp --window 30 --epochs 20 --out runs/temp
          grukit anomaly fit machines.csv --date-column time --value-column a,b --method reconstruction --out runs/ae
        """)
    fit.add_argument("series", metavar="SERIES", help="CSV file of normal data (may be .gz)")
    add_series_options(fit, required=True)
    detector = fit.add_argument_group("detector")
    detector.add_argument("--method", choices=("forecast", "reconstruction"), default="forecast",
                          help="score by one-step forecast error (causal) or sequence-autoencoder error")
    detector.add_argument("--window", type=positive_int, default=32, metavar="N", help="steps per window")
    detector.add_argument("--calibration", type=amount, default=0.2, metavar="AMOUNT",
                          help="last part of SERIES (fraction or steps) held out to set the threshold")
    detector.add_argument("--quantile", type=float, default=0.99, metavar="Q",
                          help="threshold: this quantile of the calibration scores")
    detector.add_argument("--season", type=positive_int, default=1, metavar="M",
                          help="period of the seasonal-naive baseline (1: last value)")
    common.add_training_options(fit, epochs=30, batch_size=32, learning_rate=1e-3, units=32)
    common.add_runtime_options(fit)
    fit.set_defaults(handler=run_fit, prepare=prepare_fit)

    predict = add_parser(actions, "predict", "list the anomalous steps of a series",
                         "Score every step of SERIES with a saved detector and print the steps above its "
                         "threshold (date, values, score), or every step with --all.", """
          grukit anomaly predict runs/temp new.csv
          grukit anomaly predict runs/temp new.csv --all --json > scores.json
        """)
    predict.add_argument("run", metavar="RUN", help="run directory written by `grukit anomaly fit`")
    predict.add_argument("series", metavar="SERIES", help="CSV file to score")
    add_series_options(predict, required=False)
    predict.add_argument("--all", action="store_true", help="print every step, not only the flagged ones")
    predict.add_argument("--json", action="store_true", help="print JSON")
    common.add_runtime_options(predict)
    predict.set_defaults(handler=run_predict)

    evaluate = add_parser(actions, "evaluate", "score a detector against labelled steps",
                          "Per-step precision, recall, F1 and ROC-AUC of a saved detector against a 0/1 label "
                          "column of SERIES, beside a rolling z-score and the last-value forecast error.", """
          grukit anomaly evaluate runs/temp labelled.csv --label-column anomaly --test 365
        """)
    evaluate.add_argument("run", metavar="RUN", help="run directory written by `grukit anomaly fit`")
    evaluate.add_argument("series", metavar="SERIES", help="CSV file with the values and a label column")
    add_series_options(evaluate, required=False)
    evaluate.add_argument("--label-column", required=True, metavar="NAME", help="column of 0/1 labels (1 = anomalous)")
    evaluate.add_argument("--test", type=amount, default=None, metavar="AMOUNT",
                          help="score only the last steps (count or fraction; default: all)")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    common.add_runtime_options(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


def prepare_fit(args: argparse.Namespace) -> dict:
    from grukit.tasks import AnomalyDetector

    common.check_run_directory(args)
    detector = AnomalyDetector(method=args.method, window=args.window, cell=args.cell, units=args.units,
                               calibration=args.calibration, quantile=args.quantile, season=args.season,
                               epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                               missing=args.missing or "raise", seed=args.seed, verbose=common.verbose(args),
                               precision=args.precision)
    return {"detector": detector, "series": read(args.series, args.date_column, args.value_column, args.missing)}


def run_fit(args: argparse.Namespace) -> int:
    job = prepare_fit(args)
    detector, series = job["detector"], job["series"]
    common.say(args, f"read {len(series)} steps of {series.columns} from {args.series}")
    with launch.distributed_training():
        common.setup_threads(args)
        detector.fit(series.values, distributed=launch.in_worker())
    if not launch.is_main():
        return 0
    record = {"command": common.command_line(), "task": "AnomalyDetector",
              "data": {"series": args.series, "date_column": args.date_column, "value_columns": args.value_column,
                       "missing": args.missing or "raise"},
              "processes": launch.world_size(), "history": common.history_record(detector.history),
              "threshold": detector.threshold, "calibration_steps": detector.calibration_steps}
    out = detector.save(common.check_run_directory(args))
    common.write_run_record(out, record)
    print(f"saved {out} (threshold {detector.threshold:.6g}, calibrated on {detector.calibration_steps} steps)",
          flush=True)
    return 0


def _load(args: argparse.Namespace, extra: list[str] = ()):
    directory = common.run_directory(args.run)         # before the import of torch: a wrong path answers at once
    from grukit.tasks import AnomalyDetector

    return (AnomalyDetector.load(directory), *saved_series(args, directory, "anomaly", extra))


def run_predict(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    detector, series, _ = _load(args)
    scores = detector.score(series.values)
    with np.errstate(invalid="ignore"):
        flags = scores > detector.threshold
    rows = [i for i in range(len(scores)) if args.all or flags[i]]
    if args.json:
        print(json.dumps({"threshold": detector.threshold, "flagged": int(flags.sum()), "steps": [
            {"step": i, "date": str(series.dates[i]), **{c: float(v) for c, v in zip(series.columns, series.values[i])},
             "score": float(scores[i]) if np.isfinite(scores[i]) else None, "anomalous": bool(flags[i])}
            for i in rows]}, indent=2))
        return 0
    print(f"{int(flags.sum())} of {len(scores)} steps above the threshold {detector.threshold:.6g}")
    if rows:
        print("date\t" + "\t".join(series.columns) + "\tscore" + ("\tanomalous" if args.all else ""))
    for i in rows:
        values = "\t".join(f"{v:g}" for v in series.values[i])
        print(f"{series.dates[i]}\t{values}\t{scores[i]:.6g}" + (f"\t{int(flags[i])}" if args.all else ""))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    detector, series, count = _load(args, extra=[args.label_column])
    result = detector.evaluate(series.values[:, :count], series.values[:, count], test=args.test)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        common.print_table(f"{args.series} ({len(result.steps)} scored steps, {int(result.labels.sum())} "
                           "anomalous):", result.table())
    return 0
