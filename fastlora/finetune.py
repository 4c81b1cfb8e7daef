"""Fine-tuning a retrained A on a new task: θ̂ = argmin_θ L_new(A + Δ_p(θ)) at rank r."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import peft as peft_registry
from .backends import get_backend, resolve_dtype
from .errors import FastLoRAError, check_array, check_float, check_int
from .solvers.adapters import InnerGradient, choose_adapter_step
from .solvers.common import Context
from .taskbatch import make_batch
from .tasks import Task


@dataclass
class FinetuneResult:
    """``params`` (batched over one task), ``delta`` (d_out, d_in), ``loss`` = L(A + Δ) on the
    fine-tuning data (or population), ``excess_risk`` = ½‖A + Δ − W*‖²_F (NaN without ground
    truth), ``exact`` (closed-form fit) and ``n_iter``."""

    params: dict
    delta: np.ndarray
    loss: float
    excess_risk: float
    exact: bool
    n_iter: int
    converged: bool


def finetune(A, task: Task, peft="lora", rank: int = 1, n: int | None = None, seed=0, *,
             backend: str = "numpy", dtype="float64", max_iter: int = 500, tol: float = 1e-10,
             peft_options: dict | None = None) -> FinetuneResult:
    """Fit a rank-``rank`` adapter of ``peft`` on ``task`` starting from ``A``.

    ``n=None`` fits on the task as given (its population target, or its data); an integer
    ``n`` first draws ``n`` fresh samples from the task's law (reproducible by ``seed``).
    The fit is exact where the parameterization allows it (truncated SVD / top-r eigen /
    reduced-rank regression); otherwise gradient steps run until the loss stops changing
    by more than ``tol`` (relative) or ``max_iter`` steps.
    """
    if not isinstance(task, Task):
        raise FastLoRAError(f"task must be a fastlora.Task, got {type(task).__name__}")
    A = check_array("A", A, shape=(task.d_out, task.d_in))
    rank = check_int("rank", rank, low=1, high=min(task.d_out, task.d_in))
    max_iter = check_int("max_iter", max_iter, low=1)
    tol = check_float("tol", tol, low=0.0)
    if n is not None:
        task = task.sample(check_int("n", n, low=1), seed=seed)
    parameterization = peft_registry.get(peft, **(peft_options or {}))
    if getattr(parameterization, "square_only", False) and task.d_out != task.d_in:
        raise FastLoRAError(f"peft={parameterization.name!r} needs d_out == d_in; use peft='lora'")
    be = get_backend(backend)
    dtype = resolve_dtype(dtype)
    batch = make_batch([task], be, dtype, structured=False)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(check_int("seed", seed, low=0))
    ctx = Context(batch=batch, backend=be, peft=parameterization, rank=rank, dtype=dtype, rng=rng,
                  max_iter=max_iter, tol=tol, callback=None, options={})
    A_dev = be.asarray(A, dtype)
    step = choose_adapter_step(ctx, fixed_A=True)
    if isinstance(step, InnerGradient):
        params, n_iter, converged = _iterate(step, A_dev, batch, max_iter, tol)
    else:
        params, n_iter, converged = step.fit(A_dev, None), 1, True
    delta = be.to_numpy(step.delta_fn(params)[0]).astype(np.float64)
    W = A + delta
    loss = float(task.loss(W))
    risk = task.excess_risk(W) if task.has_ground_truth else float("nan")
    params = {k: be.to_numpy(v) for k, v in params.items()}
    return FinetuneResult(params, delta, loss, risk, step.exact, n_iter, converged)


def _iterate(step, A, batch, max_iter, tol):
    params, previous = None, None
    chunk = 10
    for done in range(chunk, max_iter + chunk, chunk):
        step.steps = min(chunk, max_iter - done + chunk)
        params = step.fit(A, params)
        value = batch.objective(A, step.delta_fn(params))
        if previous is not None and abs(previous - value) <= tol * max(abs(previous), 1e-300):
            return params, done, True
        previous = value
    return params, max_iter, False
