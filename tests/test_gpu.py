"""GPU tests (marker ``gpu``): CuPy vs numpy parity, the theory facts on the device, the custom
kernels' numpy twins, device memory handling.  Skipped where CuPy finds no usable device.

Run on a GPU machine with ``python -m pytest -m gpu``.
"""
import numpy as np
import pytest
from parity_cases import KERNEL_CHECKS, SOLVER_CASES, check_kernel, check_solver_case

import fastlora as fl
from fastlora.backends import cupy_status

USABLE, WHY = cupy_status()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not USABLE, reason=f"no usable GPU: {WHY}")]


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(KERNEL_CHECKS))
def test_every_cupy_kernel_matches_reference_and_naive_oracle(cp, name, dtype):
    """The cupy kernel set: its custom kernels, the reference ones on CuPy arrays, and the
    composites (psd_subspace_step must pick up the CholeskyQR2 orthonormalisation)."""
    check_kernel(fl.get_backend("cupy").kernels, name, cp, dtype, cp.asnumpy)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(SOLVER_CASES))
def test_cupy_solvers_match_numpy(case, dtype):
    check_solver_case("cupy", case, dtype)


@pytest.mark.parametrize("T", [3, 5])
def test_symmetric_lora_ml_recovers_A_star_on_the_gpu(T):
    prob = fl.make_problem(d=24, k=2, T=T, seed=T)
    res = fl.retrain(prob, peft="lora_sym", rank=2, backend="cupy", max_iter=3000)
    assert np.linalg.norm(res.A - prob.A_star) / np.linalg.norm(prob.A_star) < 1e-6
    assert fl.evaluate(res, prob)["adapt_rank"] == 2


def test_two_tasks_on_the_gpu_fit_exactly_up_to_rank_2k():
    prob = fl.make_problem(d=24, k=2, T=2, seed=4, n_test_tasks=2)
    res = fl.retrain(prob, peft="lora_sym", rank=2, backend="cupy", max_iter=3000)
    assert res.objective < 1e-10 * fl.retrain(prob, method="standard").objective
    assert np.linalg.matrix_rank(res.A - prob.A_star, tol=1e-6 * np.abs(prob.A_star).max()) <= 4


def test_results_stay_on_the_device_when_asked(cp):
    prob = fl.make_problem(d=16, k=1, T=3, seed=0)
    res = fl.retrain(prob, backend="cupy", as_numpy=False)
    assert isinstance(res.A, cp.ndarray) and isinstance(res.params["U"], cp.ndarray)
    res = fl.retrain(prob, backend="cupy")
    assert isinstance(res.A, np.ndarray)


def test_device_memory_is_released_after_a_solve(cp):
    prob = fl.make_problem(d=256, k=4, T=32, seed=0, n_test_tasks=0)
    fl.retrain(prob, backend="cupy", max_iter=5)
    assert cp.get_default_memory_pool().used_bytes() < 2**20


def test_too_large_a_problem_names_the_memory_it_needs(monkeypatch):
    from fastlora import backends
    be = backends.get_backend("cupy")
    monkeypatch.setattr(type(be), "free_bytes", lambda self: 1024)
    prob = fl.make_problem(d=64, k=2, T=8, seed=0, n_test_tasks=0)
    with pytest.raises(fl.FastLoRAError, match=r"needs about .* of cupy device memory"):
        fl.retrain(prob, backend="cupy")


def test_auto_picks_cupy_when_a_device_is_present():
    from fastlora.backends import resolve_backend_name
    assert resolve_backend_name("auto") == "cupy"
