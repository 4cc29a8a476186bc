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

Signals: SIGINT (Ctrl-C), SIGTERM and SIGHUP sent to the launching process are passed on to
torchrun, which stops its workers; the launching process waits for that (at most ``STOP_SECONDS``,
then kills them all) and exits with 128 + the signal's number (130 for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER_ENV = "GRUKIT_CLI_WORKER"
ERROR_FILE_ENV = "GRUKIT_CLI_ERROR_FILE"
# SIGHUP too: torchrun, in a session of its own, does not get the terminal's hangup
FORWARDED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
STOP_SECONDS = 45.0     # after a signal: torchrun gives its workers 30 s to stop before it kills them


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


def wants_relaunch(args) -> bool:
    """A fit command with --nproc >= 2 (the parser refuses < 1) that is not itself a worker."""
    return getattr(args, "nproc", 1) >= 2 and not in_worker()


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
        returncode, stderr, received = run_forwarding_signals(command, env=env,
                                                              stderr=None if debug else subprocess.PIPE)
        with open(error_file, encoding="utf-8") as reader:
            message = reader.read().strip()
    finally:
        os.unlink(error_file)
    if received is not None:     # torchrun's report of the signal is noise here
        print("interrupted", file=sys.stderr, flush=True)
        return 128 + received
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    if returncode != 0 and not debug:
        sys.stderr.write(stderr or "")
        print(f"error: the training processes failed (exit code {returncode}); the output above says "
              "why", file=sys.stderr, flush=True)
    elif stderr:
        sys.stderr.write(stderr)
    return 0 if returncode == 0 else (returncode if returncode > 0 else 1)


def run_forwarding_signals(command: list[str], **popen) -> tuple[int, str | None, int | None]:
    """Run ``command`` in a process group of its own and pass SIGINT, SIGTERM and SIGHUP sent to this process
    on to that group; after a signal, wait at most ``STOP_SECONDS`` for it to finish, then kill it and every
    process below it. Returns the exit code, the stderr read (with ``stderr=PIPE``) and the signal received
    (None if none was). Call it from the main thread (signal handlers are set there)."""
    received: list[int] = []
    child = None

    def forward(number, frame):
        received.append(number)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, number)

    previous = {}
    for number in FORWARDED_SIGNALS:
        if signal.getsignal(number) is not signal.SIG_IGN:     # what the caller ignores (nohup) stays ignored
            previous[number] = signal.signal(number, forward)
    try:
        # its own group, so that a Ctrl-C in the terminal reaches torchrun once (a second signal would cut
        # short its shutdown of the workers)
        child = subprocess.Popen(command, start_new_session=True, text=True, **popen)
        if received:                                          # came before the child existed
            os.killpg(child.pid, received[0])
        deadline = None
        while True:
            try:
                _, stderr = child.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:                # retrying loses no output
                if received and deadline is None:
                    deadline = time.monotonic() + STOP_SECONDS
                if deadline is not None and time.monotonic() > deadline:
                    kill_tree(child.pid)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return child.returncode, stderr, (received[0] if received else None)


def kill_tree(pid: int) -> None:
    """SIGKILL the process group of ``pid`` and every process below it: torchrun starts each worker in a
    session of its own, out of reach of its group."""
    below = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for process in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, from /proc (Linux; elsewhere none are found)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (name) state ppid ...": the name may hold spaces and parentheses
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        below = children.get(pending.pop(), [])
        found += below
        pending += below
    return found


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
