"""The small-problem engine: a whole solve per problem, one source run by numpy or compiled by Numba.

docs/design.md ("The compiled engine") describes it.  This module is its Python face: it
turns tasks into the engine's data (:func:`quad_batch`), a parameterization into its code
(:func:`peft_code`), options into :class:`~fastlora.engine.steps.Settings`, runs
:func:`fastlora.engine.loops.solve_batch` — as Python (numpy backend) or compiled
(numba backend) — and returns per-problem arrays and status codes (:class:`Solved`).
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

import numpy as np

from ..errors import check_representable
from ..options import OPTIONS
from . import loops, status
from .loops import FIT_EXACT, FIXED, JOINT, PROJECTED, QuadBatch
from .steps import (
    ADAM,
    ALS,
    FULL,
    GD,
    LBFGS,
    LORA,
    LORA_SYM,
    REPTILE,
    STANDARD,
    START_GIVEN,
    START_STANDARD,
    START_ZEROS,
    Settings,
    Spec,
    pack,
    theta_size,
)

__all__ = [
    "ADAM",
    "ALS",
    "FIT_EXACT",
    "FIXED",
    "GD",
    "JOINT",
    "LBFGS",
    "PROJECTED",
    "REPTILE",
    "STANDARD",
    "START_GIVEN",
    "START_STANDARD",
    "START_ZEROS",
    "Solved",
    "make_settings",
    "make_spec",
    "params_of",
    "peft_code",
    "quad_batch",
    "run",
    "theta_of",
    "theta_size",
]

LBFGS_MEMORY = 10
# problems of a batch run on Numba's threads (prange) from this many on; fewer run on the calling thread
PARALLEL_MIN_PROBLEMS = 16
ARMIJO_C1 = 1e-4
MAX_BACKTRACKS = 50


def peft_code(peft) -> int | None:
    """The engine's code of a built-in parameterization instance, None for any other (those
    run through the Python driver)."""
    return _peft_codes().get(type(peft))


@functools.cache
def _peft_codes() -> dict:
    from ..peft.builtins import Full, LoRA, SymmetricLoRA
    return {LoRA: LORA, SymmetricLoRA: LORA_SYM, Full: FULL}


def make_spec(code: int, rank: int, T: int, d_out: int, d_in: int, peft=None) -> Spec:
    scale = 1.0
    if code == LORA and peft is not None:
        scale = float(peft.scale(rank))
    return Spec(int(code), int(rank), scale, int(T), int(d_out), int(d_in))


def make_settings(solver: int, *, max_iter: int, tol: float, dtype, init: int = START_STANDARD, depth: int = 0,
                  lr: float | None = None, eliminate: int = PROJECTED, inner_lr: float = OPTIONS["inner_lr"].default,
                  inner_steps: int = OPTIONS["inner_steps"].default,
                  outer_lr: float = OPTIONS["outer_lr"].default, scale_start: bool = False) -> Settings:
    """The solver settings; ``tol`` below 8·eps of ``dtype`` is raised to it (changes below are
    rounding noise), ``tol=0`` asks for ``max_iter`` iterations.  ``scale_start``: the drawn θ is
    scaled to the residuals (steps.start_factor; lora and lora_sym)."""
    eps = float(np.finfo(dtype).eps)
    return Settings(int(solver), int(max_iter), max(float(tol), 8 * eps), float(tol) == 0.0, eps, int(depth),
                    LBFGS_MEMORY, -1.0 if lr is None else float(lr), int(eliminate), int(init), float(inner_lr),
                    int(inner_steps), float(outer_lr), ARMIJO_C1, MAX_BACKTRACKS, int(bool(scale_start)))


START_CODES = {"standard": START_STANDARD, "zeros": START_ZEROS}


# -- data --------------------------------------------------------------------------------------
def quad_batch(problems: list, dtype, base_sq=None, need_whiteners: bool = False,
               need_spectrum: bool = False) -> QuadBatch:
    """The engine's data of P problems of one shape (lists of tasks, all population or all
    finite-sample): Ŵ_t, Σ_t, floor_t and what the solvers precompute, with a leading axis P.

    Ŵ_t and floor_t = L_t(Ŵ_t) come from :func:`fastlora.tasks.least_squares_fits` (floor_t in
    extended precision, computed once per task).  ``need_whiteners``: also a whitening pair (G_t, G_t⁺)
    with G_tᵀG_t = Σ_t (the whitened exact fits of ``lora`` and ``full`` on finite samples;
    :func:`fastlora.tasks.whitening_pairs`); ``need_spectrum``: λ_max(Σ_t) (Reptile's step; NaN where
    not asked for; :func:`fastlora.tasks.spectra`).  ``base_sq`` (P,):
    ‖S‖² of reduced problems (fastlora.reduction), added to the scales of the convergence test.
    The A step's operators ((Σ_t Σ_t)⁺ and its products) are made by the engine, per problem.
    """
    P, T = len(problems), len(problems[0])
    first = problems[0][0]
    d_out, d_in = first.d_out, first.d_in
    base_sq = np.zeros(P) if base_sq is None else np.asarray(base_sq, dtype=np.float64)
    if first.is_population:
        from ..tasks import dense_target
        W = np.stack([dense_target(t.target) for tasks in problems for t in tasks]).reshape(P, T, d_out, d_in)
        null = 0.5 * np.einsum("ptij,ptij->p", W, W) + 0.5 * T * base_sq
        empty = np.zeros((P, T, 0, 0), dtype)
        return QuadBatch(True, empty, W.astype(dtype, copy=False), np.zeros((P, T), dtype),
                         W.sum(axis=1).astype(dtype), empty, empty, np.ones((P, T), dtype), null, base_sq)
    from ..tasks import least_squares_fits, spectra, whitening_pairs
    tasks = [t for one in problems for t in one]
    Sigma = np.array([t.Sigma for t in tasks])  # one shape (np.stack's checks cost 4× as much)
    W_hat, floor = least_squares_fits(tasks)
    sqrt_S = isqrt_S = np.zeros((P * T, 0, 0))
    lam_max = np.full(P * T, np.nan)
    if need_spectrum:
        lam_max = spectra(tasks)[0][:, -1]
    if need_whiteners:
        sqrt_S, isqrt_S = whitening_pairs(tasks, Sigma)
    rhs0 = np.array([t.C for t in tasks]).reshape(P, T, d_out, d_in).sum(axis=1)

    for a in (Sigma, rhs0):
        check_representable("the tasks' statistics", a, dtype)

    def shaped(a, *tail):
        return np.ascontiguousarray(a.reshape(P, T, *tail), dtype=dtype)

    return QuadBatch(False, shaped(Sigma, d_in, d_in), shaped(W_hat, d_out, d_in), shaped(floor),
                     np.ascontiguousarray(rhs0, dtype=dtype),
                     shaped(sqrt_S, *sqrt_S.shape[1:]), shaped(isqrt_S, *isqrt_S.shape[1:]),
                     shaped(lam_max), np.array([t.s for t in tasks]).reshape(P, T).sum(axis=1), base_sq)


# -- parameters --------------------------------------------------------------------------------
def theta_of(code: int, params: dict, P: int, T: int, rank: int, d_out: int, d_in: int, dtype) -> np.ndarray:
    """The engine's flat θ (P, n) of public parameters (leading axis P·T, as ``peft.init``)."""
    if code == FULL:
        return np.ascontiguousarray(np.reshape(params["W"], (P, -1)), dtype=dtype)
    if code == LORA_SYM:
        return np.ascontiguousarray(np.swapaxes(params["U"], 1, 2).reshape(P, -1), dtype=dtype)
    B = np.swapaxes(params["B"], 1, 2).reshape(P, -1)
    C = np.swapaxes(params["C"], 1, 2).reshape(P, -1)
    return np.ascontiguousarray(np.concatenate([B, C], axis=1), dtype=dtype)


