"""``fastlora.retrain``: standard retraining, LoRA-ML (ALS or GD) and Reptile."""
from __future__ import annotations

import time

import numpy as np

from . import peft as peft_registry
from .backends import get_backend, resolve_dtype
from .errors import FastLoRAError, check_choice, check_float, check_int
from .solvers import als, gd, reptile, standard
from .solvers.common import Context, RetrainResult
from .taskbatch import as_task_list, make_batch

METHODS = ("standard", "lora-ml", "reptile")
SOLVERS = ("als", "gd")
OPTIONS = {
    ("lora-ml", "als"): {"init_A", "adapter_step", "inner_iter", "power_iter_init"},
    ("lora-ml", "gd"): {"init_A", "optimizer", "lr"},
    ("reptile", None): {"init_A", "inner_lr", "inner_steps", "outer_lr"},
    ("standard", None): set(),
}


def retrain(problem_or_tasks, method: str = "lora-ml", peft="lora_sym", rank: int | None = None,
            solver: str = "als", backend: str = "auto", max_iter: int = 1000, tol: float = 1e-10, seed=0, *,
            dtype="float64", threads: int | None = None, callback=None, as_numpy: bool = True,
            peft_options: dict | None = None, **options) -> RetrainResult:
    """Retrain a shared A on T tasks.

    Parameters
    ----------
    problem_or_tasks : Problem, Task or list of Task
        The retraining tasks (all population or all finite-sample, same shape).
    method : {"standard", "lora-ml", "reptile"}
        ``standard``: argmin_A Σ_t L_t(A) in closed form.  ``lora-ml``: argmin over A and
        θ_1..θ_T of Σ_t L_t(A + Δ_p(θ_t)).  ``reptile``: first-order meta-learning baseline.
    peft : str, class or instance
        The parameterization p of LoRA-ML (a registered name, see ``fastlora.peft.available()``).
    rank : int
        Adapter rank r, 1 <= r <= min(d_out, d_in); defaults to the problem's k.
    solver : {"als", "gd"}
        LoRA-ML solver: alternating exact minimisation (see ``fastlora.solvers.adapters`` for
        the adapter step used: exact best fit, reduced-rank regression, subspace iteration,
        or — where no exact fit exists, e.g. lora_sym with Σ_t ≠ I — ``inner_iter`` inner
        gradient steps) or joint gradient descent / Adam.
    backend : {"auto", "numpy", "numba", "cupy"}
    max_iter, tol : iteration limit and relative tolerance (change of A for ALS, gradient
        norm for GD; clamped below at a few ulps of ``dtype``).
    seed : int or numpy Generator — every random draw (initialisation) comes from it.
    dtype : "float64" (default) or "float32".
    threads : Numba threads (numba backend); default all usable cores or FASTLORA_NUM_THREADS.
    callback : called as ``callback(iteration, elapsed_seconds, objective)`` after each iteration.
    as_numpy : return numpy arrays (default) rather than the backend's.
    peft_options : keyword arguments for the parameterization class, e.g. ``{"alpha": 16}``.
    **options : solver options — als: ``init_A`` ("standard" | "zeros" | array),
        ``adapter_step`` ("auto" | "subspace" | "exact" | "whitened" | "inner"), ``inner_iter``
        (10), ``power_iter_init`` (4); gd: ``init_A``, ``optimizer`` ("gd" | "adam"), ``lr``;
        reptile: ``init_A`` ("zeros"), ``inner_lr`` (0.1), ``inner_steps`` (10), ``outer_lr`` (0.5).
    """
    started = time.perf_counter()
    method = check_choice("method", method, METHODS)
    if method == "lora-ml":
        solver = check_choice("solver", solver, SOLVERS)
    elif solver is not None:
        check_choice("solver", solver, SOLVERS)
    tasks = as_task_list(problem_or_tasks)
    d_out, d_in = tasks[0].d_out, tasks[0].d_in
    max_iter = check_int("max_iter", max_iter, low=1)
    tol = check_float("tol", tol, low=0.0)
    dtype = resolve_dtype(dtype)
    rng = _rng(seed)
    key = (method, solver if method == "lora-ml" else None)
    unknown = set(options) - OPTIONS[key]
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[key])) or "none"
        raise FastLoRAError(f"unknown option(s) {', '.join(sorted(unknown))} for method={method!r}"
                            f"{f', solver={solver!r}' if method == 'lora-ml' else ''}; allowed: {allowed}")
    if callback is not None and not callable(callback):
        raise FastLoRAError("callback must be callable as callback(iteration, elapsed, objective)")

    parameterization = None
    if method == "lora-ml":
        if rank is None:
            rank = getattr(problem_or_tasks, "k", None)
            if rank is None:
                raise FastLoRAError("rank is required when retraining on a list of tasks (no problem.k to default to)")
        rank = check_int("rank", rank, low=1, high=min(d_out, d_in))
        parameterization = peft_registry.get(peft, **(peft_options or {}))
        if getattr(parameterization, "square_only", False) and d_out != d_in:
            raise FastLoRAError(f"peft={parameterization.name!r} needs square weights but d_out={d_out} != d_in={d_in}; "
                                f"use peft='lora'")
    be = get_backend(backend, threads=threads)
    _check_memory(be, tasks, method, rank, dtype)
    try:
        return _solve(be, make_batch(tasks, be, dtype, source=problem_or_tasks), tasks, problem_or_tasks, method, solver, parameterization, rank, dtype, rng,
                      max_iter, tol, callback, options, as_numpy, started)
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # cupy.cuda.memory.OutOfMemoryError
            raise FastLoRAError(f"backend={be.name!r} ran out of device memory: {exc}; the solve needs about "
                                f"{_estimate_bytes(tasks, method, rank, dtype) / 2**30:.2f} GiB") from None
        raise


