"""Hot loops of fastlora, installed as ``fastlora.kernels``: the kernel contract.

``reference`` is the array-module-generic (numpy / cupy) reference; its docstrings are the
specification every fast path must meet.  ``numba_cpu`` holds the Numba CPU kernels and
``cupy_gpu`` the CuPy GPU ones; each overrides some reference kernels and must agree with
them to rounding (tests/test_parity.py, tests/test_gpu.py, and tests/naive.py's oracle).

A backend runs a :class:`KernelSet`: the reference **primitives**, replaced by the
backend's own where it has one, plus the **composite** kernels (``reference.COMPOSITES``),
which are written against the set they belong to — so a backend that overrides
``orthonormalize_rows`` gets it inside ``psd_subspace_step`` too, without re-declaring it.
A backend may also override a composite with a fused version (same signature, the set first).

Contract, for every kernel:

* arguments are never modified, except those a kernel's docstring names as **scratch**
  (their content is undefined afterwards) or as an output buffer (``out=``);
* results may be new arrays or the documented scratch / ``out`` memory;
* per-task factor matrices are passed as *rows*, shape (T, r, d) — the transpose of the
  public (T, d, r) layout — so that the products of all tasks with a shared dense matrix
  are one GEMM of width T·r without copies.

Nothing here compiles at import: ``numba_cpu`` is imported only by the numba backend;
``fits_numba`` (the tasks' least-squares fits, :mod:`fastlora.kernels.fits`) by every backend's
finite-sample solves.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
from pathlib import Path
from typing import NamedTuple


def _no_options() -> dict:
    return {"cache_dir": None, "fastmath": False}


# how Numba kernels compile — {"cache_dir": folder or None, "fastmath": bool} — read when a kernel is
# decorated; the numba backend installs the provider (reading fastlora.config), so that kernels read
# nothing of fastlora but this contract
compile_options = _no_options


def provide_compile_options(provider) -> None:
    """Install ``provider()`` -> {"cache_dir", "fastmath"} as :func:`compile_options`."""
    global compile_options
    compile_options = provider


_CACHE_DIR_LOCK = threading.Lock()


def njit_cached(fn, cache_dir: str | None, **options):
    """``numba.njit(cache=True, **options)(fn)`` with its compiled code kept in ``cache_dir`` (None:
    Numba's own choice).  Numba has no per-function cache folder: it
    binds a function's cache locator to ``numba.config.CACHE_DIR`` when the function is decorated,
    so that global is set for the decoration only, under a lock, and restored — Numba's setting
    for other code stays as it was."""
    import numba
    if cache_dir is None:
        return numba.njit(cache=True, **options)(fn)
    with _CACHE_DIR_LOCK:
        previous = numba.config.CACHE_DIR
        numba.config.CACHE_DIR = str(cache_dir)
        try:
            return numba.njit(cache=True, **options)(fn)
        finally:
            numba.config.CACHE_DIR = previous


def on_disk(dispatcher, signature: tuple | None = None) -> bool:
    """Whether Numba's on-disk cache holds code for ``dispatcher`` (of ``signature``, where given) in a valid
    index (written by this Numba version for this source): then compiling it loads that code (no
    'compiling' notice, however long a busy machine takes).  False where that cannot be told (no cache, a
    stale one, or a Numba without the private attributes read here)."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    index = getattr(cache_file, "_index_path", None)
    if not (isinstance(index, str) and os.path.exists(index)):
        return False
    try:
        entries = cache_file._load_index()  # {} where Numba's version or the source stamp differ
        return bool(entries) if signature is None else any(key[0] == signature for key in entries)
    except Exception:  # noqa: BLE001 - a private API: anything unexpected means "cannot tell"
        return False


class PerCacheRoot:
    """``build(cache_root, ...)`` made once per process and cache root — compiled kernels, or None where Numba
    cannot make them: built under a lock (two threads never compile one kernel twice), read without it after.
    Used as a decorator; :meth:`ready` tells whether a call would cost nothing."""

    def __init__(self, build):
        functools.update_wrapper(self, build)
        self._build, self._built, self._lock = build, {}, threading.Lock()

    def __call__(self, cache_root: str, *args, **kwargs):
        if cache_root in self._built:
            return self._built[cache_root]
        with self._lock:
            if cache_root not in self._built:
                self._built[cache_root] = self._build(cache_root, *args, **kwargs)
            return self._built[cache_root]

    def ready(self, cache_root: str) -> bool:
        return cache_root in self._built


def compile_announced(compiles, announce=None) -> None:
    """``dispatcher.compile(signature)`` for each (dispatcher, signature) of ``compiles`` — inside ``announce()``
    (a notice) where the on-disk cache lacks any of them: a load, however slow on a busy machine, is not
    compiling.  Under ``NUMBA_DISABLE_JIT`` the dispatchers are plain functions: nothing to compile."""
    compiles = [(dispatcher, signature) for dispatcher, signature in compiles if hasattr(dispatcher, "compile")]
    cached = all(on_disk(dispatcher) for dispatcher, _ in compiles)
    with contextlib.nullcontext() if announce is None or cached else announce():
        for dispatcher, signature in compiles:
            dispatcher.compile(signature)


@functools.cache
def source_folder(cache_root: str, prefix: str, sources: tuple) -> Path:
    """``cache_root/prefix-<digest>``, the digest of the ``sources`` files' bytes: one cache folder per
    version of compiled code's sources — Numba's cache checks only the timestamp of the compiled
    function's own file, not of the functions and overloads it calls."""
    digest = hashlib.sha1()
    for source in sources:
        digest.update(Path(source).read_bytes())
    return Path(cache_root) / f"{prefix}-{digest.hexdigest()[:16]}"


class ResidualNorms(NamedTuple):
    """The squared norms the ALS bookkeeping needs at a new A (docs/design.md §5).

    ``residual_sq`` ‖D‖²_F of the (possibly symmetrised) residual D = S − A — the shift of
    the next subspace step; ``distance_sq`` ‖S − A‖²_F — the objective identity;
    ``step_sq`` ‖A − A_previous‖²_F and ``A_sq`` ‖A‖²_F — the convergence test.
    """

    residual_sq: float
    distance_sq: float
    step_sq: float
    A_sq: float


class KernelSet:
    """The kernels of one backend, read as attributes (``ops.apply_shared_lowrank(...)``).

    ``overrides``: dicts name -> function replacing reference kernels (later ones win).
    Every composite, overridden or not, is bound to this set (called with it first).
    """

    def __init__(self, name: str, *overrides: dict):
        from . import reference
        self.name = name
        table = dict(reference.PRIMITIVES)
        for extra in overrides:
            unknown = set(extra) - set(reference.PRIMITIVES) - set(reference.COMPOSITES)
            if unknown:
                raise ValueError(f"kernel set {name!r}: {sorted(unknown)} are not kernels of the contract")
            table.update(extra)
        for kernel_name in reference.COMPOSITES:  # composites (overridden or not) receive the set first
            table[kernel_name] = functools.partial(table.get(kernel_name, reference.COMPOSITES[kernel_name]), self)
        self._table = table
        self.__dict__.update(table)

    @property
    def names(self) -> list[str]:
        return sorted(self._table)

    def __repr__(self) -> str:
        return f"<KernelSet {self.name}: {', '.join(self.names)}>"
