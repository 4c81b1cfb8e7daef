"""Standard normal draws written into arrays by compiled code: the same numbers as numpy's.

``Generator.standard_normal`` is numpy's ziggurat (numpy/random/src/distributions); Numba's
``Generator`` support is a port of that code calling the same bit generator, so a compiled loop
draws the same numbers and leaves the bit generator where numpy would (tests/test_draws.py
checks both, word for word, tails included).  Compiled and inlined, it runs at about twice
numpy's speed on this project's 2-core EPYC (300,000 normals: 1.75 against 3.6 ms), and the raw
sampler spends most of a sweep row drawing (docs/design.md §7, "A sweep row").  Passing a
Generator into compiled code costs ~7 µs (Numba reads its bit generator's ctypes interface), so
the raw sampler uses :func:`compiled_fill_normals` only for large draws (fastlora.tasks).
"""
from __future__ import annotations

import threading


def fill_normals(rng, first, second):
    """``rng.standard_normal(out=first)`` then ``rng.standard_normal(out=second)``: C-contiguous 2-D
    float64 arrays filled in row-major order (``second`` may be empty)."""
    for i in range(first.shape[0]):
        for j in range(first.shape[1]):
            first[i, j] = rng.standard_normal()
    for i in range(second.shape[0]):
        for j in range(second.shape[1]):
            second[i, j] = rng.standard_normal()


_COMPILING = threading.Lock()
_COMPILED: dict = {}


def compiled_fill_normals(cache_root: str):
    """:func:`fill_normals` compiled for numpy Generators (or loaded from the on-disk cache under
    ``cache_root``), once per process; None where Numba cannot compile it (not installed, or
    ``NUMBA_DISABLE_JIT``): then numpy draws the same numbers itself."""
    if cache_root in _COMPILED:
        return _COMPILED[cache_root]
    with _COMPILING:
        if cache_root not in _COMPILED:
            _COMPILED[cache_root] = _compile(cache_root)
        return _COMPILED[cache_root]


def _compile(cache_root: str):
    try:
        import numba
        import numpy as np
        from numba import types
    except ImportError:
        return None
    if numba.config.DISABLE_JIT:
        return None
    import fastlora.kernels as contract
    dispatcher = contract.njit_cached(fill_normals, str(contract.source_folder(cache_root, "draws", (__file__,))))
    matrix = types.Array(types.float64, 2, "C")
    dispatcher.compile((numba.typeof(np.random.default_rng(0)), matrix, matrix))
    return dispatcher
