"""What the subcommands share: common options, the run directory record, reading inputs, printing.

Only the standard library, ``grukit.errors`` and ``grukit.cli.launch`` are imported at module level,
so building the parser (``--help``) does not load torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from grukit.cli import launch
from grukit.errors import ConfigError, DataError

RUN_FILE = "run.json"      # beside task.json: the command line, the data options, history and scores
CELLS = ("gru", "lstm", "rnn", "mgu", "mingru")
PRECISIONS = ("float32", "mixed_bfloat16")   # grukit.train.loop's (a test checks), without importing torch


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions, keeps the epilog's examples as written, and shows an option's default
    where it has one (not None, off or blank) and its help does not already say it."""

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):
            return text
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        help = action.help or ""
        default = action.default
        # identity, not ==: 0 == False, and a default of 0 is worth showing; a blank string would show as
        # "(default: )", so such an option says in its help what its default means
        if (not action.option_strings or "default" in help or default is None or default is False
                or default is argparse.SUPPRESS or (isinstance(default, str) and not default.strip())):
            return help
        return help + " (default: %(default)s)"


def epilog(text: str) -> str:
    """Examples, dedented and then indented by two spaces under their heading."""
    return textwrap.indent(textwrap.dedent(text).strip("\n"), "  ")


def add_parser(subparsers, name: str, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help, description=description, allow_abbrev=False,
                                   epilog="examples:\n" + epilog(examples), formatter_class=HelpFormatter)
    return parser


def add_task(tasks, name: str, help: str, description: str, examples: str):
    """A task's parser (``grukit NAME``) and the subparsers of its actions (``grukit NAME ACTION``)."""
    return add_parser(tasks, name, help, description, examples).add_subparsers(
        dest="action", metavar="ACTION", required=True)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """--threads, --quiet, --debug: on every leaf command, so they may follow the subcommand."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="torch threads in this process (default: torch's choice; under --nproc each "
                            "process gets cores / N)")
    group.add_argument("--quiet", "-q", action="store_true",
                       help="no progress bar or per-epoch lines, only results and errors")
    group.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def add_training_options(parser: argparse.ArgumentParser, *, epochs: int | None, batch_size: int | None,
                         learning_rate: float | None, units: int | None) -> None:
    """--cell, --units, --epochs, --batch-size, --learning-rate, --seed, --precision, --out, --overwrite, --nproc.
    A default of None means "the task's own default" (shown as such in --help)."""
    model = parser.add_argument_group("model and training")
    model.add_argument("--cell", choices=CELLS, default="gru", help="recurrent cell")
    model.add_argument("--units", type=positive_int, default=units, metavar="N",
                       help="width of the recurrent layer" + (" (default: the task's)" if units is None else ""))
    model.add_argument("--epochs", type=positive_int, default=epochs, metavar="N",
                       help="training epochs (at most, with early stopping)"
                       + (" (default: the task's)" if epochs is None else ""))
    model.add_argument("--batch-size", type=positive_int, default=batch_size, metavar="N",
                       help="samples per batch (global over all processes with --nproc)"
                       + (" (default: the task's)" if batch_size is None else ""))
    model.add_argument("--learning-rate", type=positive_float, default=learning_rate, metavar="LR",
                       help="Adam's learning rate" + (" (default: the task's)" if learning_rate is None else ""))
    model.add_argument("--seed", type=int, default=0, help="seed of the weights, splits and batch order")
    model.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="mixed_bfloat16: train the recurrent layer in grukit's bfloat16 mode (bfloat16 "
                            "products, float32 weights; faster only on CPUs with BF16 units, see the README)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", "-o", required=True, metavar="DIR",
                        help="run directory to write: the model (config.json, model.safetensors), task.json "
                             f"and {RUN_FILE} (command, data options, training history, scores)")
    output.add_argument("--overwrite", action="store_true", help="replace a model already saved in --out")
    output.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                        help="train data-parallel in N >= 2 processes on this machine (torch.distributed, gloo): "
                             "the same command is re-run under torch.distributed.run; only rank 0 prints and "
                             "writes --out")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def amount(text: str) -> int | float:
    """A count (``24``) or a fraction (``0.1``) of the data, as the task objects take it."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (e.g. 24) or a fraction (e.g. 0.1), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count or fraction >= 0, got {text}")
    return int(value) if value.is_integer() and (value >= 1 or value == 0) else value


