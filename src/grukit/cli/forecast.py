"""``grukit forecast fit | predict | evaluate``: multi-step forecasting with :class:`grukit.tasks.Forecaster`."""

from __future__ import annotations

import argparse
import json

from grukit.cli import common, launch
from grukit.cli.common import add_parser, amount, column_list, positive_int
from grukit.errors import ConfigError, DataError


def add_series_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("series")
    default = "" if required else " (default: the one used at fit)"
    group.add_argument("--date-column", required=required, metavar="NAME",
                       help="column of the dates (ISO 8601: 1949-01, 1981-01-01), in increasing order" + default)
    group.add_argument("--value-column", type=column_list, action="extend", required=required, metavar="NAME",
                       help="column(s) of the values: repeat the option or separate names by commas" + default)
    group.add_argument("--missing", choices=("raise", "fill", "drop"), default=None,
                       help="what to do with missing values (empty cells, NA, NaN): stop with an error, fill "
                            "them (forward), or drop their rows" + (" (default: raise)" if required else " (default: the choice made at fit)"))


def register(tasks) -> None:
    actions = common.add_task(
        tasks, "forecast", "forecast the next steps of a time series (CSV with a date column)",
        "Forecast the next --horizon steps of a series from its last --lookback steps with a GRU (or "
        "--cell), scored beside last-value, seasonal-naive and linear-autoregression baselines.",
        """
          grukit forecast fit airline.csv --date-column Month --value-column Passengers --lookback 24 \\
              --horizon 12 --season 12 --log --predict-change --epochs 200 --test 24 --out runs/airline
          grukit forecast predict runs/airline airline.csv
          grukit forecast evaluate runs/airline airline.csv --test 24
        """)

    fit = add_parser(actions, "fit", "train a forecaster on a CSV series and save it",
                     "Train a Forecaster on SERIES (a CSV with a header, a date column and value columns) and "
                     "save it in --out. With --test N the last N steps are held out: the model trains on the "
                     "steps before them and is then scored on the windows whose targets lie in them, beside the "
                     "baselines (MAE, RMSE, sMAPE %, MASE).", """
          grukit forecast fit series.csv --date-column Month --value-column Passengers --lookback 24 --horizon 12 --out runs/y
          grukit forecast fit airline.csv --date-column Month --value-column Passengers --lookback 24 \\
              --horizon 12 --season 12 --log --predict-change --epochs 200 --batch-size 16 --test 24 --out runs/airline
          grukit forecast fit sensors.csv --date-column time --value-column a,b,c --target b --missing fill --out runs/b
        """)
    fit.add_argument("series", metavar="SERIES", help="CSV file of the series (may be .gz)")
    add_series_options(fit, required=True)
    windows = fit.add_argument_group("forecast")
    windows.add_argument("--lookback", type=positive_int, default=12, metavar="N", help="input steps per window")
    windows.add_argument("--horizon", type=positive_int, default=1, metavar="N", help="steps forecast at once")
    windows.add_argument("--season", type=positive_int, default=1, metavar="M",
                         help="season length of the seasonal-naive baseline and MASE (12 for monthly data); "
                              "shorter than the training part")
    windows.add_argument("--target", type=column_list, action="extend", default=None, metavar="NAME",
                         help="value column(s) to forecast (default: all value columns)")
    windows.add_argument("--scaler", choices=("standard", "minmax", "none"), default="standard",
                         help="scaling fitted on the training part")
    windows.add_argument("--log", action="store_true", help="model the logarithm (multiplicative seasonality)")
    windows.add_argument("--predict-change", action="store_true",
                         help="predict the change from each window's last value (trends beyond the training range)")
    windows.add_argument("--test", type=amount, default=0, metavar="AMOUNT",
                         help="last steps (count, or fraction of the series) held out and scored after training; "
                              "at least --horizon; 0: none held out")
    windows.add_argument("--validation", type=amount, default=0, metavar="AMOUNT",
                         help="last steps of the training part held out for the validation loss; 0: none")
    windows.add_argument("--patience", type=int, default=None, metavar="N",
                         help="early stopping on the validation loss (needs --validation)")
    common.add_training_options(fit, epochs=100, batch_size=32, learning_rate=1e-3, units=64)
    common.add_runtime_options(fit)
    fit.set_defaults(handler=run_fit, prepare=prepare_fit)

    predict = add_parser(actions, "predict", "forecast the steps after the end of a series",
                         "Print the --horizon steps after the last row of SERIES, forecast by a saved model, with "
                         "their dates when the series' dates are evenly spaced.", """
          grukit forecast predict runs/airline airline.csv
          grukit forecast predict runs/airline latest.csv --json
        """)
    predict.add_argument("run", metavar="RUN", help="run directory written by `grukit forecast fit`")
    predict.add_argument("series", metavar="SERIES", help="CSV file with at least --lookback rows of history")
    add_series_options(predict, required=False)
    predict.add_argument("--json", action="store_true", help="print the forecast as JSON")
    common.add_runtime_options(predict)
    predict.set_defaults(handler=run_predict)

    evaluate = add_parser(actions, "evaluate", "score a saved forecaster beside the baselines",
                          "Score a saved model and the baselines on the windows whose targets lie in the last "
                          "--test steps of SERIES (their inputs reach back into the history before).", """
          grukit forecast evaluate runs/airline airline.csv --test 24
        """)
    evaluate.add_argument("run", metavar="RUN", help="run directory written by `grukit forecast fit`")
    evaluate.add_argument("series", metavar="SERIES", help="CSV file: history and test part")
    add_series_options(evaluate, required=False)
    evaluate.add_argument("--test", type=amount, default=0.2, metavar="AMOUNT",
                          help="last steps scored (count, or fraction of the series)")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    common.add_runtime_options(evaluate)
    evaluate.set_defaults(handler=run_evaluate)


