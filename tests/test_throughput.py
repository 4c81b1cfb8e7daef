"""solver="auto", accelerated ALS and the batched small-problem engine (fl.retrain_many)."""
import numpy as np
import pytest

import fastlora as fl
from fastlora.peft.builtins import LoRA


@pytest.mark.parametrize("problem,peft,solver,optimizer", [
    (dict(n=None), "lora_sym", "als", None),                       # population, exact fits
    (dict(d=48, n=None), "lora_sym", "als", None),                 # large factored: subspace ALS
    (dict(n=400, noise=0.1, symmetric=False), "lora", "als", None),  # finite, reduced-rank regression
    (dict(n=400, noise=0.1), "full", "als", None),
    (dict(n=400, noise=0.1), "lora_sym", "gd", "lbfgs"),           # finite, no exact adapter step
    (dict(n=None), "vera", "gd", "lbfgs"),                         # a plugin without best_fit
    (dict(n=None), "dora", "gd", "lbfgs"),                         # uses_base
])
def test_auto_picks_the_documented_solver_per_problem_kind(problem, peft, solver, optimizer):
    prob = fl.make_problem(**{"d": 8, "k": 1, "T": 3, **problem})
    res = fl.retrain(prob, peft=peft, rank=1, backend="numpy", max_iter=5)
    assert res.solver == solver and res.info["solver"] == solver and res.info["requested_solver"] == "auto"
    assert res.info.get("optimizer") == optimizer


def test_options_of_one_solver_choose_it_under_auto():
    prob = fl.make_problem(d=8, k=1, T=3, n=300, noise=0.1)
    assert fl.retrain(prob, adapter_step="inner", backend="numpy", max_iter=3).solver == "als"
    assert fl.retrain(prob, optimizer="adam", backend="numpy", max_iter=3).solver == "gd"
    with pytest.raises(ValueError, match="adapter_step belong to solver='als' and optimizer to solver='gd'"):
        fl.retrain(prob, adapter_step="inner", optimizer="adam", backend="numpy")


@pytest.mark.parametrize("seed", range(4))
def test_accelerated_als_never_increases_the_objective_and_finds_the_plain_optimum(seed):
    prob = fl.make_problem(d=10, k=1, T=3, seed=seed)
    fast = fl.retrain(prob, solver="als", backend="numpy", tol=1e-12)
    plain = fl.retrain(prob, solver="als", acceleration="none", backend="numpy", tol=1e-12, max_iter=5000)
    gd = fl.retrain(prob, solver="gd", optimizer="lbfgs", backend="numpy", tol=1e-12, max_iter=5000)
    h = fast.history
    assert np.all(np.diff(h) <= 1e-12 * h[0]), "the safeguard must keep ALS monotone"
    assert fast.info["extrapolations_accepted"] > 0
    assert fast.n_iter <= 30 < plain.n_iter  # the paper's size: tens of iterations instead of hundreds
    for other in (plain, gd):
        np.testing.assert_allclose(fast.A, other.A, atol=1e-7 * np.abs(prob.A_star).max())
    np.testing.assert_allclose(fast.A, prob.A_star, atol=1e-8 * np.abs(prob.A_star).max())


