"""Sweeps: specs checked up front, one committed row per (point, seed), resumable after SIGKILL."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from fastlora.cli import main
from fastlora.sweep import load_results, load_spec, parse_spec, run_sweep

SPEC = """
name = "tiny"
repeats = 2
[grid]
T = [2, 3]
method = ["standard", "lora-ml"]
[fixed]
d = 8
k = 1
n = 400
noise = 0.05
n_ft = 50
backend = "numpy"
max_iter = 200
"""


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
    text = SPEC.replace('method = ["standard", "lora-ml"]', 'adapter_step = ["auto", "exact"]')
    text = text.replace('[fixed]', '[fixed]\npeft = "lora_sym"')
    summary = run_sweep(parse_spec(text), tmp_path / "e.sqlite", workers=1, progress=False)
    assert summary.done == 8 and summary.errors == 4 and summary.failed == 4
    assert len(summary.error_messages) == 1 and "adapter_step='exact' is not possible" in summary.error_messages[0]
    with sqlite3.connect(tmp_path / "e.sqlite") as db:
        errors = db.execute("SELECT adapter_step, error FROM results WHERE status='error'").fetchall()
    assert {e[0] for e in errors} == {"exact"} and all("adapter_step='exact' is not possible" in e[1] for e in errors)


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
])
def test_bad_spec_fails_before_any_work_with_one_line_and_exit_2(tmp_path, change, needle):
    spec = write(tmp_path, SPEC.replace(*change))
    out = tmp_path / "never.sqlite"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not out.exists()


def test_killed_sweep_resumes_with_every_row_exactly_once(tmp_path):
    # rows of ~50 ms, mostly drawing their data (n = 20000): the driver is mid-run after its first commits
    text = SPEC.replace("repeats = 2", "repeats = 12").replace("n = 400", "n = 20000")
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