def column_list(text: str) -> list[str]:
    """``--value-column a,b`` or a repeated option: the column names, in order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected one or more column names separated by commas")
    return names


def options(args: argparse.Namespace, **names: str) -> dict[str, Any]:
    """``{task option: value}`` for the command-line values that were given (not None)."""
    return {option: getattr(args, attribute) for option, attribute in names.items()
            if getattr(args, attribute) is not None}


def verbose(args: argparse.Namespace) -> int:
    return 0 if args.quiet else 1


def say(args: argparse.Namespace, message: str) -> None:
    """A progress note on stdout (silenced by --quiet)."""
    if not args.quiet:
        print(message, flush=True)


def require_file(path: str, option: str) -> Path:
    candidate = Path(path)
    if not candidate.is_file():
        where = "a folder, not a file" if candidate.is_dir() else "no such file"
        raise DataError(f"{option} {path}: {where}; check the path (the current directory is {Path.cwd()})")
    return candidate


def check_run_directory(args: argparse.Namespace) -> Path:
    """The --out directory, refusing to replace a saved model unless --overwrite, and proven writable now
    (the fit commands call this before training, so that the run is not lost at the save)."""
    out = Path(args.out)
    if not launch.is_main():      # only rank 0 writes --out; the launching process has checked it already
        return out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: this is a file; pass a directory to write the run into")
    if (out / "task.json").exists() and not args.overwrite:
        raise ConfigError(f"--out {out} already holds a saved model (task.json); pass --overwrite to replace it "
                          "or choose another directory")
    _check_writable(out)
    return out


def _check_writable(out: Path) -> None:
    """Create ``out`` and write and remove a file in it; the folders this made are removed again, so that a
    command that stops later (bad data) leaves nothing behind."""
    created = [folder for folder in (out, *out.parents) if not folder.exists()]     # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".grukit-write-test-", dir=out)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"--out {out}: cannot write the run there ({error.strerror or error}); pass a "
                          "directory you may write to, or make this one writable") from error
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()


def run_directory(path: str) -> Path:
    """A run directory written by a fit command (the positional RUN argument)."""
    run = Path(path)
    if not run.is_dir():
        raise DataError(f"run directory {path}: no such directory; pass the --out directory of a fit command")
    if not (run / "task.json").is_file():
        raise DataError(f"run directory {path} holds no task.json: it is not a saved model (or its save was "
                        "interrupted); train one with a fit command")
    return run


def read_run_record(run: Path) -> dict[str, Any]:
    """The fit command's record (data options, history), or {} for a model saved from Python."""
    path = run / RUN_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); the file is corrupt: fit the model again") from error


def write_run_record(run: Path, record: dict[str, Any]) -> None:
    from grukit.data._files import atomic_write_text

    atomic_write_text(run / RUN_FILE, json.dumps(_json_ready(record), indent=2) + "\n")


def history_record(history) -> dict[str, list[float]]:
    return {} if history is None else {key: [float(v) for v in values] for key, values in history.history.items()}


def _json_ready(value):
    import math

    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if hasattr(value, "tolist"):
        return _json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def command_line() -> str:
    """The command as typed (for run.json), shell-quoted."""
    import shlex

    return shlex.join(["grukit", *sys.argv[1:]])


def setup_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


@contextlib.contextmanager
def option_names(renames: dict[str, str]):
    """Re-raise a library error with its keyword arguments (``text_column=``) named as this command's
    options (``--text-column ``): ``renames`` maps literal text to its replacement."""
    from grukit.errors import GrukitError

    try:
        yield
    except GrukitError as error:
        message = str(error)
        for old, new in renames.items():
            message = message.replace(old, new)
        if message == str(error):
            raise
        raise type(error)(message) from error


def lines_from(path: str | None, option: str) -> list[str]:
    """Non-empty lines of a UTF-8 file, or of stdin for ``-``."""
    if path == "-":
        text = sys.stdin.read()
    else:
        from grukit.data._files import read_text

        text = read_text(require_file(path, option))
    return [line for line in text.splitlines() if line.strip()]


def print_table(title: str, table: str) -> None:
    print(f"\n{title}\n{table}", flush=True)


__all__ = ["HelpFormatter", "add_parser", "add_task", "add_runtime_options", "add_training_options", "positive_int",
           "positive_float", "amount", "column_list", "options", "verbose", "say", "require_file",
           "check_run_directory", "run_directory", "read_run_record", "write_run_record", "history_record",
           "command_line", "setup_threads", "lines_from", "print_table", "RUN_FILE"]