def read(path: str, date_column: str, value_columns: list[str], missing: str | None):
    from grukit.data.timeseries import read_series

    with common.option_names({"as date_column=": "as --date-column", "as value_columns=": "as --value-column",
                              "missing='fill' (with fill='forward' or 'interpolate')": "--missing fill (forward fill)",
                              "missing='fill'": "--missing fill", "missing='drop'": "--missing drop"}):
        return read_series(common.require_file(path, "SERIES"), date_column, value_columns,
                           missing=missing or "raise", fill="forward")


def prepare_fit(args: argparse.Namespace) -> dict:
    from grukit.data.timeseries import part_size
    from grukit.tasks import Forecaster

    common.check_run_directory(args)
    # the config's errors name this command's options: Forecaster(patience=-2) -> --patience -2
    renames = {f"Forecaster({field}={getattr(args, field)!r})": f"--{field} {getattr(args, field)}"
               for field in ("patience", "validation")}
    renames.update({" before stopping) or None": " before stopping)",
                    "pass validation= (a count or fraction of the fit data) too, or patience=None":
                    "pass --validation too, or leave out --patience"})
    with common.option_names(renames):
        forecaster = Forecaster(lookback=args.lookback, horizon=args.horizon, cell=args.cell, units=args.units,
                                season=args.season, targets=args.target, scaler=args.scaler, log=args.log,
                                predict_change=args.predict_change, epochs=args.epochs, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, validation=args.validation,
                                patience=args.patience, missing=args.missing or "raise", seed=args.seed,
                                verbose=common.verbose(args), precision=args.precision)
    for target in args.target or ():
        if target not in args.value_column:
            raise ConfigError(f"--target {target}: not among the --value-column columns {args.value_column}; "
                              "pass one of them")
    series = read(args.series, args.date_column, args.value_column, args.missing)
    # --test and --season are checked here, before training, so that a bad value wastes no training run
    test = part_size(args.test, len(series), "--test") if args.test else 0
    if test >= len(series):
        raise DataError(f"--test {args.test} holds out all {len(series)} steps of {args.series}; leave some to train on")
    if test and test < args.horizon:
        raise ConfigError(f"--test {args.test} holds out {test} step(s), fewer than --horizon {args.horizon}: no "
                          f"test window has all its targets in it; pass --test {args.horizon} or more")
    train = len(series) - test
    if args.season >= train:
        raise ConfigError(f"--season {args.season} needs a training part longer than one season (MASE's scale "
                          f"compares each step with the one a season before), but {args.series} has {train} "
                          f"training steps{f' before the last {test} (--test)' if test else ''}; pass a smaller "
                          "--season" + (" or --test" if test else " or a longer series"))
    return {"forecaster": forecaster, "series": series, "test": test}


