"""How much memory a linear retraining needs, and refusing one that would not fit before any work."""
from __future__ import annotations

import numpy as np

from .backends import resolve_dtype
from .config import format_bytes, require_memory
from .errors import FastLoRAError
from .taskbatch import is_small

MEMORY_ADVICE = "use dtype='float32', fewer tasks, or factored (population) targets"


def estimate_bytes(tasks, kind, rank, dtype) -> int:
    T, d_out, d_in = len(tasks), tasks[0].d_out, tasks[0].d_in
    k = max(t.target.B.shape[1] for t in tasks) if kind == "factored" else 0
    return solve_bytes(kind, T, d_out, d_in, k, rank, dtype)


def solve_bytes(kind: str, T: int, d_out: int, d_in: int, k: int, rank: int | None, dtype) -> int:
    """Working memory of a solve: ~8 shared (d_out × d_in) arrays plus ~6 (T, r, d) factor
    arrays for factored targets (``k``: their rank), or ~4 (T, d_out, d_in) arrays for dense /
    finite-sample tasks (``kind``: :func:`fastlora.taskbatch.batch_kind`)."""
    item = np.dtype(dtype).itemsize
    if kind == "factored":
        return item * (8 * d_out * d_in + 6 * T * max(rank or k, k) * max(d_out, d_in))
    return item * (4 * T * d_out * d_in + 8 * d_out * d_in)


def check_solve_size(T: int, d_out: int, d_in: int, k: int, rank: int | None, population: bool, dtype) -> None:
    """What :func:`fastlora.retrain` refuses on the CPU for a problem of these sizes, known without its data
    (a sweep spec's point): the solve's working memory (make_problem's law; a population problem's
    factored targets solve in the span of their factors where that is smaller)."""
    kind = "finite" if not population else ("dense" if is_small(d_out, d_in) else "factored")
    if kind == "factored" and 2 * T * k < min(d_out, d_in):
        return  # solved in m <= 2·T·k dimensions (fastlora.reduction): smaller than drawing the problem
    require_memory(solve_bytes(kind, T, d_out, d_in, k, rank, resolve_dtype(dtype)),
                   f"retraining T={T} tasks of shape ({d_out}, {d_in})", MEMORY_ADVICE)


def check_memory(be, tasks, kind, rank, dtype) -> None:
    need = estimate_bytes(tasks, kind, rank, dtype)
    advice = MEMORY_ADVICE
    free = be.free_bytes()
    if free is None:  # the CPU: against the machine's available memory
        require_memory(need, f"this solve on backend {be.name!r}", advice)
    elif need > free:
        raise FastLoRAError(f"this problem needs about {format_bytes(need)} of {be.name} device memory but only "
                            f"{format_bytes(free)} is free; {advice}, or backend='numba'")
