"""Sweeps: specs checked up front, one committed row per (point, seed), resumable after SIGKILL."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from helpers import TINY_SPEC, lines_without_notes

from fastlora.cli import main
from fastlora.sweep import load_results, load_spec, parse_spec, run_sweep

SPEC = TINY_SPEC


def rows(path):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT row_key, status, rel_err_A, excess_risk, objective FROM results "
                          "ORDER BY row_key").fetchall()


def write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sweep_runs_every_point_once_and_reruns_skip(tmp_path):
    spec = parse_spec(SPEC)
    out = tmp_path / "r.sqlite"
    first = run_sweep(spec, out, workers=1, progress=False)
    assert first.total == 8 and first.done == 8 and first.errors == 0
    again = run_sweep(spec, out, workers=1, progress=False)
    assert again.done == 0 and again.skipped == 8
    assert len(rows(out)) == 8


def test_same_spec_twice_gives_identical_numbers(tmp_path):
    spec = parse_spec(SPEC)
    run_sweep(spec, tmp_path / "a.sqlite", workers=1, progress=False)
    run_sweep(spec, tmp_path / "b.sqlite", workers=2, progress=False)
    assert rows(tmp_path / "a.sqlite") == rows(tmp_path / "b.sqlite")


def test_methods_share_their_problem_draws(tmp_path):
    spec = parse_spec(SPEC)
    seeds = {}
    for r in spec.rows():
        seeds.setdefault((r["point"]["T"], r["repeat"]), set()).add(r["seed"])
    assert all(len(s) == 1 for s in seeds.values())


def test_an_erroring_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    # Reptile with an outer step of 1e6 diverges: a failure only running the point can show
    text = SPEC.replace('method = ["standard", "lora-ml"]', 'method = ["reptile"]\nouter_lr = [0.5, 1e6]')
    summary = run_sweep(parse_spec(text), tmp_path / "e.sqlite", workers=1, progress=False)
    assert summary.done == 8 and summary.errors == 4 and summary.failed == 4
    assert summary.error_messages and all("DivergenceError" in m for m in summary.error_messages)
    with sqlite3.connect(tmp_path / "e.sqlite") as db:
        errors = db.execute("SELECT outer_lr, error FROM results WHERE status='error'").fetchall()
    assert {e[0] for e in errors} == {1e6} and all("lower inner_lr or outer_lr" in e[1] for e in errors)


def test_an_adapter_step_the_tasks_cannot_take_is_refused_when_the_spec_is_read():
    """The exact adapter step needs population tasks: every finite-sample row used to fail at run time."""
    text = SPEC.replace('method = ["standard", "lora-ml"]', 'adapter_step = ["auto", "exact"]')
    with pytest.raises(ValueError, match=r"adapter_step='exact' is not possible for peft 'lora_sym' .* on "
                                         r"finite-sample tasks"):
        parse_spec(text)
    parse_spec(text.replace("n = 400", 'n = "population"'))


@pytest.mark.parametrize("change,needle", [
    (("d = 8", "dd = 8"), "unknown key 'dd'"),
    (("d = 8", 'd = "eight"'), "d must be an integer"),
    (("k = 1", "k = 9"), "k=9 is impossible"),
    (('method = ["standard", "lora-ml"]', 'method = ["maml"]'), "method='maml' is not allowed"),
    (("repeats = 2", "repeats = 0"), "'repeats' must be an integer >= 1"),
    (("n = 400", "n = -3"), "n=-3 must be a positive integer"),
    (("noise = 0.05", "noise = -1.0"), "noise=-1.0 is out of range"),
    (("[grid]", "[grid]\nrank = [9]"), "rank=9 is impossible"),
    (("[fixed]", '[fixed]\npeft = "nope"'), "peft='nope' is not a registered parameterization"),
    (("[fixed]", "[fixed]\nseed = 3"), "'seed' is a top-level key of the spec (before any [table])"),
])
def test_bad_spec_fails_before_any_work_with_one_line_and_exit_2(tmp_path, change, needle):
    spec = write(tmp_path, SPEC.replace(*change))
    out = tmp_path / "never.sqlite"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out)])
    assert result.exit_code == 2
    lines = lines_without_notes(result.output)
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not out.exists()


def test_killed_sweep_resumes_with_every_row_exactly_once(tmp_path):
    # rows of ~0.1 s, mostly drawing their data (n = 100000): the driver is mid-run after its first commits
    text = SPEC.replace("repeats = 2", "repeats = 12").replace("n = 400", "n = 100000")
    spec_path = write(tmp_path, text)
    out = tmp_path / "k.sqlite"
    cmd = [sys.executable, "-m", "fastlora.cli", "sweep", str(spec_path), "--out", str(out), "--workers", "2",
           "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline:
        if out.exists():
            try:
                with sqlite3.connect(out, timeout=5) as db:
                    done = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
        if done >= 5 or proc.poll() is not None:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-run
    proc.wait()
    total = len(parse_spec(text).rows())
    assert 0 < done < total, "the sweep should have been killed mid-run"
    resumed = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    got = rows(out)
    keys = [r[0] for r in got]
    assert len(keys) == total and len(set(keys)) == total
    assert all(r[1] == "ok" for r in got)
    clean = tmp_path / "clean.sqlite"
    run_sweep(parse_spec(text), clean, workers=2, progress=False)
    assert rows(clean) == got


def test_dask_cluster_runs_the_same_sweep(tmp_path):
    distributed = pytest.importorskip("distributed")
    spec = parse_spec(SPEC)
    run_sweep(spec, tmp_path / "local.sqlite", workers=1, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = run_sweep(spec, tmp_path / "dask.sqlite", scheduler=cluster.scheduler_address, progress=False)
    assert summary.done == 8
    assert rows(tmp_path / "dask.sqlite") == rows(tmp_path / "local.sqlite")


def test_unreachable_scheduler_fails_fast_with_a_clear_error(tmp_path):
    pytest.importorskip("distributed")
    spec = write(tmp_path, SPEC)
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "x.sqlite"),
                                       "--scheduler", "tcp://127.0.0.1:1", "--scheduler-timeout", "0.5"])
    assert result.exit_code == 2
    assert "cannot reach the Dask scheduler at 'tcp://127.0.0.1:1' within 0.5 s" in result.output
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "x.sqlite").exists()  # nothing written for a sweep that cannot start
    import inspect
    cli_default = next(p.default for p in main.commands["sweep"].params if p.name == "scheduler_timeout")
    assert cli_default == inspect.signature(run_sweep).parameters["scheduler_timeout"].default == 5.0


def test_export_load_and_plot(tmp_path):
    out = tmp_path / "r.sqlite"
    run_sweep(parse_spec(SPEC), out, workers=1, progress=False)
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(out), "--format", "csv", "-o", str(tmp_path / "r.csv")])
    assert res.exit_code == 0 and "wrote 8 row(s)" in res.output
    assert (tmp_path / "r.csv").read_text().count("\n") == 9
    res = runner.invoke(main, ["export", str(out), "--format", "parquet", "-o", str(tmp_path / "r.parquet")])
    assert res.exit_code == 0, res.output
    frame = load_results(out)
    assert len(frame) == 8 and set(frame["method"]) == {"standard", "lora-ml"}
    import pandas as pd
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == 8
    res = runner.invoke(main, ["plot", str(out), "--x", "T", "--y", "excess_risk", "--hue", "method", "--logy",
                               "-o", str(tmp_path / "fig.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "fig.png").stat().st_size > 1000
    res = runner.invoke(main, ["plot", str(out), "--x", "method", "--y", "excess_risk", "-o", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "key 'T' varies" in res.output


def test_examples_are_valid_specs():
    from pathlib import Path
    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))
    assert len(examples) >= 5
    for path in examples:
        spec = load_spec(path)
        assert spec.points()


def test_a_spec_too_large_to_list_is_refused_before_any_work(tmp_path):
    """repeats = 100000000 used to sit silent while memory grew."""
    import time
    spec = write(tmp_path, SPEC.replace("repeats = 2", "repeats = 100000000"))
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "big.sqlite")])
    assert time.perf_counter() - started < 5
    assert result.exit_code == 2
    assert "400,000,000 rows" in result.output and "more than one spec may hold (10,000,000)" in result.output
    assert "use fewer repeats" in result.output, result.output
    assert not (tmp_path / "big.sqlite").exists()


# ------------------------------------------------- combinations the Python API refuses
LORA_ML_ONLY = SPEC.replace('method = ["standard", "lora-ml"]', 'method = ["lora-ml"]')


def with_method(method: str, fixed: str) -> str:
    """SPEC with one method and ``fixed`` added to its [fixed] table."""
    one_method = SPEC.replace('method = ["standard", "lora-ml"]', f'method = ["{method}"]')
    return one_method.replace("[fixed]", f"[fixed]\n{fixed}")


@pytest.mark.parametrize("text,needles", [
    # the schema's own refusals (fastlora.options.check_solver_options), for every grid point
    (with_method("lora-ml", 'solver = "als"\nlr = 0.1'),
     ["unknown option(s) lr for method='lora-ml', solver='als'", "lr is an option of solver='gd'"]),
    (with_method("standard", 'optimizer = "adam"'), ["unknown option(s) optimizer for method='standard'"]),
    (SPEC.replace("[fixed]", '[fixed]\ninner_lr = 0.2'),  # a grid mixing methods: the standard point refuses it
     ["unknown option(s) inner_lr for method='standard'", "inner_lr is an option of method='reptile'"]),
    (with_method("lora-ml", 'adapter_step = "exact"').replace("[grid]", '[grid]\nsolver = ["als", "gd"]')
     .replace("n = 400", 'n = "population"'),
     ["unknown option(s) adapter_step for method='lora-ml', solver='gd'"]),
    (with_method("lora-ml", 'adapter_step = "exact"\nlr = 0.1'),  # solver = "auto" runs one of them
     ["solver='auto'", "adapter_step", "lr"]),
    # a census is of the LoRA-ML objective, with the landscape tools' parameterizations, on the linear model
    (with_method("reptile", "n_starts = 3"), ["n_starts", "method='reptile'"]),
    (with_method("lora-ml", 'peft = "full"\nn_starts = 3'),
     ["n_starts", "peft='full' is not supported by the landscape tools"]),
    (with_method("lora-ml", 'model = "shallow"\npeft = "lora"\nn_starts = 3'),
     ["n_starts", "model='shallow'"]),
    (with_method("lora-ml", "init_scale = 0.5"), ["init_scale", "n_starts"]),
    # the parameterization's own constructor decides its options
    (with_method("lora-ml", 'peft = "lora"\npeft_options = { beta = 1 }'),
     ["peft_options", "peft options ['beta'] are not accepted by LoRA"]),
])
def test_combinations_that_cannot_run_are_refused_before_any_work(tmp_path, text, needles):
    spec = write(tmp_path, text)
    out = tmp_path / "never.sqlite"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--workers", "1"])
    lines = lines_without_notes(result.output)
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()


def test_spec_refusals_are_the_python_apis_own_words():
    import fastlora as fl
    prob = fl.make_problem(d=8, k=1, T=2, seed=0)
    for options, text in [({"method": "lora-ml", "solver": "als", "lr": 0.1}, 'solver = "als"\nlr = 0.1'),
                          ({"method": "standard", "optimizer": "adam"}, 'optimizer = "adam"')]:
        with pytest.raises(ValueError) as from_api:
            fl.retrain(prob, backend="numpy", **options)
        spec = SPEC.replace('method = ["standard", "lora-ml"]', f'method = ["{options["method"]}"]')
        with pytest.raises(ValueError) as from_spec:
            parse_spec(spec.replace("[fixed]", f"[fixed]\n{text}"))
        assert str(from_api.value) in str(from_spec.value)


@pytest.mark.parametrize("text", [
    LORA_ML_ONLY.replace("[fixed]", '[fixed]\nlr = 0.05'),  # solver = "auto": lr means gd, as in fl.retrain
    LORA_ML_ONLY.replace("[grid]", '[grid]\nsolver = ["auto", "gd"]').replace("[fixed]", '[fixed]\noptimizer = "adam"'),
    LORA_ML_ONLY.replace("[fixed]", '[fixed]\npeft = "lora"\npeft_options = { alpha = 2.0 }\nn_starts = 2'),
    SPEC.replace('"standard", "lora-ml"', '"lora-ml", "reptile"').replace("[fixed]", '[fixed]\ninit_A = "zeros"'),
    # the shallow network's standard retraining is a gradient solve: it takes an optimizer
    SPEC.replace('method = ["standard", "lora-ml"]', 'method = ["standard"]').replace(
        "[fixed]", '[fixed]\nmodel = "shallow"\noptimizer = "adam"'),
])
def test_combinations_the_python_api_takes_are_accepted(text):
    """What a spec accepts, fl.retrain takes: every point's retrain arguments run (two iterations)."""
    import fastlora as fl
    from fastlora.sweep.spec import problem_args, retrain_args
    points = parse_spec(text).points()
    assert points
    for point in points:
        problem = fl.make_problem(**{**problem_args(point, 0), "n_test_tasks": 0})
        args = {**retrain_args(point), "max_iter": 2}
        res = fl.retrain(problem, **args)
        assert res.method == point["method"]


