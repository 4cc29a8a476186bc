"""The ``grukit`` command line: --help of every command, fit -> predict round trips on tiny data, errors as
one line with exit code 2, and --nproc 2 (slow). Commands run in-process through ``main(argv)`` (one
torch import for the whole module); one test runs the installed entry point as a subprocess."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from grukit.cli.launch import without_nproc
from grukit.cli.main import build_parser, main

TINY = ["--units", "4", "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    """The commands here run with --threads 1, which sets torch's threads for this whole process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def leaf_commands():
    """(argv prefix, parser) of every runnable command, found by walking the parser."""
    found = []

    def walk(parser, prefix):
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            found.append((prefix, parser))
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, [*prefix, name])

    walk(build_parser(), [])
    return found


LEAVES = leaf_commands()


def test_every_task_has_its_commands():
    names = {" ".join(prefix) for prefix, _ in LEAVES}
    assert {"text fit", "text predict", "text evaluate", "forecast fit", "forecast predict", "forecast evaluate",
            "charlm fit", "charlm generate", "charlm evaluate", "anomaly fit", "anomaly predict",
            "anomaly evaluate", "kernels compile", "kernels info"} <= names


@pytest.mark.parametrize("prefix", [p for p, _ in LEAVES] + [[], ["text"], ["forecast"], ["charlm"], ["anomaly"],
                                                               ["kernels"]],
                         ids=lambda p: " ".join(p) or "grukit")
