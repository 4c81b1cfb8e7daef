"""What every solver shares: the result record, the iteration monitor and the context."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import DivergenceError, FastLoRAError


@dataclass
class RetrainResult:
    """Outcome of :func:`fastlora.retrain`.

    ``A`` (d_out, d_in); ``params``: dict of arrays batched over tasks (leading axis T),
    e.g. {"U": (T, d, k)}; ``objective`` = Σ_t L_t(A + Δ_t) at the end; ``history`` the
    objective after each iteration; ``n_iter``; ``converged``; ``seconds`` of wall time.
    Arrays are numpy unless ``as_numpy=False`` was asked for.
    """

    A: Any
    params: dict
    objective: float
    history: np.ndarray
    n_iter: int
    converged: bool
    seconds: float
    method: str
    solver: str | None
    peft: Any
    rank: int | None
    backend: str
    dtype: str
    message: str = ""
    info: dict = field(default_factory=dict)

    def delta(self, t: int):
        """The dense adapter update Δ_t (d_out, d_in) of retraining task ``t``."""
        if not self.params:
            return np.zeros_like(self.A)
        T = next(iter(self.params.values())).shape[0]
        if not -T <= t < T:
            raise FastLoRAError(f"t={t} is out of range for {T} tasks")
        t = t % T
        one = {name: value[t:t + 1] for name, value in self.params.items()}
        if getattr(self.peft, "uses_base", False):
            return self.peft.delta(one, self.A)[0]
        return self.peft.delta(one)[0]

    @property
    def peft_name(self) -> str | None:
        return getattr(self.peft, "name", None)

    def summary(self) -> dict:
        return {"method": self.method, "solver": self.solver, "peft": self.peft_name, "rank": self.rank,
                "backend": self.backend, "dtype": self.dtype, "objective": self.objective, "n_iter": self.n_iter,
                "converged": self.converged, "seconds": self.seconds}


class Monitor:
    """Records the objective per iteration, calls the user's callback, judges convergence.

    ``callback(iteration, elapsed, objective)`` is called after every iteration.
    """

    def __init__(self, callback: Callable | None, tol: float, max_iter: int, reference: float, dtype):
        self.callback = callback
        # Below a few ulps the relative change of A is rounding noise, not progress.
        self.tol = max(float(tol), 8 * float(np.finfo(dtype).eps))
        self.max_iter = max_iter
        self.reference = max(float(reference), float(np.finfo(np.float64).tiny))
        self.history: list[float] = []
        self.start = time.perf_counter()
        self.converged = False
        self.message = f"reached max_iter={max_iter}"

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def record(self, iteration: int, objective: float, step: float | None = None, accurate: bool = True) -> bool:
        """Store one iteration; True when the solver should stop.

        ``accurate=False`` marks an objective computed by an identity with rounding error
        above zero's tolerance: it is floored at 0 and never judged "zero".
        """
        if not np.isfinite(objective):
            raise DivergenceError(f"the objective became {objective} at iteration {iteration}; "
                                     "the step size is too large for this problem (lower lr) or the data are ill-scaled")
        objective = float(objective) if accurate else max(float(objective), 0.0)
        self.history.append(objective)
        if self.callback is not None:
            self.callback(iteration, self.elapsed, objective)
        if accurate and objective <= self.tol ** 2 * self.reference:
            self.converged, self.message = True, "objective reached zero (to tolerance)"
        elif step is not None and step <= self.tol:
            self.converged, self.message = True, "relative change below tol"
        return self.converged


def relative_change(xp, new, old) -> float:
    scale = float(xp.sqrt(xp.sum(new * new)))
    diff = float(xp.sqrt(xp.sum((new - old) ** 2)))
    return diff / scale if scale > 0 else diff


@dataclass
class Context:
    """Everything a solver needs: the batched tasks, the parameterization, options."""

    batch: Any
    backend: Any
    peft: Any
    rank: int | None
    dtype: Any
    rng: np.random.Generator
    max_iter: int
    tol: float
    callback: Callable | None
    options: dict

    @property
    def xp(self):
        return self.backend.xp

    def option(self, name: str, default):
        return self.options.get(name, default)

    def monitor(self) -> Monitor:
        return Monitor(self.callback, self.tol, self.max_iter, self.batch.null_objective(), self.dtype)

    def init_params(self, A=None) -> dict:
        b = self.batch
        if getattr(self.peft, "uses_base", False):
            base = self.backend.to_numpy(A) if A is not None else np.zeros((b.d_out, b.d_in))
            raw = self.peft.init(self.rng, b.d_out, b.d_in, self.rank, b.T, base)
        else:
            raw = self.peft.init(self.rng, b.d_out, b.d_in, self.rank, b.T)
        return {k: self.backend.asarray(v, self.dtype) for k, v in raw.items()}

    def initial_A(self, default: str = "standard"):
        how = self.option("init_A", default)
        if isinstance(how, str):
            if how == "standard":
                return self.batch.standard_solution()
            if how == "zeros":
                return self.xp.zeros((self.batch.d_out, self.batch.d_in), self.dtype)
            raise FastLoRAError(f"init_A={how!r} is not allowed; use 'standard', 'zeros' or an array")
        A0 = np.asarray(self.backend.to_numpy(how), dtype=np.float64)
        if A0.shape != (self.batch.d_out, self.batch.d_in) or not np.isfinite(A0).all():
            raise FastLoRAError(f"init_A must be a finite ({self.batch.d_out}, {self.batch.d_in}) array, got shape {A0.shape}")
        return self.backend.asarray(A0, self.dtype)