def _estimate_bytes(tasks, method, rank, dtype) -> int:
    """Working memory of a solve: ~8 shared (d_out × d_in) arrays plus ~6 (T, r, d) factor
    arrays for factored targets, or ~4 (T, d_out, d_in) arrays for dense / finite-sample tasks."""
    T, d_out, d_in = len(tasks), tasks[0].d_out, tasks[0].d_in
    item = np.dtype(dtype).itemsize
    factored = all(t.is_population and hasattr(t.target, "B") for t in tasks)
    if factored:
        k = max(t.target.B.shape[1] for t in tasks)
        r = rank or k
        return item * (8 * d_out * d_in + 6 * T * max(r, k) * max(d_out, d_in))
    return item * (4 * T * d_out * d_in + 8 * d_out * d_in)


def _check_memory(be, tasks, method, rank, dtype) -> None:
    free = be.free_bytes()
    if free is None:
        return
    need = _estimate_bytes(tasks, method, rank, dtype)
    if need > free:
        raise FastLoRAError(f"this problem needs about {need / 2**30:.2f} GiB of {be.name} device memory but only "
                            f"{free / 2**30:.2f} GiB is free; use dtype='float32', fewer tasks, or backend='numba'")


def _solve(be, batch, tasks, problem_or_tasks, method, solver, parameterization, rank, dtype, rng, max_iter, tol,
           callback, options, as_numpy, started):
    d_out, d_in = tasks[0].d_out, tasks[0].d_in
    ctx = Context(batch=batch, backend=be, peft=parameterization, rank=rank, dtype=dtype, rng=rng,
                  max_iter=max_iter, tol=tol, callback=callback, options=options)
    setup = time.perf_counter() - started
    module = {"standard": standard, "reptile": reptile}.get(method) or {"als": als, "gd": gd}[solver]
    A, params, monitor, n_iter, info = module.solve(ctx)
    canonical = getattr(parameterization, "canonicalize", None)
    if params and callable(canonical):
        params = canonical(params)
    be.synchronize()
    seconds = time.perf_counter() - started
    info.update(setup_seconds=setup, batch=batch.kind, T=batch.T, d_out=d_out, d_in=d_in, message=monitor.message)
    if as_numpy:
        A = np.ascontiguousarray(be.to_numpy(A))
        params = {k: np.ascontiguousarray(be.to_numpy(v)) for k, v in params.items()}
        del batch, ctx  # the device copies of the tasks: free them before releasing the pool
        be.release()
    objective = monitor.history[-1] if monitor.history else float("nan")
    return RetrainResult(A=A, params=params, objective=objective, history=np.asarray(monitor.history),
                         n_iter=n_iter, converged=monitor.converged, seconds=seconds, method=method,
                         solver=solver if method == "lora-ml" else None, peft=parameterization, rank=rank,
                         backend=be.name, dtype=np.dtype(dtype).name, message=monitor.message, info=info)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(check_int("seed", seed, low=0))
