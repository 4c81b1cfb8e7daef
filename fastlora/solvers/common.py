"""What every solver shares: the result record, the iteration monitor and the context."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import status
from ..engine.steps import record, start_factor
from ..errors import FastLoRAError, check_array
from ..peft.protocol import call_init


@dataclass
class RetrainResult:
    """Outcome of :func:`fastlora.retrain`.

    ``A`` (d_out, d_in); ``params``: dict of arrays batched over tasks (leading axis T),
    e.g. {"U": (T, d, k)}; ``objective`` = Σ_t L_t(A + Δ_t) at the end; ``history`` the
    objective after each iteration; ``n_iter``; ``converged``; ``seconds`` of wall time;
    ``shared``: task-independent trained parameters besides A (a parameterization's shared
    parameters, and a model's own, e.g. the shallow network's output weights ``c``).
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
    shared: dict = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        """The model that was retrained (fastlora.models), as ``info["model"]`` records it (None where
        it does not: such a result is taken for the model of the problem it is used on)."""
        return self.info.get("model")

    def delta(self, t: int):
        """The dense adapter update Δ_t (d_out, d_in) of retraining task ``t``."""
        if not self.params:
            return np.zeros_like(self.A)
        T = next(iter(self.params.values())).shape[0]
        if not -T <= t < T:
            raise FastLoRAError(f"t={t} is out of range for {T} tasks")
        t = t % T
        one = {**{name: value[t:t + 1] for name, value in self.params.items()}, **self.shared}
        if getattr(self.peft, "uses_base", False):
            return self.peft.delta(one, self.A)[0]
        return self.peft.delta(one)[0]

    @property
    def peft_name(self) -> str | None:
        return getattr(self.peft, "name", None)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(np.shape(v))}" for k, v in {**self.params, **self.shared}.items())
        what = self.method + (f"/{self.solver}" if self.solver else "")
        what += f", peft={self.peft_name}" if self.peft_name else ""
        return (f"RetrainResult({what}, A{tuple(np.shape(self.A))}{', ' + shapes if shapes else ''}, "
                f"objective={self.objective:.6g}, n_iter={self.n_iter}, converged={self.converged}, "
                f"seconds={self.seconds:.3g}, backend={self.backend})")

    def summary(self) -> dict:
        return {"method": self.method, "solver": self.solver, "peft": self.peft_name, "rank": self.rank,
                "backend": self.backend, "dtype": self.dtype, "objective": self.objective, "n_iter": self.n_iter,
                "converged": self.converged, "seconds": self.seconds}


@dataclass
class SolveOutcome:
    """What a solver returns for its P problems: ``A`` (P, d_out, d_in), ``params`` (per-task
    arrays, leading axis P·T), and per problem the objective ``histories``, ``n_iter``,
    ``converged``, ``messages`` and ``errors`` (an exception for a problem that failed, else None)."""

    A: Any
    params: dict
    histories: list
    n_iter: list
    converged: list
    messages: list
    errors: list
    info: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)


