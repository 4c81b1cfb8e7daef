"""Bad input raises ValueError (FastLoRAError) naming the argument — never a crash or a NaN."""
import numpy as np
import pytest

import fastlora as fl
from fastlora.tasks import sample_many


@pytest.fixture(scope="module")
def prob():
    return fl.make_problem(d=8, k=1, T=3, seed=0)


@pytest.mark.parametrize("kwargs,name", [
    ({"method": "maml"}, "method"),
    ({"solver": "newton"}, "solver"),
    ({"backend": "tpu"}, "backend"),
    ({"peft": "prefix_tuning"}, "peft"),
    ({"rank": 0}, "rank"),
    ({"rank": 9}, "rank"),
    ({"rank": 1.5}, "rank"),
    ({"max_iter": 0}, "max_iter"),
    ({"tol": -1.0}, "tol"),
    ({"dtype": "float16"}, "dtype"),
    ({"seed": -1}, "seed"),
    ({"learning_rate": 0.1}, "learning_rate"),
    ({"init_A": np.zeros((3, 3))}, "init_A"),
    ({"init_A": "ones"}, "init_A"),
    ({"callback": 3}, "callback"),
    ({"solver": "gd", "optimizer": "newton"}, "optimizer"),
    ({"solver": "gd", "lr": -1.0}, "lr"),
    ({"threads": 0}, "threads=0 is too small"),
    ({"threads": -1}, "threads=-1 is too small"),
    ({"solver": "als", "inner_iter": -1}, "inner_iter=-1 is too small"),
    ({"power_iter_init": "abc"}, "power_iter_init must be an integer"),
])
def test_retrain_rejects_bad_arguments(prob, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fl.retrain(prob, **{"backend": "numpy", **kwargs})


def test_errors_are_fastlora_errors(prob):
    with pytest.raises(fl.FastLoRAError):
        fl.retrain(prob, method="maml")
    assert issubclass(fl.FastLoRAError, ValueError)


def test_reptile_options_are_checked(prob):
    with pytest.raises(ValueError, match="inner_lr"):
        fl.retrain(prob, method="reptile", inner_lr=2.0)
    with pytest.raises(ValueError, match="inner_steps"):
        fl.retrain(prob, method="reptile", inner_steps=0)


@pytest.mark.parametrize("kwargs,name", [
    ({"T": 0}, "T"), ({"d": 0}, "d"), ({"k": 0}, "k"), ({"k": 9}, "k"), ({"n": 0}, "n"),
    ({"noise": -0.1}, "noise"), ({"noise": float("nan")}, "noise"), ({"d_out": 5}, "d_out"),
    ({"seed": "a"}, "seed"), ({"symmetric": "yes"}, "symmetric"),
])
def test_make_problem_rejects_bad_arguments(kwargs, name):
    base = {"d": 8, "k": 1, "T": 3}
    with pytest.raises(ValueError, match=name):
        fl.make_problem(**{**base, **kwargs})


def test_lora_sym_needs_square_weights():
    prob = fl.make_problem(d=8, d_out=6, k=1, T=3, symmetric=False)
    with pytest.raises(ValueError, match="lora_sym"):
        fl.retrain(prob, peft="lora_sym")
    with pytest.raises(ValueError, match="lora_sym"):
        fl.finetune(np.zeros((6, 8)), prob.test_tasks[0], peft="lora_sym", rank=1)


def test_empty_or_mixed_task_lists_are_rejected(prob):
    with pytest.raises(ValueError, match="T must be >= 1"):
        fl.retrain([], rank=1)
    finite = fl.make_problem(d=8, k=1, T=2, n=20, seed=0).tasks
    with pytest.raises(ValueError, match="mix"):
        fl.retrain([prob.tasks[0], finite[0]], rank=1)
    other = fl.make_problem(d=6, k=1, T=2, seed=0).tasks
    with pytest.raises(ValueError, match="same"):
        fl.retrain([prob.tasks[0], other[0]], rank=1)
    with pytest.raises(ValueError, match="Task"):
        fl.retrain([np.eye(8)], rank=1)
    with pytest.raises(ValueError, match="rank is required"):
        fl.retrain(prob.tasks)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_data_is_rejected(bad):
    X, Y = np.ones((5, 3)), np.ones((5, 2))
    X[1, 1] = bad
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        fl.Task(X, Y)
    W = np.eye(3)
    W[0, 0] = bad
    with pytest.raises(ValueError, match="W_star contains NaN or Inf"):
        fl.Task.population(W)


def test_wrong_shapes_are_rejected():
    with pytest.raises(ValueError, match="same number of rows"):
        fl.Task(np.ones((5, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="X must be a 2-d array"):
        fl.Task(np.ones(5), np.ones((5, 2)))
    with pytest.raises(ValueError, match="W_star must be a 2-d array"):
        fl.Task.population(np.ones(3))
    with pytest.raises(ValueError, match="C has shape"):
        fl.Task.population(base=np.eye(3), B=np.ones((3, 1)), C=np.ones((2, 1)))
    prob = fl.make_problem(d=8, k=1, T=2)
    with pytest.raises(ValueError, match="A has shape"):
        fl.finetune(np.zeros((3, 3)), prob.test_tasks[0], rank=1)
    with pytest.raises(ValueError, match="rank"):
        fl.finetune(np.zeros((8, 8)), prob.test_tasks[0], rank=0)
    for bad, says in ((-1, "seed=-1 is too small"), ("abc", "seed must be an integer"), (1.5, "seed")):
        with pytest.raises(ValueError, match=says):  # also where the exact fit draws nothing
            fl.finetune(np.zeros((8, 8)), prob.test_tasks[0], peft="lora", rank=1, seed=bad, backend="numpy")


def test_evaluate_rejects_bad_arguments(prob):
    res = fl.retrain(prob, backend="numpy", max_iter=3)
    with pytest.raises(ValueError, match="ft_rank"):
        fl.evaluate(res, prob, ft_rank=0)
    with pytest.raises(ValueError, match="n_ft"):
        fl.evaluate(res, prob, n_ft=-5)
    with pytest.raises(ValueError, match="ft_peft"):
        fl.evaluate(res, prob, ft_peft="nope")


def test_unavailable_backend_says_what_is_missing(monkeypatch, prob):
    from fastlora import backends
    monkeypatch.setattr(backends, "cupy_status", lambda: (False, "the cupy package is not installed"))
    backends._build.cache_clear()
    try:
        with pytest.raises(fl.BackendUnavailableError, match="cupy package is not installed"):
            fl.retrain(prob, backend="cupy")
    finally:
        backends._build.cache_clear()


def test_diverging_step_size_is_an_error_not_a_nan():
    prob = fl.make_problem(d=8, k=1, T=3, seed=0)
    with pytest.raises(fl.DivergenceError, match="lower lr"):
        fl.retrain(prob, solver="gd", optimizer="adam", lr=1e300, max_iter=50, backend="numpy")


def test_complex_arrays_are_refused_not_cut_to_their_real_part():
    X, Y = np.ones((5, 3)), np.ones((5, 2))
    with pytest.raises(fl.FastLoRAError, match="X must be a real array, got complex"):
        fl.Task(X + 1j, Y)
    with pytest.raises(fl.FastLoRAError, match="Y must be a real array"):
        fl.Task(X, Y.astype(complex))  # even with zero imaginary part: the caller's dtype is wrong
    with pytest.raises(fl.FastLoRAError, match="W_star must be a real array"):
        fl.Task.population(np.eye(3) * (1 + 2j))
    with pytest.raises(fl.FastLoRAError, match="B must be a real array"):
        fl.Task.population(base=np.eye(3), B=np.ones((3, 1)) * 1j)
    task = fl.make_problem(d=4, k=1, T=2).test_tasks[0]
    with pytest.raises(fl.FastLoRAError, match="A must be a real array"):
        fl.finetune(np.zeros((4, 4), dtype=complex), task, rank=1)


@pytest.mark.parametrize("build,name", [
    (lambda: fl.Task(np.empty((10, 0)), np.ones((10, 2))), "X is empty"),
    (lambda: fl.Task(np.ones((10, 3)), np.empty((10, 0))), "Y is empty"),
    (lambda: fl.Task(np.empty((0, 3)), np.empty((0, 2))), "X is empty"),
    (lambda: fl.Task.population(np.zeros((0, 0))), "W_star is empty"),
    (lambda: fl.Task.population(np.zeros((3, 0))), "W_star is empty"),
    (lambda: fl.Task.population(base=np.eye(3), B=np.ones((3, 0))), "B is empty"),
    (lambda: fl.Task.from_statistics(np.zeros((0, 0)), np.zeros((2, 0)), 0.0, 5), "Sigma is empty"),
])
def test_zero_size_tasks_are_refused(build, name):
    with pytest.raises(fl.FastLoRAError, match=name):
        build()


@pytest.mark.parametrize("args,message", [
    ((np.eye(3), np.ones((4, 1)), np.ones((3, 1))),
     r"B has shape \(4, 1\); its first axis must equal base's rows d_out=3"),
    ((np.eye(3), np.ones((3, 1)), np.ones((2, 1))), "C has shape \\(2, 1\\); expected \\(d_in, k\\) = \\(3, 1\\)"),
    ((np.eye(3), np.ones((3, 2)), np.ones((3, 1))), "C has shape \\(3, 1\\); expected \\(d_in, k\\) = \\(3, 2\\)"),
    ((np.ones((3, 4)), np.ones((3, 1)), None), "C = B \\(symmetric perturbation\\) needs a square base"),
    ((np.ones(3), np.ones((3, 1)), None), "base must be a 2-d array"),
    ((np.eye(3), np.ones(3), None), "B must be a 2-d array"),
])
def test_low_rank_targets_with_inconsistent_factors_name_the_argument(args, message):
    base, B, C = args
    with pytest.raises(fl.FastLoRAError, match=message):
        fl.LowRankTarget(base, B, B if C is None else C)
    from fastlora.tasks import make_lowrank_target
    with pytest.raises(fl.FastLoRAError, match=message):
        make_lowrank_target(base, B, C)
    with pytest.raises(fl.FastLoRAError, match=message):
        fl.Task.population(base=base, B=B, C=C)


def test_a_directly_built_low_rank_target_is_checked_and_usable():
    target = fl.LowRankTarget([[1.0, 0.0], [0.0, 1.0]], np.ones((2, 1)), np.ones((2, 1)))
    np.testing.assert_array_equal(target.dense(), [[2.0, 1.0], [1.0, 2.0]])
    with pytest.raises(fl.FastLoRAError, match="base contains NaN"):
        fl.LowRankTarget(np.full((2, 2), np.nan), np.ones((2, 1)), np.ones((2, 1)))


def test_evaluate_errors_name_the_argument(prob):
    res = fl.retrain(prob, backend="numpy", max_iter=3)
    with pytest.raises(fl.FastLoRAError, match=r"test_tasks must be a list of fastlora\.Task, got Task "
                                               r"\(one task: test_tasks=\[task\]\)"):
        fl.evaluate(res, prob, test_tasks=prob.test_tasks[0])
    with pytest.raises(fl.FastLoRAError, match=r"got an array of shape \(8, 8\) \(one task: starts=\[A\]\)"):
        fl.finetune_many(res.A, [prob.test_tasks[0]])  # it read "8 starts for 1 tasks"
    # without a problem, ft_rank defaults to the rank the test tasks share (as finetune's does)
    alone = fl.evaluate(res, None, test_tasks=list(prob.test_tasks))
    assert alone["excess_risk"] == fl.evaluate(res, prob, ft_rank=prob.k)["excess_risk"]
    with pytest.raises(fl.FastLoRAError, match=r"ft_rank is required .* share no known ground-truth rank"):
        fl.evaluate(res, None, test_tasks=[fl.Task.population(np.eye(8))])
    for wrong in ("not a result", prob, None):  # a Problem in res's place read "float() argument must be ..."
        with pytest.raises(fl.FastLoRAError, match=r"res must be a fastlora\.RetrainResult \(from retrain\) or the "
                                                   r"retrained matrix A \(d_out, d_in\), got (str|Problem|NoneType)$"):
            fl.evaluate(wrong, prob)
    with pytest.raises(fl.FastLoRAError, match="res must be a numeric array"):
        fl.evaluate([["a"] * 8] * 8, prob)
    other = fl.retrain(fl.make_problem(d=6, k=1, T=3, seed=0), backend="numpy", max_iter=3)
    with pytest.raises(fl.FastLoRAError, match=r"res.A has shape \(6, 6\) but the test tasks are \(8, 8\)"):
        fl.evaluate(other, prob)
    A = res.A.copy()
    A[2, 3] = np.nan
    with pytest.raises(fl.FastLoRAError, match="res contains NaN"):
        fl.evaluate(A, prob)
    with pytest.raises(fl.FastLoRAError, match=r"prob must be a fastlora\.Problem .*got str"):
        fl.evaluate(res, "prob")
    with pytest.raises(fl.FastLoRAError, match=r"prob must be a fastlora\.Problem .*got list"):
        fl.evaluate(res, prob.tasks)
    with pytest.raises(fl.FastLoRAError, match=r"test_tasks must be a non-empty list of fastlora\.Task"):
        fl.evaluate(res, None, test_tasks=[np.eye(8)])
    own = fl.evaluate(res, None, test_tasks=prob.test_tasks[:2], ft_rank=1)
    assert np.isnan(own["rel_err_A"]) and len(own["excess_risk_per_task"]) == 2


def test_many_functions_refuse_mismatched_or_single_arguments(prob):
    res = fl.retrain(prob, backend="numpy")
    with pytest.raises(ValueError, match="problems has 1 entries for 2 results"):
        fl.evaluate_many([res, res], [prob])
    with pytest.raises(ValueError, match="results must be a list"):
        fl.evaluate_many(res, prob)
    with pytest.raises(ValueError, match="seeds has 3 entries for 2 results"):
        fl.evaluate_many([res, res], [prob, prob], seeds=[0, 1, 2])
    with pytest.raises(ValueError, match=r"problems must be a list \(one entry per problem"):
        fl.retrain_many(prob, seeds=[0])
    with pytest.raises(ValueError, match="seeds has 2 entries for 1 tasks"):
        fl.finetune_many([res.A], [prob.test_tasks[0]], seeds=[0, 1])
    with pytest.raises(ValueError, match="tasks must be a list"):
        fl.finetune_many(res.A, prob.test_tasks[0])


def test_data_whose_statistics_overflow_and_absurd_noise_name_the_argument():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="X and Y: their second moments overflow float64"):
        fl.Task(rng.standard_normal((50, 4)) * 1e200, rng.standard_normal((50, 4)))
    with pytest.raises(ValueError, match=r"noise=1e\+200 is out of range"):
        fl.make_problem(d=4, k=1, T=3, n=50, noise=1e200)
    with pytest.raises(ValueError, match=r"noise=1e\+200 is out of range"):
        fl.make_problem(d=4, k=1, T=3).test_tasks[0].sample(10, noise=1e200)


def test_data_whose_squares_underflow_to_zero_are_refused_like_tiny_ones():
    """|X| ~ 1e-200: its square is exactly 0, which slipped past the underflow check (A = 0, objective 0)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 4))
    for scale in (1e-160, 1e-200):
        with pytest.raises(ValueError, match="X: its second moments underflow float64"):
            fl.Task(X * scale, X * scale)


def test_a_list_entry_that_is_not_a_problem_or_task_is_named():
    prob = fl.make_problem(d=4, k=1, T=2, n=20)
    with pytest.raises(ValueError, match=r"problems\[1\]: tasks must be a Problem"):
        fl.retrain_many([prob, None], errors="return")
    with pytest.raises(ValueError, match=r"task must be a fastlora\.Task, got NoneType"):
        fl.finetune(np.zeros((4, 4)), None)
    with pytest.raises(ValueError, match=r"tasks\[1\] must be a fastlora.Task, got int"):
        fl.finetune_many([np.zeros((4, 4))] * 2, [prob.test_tasks[0], 3], rank=1)


def test_fine_tuning_samples_from_a_task_without_ground_truth_name_n():
    rng = np.random.default_rng(0)
    task = fl.Task(rng.standard_normal((30, 4)), rng.standard_normal((30, 4)))
    with pytest.raises(ValueError, match="n=10: fine-tuning samples can only be drawn from a task with ground truth"):
        fl.finetune(np.zeros((4, 4)), task, rank=1, n=10)


def test_retrain_many_refuses_problems_of_different_k_without_a_rank():
    a = fl.make_problem(d=6, k=1, T=3, n=300, noise=0.01, seed=0)
    b = fl.make_problem(d=6, k=2, T=3, n=300, noise=0.01, seed=1)
    with pytest.raises(ValueError, match=r"problems have different k \(1, 2\) and rank is not given"):
        fl.retrain_many([a, b], backend="numpy")
    assert [r.params["U"].shape[-1] for r in fl.retrain_many([a, b], rank=2, backend="numpy")] == [2, 2]


def test_a_tolerance_above_one_is_refused():
    with pytest.raises(ValueError, match=r"tol=1e\+300 is out of range; it must be <= 1.0"):
        fl.retrain(fl.make_problem(d=6, k=1, T=3), tol=1e300)


@pytest.mark.parametrize("method", ["standard", "reptile"])
@pytest.mark.parametrize("kwargs,needle", [
    ({"peft": "nonexistent"}, "'nonexistent' is not a registered"),
    ({"rank": 100}, "rank=100 is too large"),
    ({"solver": "newton"}, "solver='newton' is not allowed"),
    ({"peft": "lora", "peft_options": {"nope": 2}}, "nope"),
])
def test_methods_without_adapters_check_adapter_arguments_instead_of_ignoring_them(prob, method, kwargs, needle):
    """They used to accept any peft, rank and solver; valid ones are still accepted (and unused), so
    one call can loop over methods as sweeps do."""
    with pytest.raises(fl.FastLoRAError, match=needle):
        fl.retrain(prob, method=method, backend="numpy", **kwargs)
    fl.retrain(prob, method=method, backend="numpy", peft="lora", rank=1, solver="als", max_iter=3)


def test_solve_refuses_adapter_options_for_methods_without_adapters():
    from click.testing import CliRunner

    from fastlora.cli import main
    result = CliRunner().invoke(main, ["solve", "--d", "10", "--k", "1", "--T", "3", "--method", "standard",
                                       "--rank", "1", "--solver", "als", "--backend", "numpy"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("Error: --rank, --solver apply to --method lora-ml only: --method standard "
                                     "retrains A alone, without adapters; leave them out")
    table = CliRunner().invoke(main, ["solve", "--d", "10", "--k", "1", "--T", "3", "--method", "standard",
                                      "--backend", "numpy"])
    assert table.exit_code == 0, table.output


def test_one_default_per_concept_across_the_api():
    """max_iter and tol default as retrain's in the census, backend 'auto' everywhere, fine-tuning's
    rank the ground truth's k (evaluate's ft_rank does the same), n='population' accepted everywhere."""
    import inspect

    from fastlora.landscape import census
    from fastlora.options import OPTIONS
    for fn in (fl.retrain, fl.finetune, fl.finetune_many, census):
        assert inspect.signature(fn).parameters["backend"].default == OPTIONS["backend"].default == "auto"
    for name in ("max_iter", "tol"):
        assert inspect.signature(census).parameters[name].default is None is OPTIONS[name].default
    assert census(fl.make_problem(d=4, k=1, T=3, n_test_tasks=0), n_starts=2).settings["max_iter"] == 1000
    prob = fl.make_problem(d=6, k=2, T=3, n="population")
    assert prob.n is None
    res = fl.retrain(prob, backend="numpy")
    assert fl.finetune(res.A, prob.test_tasks[0], n="population").params["B"].shape == (1, 6, 2)  # rank k = 2
    assert fl.evaluate(res, prob, n_ft="population")["excess_risk"] < 1e-12
    with pytest.raises(fl.FastLoRAError, match="rank is required"):
        fl.finetune(res.A, fl.Task.population(np.eye(6)))


def test_a_census_of_more_starts_than_allowed_is_refused_at_once():
    import time

    from fastlora.landscape import census
    from fastlora.options import MAX_STARTS
    from fastlora.sweep import parse_spec
    started = time.perf_counter()
    with pytest.raises(fl.FastLoRAError, match=rf"n_starts=100000000 is too large; it must be <= {MAX_STARTS}"):
        census(fl.make_problem(d=4, k=1, T=3, n_test_tasks=0), n_starts=10**8)
    with pytest.raises(fl.FastLoRAError, match=r"n_starts=100000000 is too large"):
        parse_spec('name = "c"\n[grid]\nT = [3]\n[fixed]\nd = 4\nk = 1\nn_starts = 100000000\n')
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("scale_X,scale_Y,name", [(1e-160, 1.0, "X"), (1.0, 1e-160, "Y")])
def test_data_whose_second_moments_underflow_are_refused_like_those_that_overflow(scale_X, scale_Y, name):
    """|X| ≈ 1e-160 used to give A = 0 (relative error 1) and objective ≈ 0 without a word."""
    rng = np.random.default_rng(0)
    with pytest.raises(fl.FastLoRAError, match=rf"{name}: its second moments underflow float64.*rescale the data"):
        fl.Task(rng.standard_normal((50, 4)) * scale_X, rng.standard_normal((50, 4)) * scale_Y)
    fl.Task(rng.standard_normal((50, 4)) * 1e-100, np.zeros((50, 4)))  # small but representable; zeros are fine


def test_statistics_that_overflow_float32_are_refused_naming_the_dtype():
    prob = fl.make_problem(d=6, k=1, T=3, n=200, noise=0.1, seed=0, sampler="stats")
    tasks = [fl.Task.from_statistics(t.Sigma * 1e40, t.C * 1e40, t.s * 1e40, t.n) for t in prob.tasks]
    tiny = [fl.Task.from_statistics(t.Sigma * 1e-45, t.C * 1e-45, t.s * 1e-45, t.n) for t in prob.tasks]
    driver = {"callback": lambda *args: None}  # the Python driver's batches
    for backend, options in (("numpy", {}), ("numba", {}), ("numba", {"solver": "als", "peft": "lora"}),
                             ("numpy", driver)):
        for scaled in (tasks, tiny):  # beyond float32's range, or all below its normal range (flushed to 0)
            with pytest.raises(ValueError, match=r"dtype='float32': the tasks' statistics .* outside its range"):
                fl.retrain(scaled, rank=1, backend=backend, dtype="float32", **options)
    assert fl.retrain(tasks, rank=1, backend="numba").converged  # float64 holds them


def test_statistics_must_be_those_of_data():
    """Σ = XᵀX/n is symmetric and positive semi-definite: an indefinite Σ made losses negative and a
    solve report convergence at objective −1556; an asymmetric one was symmetrised silently.  And
    s = ‖Y‖²/2n is at least ½tr(CΣ⁺Cᵀ): below it every loss near the fit was negative (clamped at 0)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((50, 4)), rng.standard_normal((50, 2))

    def statistics(X, Y):
        return X.T @ X / len(X), Y.T @ X / len(X), float(np.sum(Y * Y)) / (2 * len(X))

    Sigma, C, s = statistics(X, Y)
    fl.Task.from_statistics(Sigma, C, s, 50)  # data's statistics pass
    fl.Task.from_statistics(*statistics(X[:2], Y[:2]), 2)  # singular (n < d) is semi-definite
    with pytest.raises(ValueError, match=r"Sigma must be positive semi-definite.*least eigenvalue"):
        fl.Task.from_statistics(Sigma - 2 * np.eye(4), C, s, 50)
    with pytest.raises(ValueError, match="Sigma must be symmetric"):
        fl.Task.from_statistics(Sigma + np.triu(np.ones((4, 4)), 1), C, s, 50)
    wide = rng.standard_normal((20, 50)).astype(np.float32)  # n < d, computed in float32: rounding, not indefinite
    lam = np.linalg.eigvalsh((wide.T @ wide / 20).astype(np.float64))
    assert lam[0] < 0  # what a float64 check at eps would refuse
    labels = rng.standard_normal((20, 2)).astype(np.float32)
    Sigma32, C32, s32 = statistics(wide, labels)  # s too: float32's
    fl.Task.from_statistics(Sigma32.astype(np.float64), C32.astype(np.float64), s32, 20)
    explained = 0.5 * np.trace(C @ np.linalg.inv(Sigma) @ C.T)  # what X explains of ‖Y‖²/2n
    assert explained < s
    exact = fl.Task.from_statistics(Sigma, C, explained * (1 - 1e-9), 50)  # a perfect fit, to rounding
    assert exact.loss(C @ np.linalg.inv(Sigma)) == pytest.approx(0.0, abs=1e-8 * s)
    for wrong in (0.5 * explained, 0.0):
        with pytest.raises(ValueError, match=rf"s={wrong:.6g} is below ½tr\(CΣ⁺Cᵀ\) = {explained:.6g}"):
            fl.Task.from_statistics(Sigma, C, wrong, 50)


@pytest.mark.parametrize("sampler", ["stats", "raw"])
def test_samples_whose_statistics_overflow_are_refused(sampler):
    huge = fl.Task.population(np.eye(4) * 1e200)
    with pytest.raises(ValueError, match="statistics overflow float64"):
        huge.sample(100, seed=0, noise=0.0, sampler=sampler)
    # one task of a stack drawn together (sample_many checks the stack at once)
    tame = fl.Task.population(np.eye(4))
    with pytest.raises(ValueError, match="statistics overflow float64"):
        sample_many([tame, huge, tame], 100, [0, 1, 2], noise=0.0, sampler=sampler)
    assert all(np.isfinite(t.s) for t in sample_many([tame, tame], 100, [0, 1], noise=0.0, sampler=sampler))


def test_retrain_many_names_the_bad_seed():
    prob = fl.make_problem(d=6, k=1, T=3, seed=0)
    for seeds, says in (([0, -1, 2], r"seeds\[1\]: seed=-1 is too small"), (["x", 1], r"seeds\[0\]: seed must be")):
        with pytest.raises(ValueError, match=says):
            fl.retrain_many([prob] * 3 if len(seeds) == 3 else [prob] * 2, seeds=seeds, backend="numpy")