def run_fit(args: argparse.Namespace) -> int:
    job = prepare_fit(args)
    forecaster, series, test = job["forecaster"], job["series"], job["test"]
    train = series.first(len(series) - test)   # still named: --target picks its columns by name
    common.say(args, f"read {len(series)} steps of {series.columns} from {args.series}"
               + (f"; training on the first {len(train)}, testing on the last {test}" if test else ""))
    with launch.distributed_training():
        common.setup_threads(args)
        forecaster.fit(train, distributed=launch.in_worker())
    if not launch.is_main():
        return 0
    record = {"command": common.command_line(), "task": "Forecaster",
              "data": {"series": args.series, "date_column": args.date_column, "value_columns": args.value_column,
                       "missing": args.missing or "raise", "test": test},
              "processes": launch.world_size(), "history": common.history_record(forecaster.history)}
    evaluation = forecaster.evaluate(series, test=test) if test else None
    if evaluation is not None:
        record["evaluation"] = evaluation.to_dict()
    out = forecaster.save(common.check_run_directory(args))
    common.write_run_record(out, record)
    epochs = len(forecaster.history.history.get("loss", [])) if forecaster.history else 0
    print(f"saved {out} ({epochs} epoch(s); lookback {args.lookback}, horizon {args.horizon})", flush=True)
    if evaluation is not None:
        common.print_table(f"last {test} steps of {args.series} ({len(evaluation.actual)} windows):",
                           evaluation.table())
    return 0


def saved_series(args: argparse.Namespace, directory, command: str, extra: list[str] = ()):
    """SERIES read with the columns recorded at fit (or given again), plus ``extra`` columns after them."""
    data = common.read_run_record(directory).get("data", {})
    date_column = args.date_column or data.get("date_column")
    value_columns = args.value_column or data.get("value_columns")
    if not date_column or not value_columns:
        raise DataError(f"{args.run} does not record the series' columns (it was not saved by `grukit {command} "
                        "fit`); pass --date-column and --value-column")
    series = read(args.series, date_column, [*value_columns, *extra], args.missing or data.get("missing"))
    return series, len(value_columns)


def _load(args: argparse.Namespace):
    directory = common.run_directory(args.run)         # before the import of torch: a wrong path answers at once
    from grukit.tasks import Forecaster

    return Forecaster.load(directory), saved_series(args, directory, "forecast")[0]


def future_dates(dates) -> callable:
    """``step -> date text`` continuing evenly spaced dates, or ``t+k`` when they are not."""
    import numpy as np

    if len(dates) >= 2 and np.issubdtype(np.asarray(dates).dtype, np.datetime64):
        gaps = np.diff(dates)
        if (gaps == gaps[0]).all():
            return lambda k: str(dates[-1] + gaps[0] * k)
    return lambda k: f"t+{k}"


def run_predict(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    forecaster, series = _load(args)
    forecast = forecaster.predict(series)                    # (horizon, k)
    columns = forecaster.columns if forecaster.columns_named else series.columns
    names = [columns[i] for i in forecaster.target_indices]
    label = future_dates(series.dates)
    if args.json:
        print(json.dumps({"after": str(series.dates[-1]),
                          "forecast": [{"step": k + 1, "date": label(k + 1),
                                        **{n: float(v) for n, v in zip(names, row)}}
                                       for k, row in enumerate(forecast)]}, indent=2))
        return 0
    print("date\t" + "\t".join(names))
    for k, row in enumerate(forecast):
        print(label(k + 1) + "\t" + "\t".join(f"{v:.4f}" for v in row))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    forecaster, series = _load(args)
    result = forecaster.evaluate(series, test=args.test)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        common.print_table(f"last {result.test_steps} steps of {args.series} ({len(result.actual)} windows):",
                           result.table())
    return 0
