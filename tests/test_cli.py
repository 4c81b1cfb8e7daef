import json
import os
import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import lines_without_notes

import fastlora as fl
from fastlora.cli import main


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)
    return invoke


def test_solve_prints_a_summary(run):
    result = run("solve", "--d", "12", "--k", "1", "--T", "3", "--backend", "numpy", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "rel_err_A" in result.output and "adapt_rank" in result.output


def test_solve_json(run):
    result = run("solve", "--d", "10", "--k", "1", "--T", "3", "--n", "200", "--noise", "0.1", "--peft", "lora",
                 "--backend", "numpy", "--json", "--n-ft", "50")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["method"] == "lora-ml" and data["rel_err_A"] < 0.1


@pytest.mark.parametrize("args,needle", [
    (["--rank", "0"], "rank"),
    (["--rank", "99"], "rank"),
    (["--method", "maml"], "method"),
    (["--solver", "sgd"], "solver"),
    (["--backend", "tpu"], "backend"),
    (["--peft", "nope"], "peft"),
    (["--T", "0"], "T"),
    (["--n", "lots"], "n="),
    (["--n-ft", "-3"], "--n-ft='-3' must be a positive integer"),
    (["--d-out", "5", "--asymmetric"], "lora_sym"),
])
def test_solve_bad_input_is_one_line_and_nonzero(run, args, needle):
    result = run("solve", "--d", "8", "--k", "1", "--T", "3", "--backend", "numpy", *args)
    assert result.exit_code == 2
    lines = lines_without_notes(result.output)
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], result.output
    assert "Traceback" not in result.output


def test_plugins_lists_builtins(run):
    result = run("plugins")
    assert result.exit_code == 0
    header, rule, *lines = result.output.splitlines()
    assert header.split()[:2] == ["name", "distribution"] and header.split()[-1] == "status"
    assert set(rule.replace(" ", "")) == {"-"}
    rows = {line.split()[0]: line.split() for line in lines if line.strip() and not line.startswith("error:")}
    for name in ("lora", "lora_sym", "full"):
        assert name in rows, result.output
        assert rows[name][1] == "fastlora" and rows[name][-1] == "ok", rows[name]


