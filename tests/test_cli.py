import json

import click
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
    (["--n-ft", "-3"], "--n-ft='-3' must be a positive integer"),
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
    assert result.exit_code == 2 and "acceleration='fast' is not allowed" in result.output


def test_the_first_solve_on_a_cold_cache_says_it_compiles(tmp_path, monkeypatch):
    from fastlora import cli
    from fastlora.config import settings
    monkeypatch.setattr(settings, "cache_dir", tmp_path / "empty-cache")
    messages = []
    monkeypatch.setattr(cli.click, "echo", lambda text, err=False: messages.append(text))
    cli._announce_compilation("numba")
    assert messages and "compiling Numba kernels (once" in messages[0]
    messages.clear()
    cli._announce_compilation("numpy")
    assert messages == []


def test_demo_quick_writes_table_store_and_figures(run, tmp_path):
    result = run("demo", "--out", str(tmp_path / "demo"), "--quick", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "lora-ml" in result.output and "reptile" in result.output and "standard" in result.output
    assert (tmp_path / "demo" / "results.sqlite").exists()
    assert (tmp_path / "demo" / "excess_risk_vs_T.png").stat().st_size > 1000


def test_cache_commands_count_and_clear_compiled_kernels(run, tmp_path, monkeypatch):
    from fastlora.config import settings
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
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(main, "fastlora")
    assert not missing