def params_of(code: int, theta: np.ndarray, T: int, rank: int, d_out: int, d_in: int) -> dict:
    """Public parameters (leading axis P·T; factors as (T, d, r) views of row buffers) of θ (P, n)."""
    P = theta.shape[0]
    if code == FULL:
        return {"W": theta.reshape(P * T, d_out, d_in)}
    if code == LORA_SYM:
        return {"U": theta.reshape(P * T, rank, d_in).swapaxes(1, 2)}
    nb = T * rank * d_out
    B = np.ascontiguousarray(theta[:, :nb]).reshape(P * T, rank, d_out).swapaxes(1, 2)
    C = np.ascontiguousarray(theta[:, nb:]).reshape(P * T, rank, d_in).swapaxes(1, 2)
    return {"B": B, "C": C}


# -- running -----------------------------------------------------------------------------------
@dataclass
class Solved:
    """Per-problem outcome of :func:`run`: ``A`` (P, d_out, d_in), ``theta`` (P, n), objective
    ``histories``, ``n_iter``, ``status`` codes, ``objective`` at the returned point, the last value
    seen and the divergence scale (for messages), the Anderson counts (ALS) and the last step size (gd)."""

    A: np.ndarray
    theta: np.ndarray
    histories: list
    n_iter: np.ndarray
    status: np.ndarray
    objective: np.ndarray
    last: np.ndarray
    scale: np.ndarray
    accepted: np.ndarray
    rejected: np.ndarray
    step: np.ndarray
    seconds: float = 0.0
    compile_seconds: float = 0.0

    def outcome(self, p: int, max_iter: int, step: str | None = None):
        """(message, converged, error or None) of problem ``p`` (``step``: status.describe's)."""
        return status.describe(int(self.status[p]), int(self.n_iter[p]), float(self.last[p]), float(self.scale[p]),
                               max_iter, step)


