"""Backend selection and the CPU-only guarantees (these run everywhere)."""
import subprocess
import sys

import pytest

import fastlora as fl
from fastlora import backends


def test_auto_picks_numba_without_a_gpu(monkeypatch):
    monkeypatch.setattr(backends, "cupy_status", lambda: (False, "no device"))
    assert backends.resolve_backend_name("auto") == "numba"


def test_auto_follows_the_environment(monkeypatch):
    monkeypatch.setattr(backends.settings, "default_backend", "numpy")
    assert backends.resolve_backend_name("auto") == "numpy"


def test_import_and_cpu_solves_work_without_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"  # makes `import cupy` fail
            "import fastlora as fl\n"
            "from fastlora.backends import cupy_status\n"
            "ok, why = cupy_status(); assert not ok and 'not installed' in why, why\n"
            "p = fl.make_problem(d=8, k=1, T=3)\n"
            "assert fl.retrain(p, backend='auto').backend == 'numba'\n"
            "try:\n    fl.retrain(p, backend='cupy')\nexcept fl.BackendUnavailableError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "backend='cupy' is unavailable: the cupy package is not installed" in out.stdout


def test_threads_option_applies_during_the_solve_and_is_restored_after():
    # in a child process with NUMBA_NUM_THREADS=2, so that two threads exist on any machine
    code = """
import numba
import fastlora as fl
from fastlora.kernels import numba_cpu
numba_cpu.PARALLEL_MIN_ELEMENTS = 1  # every kernel takes the large-kernel path
prob = fl.make_problem(d=40, k=2, T=4, seed=0, n_test_tasks=0)
numba.set_num_threads(2)
for threads in (1, 2):
    seen = []
    fl.retrain(prob, backend="numba", solver="als", threads=threads, max_iter=3,
               callback=lambda i, t, f: seen.append(numba.get_num_threads()))
    assert seen and set(seen) == {threads}, (threads, seen)   # the kernels ran on the requested count
    assert numba.get_num_threads() == 2, numba.get_num_threads()  # and the caller's setting is back
"""
    import os
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr


def test_oversubscription_warns_once_in_worker_processes(monkeypatch):
    import warnings
    monkeypatch.setattr(backends, "_OVERSUBSCRIPTION_WARNED", False)
    monkeypatch.setattr(backends, "usable_cores", lambda: 2)
    monkeypatch.setattr(backends, "blas_threads", lambda: 2)
    monkeypatch.setattr(backends, "_in_worker_process", lambda: True)
    with pytest.warns(fl.PerformanceWarning, match="oversubscribe"):
        backends._warn_oversubscription(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backends._warn_oversubscription(2)
    assert not [w for w in caught if issubclass(w.category, fl.PerformanceWarning)], "warned twice"


def test_composite_kernels_use_the_backends_own_primitives():
    """A backend overriding orthonormalize_rows gets it inside psd_subspace_step without re-declaring it."""
    import numpy as np

    from fastlora.kernels import KernelSet, reference
    calls = []

    def counting(Y):
        calls.append(Y.shape)
        return reference.orthonormalize_rows(Y)

    ks = KernelSet("counting", {"orthonormalize_rows": counting})
    rng = np.random.default_rng(0)
    Q = reference.orthonormalize_rows(rng.standard_normal((3, 2, 6)))
    ks.psd_subspace_step(Q, rng.standard_normal((3, 2, 6)), 0.5)
    assert calls == [(3, 2, 6)]
    with pytest.raises(ValueError, match="not kernels of the contract"):
        KernelSet("typo", {"orthonormalise_rows": counting})