CASES = {
    "finite lora_sym (lbfgs)": (dict(n=2000, noise=0.01), dict(peft="lora_sym")),
    "population lora_sym (als)": (dict(n=None), dict(peft="lora_sym")),
    "finite lora (als)": (dict(n=2000, noise=0.01, symmetric=False), dict(peft="lora")),
    "finite gd": (dict(n=2000, noise=0.01), dict(peft="lora_sym", solver="gd", max_iter=50)),
    "finite als inner": (dict(n=500, noise=0.1), dict(peft="lora_sym", solver="als", max_iter=40)),
    "reptile": (dict(n=2000, noise=0.01), dict(method="reptile")),
    "standard": (dict(n=2000, noise=0.01), dict(method="standard")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_results_equal_one_by_one_results(case):
    problem, kwargs = CASES[case]
    probs = [fl.make_problem(d=9, k=1, T=3, seed=s, **problem) for s in range(5)]
    seeds = [11, 12, 13, 14, 15]
    alone = [fl.retrain(p, backend="numpy", seed=s, **kwargs) for p, s in zip(probs, seeds)]
    for batch in (probs, probs[::-1]):  # the order (and neighbours) of a problem do not matter
        order = seeds if batch is probs else seeds[::-1]
        together = fl.retrain_many(batch, backend="numpy", seeds=order, **kwargs)
        if batch is not probs:
            together = together[::-1]
        for a, b in zip(alone, together):
            assert a.info["batch_size"] == 1 and b.info["batch_size"] == 5
            np.testing.assert_array_equal(a.A, b.A)
            np.testing.assert_array_equal(a.history, b.history)
            assert (a.n_iter, a.converged, a.message) == (b.n_iter, b.converged, b.message)
            for name in a.params:
                np.testing.assert_array_equal(a.params[name], b.params[name])


@pytest.mark.parametrize("kwargs", [dict(peft="lora_sym", max_iter=200, backend="numpy"),
                                    dict(peft="lora", solver="gd", max_iter=200, backend="numpy")])
def test_a_problem_that_fails_inside_a_batch_is_one_error_and_the_others_go_on(monkeypatch, kwargs):
    from fastlora.solvers import gd
    probs = [fl.make_problem(d=8, k=1, T=3, n=300, noise=0.1, seed=s) for s in range(3)]
    # the middle problem's statistics are corrupted (bypassing validation): its objective is not
    # finite from the start; the others must not notice, nor pay for it (a failed problem once
    # kept gd's line search halving ~1000 times an iteration)
    bad = probs[1]
    bad.tasks[0].s = np.inf
    calls = []
    counted = gd.Objective.value_and_grad
    monkeypatch.setattr(gd.Objective, "value_and_grad", lambda self, *a: calls.append(1) or counted(self, *a))
    for i in (0, 2):
        fl.retrain(probs[i], **kwargs)
    solo_calls, calls[:] = len(calls), []
    out = fl.retrain_many(probs, errors="return", **kwargs)
    assert len(calls) <= solo_calls + 10
    assert isinstance(out[1], fl.DivergenceError)
    for i in (0, 2):
        np.testing.assert_array_equal(out[i].A, fl.retrain(probs[i], **kwargs).A)
    with pytest.raises(fl.DivergenceError):
        fl.retrain_many(probs, **kwargs)
    with pytest.raises(fl.DivergenceError):
        fl.retrain(bad, **kwargs)


def test_retrain_many_checks_its_arguments():
    a = fl.make_problem(d=8, k=1, T=3, seed=0)
    b = fl.make_problem(d=8, k=1, T=4, seed=0)
    with pytest.raises(ValueError, match=r"problems\[1\] has"):
        fl.retrain_many([a, b])
    with pytest.raises(ValueError, match="seeds has 3 entries for 1 problems"):
        fl.retrain_many([a], seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="errors='ignore' is not allowed"):
        fl.retrain_many([a], errors="ignore")
    assert fl.retrain_many([]) == []


def test_large_factored_problems_are_solved_one_after_another():
    probs = [fl.make_problem(d=40, k=2, T=4, seed=s, n_test_tasks=0) for s in range(2)]
    out = fl.retrain_many(probs, seeds=[3, 4], backend="numpy", reduction="none")
    for p, s, r in zip(probs, (3, 4), out):
        assert r.info["batch"] == "factored"
        np.testing.assert_array_equal(r.A, fl.retrain(p, seed=s, backend="numpy", reduction="none").A)


@pytest.mark.parametrize("n", [None, 5000])
def test_every_paper_default_row_converges(n):
    """The paper's point (d=10, T=3, N=5000, k=1, σ=0.01, lora_sym) under the default solver."""
    probs = [fl.make_problem(d=10, k=1, T=3, n=n, noise=0.01, seed=s) for s in range(20)]
    results = fl.retrain_many(probs, rank=1, backend="numpy", seeds=list(range(20)))
    assert all(r.converged for r in results), [r.message for r in results if not r.converged]


def test_gd_line_search_does_not_stall_at_a_nonzero_optimum():
    """Armijo backtracking used to shrink its step to ~1e-10 once F had reached its rounding floor."""
    prob = fl.make_problem(d=16, k=1, T=6, n=400, noise=0.5)
    res = fl.retrain(prob, peft="lora", rank=1, solver="gd", backend="numpy", max_iter=1000)
    assert res.converged
    assert res.info["final_lr"] > 1e-4


def test_adam_with_a_huge_step_is_a_divergence_error_without_warnings():
    import warnings
    prob = fl.make_problem(d=8, k=1, T=3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarnings on the way
        with pytest.raises(fl.DivergenceError, match="lower lr"):
            fl.retrain(prob, solver="gd", optimizer="adam", lr=1e6, max_iter=200, backend="numpy")


@pytest.mark.parametrize("lr", [1e20, 1e300])
def test_gd_with_a_huge_step_backtracks_to_a_decrease_not_a_nan(lr):
    """Armijo's line search halves past any fixed count while F rises or overflows; it once gave up
    after 60 halvings and reported a NaN objective as converged."""
    prob = fl.make_problem(d=8, k=1, T=3, seed=0)
    res = fl.retrain(prob, solver="gd", lr=lr, max_iter=30, backend="numpy")
    start = fl.retrain(prob, solver="gd", max_iter=1, backend="numpy").history[0]
    assert np.all(np.isfinite(res.history)) and len(res.history) == res.n_iter == 30
    assert res.objective < 0.5 * start and np.all(np.diff(res.history) <= 0)


def test_gd_on_badly_scaled_data_reaches_the_lbfgs_optimum():
    rng = np.random.default_rng(0)
    tasks = []
    for _ in range(3):
        X = rng.standard_normal((200, 6)) * 1e10
        tasks.append(fl.Task(X, X @ rng.standard_normal((6, 6)).T))
    gd = fl.retrain(tasks, rank=1, solver="gd", backend="numpy")
    lbfgs = fl.retrain(tasks, rank=1, backend="numpy")
    assert gd.converged and np.isfinite(gd.objective)
    assert abs(gd.objective - lbfgs.objective) <= 1e-8 * lbfgs.objective


def test_finite_sample_defaults_report_convergence():
    """`fastlora solve --d 30 --k 2 --T 5 --n 500 --noise 0.01` used to end at max_iter."""
    prob = fl.make_problem(d=30, k=2, T=5, n=500, noise=0.01, seed=0)
    res = fl.retrain(prob, backend="numpy")
    assert res.converged and res.n_iter < 1000, res.message
    rng = np.random.default_rng(0)
    tasks = [fl.Task(rng.standard_normal((200, 6)), rng.standard_normal((200, 6))) for _ in range(3)]
    own = fl.retrain(tasks, rank=1, backend="numpy")
    assert own.converged, own.message


def test_explicit_als_on_finite_lora_sym_reports_convergence():
    prob = fl.make_problem(d=8, k=1, T=3, n=300, noise=0.05, seed=0)
    res = fl.retrain(prob, peft="lora_sym", solver="als", backend="numpy")
    assert res.converged, res.message


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_parameterization_instance_with_options_runs_batched_and_keeps_them(backend):
    """LoRA(alpha=2) only rescales B: the same A and updates Δ_t as LoRA's default, each problem as alone."""
    probs = [fl.make_problem(d=8, k=1, T=3, n=300, noise=0.1, seed=s, symmetric=False) for s in range(3)]
    scaled = fl.retrain_many(probs, peft=LoRA(alpha=2.0), rank=1, backend=backend)
    plain = fl.retrain_many(probs, peft="lora", rank=1, backend=backend)
    for prob, a, b in zip(probs, scaled, plain):
        assert a.converged and a.peft.alpha == 2.0
        np.testing.assert_allclose(a.A, b.A, atol=1e-9)
        np.testing.assert_allclose(a.delta(1), b.delta(1), atol=1e-9)
        alone = fl.retrain(prob, peft=LoRA(alpha=2.0), rank=1, backend=backend)
        np.testing.assert_array_equal(alone.A, a.A)


def test_every_method_records_what_ran_in_info_solver():
    prob = fl.make_problem(d=6, k=1, T=3, seed=0)
    ran = {m: fl.retrain(prob, method=m, backend="numpy", max_iter=5).info["solver"]
           for m in ("standard", "reptile", "lora-ml")}
    assert ran == {"standard": "closed-form", "reptile": "reptile", "lora-ml": "als"}


def test_tol_zero_runs_max_iter_and_gets_gd_closer_than_the_rounding_stop():
    """The default stop (objective constant to rounding) leaves gd's A ~1e-8 from the optimum;
    tol=0 asks for every iteration."""
    prob = fl.make_problem(d=16, k=1, T=6, n=400, noise=0.5, seed=0)
    best = fl.retrain(prob, peft="lora", rank=1, solver="als", tol=1e-14, max_iter=5000, backend="numpy")
    stopped = fl.retrain(prob, peft="lora", rank=1, solver="gd", max_iter=3000, backend="numpy")
    exhaustive = fl.retrain(prob, peft="lora", rank=1, solver="gd", max_iter=3000, tol=0, backend="numpy")
    assert stopped.converged and stopped.n_iter < 1000
    assert exhaustive.n_iter == 3000 and not exhaustive.converged

    def gap(res):
        return np.linalg.norm(res.A - best.A) / np.linalg.norm(best.A)
    assert gap(exhaustive) < gap(stopped) / 10 and gap(exhaustive) < 1e-9