def test_a_dataset_point_is_checked_as_the_shallow_network_it_runs():
    from pathlib import Path
    text = (Path(__file__).parents[1] / "examples" / "digits.toml").read_text()
    assert parse_spec(text.replace("[fixed]", '[fixed]\noptimizer = "adam"')).points()
    with pytest.raises(ValueError, match="n_starts"):
        parse_spec(text.replace("[fixed]", "[fixed]\nn_starts = 3"))




def test_a_row_never_drops_an_option_its_method_does_not_take():
    """Rows built by hand (not through a checked spec) reach fl.retrain with every option: refused there, never
    silently ignored under a row key that says otherwise."""
    from fastlora.sweep import run_rows
    row = parse_spec(SPEC.replace('method = ["standard", "lora-ml"]', 'method = ["standard"]')).rows()[0]
    outcome = run_rows([{**row, "point": {**row["point"], "optimizer": "adam"}}])[0]
    assert outcome["status"] == "error" and "unknown option(s) optimizer for method='standard'" in outcome["error"]


def test_a_census_uses_the_rows_peft_options():
    from fastlora.sweep.spec import landscape_args
    point = parse_spec(LORA_ML_ONLY.replace("[fixed]", '[fixed]\npeft = "lora"\npeft_options = { alpha = 4.0 }\n'
                                            'n_starts = 2')).points()[0]
    peft = landscape_args(point, seed=1)["peft"]
    assert peft.name == "lora" and peft.alpha == 4.0