def test_help_exits_0_and_names_the_options(prefix, capsys):
    assert main([*prefix, "--help"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: grukit")
    assert "examples:" in shown
    parsers = dict((" ".join(p), parser) for p, parser in LEAVES)
    if " ".join(prefix) in parsers:
        for action in parsers[" ".join(prefix)]._actions:
            for option in action.option_strings:
                assert option in shown
        if prefix[-1] == "fit":
            for option in ("--cell", "--epochs", "--out", "--nproc", "--quiet", "--threads", "--precision"):
                assert option in shown


def test_kernels_compile_reports_each_cell_and_info_names_the_cache(capsys):
    """The wiring of `grukit kernels`; that precompile() leaves nothing to compile is tested in
    tests/nn/kernels/test_cache_determinism.py."""
    from grukit.nn.precompile import cache_location

    assert main(["kernels", "compile", "--cells", "mingru,rnn", "--inference-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("compiling the kernels of mingru, rnn (float32; inference) into ")
    assert lines[1].split()[:2] == ["mingru", "float32:"] and lines[2].split()[:2] == ["rnn", "float32:"]
    assert lines[-1].startswith("done in ") and lines[-1].endswith(cache_location())
    assert main(["kernels", "info"]) == 0
    shown = capsys.readouterr().out
    assert f"cache:   {cache_location()} (" in shown and "BLAS:" in shown and "threads:" in shown
    assert main(["kernels", "compile", "--cells", "gru,transformer"]) == 2
    assert "expected cells from gru, lstm, rnn, mgu, mingru" in capsys.readouterr().err


def test_usage_error_exits_2(capsys):
    assert main(["text", "fit", "--out", "x"]) == 2              # --train is required
    assert "--train" in capsys.readouterr().err


def test_without_nproc():
    assert without_nproc(["text", "fit", "--nproc", "2", "--out", "x"]) == ["text", "fit", "--out", "x"]
    assert without_nproc(["text", "fit", "--nproc=3", "-q"]) == ["text", "fit", "-q"]


# -- round trips -------------------------------------------------------------------------------------------

def write_texts(path, rows=24):
    good = ["great fun film", "a joy to watch", "wonderful and witty", "loved it"]
    bad = ["dull mess", "a boring film", "awful and slow", "hated it"]
    lines = ["text,label"]
    for i in range(rows // 2):
        lines += [f'"{good[i % 4]}",pos', f'"{bad[i % 4]}",neg']
    path.write_text("\n".join(lines) + "\n")
    return path


def write_series(path, steps=60):
    lines = ["Month,Passengers"]
    for i in range(steps):
        lines.append(f"{1949 + i // 12}-{i % 12 + 1:02d},{100 + i + 10 * math.sin(i * 2 * math.pi / 12):.2f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_text_fit_predict_evaluate(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_texts(tmp_path / "train.csv")
    assert main(["text", "fit", "--train", "train.csv", "--test", "train.csv", "--text-column", "text",
                 "--label-column", "label", "--validation", "0", *TINY, "--out", "runs/x"]) == 0
    out = capsys.readouterr().out
    assert "saved runs/x" in out and "majority class" in out
    for name in ("config.json", "model.safetensors", "task.json", "run.json"):
        assert (tmp_path / "runs/x" / name).is_file()
    record = json.loads((tmp_path / "runs/x/run.json").read_text())
    assert record["task"] == "TextClassifier" and len(record["history"]["loss"]) == 1
    assert set(record["evaluation"]["scores"]) >= {"accuracy", "f1"}

    assert main(["text", "predict", "runs/x", "great fun", "a dull mess", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("pos", "neg") for line in lines)
    assert lines[0].endswith("\tgreat fun")

    (tmp_path / "new.txt").write_text("loved it\n\nhated it\n")
    assert main(["text", "predict", "runs/x", "--file", "new.txt", "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [a["text"] for a in answers] == ["loved it", "hated it"]
    assert all(set(a["probabilities"]) == {"neg", "pos"} for a in answers)

    assert main(["text", "predict", "runs/x", "--file", "train.csv"]) == 0     # the fit's text column
    assert len(capsys.readouterr().out.strip().splitlines()) == 24

    assert main(["text", "evaluate", "runs/x", "--test", "train.csv"]) == 0
    assert "| GRU(4) |" in capsys.readouterr().out


def test_text_fit_refuses_to_replace_a_model(tmp_path, capsys):
    train = write_texts(tmp_path / "train.csv")
    args = ["text", "fit", "--train", str(train), "--validation", "0", *TINY, "--out", str(tmp_path / "run")]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_forecast_fit_predict_evaluate(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_series(tmp_path / "series.csv")
    assert main(["forecast", "fit", "series.csv", "--date-column", "Month", "--value-column", "Passengers",
                 "--lookback", "12", "--horizon", "3", "--season", "12", "--test", "12", *TINY,
                 "--out", "runs/y"]) == 0
    out = capsys.readouterr().out
    assert "seasonal naive (m=12)" in out and "linear AR" in out
    assert main(["forecast", "predict", "runs/y", "series.csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "date\tPassengers"
    assert [line.split("\t")[0] for line in lines[1:]] == ["1954-01", "1954-02", "1954-03"]   # after 1953-12
    assert all(math.isfinite(float(line.split("\t")[1])) for line in lines[1:])
    assert main(["forecast", "evaluate", "runs/y", "series.csv", "--test", "12", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_steps"] == 12 and set(result["scores"]) == {"model", "last_value", "seasonal_naive",
                                                                     "linear_ar"}


def test_charlm_fit_generate(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 20)
    run = str(tmp_path / "lm")
    assert main(["charlm", "fit", str(corpus), "--sequence-length", "16", "--embedding-dim", "4", *TINY,
                 "--out", run]) == 0
    capsys.readouterr()
    assert main(["charlm", "generate", run, "--prompt", "the ", "--length", "30", "--top-k", "3", "--seed", "0",
                 "--no-prompt"]) == 0
    first = capsys.readouterr().out
    assert main(["charlm", "generate", run, "--prompt", "the ", "--length", "30", "--top-k", "3", "--seed", "0",
                 "--no-prompt"]) == 0
    assert capsys.readouterr().out == first and len(first.rstrip("\n")) == 30
    assert main(["charlm", "evaluate", run, str(corpus)]) == 0
    assert "bigram (counts)" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:precision=.mixed_bfloat16. on a CPU without BF16 units")
def test_precision_option_reaches_the_saved_task(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 20)
    assert main(["charlm", "fit", str(corpus), "--sequence-length", "16", "--embedding-dim", "4", *TINY,
                 "--precision", "mixed_bfloat16", "--out", str(tmp_path / "lm")]) == 0
    assert json.loads((tmp_path / "lm" / "task.json").read_text())["config"]["precision"] == "mixed_bfloat16"
    assert main(["charlm", "fit", str(corpus), "--precision", "bfloat16", "--out", str(tmp_path / "x")]) == 2
    assert "mixed_bfloat16" in capsys.readouterr().err


def test_precision_choices_are_the_training_loops():
    from grukit.cli.common import PRECISIONS as shown
    from grukit.train.loop import PRECISIONS

    assert shown == PRECISIONS


# -- errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, named", [
    (["text", "fit", "--train", "{tmp}/train.csv", "--text-column", "review", "--out", "{tmp}/r"], "'review'"),
    (["text", "fit", "--train", "{tmp}/missing.csv", "--out", "{tmp}/r"], "missing.csv"),
    (["forecast", "fit", "{tmp}/series.csv", "--date-column", "Month", "--value-column", "Pasengers",
      "--out", "{tmp}/r"], "'Pasengers'"),
    (["forecast", "fit", "{tmp}/nothing.csv", "--date-column", "Month", "--value-column", "Passengers",
      "--out", "{tmp}/r"], "nothing.csv"),
    (["text", "predict", "{tmp}/no-run", "some text"], "no-run"),
    (["charlm", "fit", "{tmp}/absent.txt", "--out", "{tmp}/r"], "absent.txt"),
])
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, capsys, argv, named):
    write_texts(tmp_path / "train.csv")
    write_series(tmp_path / "series.csv")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and named in captured.err
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["text", "fit", "--train", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r"),
                 "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_entry_point_error_in_a_subprocess(tmp_path):
    """`python -m grukit` (what the console script runs): one line on stderr, exit code 2."""
    result = subprocess.run([sys.executable, "-m", "grukit", "forecast", "predict", str(tmp_path / "run"),
                             str(tmp_path / "series.csv")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: run directory ") and "Traceback" not in result.stderr


# -- several processes ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_nproc_2_text_fit_writes_the_same_run(tmp_path):
    """--nproc 2 re-runs the command under torch.distributed.run: rank 0 writes the same files as one process."""
    train = write_texts(tmp_path / "train.csv")
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "grukit", "text", "fit", "--train", str(train), "--validation",
                             "0", "--units", "4", "--epochs", "2", "--nproc", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("saved ") == 1                          # rank 0 only
    for name in ("config.json", "model.safetensors", "task.json", "run.json"):
        assert (out / name).is_file()
    record = json.loads((out / "run.json").read_text())
    assert record["processes"] == 2 and len(record["history"]["loss"]) == 2
    predict = subprocess.run([sys.executable, "-m", "grukit", "text", "predict", str(out), "loved it"],
                             capture_output=True, text=True, timeout=120)
    assert predict.returncode == 0 and predict.stdout.split("\t")[0] in ("pos", "neg")


@pytest.mark.slow
def test_nproc_2_bad_column_fails_before_launching(tmp_path):
    train = write_texts(tmp_path / "train.csv")
    result = subprocess.run([sys.executable, "-m", "grukit", "text", "fit", "--train", str(train), "--label-column",
                             "sentiment", "--nproc", "2", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "'sentiment'" in result.stderr
    assert "training in 2 processes" not in result.stdout


def test_anomaly_fit_predict_evaluate(tmp_path, capsys):
    lines = ["Date,Temp,anomaly"]
    for i in range(120):
        spike = i == 100
        lines.append(f"1981-{1 + i // 28:02d}-{1 + i % 28:02d},{10 + 5 * math.sin(i / 10) + 30 * spike:.3f},{int(spike)}")
    series = tmp_path / "temps.csv"
    series.write_text("\n".join(lines) + "\n")
    run = str(tmp_path / "a")
    assert main(["anomaly", "fit", str(series), "--date-column", "Date", "--value-column", "Temp", "--window", "8",
                 *TINY, "--out", run]) == 0
    capsys.readouterr()
    assert main(["anomaly", "predict", run, str(series), "--all", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["steps"]) == 120 and result["steps"][0]["score"] is None      # no window before step 0
    assert main(["anomaly", "evaluate", run, str(series), "--label-column", "anomaly"]) == 0
    assert "rolling z-score" in capsys.readouterr().out


def test_command_line_leaves_the_openmp_wait_policy_alone():
    """The kernels run on torch's OpenMP team: its default waiting helps them (README, "Fast CPU
    kernels"), so the command line sets nothing."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, grukit.cli.main; print(os.environ.get('OMP_WAIT_POLICY'))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["None"]


# -- forecast --target, checks before training, config ranges (forecast.py, text.py) -------------------------

def write_columns(path, steps=60):
    """Month and three columns: a (positive, seasonal), b (falls below 0 from step 50), c."""
    lines = ["Month,a,b,c"]
    for i in range(steps):
        lines.append(f"{1949 + i // 12}-{i % 12 + 1:02d},{100 + i + 10 * math.sin(i * 2 * math.pi / 12):.2f},"
                     f"{50 - i},{i % 5}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fit_spy(monkeypatch):
    """Records the task class of every task fit (where training starts) and runs it."""
    from grukit.tasks import Forecaster, TextClassifier

    calls = []
    for task in (Forecaster, TextClassifier):
        def spy(self, *args, _original=task.fit, **kwargs):
            calls.append(type(self).__name__)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(task, "fit", spy)
    return calls


def test_forecast_target_picks_a_named_column(tmp_path, capsys):
    series = write_columns(tmp_path / "columns.csv")
    run = str(tmp_path / "b")
    columns = ["--date-column", "Month", "--value-column", "a,b,c", "--target", "b"]
    assert main(["forecast", "fit", str(series), *columns, "--lookback", "6", "--test", "6", *TINY,
                 "--out", run]) == 0
    assert "saved" in capsys.readouterr().out
    state = json.loads((tmp_path / "b" / "task.json").read_text())["state"]
    assert state["columns"] == ["a", "b", "c"] and state["target_indices"] == [1] and state["columns_named"]
    assert main(["forecast", "predict", run, str(series)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "date\tb"
    # the run reads its columns by name: given in another order they still mean the same
    assert main(["forecast", "predict", run, str(series), "--value-column", "c,b,a", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["forecast"][0]) == ["step", "date", "b"]
    # --log: b holds values <= 0 and the error says b, not column '1'
    assert main(["forecast", "fit", str(series), *columns, "--log", *TINY, "--out", str(tmp_path / "log")]) == 2
    err = capsys.readouterr().err
    assert "column 'b' has 10 value(s) <= 0" in err and "'1'" not in err
    assert main(["forecast", "fit", str(series), *columns[:-1], "d", *TINY, "--out", str(tmp_path / "d")]) == 2
    assert "--target d: not among the --value-column columns ['a', 'b', 'c']" in capsys.readouterr().err


@pytest.mark.parametrize("options, named", [
    (["--season", "60"], "--season 60 needs a training part longer than one season"),
    (["--season", "48", "--test", "12"], "--season 48 needs a training part longer than one season"),
    (["--season", "0"], "argument --season: expected a whole number >= 1"),
    (["--test", "2", "--horizon", "3"], "--test 2 holds out 2 step(s), fewer than --horizon 3"),
    (["--test", "60"], "--test 60 holds out all 60 steps"),
    (["--patience", "-2", "--validation", "6"], "--patience -2: expected an int >= 0"),
    (["--patience", "2"], "--patience 2 stops on the validation loss; pass --validation too"),
    (["--validation", "1.5"], "--validation 1.5: expected a count (int >= 0) or a fraction (float in [0, 1))"),
])
def test_forecast_options_are_checked_before_training(tmp_path, capsys, fit_spy, options, named):
    series = write_series(tmp_path / "series.csv")
    assert main(["forecast", "fit", str(series), "--date-column", "Month", "--value-column", "Passengers",
                 *options, *TINY, "--out", str(tmp_path / "r")]) == 2
    assert fit_spy == []                                                  # training never started
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err and not (tmp_path / "r").exists()


def test_text_test_labels_are_checked_before_training(tmp_path, capsys, fit_spy):
    train = write_texts(tmp_path / "train.csv")
    test = tmp_path / "test.csv"
    test.write_text('text,label\n"a joy",pos\n"so-so",neutral\n"meh",mixed\n')
    argv = ["text", "fit", "--train", str(train), "--validation", "0", *TINY, "--out", str(tmp_path / "r")]
    assert main([*argv, "--test", str(test)]) == 2
    assert fit_spy == []                                                  # training never started
    err = capsys.readouterr().err
    assert err.startswith(f"error: --test {test}: label(s) 'mixed', 'neutral' do not occur in --train")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
    assert main([*argv, "--test", str(tmp_path / "absent.csv")]) == 2
    assert fit_spy == [] and "absent.csv: no such file" in capsys.readouterr().err
    assert main([*argv, "--test", str(train)]) == 0 and fit_spy == ["TextClassifier"]
