"""Numba vs the numpy reference: every kernel and every solver/mode/dtype (float64 to 1e-10, float32 to 1e-4)."""
import numpy as np
import pytest

from parity_cases import SOLVER_CASES, check_kernels, check_solver_case


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_numba_kernel_matches_its_reference_twin(dtype):
    from fastlora.kernels import numba_cpu
    checked = check_kernels(numba_cpu.KERNELS, np, dtype, np.asarray)
    assert checked == set(numba_cpu.KERNELS), f"kernels without a parity check: {set(numba_cpu.KERNELS) - checked}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(SOLVER_CASES))
def test_numba_solvers_match_numpy(case, dtype):
    check_solver_case("numba", case, dtype)
