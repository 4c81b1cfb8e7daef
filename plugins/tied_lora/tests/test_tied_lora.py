import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from fastlora_tied_lora import NumbaFastPath, TiedLoRA, TiedProblem, _numba, make_tied_problem

import fastlora as fl
from fastlora.cli import main
from fastlora.testing import check_parameterization


def test_tied_lora_conforms_with_its_numba_fast_path():
    passed = check_parameterization(TiedLoRA)
    assert {"implicit gradient", "canonicalize", "fast path numba"} <= set(passed)
    assert "best fit" not in passed  # no closed-form fit: the shared factors couple the tasks


def test_tied_lora_is_registered_through_its_entry_point():
    info = {row["name"]: row for row in fl.peft.info()}["tied_lora"]
    assert info["distribution"] == "fastlora-tied-lora" and info["error"] is None
    caps = info["capabilities"]
    assert caps["shared"] == ["B", "C"] and caps["api_version"] == 2 and caps["fast_paths"] == ["numba"]
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.split()[:1] == ["tied_lora"])
    assert "fastlora-tied-lora" in line and "numba" in line


def test_the_tied_problem_has_the_documented_law():
    prob = make_tied_problem(d=6, r=2, T=3, seed=4, d_out=5, n_test_tasks=2)
    assert isinstance(prob, TiedProblem) and isinstance(prob, fl.Problem)
    assert (prob.d_out, prob.d_in, prob.k, prob.T) == (5, 6, 2, 3) and not prob.symmetric
    for t, task in enumerate(prob.tasks):
        W = prob.A_star + prob.B_basis @ np.diag(prob.s_star[t]) @ prob.C_basis.T
        np.testing.assert_allclose(task.W_star, W, rtol=1e-14)
        np.testing.assert_allclose(prob.B_star[t] @ prob.C_star[t].T, W - prob.A_star, rtol=1e-14)
        assert task.is_population
    for t, task in enumerate(prob.test_tasks):
        np.testing.assert_allclose(task.W_star - prob.A_star, prob.B_basis @ np.diag(prob.s_test[t]) @ prob.C_basis.T,
                                   atol=1e-12)
    # reproducible; a task does not depend on how many others were drawn; new tasks are cached
    again = make_tied_problem(d=6, r=2, T=5, seed=4, d_out=5, n_test_tasks=2)
    np.testing.assert_array_equal(again.tasks[2].W_star, prob.tasks[2].W_star)
    assert prob.new_task(3) is prob.new_task(3)
    assert not np.allclose(prob.new_task(3).W_star, prob.new_task(4).W_star)
    finite = make_tied_problem(d=6, r=2, T=3, seed=4, d_out=5, n=40, noise=0.1)
    assert finite.tasks[0].n == 40 and finite.tasks[0].noise == 0.1
    np.testing.assert_array_equal(finite.tasks[0].W_star, prob.tasks[0].W_star)


@pytest.mark.parametrize("kwargs, needle", [({"r": 7}, "r=7 is too large"), ({"d": 0}, "d=0 is too small"),
                                            ({"noise": -1.0}, "noise"), ({"n": 2.5}, "n must be an integer")])
def test_bad_tied_problem_arguments_are_refused_by_name(kwargs, needle):
    with pytest.raises(fl.FastLoRAError, match=needle):
        make_tied_problem(**{"d": 6, "r": 2, "T": 3, **kwargs})


def test_canonicalize_keeps_delta_and_orders_the_basis():
    rng = np.random.default_rng(0)
    params = {"B": rng.standard_normal((7, 3)), "C": rng.standard_normal((5, 3)), "s": rng.standard_normal((4, 3))}
    params["s"][:, 1] *= 10  # the most varying scale comes first
    peft = TiedLoRA()
    canon = peft.canonicalize(params)
    np.testing.assert_allclose(peft.delta(canon), peft.delta(params), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.linalg.norm(canon["B"], axis=0), 1.0)
    np.testing.assert_allclose(np.linalg.norm(canon["C"], axis=0), 1.0)
    np.testing.assert_allclose(np.abs(canon["B"][:, 0]), np.abs(params["B"][:, 1]) / np.linalg.norm(params["B"][:, 1]))
    assert np.all(np.var(canon["s"], axis=0)[:-1] >= np.var(canon["s"], axis=0)[1:])


