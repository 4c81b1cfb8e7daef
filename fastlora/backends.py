"""Execution backends: one solver code, three array/kernel providers.

* ``numpy`` — the readable reference (``fastlora.kernels.reference``).
* ``numba`` — the same kernels compiled with Numba, parallel over tasks (CPU).
* ``cupy``  — the reference kernels on CuPy arrays plus custom CUDA kernels (GPU).
* ``auto``  — cupy when a usable GPU is present, else numba when importable, else numpy.

``import fastlora`` never imports numba or cupy; a backend is built on first request.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings

import numpy as np

from .config import BACKEND_CHOICES, DTYPE_NAMES, settings, usable_cores
from .config import BACKENDS as BACKENDS  # re-exported: fastlora.backends.BACKENDS is where callers look
from .errors import BackendUnavailableError, PerformanceWarning, check_choice

DTYPES = dict(zip(DTYPE_NAMES, (np.float64, np.float32)))


class Backend:
    """An array module ``xp`` plus the kernel set the solvers call (``kernels.<name>``,
    a :class:`fastlora.kernels.KernelSet`)."""

    def __init__(self, name: str, xp, *kernel_overrides: dict):
        from .kernels import KernelSet
        self.name, self.xp = name, xp
        self.kernels = KernelSet(name, *kernel_overrides)

    @contextlib.contextmanager
    def running(self, threads: int | None = None):
        """The context of one solve: thread settings applied, and restored afterwards."""
        yield

    def prepare(self, dtype) -> float:
        """Load (or compile) what a solve in ``dtype`` needs before it is timed; returns seconds spent."""
        return 0.0

    def asarray(self, a, dtype):
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a):
        return np.asarray(a)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    def describe(self) -> str:
        return self.name

    def free_bytes(self) -> int | None:
        """Memory a solve may use, where the backend knows (device memory); None on the CPU."""
        return None

    def release(self) -> None:
        """Free cached memory after a solve (a no-op on the CPU)."""

    def __repr__(self) -> str:
        return f"<fastlora backend {self.name}>"


class NumbaBackend(Backend):
    def __init__(self):
        # GNU OpenMP (Numba's threading layer on Linux) keeps its threads spinning for ~300k iterations
        # after each parallel region, starving the BLAS threads of the GEMMs between our kernels
        # (measured: a GEMM + kernel pair 5x slower); a short spin keeps wake-ups fast.  Read when
        # libgomp loads (Numba's first parallel region); a value the user set wins.
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")
        from . import kernels
        kernels.provide_compile_options(lambda: {"cache_dir": str(settings.numba_cache_dir),
                                                 "fastmath": settings.fastmath})
        from .kernels import numba_cpu
        super().__init__("numba", np, numba_cpu.KERNELS)
        self.module = numba_cpu
        self._prepared: set = set()

    def thread_count(self, threads: int | None) -> int:
        """Threads for large kernels: ``threads``, else FASTLORA_NUM_THREADS, else all usable cores."""
        import numba
        limit = numba.config.NUMBA_NUM_THREADS
        wanted = threads or settings.num_threads or min(usable_cores(), limit)
        return max(1, min(int(wanted), limit))

    @contextlib.contextmanager
    def running(self, threads: int | None = None):
        """Numba's thread count (thread-local) and the large-kernel setting are restored afterwards."""
        import numba
        before, configured = numba.get_num_threads(), self.module.configured_threads()
        wanted = self.thread_count(threads)
        self.module.configure_threads(wanted)
        _warn_oversubscription(wanted)
        try:
            yield
        finally:
            self.module.configure_threads(configured or before)
            numba.set_num_threads(before)

    def prepare(self, dtype) -> float:
        """Load every kernel from the on-disk cache (compiling it the first time) on tiny inputs."""
        key = np.dtype(dtype).name
        if key in self._prepared:
            return 0.0
        import time

        from .compilation import slow_work_notice
        started = time.perf_counter()
        with slow_work_notice(f"compiling fastlora's Numba kernels for {key} (once; later runs load them from "
                              f"{settings.numba_cache_dir})"):
            self.module.warm_up(np.dtype(dtype).type)
        self._prepared.add(key)
        return time.perf_counter() - started

    def describe(self) -> str:
        import numba
        layer = numba.threading_layer() if _numba_ran() else "layer not yet chosen"
        return f"numba {numba.__version__} ({numba.get_num_threads()} threads, {layer})"


