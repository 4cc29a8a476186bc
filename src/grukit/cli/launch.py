"""``--nproc N``: run a fit command data-parallel in N processes on this machine.

The command re-runs itself as ``python -m torch.distributed.run --standalone --nproc_per_node N -m
grukit.cli.main <the same arguments without --nproc>`` with ``GRUKIT_CLI_WORKER=1`` in the
environment. In each worker the task's training goes through ``grukit.train.fit(...,
distributed=True)``; the data is read and the model built
identically in every process, rank 0's weights are broadcast and each global batch is split
between the processes (:mod:`grukit.train.distributed`). Only rank 0 prints and writes the run
directory.

Each command passes ``distributed=in_worker()`` to its task's ``fit``, which hands it to
``Sequential.fit``.

Errors: a worker that hits a :class:`grukit.errors.GrukitError` writes its message to the file
named by ``GRUKIT_CLI_ERROR_FILE`` and exits 2; the launching process prints that one line
(torchrun's own failure report is kept out of sight unless ``--debug``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile

from grukit.errors import ConfigError

WORKER_ENV = "GRUKIT_CLI_WORKER"
ERROR_FILE_ENV = "GRUKIT_CLI_ERROR_FILE"


def in_worker() -> bool:
    """True inside a process started by :func:`relaunch`."""
    return os.environ.get(WORKER_ENV) == "1"


def worker_rank() -> int:
    return int(os.environ.get("RANK", "0")) if in_worker() else 0


def world_size() -> int:
    """Processes training together: WORLD_SIZE inside a worker, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) if in_worker() else 1


def is_main() -> bool:
    """Whether this process prints and writes files: always outside a worker, rank 0 inside."""
    return worker_rank() == 0


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` with ``--nproc N`` / ``--nproc=N`` removed."""
    result, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        result.append(item)
    return result


def check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: expected a number of processes >= 2 (or 1, the default, for one "
                          "process)")


def wants_relaunch(args) -> bool:
    """A fit command with --nproc >= 2 that is not itself a worker."""
    nproc = getattr(args, "nproc", 1) or 1
    check_nproc(nproc)
    return nproc >= 2 and not in_worker()


def relaunch(argv: list[str], nproc: int, debug: bool = False) -> int:
    """Run ``grukit <argv without --nproc>`` in ``nproc`` processes under torch.distributed.run; returns
    the exit code (2 with one ``error: ...`` line if a worker raised a GrukitError)."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    handle, error_file = tempfile.mkstemp(prefix="grukit-error-", suffix=".txt")
    os.close(handle)
    env = {**os.environ, WORKER_ENV: "1", ERROR_FILE_ENV: error_file,
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "grukit.cli.main", *without_nproc(argv)]
    if not any(a in ("-q", "--quiet") for a in argv):
        print(f"grukit: training in {nproc} processes (torch.distributed, gloo), {threads} thread(s) each",
              flush=True)
    try:
        # stdout stays the terminal (progress bars); stderr is kept back so that torchrun's failure report
        # does not bury the one-line error
        result = subprocess.run(command, env=env, stderr=None if debug else subprocess.PIPE, text=True)
        with open(error_file, encoding="utf-8") as reader:
            message = reader.read().strip()
    finally:
        os.unlink(error_file)
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    if result.returncode != 0 and not debug:
        sys.stderr.write(result.stderr or "")
        print(f"error: the training processes failed (exit code {result.returncode}); the output above says "
              "why", file=sys.stderr, flush=True)
    elif result.stderr:
        sys.stderr.write(result.stderr)
    return 0 if result.returncode == 0 else (result.returncode if result.returncode > 0 else 1)


def report_worker_error(message: str) -> None:
    """In a worker: hand a GrukitError's message to the launching process (rank 0 only)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path and worker_rank() == 0:
        with open(path, "w", encoding="utf-8") as writer:
            writer.write(message)


def start_worker() -> None:
    """In a worker: silence stdout of ranks other than 0 (only rank 0 prints)."""
    if worker_rank() != 0:
        sys.stdout = open(os.devnull, "w")


@contextlib.contextmanager
def distributed_training():
    """Inside a worker: join the process group before the command sets its threads (joining gives each
    process its share of the cores; ``--threads`` then overrides that). The task's ``fit`` gets
    ``distributed=in_worker()``. Outside a worker this does nothing."""
    if in_worker():
        from grukit.train import distributed

        distributed.ensure_process_group()
    yield


def finish_worker() -> None:
    """Leave the process group after the command (no-op outside a worker)."""
    if in_worker():
        from grukit.train import distributed

        distributed.shutdown()


__all__ = ["in_worker", "is_main", "world_size", "worker_rank", "without_nproc", "wants_relaunch", "relaunch",
           "report_worker_error", "start_worker", "distributed_training", "finish_worker", "WORKER_ENV"]