# -- the Numba fast path ---------------------------------------------------------------------

@pytest.mark.parametrize("T, d_out, d_in, r", [(3, 7, 6, 2), (5, 33, 40, 4), (1, 1, 1, 1), (2, 9, 4, 4)])
def test_numba_kernels_match_numpy(T, d_out, d_in, r):
    rng = np.random.default_rng(T + d_out)
    params = {"B": rng.standard_normal((d_out, r)), "C": rng.standard_normal((d_in, r)),
              "s": rng.standard_normal((T, r))}
    G = rng.standard_normal((T, d_out, d_in))
    peft, fast = TiedLoRA(), TiedLoRA().fast_paths["numba"]
    np.testing.assert_allclose(fast.delta(params), peft.delta(params), rtol=1e-12, atol=1e-13)
    plain, compiled = peft.pullback(params, G), fast.pullback(params, G)
    assert set(compiled) == {"B", "C", "s"}
    for name in plain:
        scale = np.abs(plain[name]).max()
        np.testing.assert_allclose(compiled[name], plain[name], rtol=0, atol=1e-12 * scale)
    # non-contiguous inputs (what broadcast and transposed views look like) give the same numbers
    strided = {"B": np.asfortranarray(params["B"]), "C": params["C"][::-1][::-1], "s": params["s"].T.copy().T}
    np.testing.assert_allclose(fast.pullback(strided, G.swapaxes(1, 2).copy().swapaxes(1, 2))["C"], plain["C"],
                               rtol=0, atol=1e-12 * np.abs(plain["C"]).max())
    as32 = {k: v.astype(np.float32) for k, v in params.items()}
    assert fast.delta(as32).dtype == np.float32
    assert {g.dtype for g in fast.pullback(as32, G.astype(np.float32)).values()} == {np.dtype(np.float32)}


def test_numba_is_imported_only_when_the_fast_path_is_first_used():
    code = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        import fastlora as fl
        from fastlora.cli import main
        assert "tied_lora" in fl.peft.available()
        out = CliRunner().invoke(main, ["plugins"]).output
        assert "numba" in out
        fast = fl.peft.get("tied_lora").fast_paths["numba"]
        assert "fastlora_tied_lora._numba" not in sys.modules, "imported at load"
        assert "numba" not in sys.modules, "numba imported by import fastlora / the registry / fastlora plugins"
        fast.pullback
        assert "fastlora_tied_lora._numba" in sys.modules and "numba" in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("solver", ["gd", "als"])
def test_numba_backend_solves_through_the_fast_path_with_numpy_numbers(solver, monkeypatch):
    calls = []
    compiled = _numba.pullback
    monkeypatch.setattr(_numba, "pullback", lambda params, G: calls.append(G.shape) or compiled(params, G))
    prob = make_tied_problem(d=8, r=2, T=4, n=200, noise=0.1, seed=1)  # finite samples: dense gradients
    runs = {}
    for backend in ("numpy", "numba"):
        calls.clear()
        runs[backend] = fl.retrain(prob, peft="tied_lora", rank=2, solver=solver, backend=backend, max_iter=2000,
                                   tol=1e-12)
        assert (len(calls) > 0) == (backend == "numba"), (backend, len(calls))
    ref, fast = runs["numpy"], runs["numba"]
    assert fast.converged and fast.objective == pytest.approx(ref.objective, rel=1e-10)
    for t in range(prob.T):
        np.testing.assert_allclose(fast.A + fast.delta(t), ref.A + ref.delta(t), atol=1e-7)
    np.testing.assert_allclose(fast.shared["B"], ref.shared["B"], atol=1e-6)