class CupyBackend(Backend):
    def __init__(self):
        import cupy

        from .kernels import cupy_gpu
        super().__init__("cupy", cupy, cupy_gpu.KERNELS)

    def to_numpy(self, a):
        return self.xp.asnumpy(a)

    def synchronize(self) -> None:
        self.xp.cuda.Device().synchronize()

    def describe(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"cupy {self.xp.__version__} on {name}"

    def free_bytes(self) -> int:
        pool = self.xp.get_default_memory_pool()
        return int(self.xp.cuda.runtime.memGetInfo()[0]) + int(pool.free_bytes())

    def release(self) -> None:
        """Return cached device memory to the driver (after a solve's results left the GPU)."""
        self.xp.get_default_memory_pool().free_all_blocks()


def _numba_ran() -> bool:
    try:
        import numba
        numba.threading_layer()
        return True
    except ValueError:
        return False


_OVERSUBSCRIPTION_WARNED = False


def _warn_oversubscription(numba_threads: int) -> None:
    """Warn once when Numba's threads times BLAS's threads exceed this process's cores.

    Numba kernels call small LAPACK routines from inside their parallel loops; with a
    multi-threaded BLAS, each Numba thread may start its own BLAS pool.  The usual case is
    a process pool (sweeps, joblib) in which every worker keeps all cores' worth of threads.
    """
    global _OVERSUBSCRIPTION_WARNED
    if _OVERSUBSCRIPTION_WARNED:
        return
    if numba_threads <= 1 or not _in_worker_process():  # cheap tests first: blas_threads() takes ~2 ms
        return
    cores = usable_cores()
    blas = blas_threads()
    if blas > 1 and numba_threads * blas > cores:
        _OVERSUBSCRIPTION_WARNED = True
        warnings.warn(
            f"fastlora: Numba uses {numba_threads} threads and BLAS {blas} threads on {cores} cores in a worker "
            f"process; nested parallel regions will oversubscribe the CPU (often 10x slower). Pass threads=1 "
            f"(or set FASTLORA_NUM_THREADS=1) and limit BLAS with threadpoolctl.threadpool_limits(1, 'blas').",
            PerformanceWarning, stacklevel=4)


def _in_worker_process() -> bool:
    import multiprocessing
    return multiprocessing.parent_process() is not None or "DASK_PARENT" in os.environ


def blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return 1
    counts = [lib["num_threads"] for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return max(counts, default=1)


@functools.cache
def cupy_status() -> tuple[bool, str]:
    """(usable, reason): whether backend="cupy" can run here, and if not, what is missing."""
    # TF32 rounds float32 GEMM inputs to 10 mantissa bits: off unless asked for (read at import)
    os.environ.setdefault("CUPY_TF32", "1" if settings.allow_tf32 else "0")
    try:
        import cupy
    except ImportError:
        return False, "the cupy package is not installed (pip install 'fastlora[gpu]')"
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install raises many kinds
        return False, f"cupy failed to import: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        return False, f"no usable CUDA driver/runtime: {exc}"
    if count < 1:
        return False, "the CUDA driver reports no GPU device"
    return True, f"{count} CUDA device(s)"


@functools.cache
def numba_status() -> tuple[bool, str]:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False, "the numba package is not installed"
    return True, "numba available"


def backend_status(name: str) -> tuple[bool, str]:
    """(usable, reason) of a backend name ("numpy", "numba" or "cupy") on this machine."""
    return {"numpy": lambda: (True, "numpy available"), "numba": numba_status, "cupy": cupy_status}[name]()


@functools.cache
def _build(name: str) -> Backend:
    if name == "numpy":
        return Backend("numpy", np)
    ok, why = backend_status(name)
    if not ok:
        raise BackendUnavailableError(f"backend={name!r} is unavailable: {why}")
    return NumbaBackend() if name == "numba" else CupyBackend()


def resolve_backend_name(name: str | None) -> str:
    check_choice("backend", "auto" if name is None else name, BACKEND_CHOICES)
    if name in (None, "auto"):
        name = settings.default_backend  # validated there, naming FASTLORA_BACKEND
    if name != "auto":
        return name
    if cupy_status()[0]:
        return "cupy"
    if numba_status()[0]:
        return "numba"
    return "numpy"


def get_backend(name: str | None = "auto") -> Backend:
    """The backend called ``name`` ("numpy", "numba", "cupy" or "auto")."""
    return _build(resolve_backend_name(name))


def resolve_dtype(dtype) -> type:
    if isinstance(dtype, str):
        return DTYPES[check_choice("dtype", dtype, DTYPES)]
    if dtype in (np.float64, np.float32):
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    return DTYPES[check_choice("dtype", name, DTYPES)]