def test_plugins_check_runs_the_kit_and_names_a_failing_parameterization():
    import fastlora as fl
    from fastlora.peft.builtins import LoRA
    runner = CliRunner()
    result = runner.invoke(main, ["plugins", "--check"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[2:] if line.strip()}
    assert {"lora", "lora_sym", "full"} <= set(rows) and all(r[-1] == "ok" for r in rows.values())

    class WrongC(LoRA):
        name = "wrong_c_cli"

        def pullback(self, params, G):
            grads = super().pullback(params, G)
            grads["C"] = 1.01 * grads["C"]
            return grads

    fl.peft.register(WrongC)
    try:
        result = runner.invoke(main, ["plugins", "--check"])
    finally:
        fl.peft.unregister("wrong_c_cli")
    assert result.exit_code == 1
    assert "FAIL wrong_c_cli" in result.output and "pullback()['C']" in result.output
    assert "failed the conformance kit: wrong_c_cli" in result.output


def test_solve_takes_solver_options_from_the_schema(run):
    result = run("solve", "--d", "10", "--k", "1", "--T", "3", "--backend", "numpy", "--json", "--acceleration", "none",
                 "--reduction", "none", "--max-iter", "7", "--tol", "0")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["n_iter"] == 7 and data["solver"] == "als" and data["ran"] == "als"
    result = run("solve", "--d", "8", "--k", "1", "--T", "3", "--backend", "numpy", "--acceleration", "fast")
    assert result.exit_code == 2 and "--acceleration fast is not allowed" in result.output


def test_slow_compiling_is_announced_and_quick_work_is_silent(caplog):
    import time

    from fastlora.compilation import slow_work_notice
    with caplog.at_level("WARNING", logger="fastlora"):
        with slow_work_notice("compiling something", after=0.05):
            time.sleep(0.3)
        with slow_work_notice("never shown", after=5.0):
            pass
    assert [r.getMessage() for r in caplog.records] == ["compiling something"]


def test_the_fits_loaded_from_the_cache_say_nothing_however_slow(tmp_path):
    """A sweep's workers loading the tasks' fits on a busy machine (over the notice's 1 s) said 'compiling'
    and broke the one-line stderr of a sweep; a load never says so (here with the notice due at once)."""
    import subprocess
    import sys
    script = ("import fastlora.compilation as c\n"
              "shown = c.slow_work_notice\n"
              "c.slow_work_notice = lambda message, after=0.0: shown(message, 0.0)\n"
              "from fastlora import tasks\n"
              "tasks._compiled_fits()\n"
              "import time; time.sleep(0.2)\n")
    env = {**os.environ, "FASTLORA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)  # a warm cache there would make the first run a load
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "compiling fastlora's least-squares fits" in first.stderr  # an empty cache compiles, and says so
    assert second.stderr == ""


@pytest.mark.slow
def test_a_cold_cache_says_it_compiles_and_compiling_is_not_in_the_solve_s_seconds(tmp_path):
    """A fresh cache (partly filled: the float64 engine elsewhere does not help float32): the first solve
    announces its compiling on stderr, and res.seconds is the solve alone."""
    script = ("import fastlora as fl, json\n"
              "p = fl.make_problem(d=6, k=1, T=3, n=200, noise=0.1, seed=0)\n"
              "r = fl.retrain(p, backend='numba', dtype='float32')\n"
              "print(json.dumps({'seconds': r.seconds, 'compile': r.info['compile_seconds']}))\n")
    env = {**os.environ, "FASTLORA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    assert "compiling the fastlora engine" in done.stderr
    assert timing["compile"] > 1.0 and timing["seconds"] < 0.5
    # a later process loads that code: nothing is announced even where loading is slow (the notice due at once)
    eager = ("import fastlora.compilation as c\nshown = c.slow_work_notice\n"
             "c.slow_work_notice = lambda message, after=0.0: shown(message, 0.0)\n")
    again = subprocess.run([sys.executable, "-c", eager + script], capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0 and "compiling" not in again.stderr, again.stderr


def test_demo_quick_writes_table_store_and_figures(run, tmp_path):
    result = run("demo", "--out", str(tmp_path / "demo"), "--quick", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "lora-ml" in result.output and "reptile" in result.output and "standard" in result.output
    assert (tmp_path / "demo" / "results.sqlite").exists()
    assert (tmp_path / "demo" / "excess_risk_vs_T.png").stat().st_size > 1000


def test_cache_commands_count_and_clear_compiled_kernels(run, tmp_path, monkeypatch):
    from fastlora.backends import get_backend
    from fastlora.config import settings
    get_backend("numba")  # the numba backend tells the kernels where to cache (fastlora.kernels.compile_options)
    from fastlora.kernels.numba_cpu import kernel
    monkeypatch.setattr(settings, "cache_dir", tmp_path / "cache")
    root = tmp_path / "cache" / "numba"
    assert run("cache", "info").output.strip() == f"{root}: 0 file(s), 0.0 MB"

    @kernel()  # fastlora's kernel factory: compiled code lands in the cache the commands manage
    def twice(x):
        return 2 * x

    assert twice(21) == 42
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) >= 2  # an index and the compiled code
    assert run("cache", "info").output.startswith(f"{root}: {len(files)} file(s), ")
    cleared = run("cache", "clear")
    assert cleared.exit_code == 0 and cleared.output.strip() == f"removed {len(files)} cached file(s) from {root}"
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert run("cache", "info").output.strip() == f"{root}: 0 file(s), 0.0 MB"


def test_an_unexpected_error_exits_1_with_one_line(run, monkeypatch):
    import fastlora as fl

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.delenv("FASTLORA_DEBUG", raising=False)
    monkeypatch.setattr(fl, "make_problem", broken)
    result = run("solve", "--d", "8", "--k", "1", "--T", "3", "--backend", "numpy", "--no-progress")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: RuntimeError: boom (set FASTLORA_DEBUG=1 for the traceback)"


def test_bench_repeat_must_be_at_least_one(run):
    result = run("bench", "--repeat", "0", "--list")  # checked while parsing, before anything runs
    assert result.exit_code == 2
    assert "Invalid value for '--repeat': 0 is not in the range x>=1" in result.output


@pytest.mark.parametrize("args,option", [
    (["sweep", "{tmp}/spec.toml", "--out", "{missing}/r.sqlite"], "--out"),
    (["export", "{tmp}/store.sqlite", "-o", "{missing}/r.csv"], "--output"),
    (["plot", "{tmp}/store.sqlite", "--x", "T", "-o", "{missing}/fig.png"], "--output"),
    (["bench", "--list", "--json", "{missing}/bench.json"], "--json"),
    (["demo", "--quick", "--out", "{missing}/demo"], "--out"),
])
def test_outputs_into_a_missing_folder_are_refused(run, tmp_path, args, option):
    (tmp_path / "store.sqlite").touch()
    missing = tmp_path / "no" / "such"
    args = [a.format(tmp=tmp_path, missing=missing) for a in args]
    result = run(*args)
    assert result.exit_code == 2
    assert result.output == f"Error: {option} '{args[-1]}': folder '{missing}' does not exist; create it first\n"
    assert not (tmp_path / "no").exists()


def test_every_option_has_a_help_text():
    missing = []

    def walk(command, path):
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{path} {max(param.opts, key=len)}")
        if isinstance(command, click.Group):  # list_commands: lazily loaded commands too
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), f"{path} {name}")

    walk(main, "fastlora")
    assert not missing


# -- plot and export: refusals, keys that vary with x, subtitles, stdout -----------------------------------------
COVARYING_SPEC = """name = "covarying"
repeats = 2
[[grid]]
k = [1]
rank = [1]
ft_rank = [1]
n_ft = [40]
T = [2, 3]
method = ["standard", "lora-ml"]
[[grid]]
k = [2]
rank = [2]
ft_rank = [2]
n_ft = [60]
T = [2, 3]
method = ["standard", "lora-ml"]
[fixed]
d = 6
n = 200
backend = "numpy"
max_iter = 50
"""
LANDSCAPE_SPEC = """name = "census"
repeats = 2
[grid]
T = [2, 3]
[fixed]
d = 5
k = 1
method = "lora-ml"
peft = "lora_sym"
solver = "gd"
optimizer = "lbfgs"
n_starts = 4
backend = "numpy"
"""


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A linear-model store whose rank and ft_rank equal k and whose n_ft is a function of k (T and method
    vary independently), and a landscape-census store; both ran for real."""
    from fastlora.sweep import parse_spec, run_sweep
    folder = tmp_path_factory.mktemp("stores")
    out = {}
    for name, text in (("covarying", COVARYING_SPEC), ("landscape", LANDSCAPE_SPEC)):
        out[name] = folder / f"{name}.sqlite"
        summary = run_sweep(parse_spec(text), out[name], workers=1, progress=False)
        assert summary.failed == 0
    return out


def _store_rows(path) -> list[dict]:
    from fastlora.sweep.store import ResultsStore
    with ResultsStore(path) as store:
        columns, rows = store.rows()
    return [dict(zip(columns, r)) for r in rows]


@pytest.fixture
def figure(monkeypatch):
    """The figure plot_results draws (kept open instead of closed)."""
    import matplotlib.pyplot as plt
    captured = {}
    monkeypatch.setattr(plt, "close", lambda fig: captured.setdefault("figure", fig))
    return captured


def _one_error_line(result) -> str:
    lines = lines_without_notes(result.output)
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("store,y", [("covarying", "test_accuracy"), ("landscape", "test_loss")])
def test_plot_of_a_metric_no_row_has_names_the_metrics_that_have_values(run, stores, tmp_path, store, y):
    from fastlora.sweep.store import METRICS
    rows = _store_rows(stores[store])
    with_values = [m for m in METRICS if any(r[m] is not None for r in rows)]
    assert y not in with_values and "excess_risk" in with_values
    result = run("plot", str(stores[store]), "--x", "T", "--hue", "method", "--y", y, "-o", str(tmp_path / "f.png"))
    line = _one_error_line(result)
    assert f"no selected row of {stores[store]} has a value of --y {y!r}" in line
    assert line.endswith(f"metrics with values: {', '.join(with_values)}")
    assert not (tmp_path / "f.png").exists()


def test_plot_against_x_puts_keys_that_vary_with_x_in_the_subtitle(run, stores, tmp_path, figure):
    import numpy as np
    result = run("plot", str(stores["covarying"]), "--x", "k", "--y", "excess_risk", "--hue", "method", "--facet",
                 "T", "--logy", "-o", str(tmp_path / "k.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "k.png").stat().st_size > 1000
    fig = figure["figure"]
    title = fig._suptitle.get_text()
    assert "rank = ft_rank = k" in title and "n_ft per k: 1→40, 2→60" in title, title
    assert "rank=" not in title and "ft_rank=" not in title and "n_ft=" not in title
    rows = _store_rows(stores["covarying"])
    for ax, T in zip(fig.axes, (2, 3)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        expected = [np.mean([r["excess_risk"] for r in rows if (r["T"], r["k"], r["method"]) == (T, k, "lora-ml")])
                    for k in (1, 2)]
        np.testing.assert_allclose(lines["lora-ml"].get_ydata(), expected)


@pytest.mark.parametrize("args,varying", [
    (["--x", "k", "--hue", "method"], "T"),  # T varies within each k
    (["--x", "method", "--facet", "T"], "k"),  # k (and rank, ft_rank) vary within each method
])
def test_plot_still_refuses_keys_that_vary_independently_of_x(run, stores, tmp_path, args, varying):
    result = run("plot", str(stores["covarying"]), *args, "-o", str(tmp_path / "f.png"))
    assert _one_error_line(result).startswith(f"Error: key {varying!r} varies in the selected rows")


def test_plot_refuses_an_image_format_matplotlib_cannot_write_before_opening_the_store(run, tmp_path):
    from matplotlib.backend_bases import FigureCanvasBase
    not_a_store = tmp_path / "empty.sqlite"
    not_a_store.touch()  # opening it would be a different error: the format is checked first
    supported = ", ".join(sorted(FigureCanvasBase.get_supported_filetypes()))
    for name, what in (("f.xyz", "'xyz' is not an image format matplotlib writes"),
                       ("fig", "has no file extension")):
        result = run("plot", str(not_a_store), "--x", "T", "-o", str(tmp_path / name))
        line = _one_error_line(result)
        assert line.startswith(f"Error: --output {str(tmp_path / name)!r}: {what}") and "png" in supported
        assert line.endswith(f"supported formats: {supported}")
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize("args,roles", [
    (["--x", "T", "--hue", "method", "--facet", "method"], "--hue and --facet"),
    (["--x", "method", "--hue", "method"], "--x and --hue"),
    (["--x", "T", "--facet", "T"], "--x and --facet"),
])
def test_plot_refuses_one_key_in_two_roles(run, tmp_path, args, roles):
    not_a_store = tmp_path / "empty.sqlite"
    not_a_store.touch()
    key = args[args.index(roles.split()[-1]) + 1]
    result = run("plot", str(not_a_store), *args, "-o", str(tmp_path / "f.png"))
    assert _one_error_line(result) == f"Error: {roles} both name {key!r}; each of --x, --hue and --facet needs " \
                                      f"its own key"


def test_plot_logy_refuses_values_at_or_below_zero_and_says_how_many(run, stores, tmp_path):
    rows = _store_rows(stores["landscape"])
    values = [r["spurious_fraction"] for r in rows]
    at_or_below_zero = sum(v <= 0 for v in values)
    assert at_or_below_zero > 0  # a census of 4 starts on these problems finds no spurious minimum in some rows
    result = run("plot", str(stores["landscape"]), "--x", "T", "--y", "spurious_fraction", "--logy",
                 "-o", str(tmp_path / "f.png"))
    line = _one_error_line(result)
    assert f"--logy: {at_or_below_zero} of {len(values)} values of spurious_fraction are <= 0" in line
    assert "plot without --logy" in line and not (tmp_path / "f.png").exists()
    result = run("plot", str(stores["landscape"]), "--x", "T", "--y", "spurious_fraction",
                 "-o", str(tmp_path / "f.png"))
    assert result.exit_code == 0, result.output


def test_plot_subtitle_shows_only_keys_that_bear_on_the_metric(run, stores, tmp_path, figure):
    store = str(stores["landscape"])
    result = run("plot", store, "--x", "T", "--y", "min_hessian_eig", "-o", str(tmp_path / "census.png"))
    assert result.exit_code == 0, result.output
    title = figure.pop("figure")._suptitle.get_text()
    assert "n_starts=4" in title and "d=5" in title
    assert "n_ft" not in title and "ft_peft" not in title  # fine-tuning does not enter a census
    result = run("plot", store, "--x", "T", "--y", "excess_risk", "-o", str(tmp_path / "risk.png"))
    assert result.exit_code == 0, result.output
    title = figure.pop("figure")._suptitle.get_text()
    assert "n_ft=population" in title and "ft_peft=lora" in title
    assert "n_starts" not in title  # the census does not enter the excess risk


def test_export_to_dash_writes_csv_to_stdout(stores, tmp_path, monkeypatch):
    import csv
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    rows = _store_rows(stores["covarying"])
    result = runner.invoke(main, ["export", str(stores["covarying"]), "-o", "-"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    header, *records = list(csv.reader(result.stdout.splitlines()))
    assert header == list(rows[0]) and len(records) == len(rows)
    assert [int(r[header.index("id")]) for r in records] == [r["id"] for r in rows]
    assert result.stderr == f"wrote {len(rows)} row(s) to standard output\n"
    assert not (tmp_path / "-").exists()
    result = runner.invoke(main, ["export", str(stores["covarying"]), "--format", "parquet", "-o", "-"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "Error: --output - (standard output) takes CSV only; write Parquet to a file, " \
                            "e.g. -o results.parquet\n"
    assert not (tmp_path / "-").exists()
    output_help = next(p.help for p in main.commands["export"].params if p.name == "output")
    assert "- for standard output" in output_help


def test_bench_refuses_when_no_chosen_backend_can_run(run, monkeypatch):
    from fastlora import backends
    monkeypatch.setattr(backends, "cupy_status", lambda: (False, "no device here"))
    result = run("bench", "--config", "smoke", "--backend", "cupy")
    assert result.exit_code == 2
    assert result.output == "Error: --backend cupy cannot run here: no device here\n"


def test_a_broken_pipe_that_is_not_standard_output_is_an_error(run, tmp_path, monkeypatch):
    """Only a reader of standard output stopping early ends quietly; a broken pipe elsewhere (a worker's, a
    scheduler's) is a failure, reported as one (exit 1), never a silent success."""
    import fastlora.scaffold

    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(fastlora.scaffold, "write_plugin", broken)
    result = run("plugins", "new", "mine", "--out", str(tmp_path))
    assert result.exit_code == 1
    assert result.output.startswith("Error: BrokenPipeError: [Errno 32] Broken pipe")


@pytest.mark.parametrize("command", [["export", "{store}", "-o", "-"], ["store", "info", "{store}"]])
def test_a_reader_that_stops_early_ends_quietly(stores, command):
    """`| head` on any command's output: no 'Error: BrokenPipeError' (store info said that, exit 1)."""
    import subprocess
    import sys
    command = [sys.executable, "-m", "fastlora.cli", *(c.format(store=stores["covarying"]) for c in command)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # like `| head` stopping before the rows arrive: every write meets a closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0 and stderr == ""


def test_plot_names_an_execution_setting_that_changes_with_x(run, tmp_path, figure):
    """max_iter differs between the two d values: the figure must say so, not hide it as a setting."""
    from fastlora.sweep import parse_spec, run_sweep
    spec = ('name = "budget"\nrepeats = 1\n[[grid]]\nd = [4]\nmax_iter = [3]\n[[grid]]\nd = [6]\nmax_iter = [500]\n'
            '[fixed]\nk = 1\nT = 3\nmethod = "lora-ml"\nbackend = "numpy"\n')
    store = tmp_path / "budget.sqlite"
    assert run_sweep(parse_spec(spec), store, workers=1, progress=False).failed == 0
    result = run("plot", str(store), "--x", "d", "--y", "rel_err_A", "-o", str(tmp_path / "b.png"))
    assert result.exit_code == 0, result.output
    assert "max_iter per d: 4→3, 6→500" in figure["figure"]._suptitle.get_text()


def test_plot_refuses_logx_at_zero_and_a_key_named_twice_in_where(run, tmp_path):
    from fastlora.sweep import parse_spec, run_sweep
    spec = ('name = "nz"\nrepeats = 1\n[grid]\nnoise = [0.0, 0.1]\nn = [200, 400]\n'
            '[fixed]\nd = 4\nk = 1\nT = 3\nmethod = "lora-ml"\nbackend = "numpy"\n')
    store = tmp_path / "nz.sqlite"
    assert run_sweep(parse_spec(spec), store, workers=1, progress=False).failed == 0
    logx = run("plot", str(store), "--x", "noise", "--hue", "n", "--logx", "-o", str(tmp_path / "a.png"))
    assert _one_error_line(logx).startswith("Error: --logx: noise takes the value(s) 0.0") and logx.exit_code == 2
    twice = run("plot", str(store), "--x", "noise", "--where", "n=200", "--where", "n=400",
                "-o", str(tmp_path / "b.png"))
    assert _one_error_line(twice).startswith("Error: --where names 'n' twice") and twice.exit_code == 2


def test_plot_says_which_where_filter_matches_nothing_and_what_is_there(run, tmp_path):
    from fastlora.sweep import parse_spec, run_sweep
    spec = ('name = "w"\nrepeats = 1\n[grid]\nT = [2, 3]\n[fixed]\nd = 4\nk = 1\nn = 50\nbackend = "numpy"\n')
    store = tmp_path / "w.sqlite"
    assert run_sweep(parse_spec(spec, check_points=False), store, workers=1, progress=False).failed == 0
    typo = run("plot", str(store), "--x", "T", "--y", "excess_risk", "--where", "T=abc", "-o", str(tmp_path / "a.png"))
    assert _one_error_line(typo) == f"Error: --where T=abc matches no finished row of {store}; T takes: 2, 3"
    assert typo.exit_code == 2
    failed = tmp_path / "f.sqlite"
    diverging = spec.replace('backend = "numpy"', 'backend = "numpy"\nmethod = "reptile"\nouter_lr = 1e6')
    assert run_sweep(parse_spec(diverging, check_points=False), failed, workers=1, progress=False).failed == 2
    empty = run("plot", str(failed), "--x", "T", "--y", "excess_risk", "-o", str(tmp_path / "b.png"))
    assert _one_error_line(empty) == f"Error: {failed} holds no finished rows to plot" and empty.exit_code == 2


def test_non_finite_numbers_are_refused_in_flag_words(run):
    result = run("solve", "--noise", "nan")
    assert _one_error_line(result) == "Error: --noise nan is not finite; it must be a finite number"
    assert result.exit_code == 2


def test_errors_name_flags_that_exist(run):
    """The API's symmetric=True/False and n=None are spoken as solve's own flags (--asymmetric; --n population):
    the messages suggested --no-symmetric and --symmetric, which click refuses."""
    asymmetric = run("solve", "--d-out", "5", "--d", "6")
    assert _one_error_line(asymmetric) == ("Error: the symmetric default (no --asymmetric) needs d_out == d (got "
                                           "--d-out 5, --d 6); pass --asymmetric")
    implicit = run("solve", "--implicit", "--n", "100")
    assert _one_error_line(implicit).endswith("it needs --n population and the symmetric default (no --asymmetric)")
    ft_peft = run("solve", "--ft-peft", "bogus")
    assert _one_error_line(ft_peft).startswith("Error: --ft-peft bogus is not a registered parameterization")
    for result in (asymmetric, implicit, ft_peft):
        assert result.exit_code == 2


def test_a_peft_that_is_no_name_class_or_instance_is_refused_by_name():
    prob = fl.make_problem(d=4, k=1, T=3)
    for bad in (3, None, ["lora"], True, np.int64(3), object()):
        with pytest.raises(fl.FastLoRAError, match=r"^peft must be the name of a registered parameterization \("):
            fl.retrain(prob, peft=bad)
    with pytest.raises(fl.FastLoRAError, match=r"^ft_peft='bogus' is not a registered parameterization"):
        fl.evaluate(fl.retrain(prob), prob, ft_peft="bogus")
    with pytest.raises(fl.FastLoRAError, match=r"^ft_peft must be the name of a registered parameterization"):
        fl.evaluate(fl.retrain(prob), prob, ft_peft=3)


def test_export_takes_its_format_from_the_extension_and_refuses_a_mismatch(run, stores, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "rows.parquet"
    assert run("export", str(stores["covarying"]), "-o", str(out)).exit_code == 0
    assert out.read_bytes()[:4] == b"PAR1"  # a Parquet file, not CSV text
    clash = run("export", str(stores["covarying"]), "--format", "csv", "-o", str(tmp_path / "q.parquet"))
    assert clash.exit_code == 2 and "has the extension .parquet but format is csv" in clash.output


def test_demo_into_a_folder_of_other_results_says_so(run, tmp_path):
    from fastlora.sweep import parse_spec, run_sweep
    folder = tmp_path / "demo"
    folder.mkdir()
    other = 'name = "demo"\nrepeats = 1\n[grid]\nT = [2]\n[fixed]\nd = 4\nk = 1\nbackend = "numpy"\nmax_iter = 5\n'
    run_sweep(parse_spec(other), folder / "results.sqlite", workers=1, progress=False)
    result = run("demo", "--quick", "--out", str(folder), "--workers", "1")
    assert result.exit_code == 2
    assert f"Error: {str(folder)!r} holds results of another version of the demo" in result.output


def test_plot_titles_wrap_into_even_lines_leaving_no_setting_alone():
    """A greedy wrap at 70 characters left the last setting alone on its line."""
    from fastlora.sweep.plot import _settings_title
    shared = {"d": 10, "k": 1, "T": 3, "n": 5000, "noise": 0.01, "method": "lora-ml", "peft": "lora_sym",
              "rank": 1, "ft_peft": "lora", "ft_rank": 1, "n_ft": 100, "n_starts": 100000}
    rows = _settings_title(shared, set(), ["sampler=raw"]).split("\n")
    assert len(rows) == 3 and all(len(r) <= 70 for r in rows), rows
    assert all("," in r for r in rows) and min(map(len, rows)) > 0.6 * max(map(len, rows)), rows
