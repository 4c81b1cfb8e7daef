"""fastlora bench: pytest-benchmark's JSON, compare's verdicts, history, skips, --peft, the points
config's start-up, and the paper baseline's batched layout.  Real timings only at smoke size."""
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastlora.bench import CONFIGS, Case, Measured, Options, build_cases
from fastlora.bench.case import measure
from fastlora.bench.compare import Summary, verdict
from fastlora.bench.results import benchmark_json, save
from fastlora.cli import main

SMOKE = ["--config", "smoke", "--backend", "numpy", "--repeat", "2"]


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
    return invoke


def made_up_run(path, medians: dict, spread: float = 0.01, rounds: int = 7, cpu: str = "CPU A",
                reference_seconds: float | None = None, params: dict | None = None) -> Path:
    """A pytest-benchmark JSON file whose benchmarks have the given medians and a relative spread."""
    benchmarks = []
    for name, median in medians.items():
        config, rest = name.split("[")
        backend, variant = rest.rstrip("]").split("-", 1)
        data = list(median * (1 + spread * np.linspace(-1, 1, rounds)))
        extra = {} if reference_seconds is None else {"score": median / reference_seconds,
                                                      "reference_seconds": reference_seconds, "score_unit": "a GEMM"}
        case = Case(config, backend, variant, call=lambda: None, rounds=rounds, params=dict(params or {}))
        benchmarks.append(benchmark_json(Measured(case, data, extra)))
    machine = {"cpu_model": cpu, "cores": 2, "blas": [], "numba_threads": 2}
    path.write_text(json.dumps({"machine_info": machine, "commit_info": {"id": "abc", "dirty": False},
                                "benchmarks": benchmarks, "datetime": "2026-01-01T00:00:00", "version": "5.3.1"}))
    return path


def table_row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(name + " "))


# -- a real (smoke-size) run in pytest-benchmark's format ----------------------------------------

