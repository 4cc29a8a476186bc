"""``grukit kernels compile | info``: the fused kernels' compiled code, ahead of use.

``compile`` runs :func:`grukit.nn.precompile.precompile`, so that no later process compiles a kernel
(build it into a container or device image); ``info`` says where the compiled code is kept and what
runs the kernels here.
"""

from __future__ import annotations

import argparse

from grukit.cli import common
from grukit.cli.common import CELLS, add_parser, add_runtime_options, say
from grukit.errors import ConfigError

DTYPES = ("float32", "float64")


def _choices(allowed: tuple[str, ...], what: str):
    """An argparse type: a comma-separated subset of ``allowed``, in the given order."""
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected {what} from {', '.join(allowed)} separated by commas, "
                                             f"got {text!r}")
        return names
    return parse


def register(tasks) -> None:
    actions = common.add_task(
        tasks, "kernels", "compile the fused CPU kernels ahead of use, or show where their code is kept",
        "The fused kernels compile on first use (seconds per cell) and are cached on disk for "
        "every later process. `compile` does that now, e.g. while building a container image, "
        "so that no user call waits for it.",
        """
          grukit kernels compile
          grukit kernels compile --cells gru,lstm --dtypes float32,float64
          grukit kernels info
        """)

    compile_ = add_parser(actions, "compile", "compile every kernel the cells use into the on-disk cache",
                          "Run each cell (every variant: both GRU reset placements, tanh and relu SimpleRNN, "
                          "every MGU variant, both minGRU candidates) through every entry point of the fused "
                          "kernels, so that Numba compiles them into its cache, or finds them there. Later "
                          "processes on this machine load the machine code instead of compiling (tens of "
                          "milliseconds against seconds). Set NUMBA_CACHE_DIR to choose the cache folder.", """
          grukit kernels compile
          grukit kernels compile --cells gru --inference-only
          NUMBA_CACHE_DIR=/opt/app/numba-cache grukit kernels compile --dtypes float32,float64
        """)
    compile_.add_argument("--cells", type=_choices(CELLS, "cells"), default=list(CELLS), metavar="LIST",
                          help=f"cells to compile, comma-separated (default: all: {','.join(CELLS)})")
    compile_.add_argument("--dtypes", type=_choices(DTYPES, "dtypes"), default=["float32"], metavar="LIST",
                          help="parameter dtypes, comma-separated: float32 (torch's default), float64 and/or "
                               "mixed_bfloat16 (float32 layers in the bfloat16 mode, as fit --precision "
                               "mixed_bfloat16 and torch.autocast run them) (default: float32)")
    compile_.add_argument("--inference-only", action="store_true",
                          help="skip the training kernels (backward passes)")
    add_runtime_options(compile_)
    compile_.set_defaults(handler=run_compile)

    info = add_parser(actions, "info", "show where the compiled kernels are kept and what runs them",
                      "Print the cache folder of the compiled kernels and how many compiled functions it "
                      "holds, the BLAS library the kernels call, and the threads that run them.", """
          grukit kernels info
        """)
    add_runtime_options(info)
    info.set_defaults(handler=run_info)


def run_compile(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    from grukit.nn.precompile import precompile

    location = _checked_cache_location()
    kinds = "inference" if args.inference_only else "inference and training"
    say(args, f"compiling the kernels of {', '.join(args.cells)} ({', '.join(args.dtypes)}; {kinds}) into "
              f"{location}")

    def report(result: dict) -> None:
        what = (f"compiled {result['compiled']} functions" if result["compiled"]
                else "already in the cache, nothing compiled")
        say(args, f"  {result['cell']:<7} {result['dtype']}: {what} ({result['seconds']:.1f} s)")

    results = precompile(args.cells, args.dtypes, training=not args.inference_only, report=report)
    seconds, compiled = sum(r["seconds"] for r in results), sum(r["compiled"] for r in results)
    print(f"done in {seconds:.1f} s: {compiled} functions compiled into {location}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    common.setup_threads(args)
    from pathlib import Path

    import torch

    from grukit.nn.kernels import blas, team

    location = Path(_checked_cache_location())
    entries = len(list(location.glob("*.nbi"))) if location.is_dir() else 0
    print(f"cache:   {location} ({entries} cached functions)")
    print(f"BLAS:    {blas.PROVIDER}")
    print(f"threads: {torch.get_num_threads()} ({team.provider()})")
    return 0


def _checked_cache_location() -> str:
    """precompile.cache_location(), or a ConfigError naming the fix where Numba can cache nowhere."""
    from grukit.nn.precompile import cache_location

    try:
        return cache_location()
    except RuntimeError as error:       # Numba found no writable cache folder
        raise ConfigError(f"the kernels cannot be cached here ({error}); set NUMBA_CACHE_DIR to a writable "
                          "folder") from None
