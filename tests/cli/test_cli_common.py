"""What the fit commands share (grukit.cli.common, grukit.cli.launch): --out is proven writable before
training, --help shows every default worth showing, --nproc refuses fewer than 1 process, and a signal to
a --nproc run stops every process it started. Commands run in-process through ``main(argv)``; the signal
tests run real subprocesses and look for survivors in /proc."""

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grukit.cli import launch
from grukit.cli.common import HelpFormatter, check_run_directory
from grukit.cli.main import build_parser, main
from grukit.errors import ConfigError

TINY = ["--units", "4", "--epochs", "1", "--threads", "1"]
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds processes in /proc (Linux)")


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    """--threads 1 sets torch's threads for this whole process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def write_inputs(folder: Path) -> None:
    """A labelled text CSV, a monthly series and a small corpus: enough for every fit command."""
    lines = ["text,label"] + [f'"{text}",{label}' for text, label in
                              [("great fun film", "pos"), ("dull mess", "neg")] * 12]
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    lines = ["Month,Passengers"] + [f"{1949 + i // 12}-{i % 12 + 1:02d},{100 + i + 10 * math.sin(i / 2):.2f}"
                                    for i in range(60)]
    (folder / "series.csv").write_text("\n".join(lines) + "\n")
    (folder / "corpus.txt").write_text("the cat sat on the mat. " * 200)


FITS = {
    "text": ["text", "fit", "--train", "{tmp}/train.csv", "--validation", "0"],
    "forecast": ["forecast", "fit", "{tmp}/series.csv", "--date-column", "Month", "--value-column", "Passengers",
                 "--lookback", "6", "--horizon", "2"],
    "charlm": ["charlm", "fit", "{tmp}/corpus.txt", "--sequence-length", "16", "--embedding-dim", "4"],
    "anomaly": ["anomaly", "fit", "{tmp}/series.csv", "--date-column", "Month", "--value-column", "Passengers",
                "--window", "6"],
}


def fit_argv(task: str, tmp_path: Path, *more: str) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in FITS[task]] + [*TINY, *more]


# -- --out is checked before training ------------------------------------------------------------------------

def test_check_run_directory_leaves_nothing_behind(tmp_path):
    out = tmp_path / "runs" / "x"
    assert check_run_directory(argparse.Namespace(out=str(out), overwrite=False)) == out
    assert not (tmp_path / "runs").exists()                 # the folders made for the check are gone again
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    check_run_directory(argparse.Namespace(out=str(out), overwrite=False))
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_out_below_a_file_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "run"
    with pytest.raises(ConfigError) as caught:
        check_run_directory(argparse.Namespace(out=str(out), overwrite=False))
    message = str(caught.value)
    assert message.startswith(f"--out {out}: cannot write") and "pass a directory you may write to" in message


def test_read_only_out_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user writes into read-only folders (root)")
        for out in (locked, locked / "run"):              # an existing directory, and one to create
            with pytest.raises(ConfigError, match=f"--out {out}: cannot write"):
                check_run_directory(argparse.Namespace(out=str(out), overwrite=False))
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("task", sorted(FITS))
def test_every_fit_command_checks_out_before_training(task, tmp_path, capsys):
    write_inputs(tmp_path)
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "run"
    assert main(fit_argv(task, tmp_path, "--out", str(out))) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: --out {out}: cannot write") and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "Epoch" not in captured.out                    # stopped before the first epoch, not at the save


# -- --help ---------------------------------------------------------------------------------------------------

def shown(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())         # argparse wraps lines where it likes


def test_help_shows_defaults_of_zero_and_hides_none_off_and_blank():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--count", type=int, default=0, help="a count")
    parser.add_argument("--fraction", type=float, default=0.0, help="a fraction")
    parser.add_argument("--ratio", type=float, default=0.5, help="a ratio")
    parser.add_argument("--flag", action="store_true", help="a flag")
    parser.add_argument("--unset", default=None, help="an unset value")
    parser.add_argument("--empty", default="", help="an empty text")
    parser.add_argument("--newline", default="\n", help="a newline")
    parser.add_argument("--said", default=3, help="says it (default: three)")
    text = shown(parser)
    assert "a count (default: 0)" in text and "a fraction (default: 0.0)" in text
    assert "a ratio (default: 0.5)" in text and "says it (default: three)" in text
    for help in ("a flag", "an unset value", "an empty text", "a newline"):
        assert f"{help} " in text and f"{help} (default:" not in text


def test_help_of_the_commands():
    parsers = {}

    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parsers[" ".join(prefix)] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, [*prefix, name])

    walk(build_parser(), [])
    for name, parser in parsers.items():
        assert "(default: )" not in shown(parser), name
    assert "seed of the weights, splits and batch order (default: 0)" in shown(parsers["charlm fit"])
    assert "(default: a newline, so the text starts as a new line would)" in shown(parsers["charlm generate"])


# -- --nproc ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nproc", ["0", "-1", "two"])
def test_nproc_below_1_is_a_usage_error(nproc, tmp_path, capsys):
    write_inputs(tmp_path)
    out = tmp_path / "run"
    assert main(fit_argv("charlm", tmp_path, "--nproc", nproc, "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: grukit charlm fit") and "argument --nproc: expected a whole number >= 1" in err
    assert not out.exists()


# -- signals under --nproc ----------------------------------------------------------------------------------------

# Python ignores SIGINT in a process started with SIGINT ignored (a shell's background job): restore it
DEFAULT_SIGINT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "

STUB_LAUNCHER = """
import os, signal, subprocess, sys, time
mode, pid_file = sys.argv[1], sys.argv[2]
# like torchrun: the worker in a session of its own, stopped by the launcher when it gets a signal
worker = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\\n"
                           "for number in (signal.SIGINT, signal.SIGTERM):\\n"
                           "    if sys.argv[1] == 'stubborn': signal.signal(number, signal.SIG_IGN)\\n"
                           "while True: time.sleep(0.05)", mode], start_new_session=True)

