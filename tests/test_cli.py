import json

import pytest
from click.testing import CliRunner

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
    (["--d-out", "5", "--asymmetric"], "lora_sym"),
])
def test_solve_bad_input_is_one_line_and_nonzero(run, args, needle):
    result = run("solve", "--d", "8", "--k", "1", "--T", "3", "--backend", "numpy", *args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], result.output
    assert "Traceback" not in result.output


def test_plugins_lists_builtins(run):
    result = run("plugins")
    assert result.exit_code == 0
    for name in ("lora", "lora_sym", "full"):
        assert name in result.output


def test_demo_quick_writes_table_store_and_figures(run, tmp_path):
    result = run("demo", "--out", str(tmp_path / "demo"), "--quick", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "lora-ml" in result.output and "reptile" in result.output and "standard" in result.output
    assert (tmp_path / "demo" / "results.sqlite").exists()
    assert (tmp_path / "demo" / "excess_risk_vs_T.png").stat().st_size > 1000


def test_cache_commands(run):
    assert run("cache", "info").exit_code == 0
