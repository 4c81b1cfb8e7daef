"""pytest-benchmark suite over the `fastlora bench` configurations, at CI-friendly sizes.

Run the timings with ``python -m pytest bench --benchmark-enable`` (CI runs it with
``--benchmark-disable``, as a correctness check).  The numpy reference is benchmarked in the
same session, so pytest-benchmark's comparison table gives the ratios; compilation is
excluded by a warm-up call before timing.
"""
import numpy as np
import pytest

import fastlora as fl
from fastlora.backends import cupy_status
from fastlora.baselines import dense_als, meta_objective, paper_gd

BACKENDS = ["numpy", "numba"] + (["cupy"] if cupy_status()[0] else [])
SIZES = {"pop-small": dict(d=96, k=4, T=24), "pop-medium": dict(d=256, k=4, T=32)}


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_population_als_iterations(benchmark, backend, size):
    prob = fl.make_problem(seed=0, n_test_tasks=0, **SIZES[size])
    fl.retrain(prob, backend=backend, max_iter=2)  # compile / warm up outside the timing
    benchmark.extra_info["useful_flops_per_iteration"] = 2 * prob.d ** 2 * prob.T * prob.k
    res = benchmark(fl.retrain, prob, backend=backend, max_iter=10, tol=0.0)
    assert res.n_iter == 10 and np.isfinite(res.objective)


@pytest.mark.parametrize("backend", BACKENDS)
def test_population_time_to_tolerance(benchmark, backend):
    prob = fl.make_problem(d=96, k=4, T=24, seed=0, n_test_tasks=0)
    fl.retrain(prob, backend=backend, max_iter=2)
    res = benchmark(fl.retrain, prob, backend=backend, tol=1e-10)
    assert np.linalg.norm(res.A - prob.A_star) / np.linalg.norm(prob.A_star) < 1e-8


def test_dense_als_baseline(benchmark):
    prob = fl.make_problem(d=48, k=2, T=8, seed=0, n_test_tasks=0)
    W = np.stack([t.W_star for t in prob.tasks])
    out = benchmark.pedantic(dense_als, args=(W, 2), kwargs={"A_star": prob.A_star}, rounds=1, iterations=1)
    assert out["reached"]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_paper_setting_lbfgs(benchmark, backend):
    rng = np.random.default_rng(0)
    prob = fl.make_problem(d=10, k=1, T=3, seed=0, n_test_tasks=0)
    X = rng.standard_normal((3, 5000, 10))
    Y = np.stack([X[t] @ prob.tasks[t].W_star.T for t in range(3)]) + 0.01 * rng.standard_normal(X.shape)

    def solve():
        tasks = [fl.Task(X[t], Y[t]) for t in range(3)]
        return fl.retrain(tasks, peft="lora_sym", rank=1, solver="gd", optimizer="lbfgs", backend=backend, tol=1e-12)

    res = benchmark(solve)
    base = paper_gd(X, Y, 1, outer_steps=30)  # a short run of the baseline: the solver must beat it
    assert meta_objective(X, Y, res.A, res.params["U"]) < base["objective"]