def test_an_unusable_backend_is_refused_before_any_work(tmp_path, monkeypatch):
    from fastlora import backends
    monkeypatch.setattr(backends, "cupy_status", lambda: (False, "no GPU here (test)"))
    backends._build.cache_clear()  # a backend built before the patch would be reused
    spec = write(tmp_path, SPEC.replace('backend = "numpy"', 'backend = "cupy"'))
    out = tmp_path / "never.sqlite"
    for extra in ([], ["--dry-run"]):  # the dry run refuses it too (it used to time nothing and report ~0 s)
        result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--workers", "1", *extra])
        lines = lines_without_notes(result.output)
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and "backend='cupy' is unavailable: no GPU here (test)" in lines[0], result.output
        assert not out.exists()
    # with a cluster the rows run on its machines: the dry run reports them untimed (nothing is contacted)
    planned = CliRunner().invoke(main, ["sweep", str(spec), "--dry-run", "--scheduler", "tcp://127.0.0.1:9"])
    assert planned.exit_code == 0 and "not timed: the rows would run on the cluster" in planned.output, planned.output
    backends._build.cache_clear()


def test_a_malformed_scheduler_address_is_bad_input(tmp_path):
    pytest.importorskip("distributed")
    spec = write(tmp_path, SPEC)
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(tmp_path / "x.sqlite"),
                                       "--scheduler", "notaurl", "--scheduler-timeout", "0.5"])
    lines = lines_without_notes(result.output)
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: --scheduler 'notaurl' cannot be used as a Dask scheduler address: missing port")
    assert "the form is [SCHEME://]HOST:PORT, e.g. tcp://10.0.0.5:8786" in lines[0]
    assert not (tmp_path / "x.sqlite").exists()  # checked before the store is touched


def test_a_spec_without_test_tasks_is_refused_when_read():
    with pytest.raises(ValueError, match="n_test_tasks=0 leaves nothing to evaluate"):
        parse_spec(SPEC.replace("[fixed]", "[fixed]\nn_test_tasks = 0"))