class Monitor:
    """The Python driver's record of each problem's objective per iteration: the engine's convergence
    and divergence test (:func:`fastlora.engine.steps.record`) and status codes, for P problems;
    calls the user's callback.

    ``callback(iteration, elapsed, objective)`` is called after every iteration (with the
    objective of the single problem, or the array of all P).  A problem ends with a status code
    (:mod:`fastlora.engine.status`, which makes its message and, for a failure, its error); it
    never raises here — the caller decides raise-or-return, the same for one problem and many.
    A problem that is done keeps the state of its last iteration: solvers read ``active`` and
    freeze the others, so a problem's numbers never depend on the problems solved beside it.
    """

    def __init__(self, callback: Callable | None, tol: float, max_iter: int, reference, dtype, step=None):
        self.callback = callback
        self.step = step  # the option that sets the step size, for divergence messages (status.step_option)
        self.eps = float(np.finfo(dtype).eps)
        self.tol = max(float(tol), 8 * self.eps)
        self.to_max_iter = float(tol) == 0.0  # tol=0: no step or rounding test, only an objective of zero stops
        self.max_iter = max_iter
        self.reference = np.maximum(np.atleast_1d(np.asarray(reference, dtype=np.float64)),
                                    float(np.finfo(np.float64).tiny))
        self.P = len(self.reference)
        self.histories = np.zeros((self.P, max_iter + 1))
        self.counts = np.zeros(self.P, dtype=int)
        self.started = time.perf_counter()
        self.status = np.full(self.P, status.RUNNING)
        self.n_iter = np.full(self.P, max_iter)
        self.last = np.zeros(self.P)
        self.scale = self.reference.copy()  # the divergence test's reference

    def start(self, values) -> None:
        """The objective at the starting point: raises the divergence reference to it; a problem
        whose start is not finite fails at once."""
        values = np.atleast_1d(np.asarray(values, dtype=np.float64))
        for p in np.flatnonzero(~np.isfinite(values) & self.active):
            self.end(p, 0, status.NONFINITE_START, values[p])
        self.scale = np.maximum(self.scale, np.nan_to_num(values, nan=0.0, posinf=0.0))

    @property
    def active(self):
        """Problems still iterating, (P,) bool."""
        return self.status == status.RUNNING

    @property
    def done(self):
        return ~self.active

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def record(self, iteration: int, values, steps=None, accurate=True) -> bool:
        """Store one iteration of every active problem; True when all problems are done.

        ``steps``: the step measure per problem (or one for all; None: none).  ``accurate=False``
        (per problem or for all) marks an objective computed by an identity with rounding error
        above zero's tolerance (see :func:`fastlora.engine.steps.record`).
        """
        values = np.atleast_1d(np.asarray(values, dtype=np.float64))
        steps = None if steps is None else np.asarray(steps, dtype=np.float64)
        accurate = np.asarray(accurate, dtype=bool)
        for p in np.flatnonzero(self.active):  # a scalar step / accuracy holds for every problem
            step = -1.0 if steps is None else float(steps if steps.ndim == 0 else steps[p])
            exact = bool(accurate if accurate.ndim == 0 else accurate[p])
            code, self.counts[p] = record(self.histories[p], int(self.counts[p]), float(values[p]), step, exact,
                                          self.tol, self.to_max_iter, float(self.reference[p]), float(self.scale[p]),
                                          self.eps)
            self.last[p] = values[p]
            if code != status.RUNNING:
                self.end(p, iteration, code, values[p])
        if self.callback is not None:
            self.callback(iteration, self.elapsed, float(values[0]) if self.P == 1 else values.copy())
        return bool(self.done.all())

    def end(self, p, iteration, code: int, value=None) -> None:
        """End problem ``p`` at ``iteration`` with status ``code``."""
        self.status[p], self.n_iter[p] = code, iteration
        if value is not None:
            self.last[p] = value

    def outcome(self, A, params, iterations: int, *, final_objective=None, info: dict | None = None,
                shared: dict | None = None) -> SolveOutcome:
        """The solve's result; ``final_objective`` (P,) replaces each problem's last recorded value
        (an accurate recomputation at the returned point)."""
        histories = [list(self.histories[p, :self.counts[p]]) for p in range(self.P)]
        messages, converged, errors = [], [], []
        for p in range(self.P):
            code = int(self.status[p]) if self.status[p] != status.RUNNING else status.MAX_ITER
            message, ok, error = status.describe(code, int(self.n_iter[p]), float(self.last[p]),
                                                 float(self.scale[p]), self.max_iter, self.step)
            messages.append(message)
            converged.append(ok)
            errors.append(error)
        if final_objective is not None:
            for p, value in enumerate(np.atleast_1d(final_objective)):
                if errors[p] is None:
                    if histories[p]:
                        histories[p][-1] = float(value)
                    else:
                        histories[p].append(float(value))
        n_iter = [int(min(n, iterations)) if not d else int(n) for n, d in zip(self.n_iter, self.done)]
        return SolveOutcome(A=A, params=params, histories=histories, n_iter=n_iter, converged=converged,
                            messages=messages, errors=errors, info=info or {}, shared=shared or {})


class FinishedState:
    """The state (A and per-task parameters) of each problem at the iteration it finished.

    Solvers update every problem each iteration (vectorised) and call :meth:`keep` with the
    monitor's verdict; :meth:`result` returns, per problem, the state it finished with.
    """

    def __init__(self, batch):
        self.batch, self.A, self.params = batch, None, None

    def keep(self, A, params, newly_done) -> None:
        if not newly_done.any():
            return
        xp = self.batch.xp
        if self.A is None:
            self.A = xp.array(A, copy=True)
            self.params = {k: xp.array(v, copy=True) for k, v in params.items()}
            return
        self.A = select_where(xp, newly_done, A, self.A)
        tasks = self.batch.task_mask(newly_done)
        self.params = {k: select_where(xp, tasks, v, self.params[k]) for k, v in params.items()}

    def result(self, A, params, done):
        """Finished problems' kept state, the others' current one."""
        if self.A is None:
            return A, params
        xp = self.batch.xp
        A = select_where(xp, done, self.A, A)
        tasks = self.batch.task_mask(done)
        return A, {k: select_where(xp, tasks, self.params[k], v) for k, v in params.items()}