@pytest.fixture(scope="module")
def smoke_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smoke")
    runner = CliRunner()
    paths = []
    for name in ("a.json", "b.json"):
        result = runner.invoke(main, ["bench", *SMOKE, "--json", str(folder / name)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        paths.append(folder / name)
    return paths


def test_json_loads_with_pytest_benchmarks_loader(smoke_json):
    from pytest_benchmark.logger import Logger
    from pytest_benchmark.storage.file import FileStorage
    storage = FileStorage(smoke_json[0].parent, logger=Logger(Logger.QUIET))
    benches = list(storage.load_benchmarks(str(smoke_json[0])))
    names = {b["name"] for b in benches}
    assert names == {"smoke[numpy-gemm]", "smoke[numpy-default]"}
    for bench in benches:
        assert {"min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "iqr_outliers", "stddev_outliers",
                "outliers", "ld15iqr", "hd15iqr", "ops", "total", "data", "iterations", "rounds"} <= set(bench)
        assert bench["group"] == "smoke" and bench["rounds"] >= 2 and bench["min"] <= bench["median"] <= bench["max"]
    solve = next(b for b in benches if b["name"] == "smoke[numpy-default]")
    assert solve["extra_info"]["score"] > 0 and solve["extra_info"]["reference"] == "smoke[numpy-gemm]"
    assert solve["params"] == {"backend": "numpy", "variant": "default", "d": 64, "T": 8, "k": 2, "n": None,
                               "dtype": "float64", "iters": 10, "peft": "lora_sym"}
    data = json.loads(smoke_json[0].read_text())
    info = data["machine_info"]
    for key in ("cpu_model", "cores", "memory_gb", "blas", "blas_threads", "numba_threads", "versions", "cpu"):
        assert key in info, key
    assert {"numpy", "scipy", "numba", "cupy"} <= set(info["versions"])
    assert {"id", "dirty", "branch"} <= set(data["commit_info"])


def test_pytest_benchmark_compare_reads_two_runs(smoke_json):
    script = Path(sys.executable).with_name("pytest-benchmark")
    out = subprocess.run([str(script), "compare", *map(str, smoke_json)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("smoke[numpy-default]") == 2 and "benchmark 'smoke'" in out.stdout


def test_bench_compare_of_two_real_runs(run, smoke_json):
    result = run("bench", "compare", *smoke_json)
    assert result.exit_code == 0, result.output
    assert "same machine: comparing medians of seconds" in result.output
    assert re.search(r"(within noise|faster|slower)", table_row(result.output, "smoke[numpy-default]"))


# -- compare's verdicts on made-up results -------------------------------------------------------

def test_a_twofold_slowdown_is_slower_and_fails_the_threshold(run, tmp_path):
    a = made_up_run(tmp_path / "a.json", {"paper[numba-default]": 1.0e-3, "paper[numba-als]": 2e-3})
    b = made_up_run(tmp_path / "b.json", {"paper[numba-default]": 2.0e-3, "paper[numba-als]": 2e-3})
    result = run("bench", "compare", a, b, "--fail-on", "10%")
    assert result.exit_code == 1
    assert "slower" in table_row(result.stdout, "paper[numba-default]")
    assert "within noise" in table_row(result.stdout, "paper[numba-als]")
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("Error: 1 benchmark(s) slower than A by more than 10%")
    assert "paper[numba-default] (B: +100%)" in errors[0]


def test_equal_medians_within_spread_are_within_noise(run, tmp_path):
    a = made_up_run(tmp_path / "a.json", {"smoke[numba-default]": 1.0e-3}, spread=0.2)
    b = made_up_run(tmp_path / "b.json", {"smoke[numba-default]": 1.05e-3}, spread=0.2)
    result = run("bench", "compare", a, b, "--fail-on", "1%")
    assert result.exit_code == 0, result.output
    assert "within noise" in table_row(result.output, "smoke[numba-default]")


def test_a_twofold_speedup_is_faster(run, tmp_path):
    a = made_up_run(tmp_path / "a.json", {"smoke[numba-default]": 2.0e-3})
    b = made_up_run(tmp_path / "b.json", {"smoke[numba-default]": 1.0e-3})
    result = run("bench", "compare", a, b, "--fail-on", "10%")
    assert result.exit_code == 0
    assert "faster" in table_row(result.output, "smoke[numba-default]")


def test_verdict_rule():
    a = Summary(median=1.0, q1=0.95, q3=1.05, rounds=9)
    assert verdict(a, Summary(1.5, 1.45, 1.55, 9)) == "slower"
    assert verdict(a, Summary(0.5, 0.45, 0.55, 9)) == "faster"
    assert verdict(a, Summary(1.04, 0.99, 1.09, 9)) == "within noise"     # inside the IQR band
    assert verdict(a, Summary(1.3, 0.7, 1.9, 9)) == "within noise"       # quartiles overlap: spread too wide
    assert verdict(Summary(1.0, 1.0, 1.0, 2), Summary(1.05, 1.05, 1.05, 2)) == "within noise"  # two rounds: 10% band
    assert verdict(Summary(1.0, 1.0, 1.0, 2), Summary(1.2, 1.2, 1.2, 2)) == "slower"
    assert verdict(Summary(1.0, 1.0, 1.0, 1), Summary(3.0, 3.0, 3.0, 1)) == "1 round: spread unknown"


def test_across_machines_compare_scores_and_say_so(run, tmp_path):
    # machine B is twice as slow at everything, its reference included: the same score
    a = made_up_run(tmp_path / "a.json", {"smoke[numba-default]": 1e-3}, cpu="fast CPU", reference_seconds=1e-4)
    b = made_up_run(tmp_path / "b.json", {"smoke[numba-default]": 2e-3}, cpu="slow CPU", reference_seconds=2e-4)
    result = run("bench", "compare", a, b, "--fail-on", "10%")
    assert result.exit_code == 0, result.output
    assert "machines differ: comparing machine-independent scores" in result.output
    assert "within noise" in table_row(result.output, "smoke[numba-default]")
    by_time = run("bench", "compare", a, b, "--by", "time", "--fail-on", "10%")
    assert by_time.exit_code == 1 and "slower" in table_row(by_time.stdout, "smoke[numba-default]")


def test_different_sizes_are_not_compared(run, tmp_path):
    a = made_up_run(tmp_path / "a.json", {"pop-512[numba-default]": 1e-3}, params={"d": 128})
    b = made_up_run(tmp_path / "b.json", {"pop-512[numba-default]": 9e-3}, params={"d": 512})
    result = run("bench", "compare", a, b, "--fail-on", "10%")
    assert result.exit_code == 0
    assert "sizes differ (d)" in table_row(result.output, "pop-512[numba-default]")


@pytest.mark.parametrize("setup,args,needle", [
    ("missing", ["{tmp}/nope.json", "{tmp}/a.json"], "nope.json: cannot read it"),
    ("not json", ["{tmp}/bad.json", "{tmp}/a.json"], "bad.json: not JSON"),
    ("not ours", ["{tmp}/other.json", "{tmp}/a.json"], "other.json: not a pytest-benchmark JSON file"),
    ("one file", ["{tmp}/a.json"], "at least two JSON files"),
    ("threshold", ["{tmp}/a.json", "{tmp}/a.json", "--fail-on", "lots"], "--fail-on 'lots' must be a positive"),
])
def test_compare_bad_input_is_one_line(run, tmp_path, setup, args, needle):
    made_up_run(tmp_path / "a.json", {"smoke[numba-default]": 1e-3})
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "other.json").write_text('{"rows": []}')
    result = run("bench", "compare", *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], result.output


def test_run_options_are_refused_on_subcommands(run, tmp_path):
    result = run("bench", "--quick", "compare", "a.json", "b.json")
    assert result.exit_code == 2
    assert result.output == "Error: --quick: options of a bench run, not of 'bench compare'\n"


# -- saving and history --------------------------------------------------------------------------

def test_autosave_names_files_as_pytest_benchmark_does(run, tmp_path):
    from pytest_benchmark.utils import get_machine_id
    result = run("bench", *SMOKE, "--autosave", "--storage", tmp_path / "store")
    assert result.exit_code == 0, result.output
    saved = list((tmp_path / "store").rglob("*.json"))
    assert len(saved) == 1 and saved[0].parent.name == get_machine_id()
    assert re.fullmatch(r"0001_([0-9a-f]{40}|unversioned)_\d{8}_\d{6}(_uncommitted-changes)?\.json", saved[0].name)
    assert f"saved {saved[0]}" in result.output


def test_history_lists_saved_runs_and_draws_a_config(run, tmp_path):
    store = tmp_path / "store"
    for median in (1e-3, 1.2e-3):
        data = json.loads(made_up_run(tmp_path / "r.json", {"smoke[numba-default]": median,
                                                            "smoke[numpy-gemm]": 1e-5}).read_text())
        save(data, store, "run")
    result = run("bench", "history", "--storage", store)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["run", "machine", "commit"]
    assert [line.split()[0] for line in lines[2:4]] == ["0001", "0002"]
    figure = tmp_path / "smoke.png"
    drawn = run("bench", "history", "--storage", store, "--config", "smoke", "-o", figure)
    assert drawn.exit_code == 0, drawn.output
    assert figure.stat().st_size > 1000 and f"wrote {figure}" in drawn.output
    nothing = run("bench", "history", "--storage", store, "--config", "paper")
    assert nothing.exit_code == 2 and nothing.output.startswith("Error: no saved run in")


def test_history_of_an_empty_storage_says_how_to_save(run, tmp_path):
    result = run("bench", "history", "--storage", tmp_path / "none")
    assert result.exit_code == 0
    assert "save one with: fastlora bench --quick --autosave" in result.output


# -- skips, --peft, --list -----------------------------------------------------------------------

@pytest.fixture
def no_gpu(monkeypatch):
    from fastlora import backends
    monkeypatch.setattr(backends, "cupy_status", lambda: (False, "no device here"))


def test_a_config_that_cannot_run_here_is_skipped_with_its_reason(run, tmp_path, no_gpu):
    out = tmp_path / "run.json"
    result = run("bench", "--config", "smoke", "--config", "gpu-8192", "--repeat", "1", "--json", out)
    assert result.exit_code == 0, result.output
    assert "== gpu-8192: skipped: cupy cannot run here: no device here" in result.output
    assert "skipped: gpu-8192: cupy cannot run here: no device here" in result.output
    data = json.loads(out.read_text())
    assert data["fastlora"]["skipped"] == [{"config": "gpu-8192", "reason": "cupy cannot run here: no device here"}]
    assert {b["group"] for b in data["benchmarks"]} == {"smoke"}


def test_nothing_that_can_run_is_an_error(run, no_gpu):
    result = run("bench", "--config", "gpu-8192")
    assert result.exit_code == 2
    assert result.output == "Error: nothing asked for can run here: gpu-8192: cupy cannot run here: no device here\n"


def test_peft_times_the_configs_that_take_one(run, tmp_path):
    out = tmp_path / "vera.json"
    result = run("bench", *SMOKE, "--peft", "vera", "--json", out)
    assert result.exit_code == 0, result.output
    solve = next(b for b in json.loads(out.read_text())["benchmarks"] if b["name"] == "smoke[numpy-default]")
    assert solve["params"]["peft"] == "vera" and solve["extra_info"]["solver"] == "gd"


@pytest.mark.parametrize("args,needle", [
    (["--peft", "nope"], "--peft 'nope' is not an installed parameterization; installed:"),
    (["--peft", "vera", "--config", "pop-4096"], "--config pop-4096 does not take --peft; configs that do: paper,"),
    (["--config", "nope"], "--config nope: unknown; available: paper,"),
    (["--save", "a/b"], "--save 'a/b':"),
    (["--save", "x", "--autosave"], "--save and --autosave: choose one"),
])
def test_bench_bad_input_is_one_line(run, args, needle):
    result = run("bench", *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], result.output


def test_list_says_which_configs_take_peft(run):
    result = run("bench", "--list")
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert set(lines) == set(CONFIGS)
    assert "takes --peft" in lines["paper"] and "takes --peft" not in lines["pop-4096"]
    assert "(--quick: d=128 T=16 k=4" in lines["pop-512"]


# -- points: start-up measured on its own; the paper baseline's layout ----------------------------

def test_points_startup_is_measured_not_derived():
    cfg = replace(CONFIGS["points"], rows=2, n=200)
    cases = {c.name: c for c in build_cases(cfg, ["numpy"], Options(repeat=1, quick=True))}
    measured = {}

    def lookup(name):
        return measured.get(name)
    for name in ("points[numpy-draw-data]", "points[numpy-finite-raw-1w-startup]", "points[numpy-finite-raw-1w]"):
        measured[name] = measure(cases[name], lookup)
    startup = measured["points[numpy-finite-raw-1w-startup]"]
    per_row = measured["points[numpy-finite-raw-1w]"]
    assert startup.median > 0
    assert per_row.extra_info["startup_seconds"] == startup.median
    assert per_row.extra_info["rows_per_second"] == pytest.approx(1 / per_row.median)


def test_paper_baseline_is_the_per_task_procedure_batched():
    from fastlora.baselines import meta_objective, paper_gd
    rng = np.random.default_rng(1)
    T, d, N, k = 3, 4, 50, 1
    X = rng.standard_normal((T, d, N))
    Y = rng.standard_normal((T, d, d)) @ X
    out = paper_gd(X, Y, k, outer_steps=4, seed=0)
    A, U = np.zeros((d, d)), np.random.default_rng(0).normal(0.0, 0.1, (T, d, k))
    for _ in range(4):  # the same steps, one task at a time (samples as rows)
        for t in range(T):
            for _ in range(10):
                G = (X[t].T @ (A + U[t] @ U[t].T).T - Y[t].T).T @ X[t].T / N
                U[t] -= 0.003 * (G + G.T) @ U[t]
        A -= 0.03 * sum((X[t].T @ (A + U[t] @ U[t].T).T - Y[t].T).T @ X[t].T for t in range(T)) / (N * T)
    np.testing.assert_allclose(out["A"], A, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["U"], U, rtol=1e-12, atol=1e-14)
    assert out["objective"] == pytest.approx(meta_objective(X, Y, A, U), rel=1e-12)


def test_pytest_suite_runs_the_same_cases_in_groups_per_config(run, smoke_json, tmp_path):
    out = tmp_path / "pytest.json"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/bench_solvers.py", "-q", "-k", "smoke-numpy",
                           "--benchmark-enable", "--benchmark-json", str(out), "-p", "no:cacheprovider"],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]
    benches = json.loads(out.read_text())["benchmarks"]
    assert {b["group"] for b in benches} == {"smoke"}
    assert {b["extra_info"]["case"] for b in benches} == {"smoke[numpy-gemm]", "smoke[numpy-default]"}
    result = run("bench", "compare", smoke_json[0], out)
    assert result.exit_code == 0, result.output
    assert re.search(r"(within noise|faster|slower)", table_row(result.output, "smoke[numpy-gemm]"))
    # the fixture times whole calls, fastlora bench per iteration: seconds do not compare, scores do
    assert "per iteration vs per call: --by score" in table_row(result.output, "smoke[numpy-default]")
    by_score = run("bench", "compare", smoke_json[0], out, "--by", "score")
    assert re.search(r"(within noise|faster|slower)", table_row(by_score.output, "smoke[numpy-default]"))


def test_points_reports_fastloras_own_draw_of_a_row_in_units_of_numpys():
    """The unit of the per-row figures is numpy drawing a row's normals; fastlora's compiled keyed draw of the
    same normals is reported beside it, against it (not in place of it)."""
    cfg = replace(CONFIGS["points"], rows=2, n=200)
    cases = {c.name: c for c in build_cases(cfg, ["numba"], Options(repeat=1, quick=True))}
    own, unit = cases["points[numba-draw-data]"], cases["points[numpy-draw-data]"]
    assert own.reference == unit.name and own.params["normals"] == unit.params["normals"] == 2 * cfg.T * cfg.n * cfg.d
    assert all(c.reference in (None, unit.name) for c in cases.values() if c.name != unit.name)
    measured = {unit.name: measure(unit, lambda name: None)}
    assert measure(own, measured.get).median > 0
    assert "points[numba-draw-data]" not in {c.name for c in build_cases(cfg, ["numpy"], Options(repeat=1, quick=True))}
