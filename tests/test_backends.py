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


def test_threads_option_sets_numba_threads():
    import numba
    prob = fl.make_problem(d=8, k=1, T=3)
    fl.retrain(prob, backend="numba", threads=1)
    assert numba.get_num_threads() == 1
    fl.retrain(prob, backend="numba")
    assert numba.get_num_threads() >= 1


def test_oversubscription_warns_once_in_worker_processes(monkeypatch):
    monkeypatch.setattr(backends, "_OVERSUBSCRIPTION_WARNED", False)
    monkeypatch.setattr(backends, "usable_cores", lambda: 2)
    monkeypatch.setattr(backends, "blas_threads", lambda: 2)
    monkeypatch.setattr(backends, "_in_worker_process", lambda: True)
    with pytest.warns(fl.PerformanceWarning, match="oversubscribe"):
        backends._warn_oversubscription(2)
    backends._warn_oversubscription(2)  # only once
