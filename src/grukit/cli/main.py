"""The ``grukit`` command: ``grukit <task> <action> ...`` (``python -m grukit`` is the same).

``main(argv)`` parses, runs the command and returns the exit code: 0 on success, 2 for a usage
error or a :class:`grukit.errors.GrukitError` (bad data, bad options), printed as one ``error:
...`` line without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from grukit import __version__
from grukit.cli import anomaly, charlm, forecast, kernels, launch, text
from grukit.cli.common import HelpFormatter, epilog
from grukit.errors import GrukitError

COMMANDS = (text, forecast, charlm, anomaly, kernels)

EXAMPLES = """
  grukit text fit --train reviews.csv --text-column text --label-column label --epochs 3 --out runs/mr
  grukit text predict runs/mr "a gorgeous, witty film" "a dull mess"
  grukit forecast fit airline.csv --date-column Month --value-column Passengers \\
      --lookback 24 --horizon 12 --season 12 --log --predict-change --test 24 --out runs/airline
  grukit forecast predict runs/airline airline.csv
  grukit charlm fit corpus.txt --out runs/lm
  grukit charlm generate runs/lm --prompt "The " --length 200 --temperature 0.8 --top-k 20 --seed 0
  grukit anomaly fit temperatures.csv --date-column Date --value-column Temp --window 30 --out runs/temp
  grukit kernels compile                compile the fused kernels now (e.g. in a container build)
  grukit <task> <action> --help         options of one command
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grukit", allow_abbrev=False, formatter_class=HelpFormatter,
        description="Gated recurrent networks (GRU, LSTM, SimpleRNN, MGU, minGRU) on your data: train a task, "
                    "save it in a run directory, then predict or evaluate with it. Every fit command takes "
                    "--cell to pick the recurrent cell and --nproc N to train in N processes.",
        epilog="examples:\n" + epilog(EXAMPLES))
    parser.add_argument("--version", action="version", version=f"grukit {__version__}")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for module in COMMANDS:
        module.register(tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help (0) or a usage error (2, argparse printed the message)
        return int(exit.code or 0)
    launch.start_worker()
    try:
        if launch.wants_relaunch(args):
            # read and check the inputs here first: a bad file or column stops before any process starts
            args.prepare(args)
            return launch.relaunch(argv, args.nproc, debug=args.debug)
        try:
            return int(args.handler(args) or 0)
        finally:
            launch.finish_worker()
    except GrukitError as error:
        if args.debug:
            traceback.print_exc()
        message = str(error)
        if launch.in_worker():
            launch.report_worker_error(message)
        else:
            print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:  # e.g. `grukit ... | head`: the reader has gone, nothing left to say
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