def select_where(xp, mask, new, old):
    """``new`` where ``mask`` (along the leading axis), else ``old``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all():
        return new
    if not mask.any():
        return old
    shaped = xp.asarray(mask).reshape((-1,) + (1,) * (new.ndim - 1))
    return xp.where(shaped, new, old)


@dataclass
class Context:
    """Everything a solver needs: the batched tasks (P problems), the parameterization, options.

    ``rngs``: one numpy Generator per problem — a problem's random draws do not depend on the
    problems solved beside it.
    """

    batch: Any
    backend: Any
    peft: Any
    rank: int | None
    dtype: Any
    rngs: list
    max_iter: int
    tol: float
    callback: Callable | None
    options: dict

    @property
    def xp(self):
        return self.backend.xp

    @property
    def rng(self) -> np.random.Generator:
        """The generator of a single-problem solve."""
        if len(self.rngs) != 1:
            raise AssertionError("rng is only defined for a single problem")  # pragma: no cover
        return self.rngs[0]

    def option(self, name: str):
        """A solver option, validated and defaulted by :mod:`fastlora.options`."""
        return self.options[name]

    def monitor(self, step: str | None = None) -> Monitor:
        """The solve's monitor; ``step``: the option that sets its step size (status.step_option)."""
        return Monitor(self.callback, self.tol, self.max_iter, self.batch.null_objective(), self.dtype, step)

    def init_params(self, A=None, from_standard: bool = False) -> dict:
        """The adapters' starting point, (P·T, ...) per parameter: ``options["init_params"]`` if
        given, else ``peft.init`` with each problem's own generator, scaled (lora, lora_sym) to the
        residuals from A — from the standard solution where A is None or ``from_standard``
        (:func:`start_factors`)."""
        b = self.batch
        given = self.options.get("init_params")  # absent for solvers without adapters
        if given is not None:
            return self._given_params(given, A)
        per_problem = []
        for p, rng in enumerate(self.rngs):
            base = None
            if getattr(self.peft, "uses_base", False):
                base = self.backend.to_numpy(A[p]) if A is not None else np.zeros((b.d_out, b.d_in))
            per_problem.append(call_init(self.peft, rng, b.d_out, b.d_in, self.rank, b.T, base,
                                         residuals=lambda p=p: self._start_residuals(A, p)))
        names = per_problem[0]
        raw = {k: (per_problem[0][k] if b.P == 1 else np.concatenate([one[k] for one in per_problem]))
               for k in names}
        params = {k: self.backend.asarray(v, self.dtype) for k, v in raw.items()}
        if scales_its_start(self.peft):  # the drawn start at the residuals' scale (powers of two: exact)
            factors = start_factors(b.residual_spreads(None if from_standard else A), self.rank)
            if (factors != 1.0).any():
                params = {k: v * b.scalars_over(factors, v) for k, v in params.items()}
        return params

    def _start_residuals(self, A, p: int):
        """Problem p's tasks as residuals at the start, R_t = −∇L_t(A_p) (T, d_out, d_in), numpy
        (what ``init_from_residuals`` parameterizations receive; None without a start A)."""
        if A is None:
            return None
        b = self.batch
        R = self.backend.to_numpy(b.negative_gradient(b.residual(A)))
        return np.asarray(R, dtype=np.float64).reshape(b.P, b.T, b.d_out, b.d_in)[p]

    def _given_params(self, given, A) -> dict:
        b = self.batch
        base = (self.backend.to_numpy(A[0]),) if getattr(self.peft, "uses_base", False) else ()
        checked = given_params(self.peft, given, b.P * b.T, b.d_out, b.d_in, self.rank, *base)
        return {name: self.backend.asarray(value, self.dtype) for name, value in checked.items()}

    def initial_A(self):
        """The starting A of every problem, (P, d_out, d_in)."""
        how = self.option("init_A")
        b = self.batch
        if isinstance(how, str):
            if how == "standard":
                return b.standard_solution()
            return self.xp.zeros((b.P, b.d_out, b.d_in), self.dtype)
        A0 = given_A(self.backend.to_numpy(how), b.P, b.d_out, b.d_in)
        return self.backend.asarray(A0, self.dtype)


def start_factors(spreads, rank: int) -> np.ndarray:
    """:func:`fastlora.engine.steps.start_factor` of each problem's residual spread (the Python driver's)."""
    return np.array([start_factor(float(s), int(rank or 1)) for s in np.asarray(spreads, dtype=np.float64)])


def scales_its_start(peft) -> bool:
    """Whether ``peft``'s drawn start is scaled to the data (:func:`start_factors`): the built-in lora and
    lora_sym, whose Δ is quadratic in all their parameters (plugins keep their own start)."""
    from .. import engine as E
    return E.peft_code(peft) in (E.LORA, E.LORA_SYM)


def given_params(peft, given: dict, tasks: int, d_out: int, d_in: int, rank, *base) -> dict:
    """``init_params`` checked against what ``peft.init`` makes for ``tasks`` tasks (keys and shapes);
    numpy arrays."""
    expected = peft.init(np.random.default_rng(0), d_out, d_in, rank, tasks, *base)
    if set(given) != set(expected):
        raise FastLoRAError(f"init_params has keys {sorted(given)}; peft {peft.name!r} needs {sorted(expected)}")
    return {name: check_array(f"init_params[{name!r}]", np.asarray(given[name]), shape=np.shape(want))
            for name, want in expected.items()}


def given_A(A0, P: int, d_out: int, d_in: int) -> np.ndarray:
    """``init_A`` given as an array, checked: (d_out, d_in) for every problem, or (P, d_out, d_in)."""
    A0 = np.asarray(A0)
    shape = (d_out, d_in) if A0.ndim == 2 else (P, d_out, d_in)
    A0 = check_array("init_A", A0, shape=shape)
    return np.broadcast_to(A0, (P, d_out, d_in)).copy()
