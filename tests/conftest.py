import numpy as np
import pytest

import fastlora as fl
from fastlora.backends import numba_status


def cpu_backends():
    return ["numpy", "numba"] if numba_status()[0] else ["numpy"]


@pytest.fixture(params=cpu_backends())
def cpu_backend(request):
    return request.param


def numerical_rank(M, rtol=1e-6):
    s = np.linalg.svd(M, compute_uv=False)
    return int(np.sum(s > rtol * s[0])) if s[0] > 0 else 0


def procrustes_error(U, U_star):
    """min over orthogonal O of ‖U O − U*‖ / ‖U*‖, and O."""
    P, _, Qt = np.linalg.svd(U.T @ U_star)
    O = P @ Qt
    return np.linalg.norm(U @ O - U_star) / np.linalg.norm(U_star), O


@pytest.fixture
def small_problem():
    return fl.make_problem(d=24, k=2, T=4, seed=3)
