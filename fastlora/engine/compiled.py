"""The engine compiled by Numba: the numba backend's entry points (docs/design.md, "The compiled engine").

Importing this module registers every engine function (:data:`fastlora.engine._jit.JITABLE`)
with Numba and swaps ``prange`` in.  :func:`batch_solver` returns a solver's batch loop
(:func:`fastlora.engine.loops.batch_solver`) compiled whole; nothing compiles at import, and a
first call compiles (or loads from the on-disk cache) only that solver, for its dtype.

Numba's cache checks only the timestamp of the file of the function it compiled, not of the
functions it calls; the cache lives in a folder named by a hash of every engine source file,
so a change anywhere in the engine recompiles instead of loading stale code.
"""
from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

import numba
import numpy as np
from numba.extending import register_jitable

from .. import tasks  # pinv_rtol's source: Numba freezes its constant PINV_RTOL into the compiled code
from ..config import settings
from ..kernels import fits, fits_numba, njit_cached, source_folder  # fits_numba registers the Cholesky inverse's loops
from . import _jit, _numba_linalg, linalg, loops, status, steps  # _numba_linalg registers the loop primitives

_SOURCES = (_jit, linalg, _numba_linalg, status, steps, loops, tasks, fits, fits_numba)


def cache_folder() -> Path:
    """The folder of the engine's compiled code: one per version of its source."""
    return source_folder(settings.compiled_code_root(), "engine", tuple(module.__file__ for module in _SOURCES))


for _fn in _jit.JITABLE:
    register_jitable(_fn)
loops.prange = numba.prange


@functools.cache
def batch_solver(solver: int, parallel: bool):
    """The compiled batch loop of ``solver`` (problems in parallel when ``parallel``)."""
    fn = loops.batch_solver(loops.RUN_ONE[solver], parallel)
    return njit_cached(fn, cache_folder(), parallel=parallel, error_model="numpy")


@functools.cache
def _signature(dtype_name: str) -> tuple:
    """The types of a batch entry's arguments (fastlora.engine.run) in ``dtype``: they vary with it only."""
    from numba import types
    real = numba.from_dtype(np.dtype(dtype_name))

    def arr(ndim, kind=real):
        return types.Array(kind, ndim, "C")
    f64, i64 = types.float64, types.int64
    return (types.boolean, arr(4), arr(4), arr(2), arr(3), arr(4), arr(4), arr(2), arr(1, f64), arr(1, f64),
            arr(1, i64), arr(1, f64), arr(3), arr(2), arr(3), arr(2), arr(2, f64), arr(2, i64), arr(2, f64))


def ensure_compiled(dispatcher, dtype) -> float:
    """Compile ``dispatcher`` for ``dtype`` (or load it from the cache); returns the seconds spent.
    Where compiling — not loading: the cache holds no code of that signature (``kernels.on_disk``) —
    takes more than a second a notice says what is being compiled (once per engine version and dtype:
    later runs load it)."""
    if not hasattr(dispatcher, "overloads"):  # NUMBA_DISABLE_JIT: a plain Python function, nothing to compile
        return 0.0
    name = np.dtype(dtype).name
    if name in _READY.setdefault(dispatcher, set()):
        return 0.0
    sig = _signature(name)
    if sig in dispatcher.overloads:
        _READY[dispatcher].add(name)
        return 0.0
    from ..compilation import slow_work_notice
    from ..kernels import on_disk
    started = time.perf_counter()
    notice = (contextlib.nullcontext() if on_disk(dispatcher, sig)  # a load, however slow on a busy machine
              else slow_work_notice(f"compiling the fastlora engine's {dispatcher.py_func.__qualname__} for "
                                    f"{np.dtype(dtype).name} (once; later runs load it from {cache_folder()})"))
    with notice:
        dispatcher.compile(sig)
    _READY[dispatcher].add(name)
    return time.perf_counter() - started


_READY: dict = {}  # dispatcher -> the dtypes it is compiled for (checking .overloads hashes every type)


def is_cached() -> bool:
    """Whether this engine version's compiled code is on disk (a first call then loads, not compiles)."""
    folder = cache_folder()
    return folder.exists() and any(folder.rglob("*.nbi"))