def run(qb: QuadBatch, spec: Spec, cfg: Settings, A0, theta0, compiled: bool, parallel: bool = False) -> Solved:
    """Solve every problem of ``qb``: with the compiled engine (``compiled``; problems on Numba's threads when
    ``parallel``) or the same source as Python.  ``Solved.seconds`` is the solve's wall time; compiling
    (or loading compiled code from the cache) is timed apart, in ``Solved.compile_seconds``."""
    P = qb.W_hat.shape[0]
    dtype = qb.W_hat.dtype
    A = np.zeros((P, spec.d_out, spec.d_in), dtype)
    theta = np.zeros((P, theta0.shape[1]), dtype)
    history = np.zeros((P, cfg.max_iter + 1))
    ints = np.zeros((P, 5), dtype=np.int64)
    floats = np.zeros((P, 4))
    args = (*qb, *pack(spec, cfg), np.ascontiguousarray(A0, dtype=dtype), np.ascontiguousarray(theta0, dtype=dtype),
            A, theta, history, ints, floats)
    compile_seconds = 0.0
    if compiled:
        from .compiled import batch_solver, ensure_compiled
        solve_batch = batch_solver(cfg.solver, parallel)
        compile_seconds = ensure_compiled(solve_batch, dtype)
    else:
        from .loops import RUN_ONE, batch_solver
        solve_batch = batch_solver(RUN_ONE[cfg.solver])
    started = time.perf_counter()
    # a diverging problem ends with a status; compiled code warns of nothing (no np.errstate to enter)
    with contextlib.nullcontext() if compiled else np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        solve_batch(*args)
    seconds = time.perf_counter() - started
    return Solved(A, theta, [history[p, :ints[p, loops.COUNT]] for p in range(P)], ints[:, loops.N_ITER],
                  ints[:, loops.STATUS], floats[:, loops.FINAL], floats[:, loops.LAST], floats[:, loops.SCALE],
                  ints[:, loops.ACCEPTED], ints[:, loops.REJECTED], floats[:, loops.STEP], seconds, compile_seconds)