def test_fast_path_pullback_hands_implicit_gradients_to_the_plain_method():
    from fastlora.linop import SharedPlusLowRank
    rng = np.random.default_rng(3)
    params = {"B": rng.standard_normal((6, 2)), "C": rng.standard_normal((5, 2)), "s": rng.standard_normal((3, 2))}
    G = SharedPlusLowRank(rng.standard_normal((6, 5)), rng.standard_normal((3, 2, 6)), rng.standard_normal((3, 2, 5)))
    peft = TiedLoRA()
    assert isinstance(peft.fast_paths["numba"], NumbaFastPath)
    implicit = peft.fast_paths["numba"].pullback(params, G)
    dense = peft.pullback(params, G.dense())
    for name in dense:
        np.testing.assert_allclose(implicit[name], dense[name], rtol=1e-12)


# -- through the public API and the CLI ----------------------------------------------------------

def test_evaluate_finetunes_tied_tasks_from_their_scales():
    prob = make_tied_problem(d=8, r=2, T=4, seed=2)
    res = fl.retrain(prob, peft="tied_lora", rank=2, solver="als", backend="numpy", max_iter=1000, tol=1e-12)
    metrics = fl.evaluate(res, prob, ft_peft="tied_lora", ft_rank=2)
    assert metrics["excess_risk"] < 1e-12 * float(np.sum(prob.test_tasks[0].W_star ** 2))
    assert metrics["adapt_rank"] == 2 and sorted(res.shared) == ["B", "C"]
    # the mean of tied tasks is itself a tied model, so standard retraining also leaves rank r to adapt;
    # what tied LoRA adds is the basis: a new task then costs r numbers instead of a rank-r LoRA
    standard = fl.retrain(prob, method="standard", backend="numpy")
    assert fl.evaluate(standard, prob, ft_rank=2)["adapt_rank"] == 2


def test_tied_lora_runs_through_a_sweep_with_peft_options(tmp_path):
    """`fastlora sweep` with peft = "tied_lora" (make_problem's law: tasks are not tied, it only has to run
    and agree with the Python API) and peft_options passed to the class."""
    spec = tmp_path / "tied.toml"
    spec.write_text('name = "tied"\nrepeats = 1\n[grid]\nsolver = ["gd", "als"]\nft_peft = ["lora", "tied_lora"]\n'
                    '[fixed]\npeft = "tied_lora"\npeft_options = { scale_init = 0.1 }\nd = 8\nk = 1\nT = 4\n'
                    'rank = 1\nsymmetric = false\nmax_iter = 300\nbackend = "numpy"\n')
    out = tmp_path / "tied.sqlite"
    result = CliRunner().invoke(main, ["sweep", str(spec), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    from fastlora.sweep import load_results
    rows = load_results(out, status=None).to_dict("records")
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"}
    for row in rows:
        seed, truth_seed = int(row["seed"]), int(row["truth_seed"])  # paired: the truth has its own seed
        prob = fl.make_problem(d=8, k=1, T=4, symmetric=False, seed=truth_seed, sample_seed=seed)
        res = fl.retrain(prob, peft="tied_lora", peft_options={"scale_init": 0.1}, rank=1, solver=row["solver"],
                         max_iter=300, backend="numpy", seed=seed)
        assert res.peft.scale_init == 0.1
        metrics = fl.evaluate(res, prob, ft_peft=row["ft_peft"], seed=truth_seed)
        assert row["objective"] == pytest.approx(res.objective, rel=1e-9)
        assert row["excess_risk"] == pytest.approx(metrics["excess_risk"], rel=1e-6)
        assert row["objective"] < fl.retrain(prob, method="standard", backend="numpy").objective


def test_the_readme_example_runs_as_written(capsys):
    import re
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    exec(compile(block, "plugins/tied_lora/README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert float(lines[0].split()[0]) < 1e-12 and float(lines[1].split()[0]) < 1e-12
    assert lines[1].endswith("['s']")
    tied_risk, lora_risk = float(lines[2]), float(lines[3])
    assert tied_risk < 0.3 * lora_risk  # the README's claim: ~0.013 vs ~0.11
