"""Every kernel of every CPU backend against the numpy reference and the naive oracle (tests/naive.py),
and every solver/mode/dtype of Numba against numpy (float64 to 1e-10, float32 to 1e-4)."""
import numpy as np
import pytest
from parity_cases import KERNEL_CHECKS, SOLVER_CASES, check_kernel, check_solver_case

from fastlora.backends import get_backend
from fastlora.kernels import reference


def test_every_kernel_of_the_contract_has_a_check():
    assert set(KERNEL_CHECKS) == set(reference.PRIMITIVES) | set(reference.COMPOSITES)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(KERNEL_CHECKS))
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_kernel_matches_reference_and_naive_oracle(backend, name, dtype):
    check_kernel(get_backend(backend).kernels, name, np, dtype, np.asarray)


def test_numba_overrides_only_kernels_of_the_contract():
    from fastlora.kernels import numba_cpu
    assert set(numba_cpu.KERNELS) <= set(reference.PRIMITIVES) | set(reference.COMPOSITES)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(SOLVER_CASES))
def test_numba_solvers_match_numpy(case, dtype):
    check_solver_case("numba", case, dtype)