def stop(number, frame):
    worker.send_signal(number)
    worker.wait()
    sys.exit(1)

for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, signal.SIG_IGN if mode == "stubborn" else stop)
with open(pid_file + ".part", "w") as writer:
    writer.write(f"{os.getpid()} {worker.pid}")
os.replace(pid_file + ".part", pid_file)
while True:
    time.sleep(0.05)
"""

STUB_PARENT = DEFAULT_SIGINT + """
import sys
from grukit.cli import launch
launch.STOP_SECONDS = 1.0
code, _, received = launch.run_forwarding_signals([sys.executable, sys.argv[1], sys.argv[2], sys.argv[3]])
sys.exit(128 + received if received else code)
"""


def alive(pid: int) -> bool:
    """Running (a zombie has exited; it only waits for its parent to collect its exit code)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def kill_survivors(pids) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@needs_proc
@pytest.mark.parametrize("mode, number", [("polite", signal.SIGINT), ("polite", signal.SIGTERM),
                                          ("stubborn", signal.SIGINT), ("stubborn", signal.SIGTERM)])
def test_a_signal_reaches_the_launcher_and_nothing_survives(mode, number, tmp_path):
    """The launcher (a stub of torchrun here) gets the signal and stops its worker; one that ignores it is
    killed with its worker after STOP_SECONDS. The exit code is 128 + the signal's number."""
    (tmp_path / "launcher.py").write_text(STUB_LAUNCHER)
    pid_file = tmp_path / "pids"
    parent = subprocess.Popen([sys.executable, "-c", STUB_PARENT, str(tmp_path / "launcher.py"), mode,
                               str(pid_file)])
    pids = []
    try:
        wait_for(pid_file.exists, 30, "the stub launcher to start")
        pids = [int(pid) for pid in pid_file.read_text().split()]
        assert all(alive(pid) for pid in pids)
        parent.send_signal(number)
        assert parent.wait(timeout=30) == 128 + number             # 130 for SIGINT, 143 for SIGTERM
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        parent.kill()
        kill_survivors(pids)


@needs_proc
@pytest.mark.slow
def test_sigint_stops_every_process_of_an_nproc_run(tmp_path):
    """Ctrl-C (SIGINT to the launching process) on `grukit charlm fit --nproc 2`: torchrun and both workers
    stop, and the command exits 130."""
    write_inputs(tmp_path)
    argv = fit_argv("charlm", tmp_path, "--epochs", "100000", "--nproc", "2", "--out", str(tmp_path / "lm"))
    log = tmp_path / "stdout.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as stdout:
        parent = subprocess.Popen([sys.executable, "-c", DEFAULT_SIGINT + "from grukit.cli.main import main; "
                                   "import sys; sys.exit(main())", *argv],
                                  stdout=stdout, stderr=subprocess.PIPE, text=True, env=env)
    pids = []
    try:
        # an epoch line from rank 0: torchrun and its workers are up and training
        wait_for(lambda: "Epoch 1/" in log.read_text() or parent.poll() is not None, 120, "the first epoch")
        assert parent.poll() is None, log.read_text() + parent.stderr.read()
        pids = launch.descendants(parent.pid)
        assert len(pids) >= 3, pids                      # torchrun and two workers: all found
        parent.send_signal(signal.SIGINT)
        assert parent.wait(timeout=90) == 130
        assert parent.stderr.read().strip().splitlines()[-1] == "interrupted"
        assert [pid for pid in pids if alive(pid)] == []
        assert not (tmp_path / "lm" / "task.json").exists()
    finally:
        parent.kill()
        kill_survivors(pids)
