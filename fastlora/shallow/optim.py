"""Optimizers of the shallow network over a dict of named arrays (docs/design.md §6).

* ``lbfgs`` (the default): SciPy's L-BFGS-B on the flattened trainable parameters in float64
  on the host, with the exact gradient.  Converged when ‖∇F‖ ≤ tol·‖∇F(start)‖, when F
  stalls (the ``ftol`` test of :class:`StallMonitor`), or when the line search can no longer
  decrease F because F's changes are below its rounding error (:func:`rounding_floor`).
* ``adamw``: exactly ``torch.optim.AdamW`` (the paper's procedure): decoupled weight decay
  θ ← θ(1 − lr·wd) first, then the Adam step with bias correction,
  θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + eps); defaults lr 1e-3, β (0.9, 0.999),
  eps 1e-8, weight decay 0.01 (torch's default).
* ``adam``: ``torch.optim.Adam`` (weight decay, default 0, added to the gradient).

Every optimizer records F after each iteration in a :class:`StallMonitor`.

Why a stall test: the shallow network's loss often has no finite minimiser in some
directions — a hidden unit can sharpen without bound (its weights grow, its sigmoid tends
to a step) while F creeps down by fractions of a percent per thousand iterations (measured
on the paper's law at d=10: ‖A‖_F 10 → 30 while F fell 0.9% over 7,000 L-BFGS iterations).
The gradient then never reaches a relative tolerance; what is meaningful is F's change
against its statistical resolution, see :func:`statistical_ftol`.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..engine import status
from ..engine.steps import ADAM_BETAS, adam_update, stalled
from ..errors import FastLoRAError, check_float
from ..options import OPTIONS
from ..solvers.common import Monitor

MODEL = "shallow"  # its defaults in the options schema

OPTIMIZERS = ("lbfgs", "adamw", "adam")
STALL_WINDOW = 100  # iterations over which the stall test measures F's decrease


def statistical_ftol(n_samples: int) -> float:
    """Default stall tolerance: 1% of F's relative sampling resolution √(2/N).

    With N residuals of comparable size, the training loss F fluctuates around its
    expectation by about F·√(2/N); once the last ``STALL_WINDOW`` iterations moved F by less
    than 1% of that (so ~10 more windows would move it by < 10% of it), further iterations
    change nothing a statistic of these data can see.
    """
    return 0.01 * math.sqrt(2.0 / max(int(n_samples), 1))


class StallMonitor(Monitor):
    """The shallow network's record of F per iteration: the Python driver's monitor for one problem
    (:class:`fastlora.solvers.common.Monitor`, the engine's convergence and divergence test) plus
    the stall test — converged when

    * F is zero to tolerance (≤ tol²·``reference``, the objective with every output 0), or
    * the step measure (relative gradient norm, or relative change of (A, c)) is ≤ tol
      (tol raised to 8·eps of the dtype, below which changes are rounding noise), or
    * F stayed constant to rounding, or decreased by at most ``ftol``·|F| over the last
      ``window`` iterations (``ftol=0``: off; :func:`fastlora.engine.steps.stalled`).

    A failure (F not finite, or grown a millionfold) raises its
    :class:`~fastlora.errors.DivergenceError` at once: these solvers have no batch to finish.
    ``history`` continues an earlier run's record (iteration numbers passed to the callback
    continue from its length).  ``callback(iteration, elapsed_seconds, objective)`` is called
    after every iteration.  :meth:`conclude` lets an optimizer say how it ended in its own words.
    """

    def __init__(self, callback, tol, max_iter, reference, dtype, ftol: float = 0.0, window: int = STALL_WINDOW,
                 history=(), step: str | None = None):
        super().__init__(callback, tol, max_iter, reference, dtype, step)
        self.offset = len(history)
        self.histories = np.zeros((1, self.offset + max_iter + 1))
        self.histories[0, :self.offset] = history
        self.counts[0] = self.offset
        self.ftol, self.window = float(ftol), int(window)
        self._concluded = None

    def record(self, iteration: int, objective: float, step: float | None = None) -> bool:
        """Store one iteration; True when the solver should stop."""
        iteration += self.offset
        done = super().record(iteration, objective, step)
        if not done and stalled(self.histories[0], int(self.counts[0]), self.ftol, self.window):
            self.end(0, iteration, status.STALLED, objective)
            self.conclude(f"F decreased by less than ftol={self.ftol:.2g} (relative) over the last {self.window} "
                          f"iterations", True)
            done = True
        if self.status[0] in status.FAILED:
            raise self._described()[2]
        return done

    def conclude(self, message: str, converged: bool) -> None:
        """End the run with the optimizer's own account of it."""
        self._concluded = (message, converged)

    def _described(self):
        code = int(self.status[0]) if self.status[0] != status.RUNNING else status.MAX_ITER
        return status.describe(code, int(self.n_iter[0]), float(self.last[0]), float(self.scale[0]), self.max_iter,
                               self.step)

    @property
    def converged(self) -> bool:
        return self._concluded[1] if self._concluded else self._described()[1]

    @property
    def message(self) -> str:
        return self._concluded[0] if self._concluded else self._described()[0]

    @property
    def history(self) -> list:
        return list(self.histories[0, :self.counts[0]])


TORCH_EPS = 1e-8  # torch's Adam and AdamW eps (the linear model's engine uses its own, ADAM_EPS)


def _norm(xp, tree, names) -> float:
    return math.sqrt(sum(float(xp.sum(tree[k] * tree[k])) for k in names))


def rounding_floor(value: float, n_params: int) -> float:
    """A gradient norm below which a line search cannot resolve F any more (float64).

    A step of length ℓ along −g changes F by about ℓ‖g‖ ≈ ‖g‖²/λ, with λ ≈ F's curvature;
    the change is invisible once it is below F's rounding error ε·|F| (times the terms summed,
    ≈ √n_params).  With λ ≲ 1 on the paper's scale, ‖g‖ ≈ √(ε |F| √n_params) marks the floor;
    a factor 10 leaves room for the curvature estimate.
    """
    eps = float(np.finfo(np.float64).eps)
    return 10.0 * math.sqrt(eps * max(abs(value), float(np.finfo(np.float64).tiny)) * math.sqrt(n_params))


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """One threadpoolctl controller (building it scans the loaded libraries)."""
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def lbfgs(objective, x: dict, train, monitor, *, max_iter: int, backend, dtype, maxcor: int = 20):
    """Minimise with L-BFGS-B; returns (x, n_iter, info).

    BLAS runs on one thread meanwhile: L-BFGS-B's updates are O(maxcor·p) vector operations on
    a few hundred parameters, and waking a BLAS thread pool for each costs far more (measured
    on 2 cores: 3.4 ms per L-BFGS-B call with 2 OpenBLAS threads, 28 µs with one).

    When an L-BFGS-B run ends without progress (its line search found no decrease) while the
    gradient is above F's rounding floor, the curvature memory is stale: the run restarts
    from that point with an empty memory, as long as iterations remain and the last restart
    decreased F.
    """
    from scipy.optimize import minimize

    train = list(train)
    fixed = {k: v for k, v in x.items() if k not in train}
    shapes = [tuple(x[k].shape) for k in train]
    sizes = [int(np.prod(s)) for s in shapes]

    def unpack(vec):
        out, start = dict(fixed), 0
        for name, shape, size in zip(train, shapes, sizes):
            out[name] = backend.asarray(vec[start:start + size].reshape(shape), dtype)
            start += size
        return out

    last = {}
    evaluations = [0]

    def fun(vec):
        evaluations[0] += 1
        value, grads = objective.value_and_grad(unpack(vec))
        flat = np.concatenate([np.asarray(backend.to_numpy(grads[k]), dtype=np.float64).ravel() for k in train])
        if not np.isfinite(value) or not np.isfinite(flat).all():
            return np.inf, np.zeros_like(flat)  # the line search backs off from a non-finite point
        last.update(x=vec.copy(), value=float(value), gnorm=float(np.linalg.norm(flat)))
        return value, flat

    vec = np.concatenate([np.asarray(backend.to_numpy(x[k]), dtype=np.float64).ravel() for k in train])
    value0, grad0 = fun(vec)
    if not np.isfinite(value0):
        raise FastLoRAError("the objective is not finite at the starting point; check the data and init")
    g0 = float(np.linalg.norm(grad0)) or 1.0
    state = {"iteration": 0}

    def callback(intermediate_result):
        state["iteration"] += 1
        if not np.array_equal(last.get("x"), intermediate_result.x):
            fun(intermediate_result.x)
        if monitor.record(state["iteration"], float(intermediate_result.fun), last["gnorm"] / g0):
            raise StopIteration

    memory_restarts, previous = 0, value0
    while True:
        with _blas_controller().limit(limits=1, user_api="blas"):
            result = minimize(fun, vec, jac=True, method="L-BFGS-B", callback=callback,
                              options={"maxiter": max_iter - state["iteration"], "maxfun": 20 * max_iter + 100,
                                       "ftol": 0.0, "gtol": 0.0, "maxcor": maxcor})
        vec = result.x
        if not np.array_equal(last.get("x"), vec):
            fun(vec)
        gnorm, floor = last["gnorm"], rounding_floor(last["value"], vec.size)
        if monitor.converged or state["iteration"] >= max_iter or gnorm <= floor or not last["value"] < previous:
            break
        memory_restarts, previous = memory_restarts + 1, last["value"]
    if not monitor.converged and gnorm <= floor:
        monitor.conclude(f"gradient at the rounding floor of F (‖∇F‖ = {gnorm:.2g} <= {floor:.2g})", True)
    elif not monitor.converged:
        monitor.conclude(f"L-BFGS-B: {result.message} (‖∇F‖/‖∇F(start)‖ = {gnorm / g0:.2g})", False)
    if len(monitor.history) == monitor.offset:
        monitor.record(1, last["value"])
    info = {"optimizer": "lbfgs", "grad_norm": gnorm, "grad_norm_start": g0, "n_evaluations": evaluations[0],
            "memory_restarts": memory_restarts}
    return unpack(vec), max(state["iteration"], 1), info


def adam(objective, x: dict, train, monitor, *, max_iter: int, xp, decoupled: bool, lr=None, betas=None,
         eps=None, weight_decay=None):
    """torch's Adam (``decoupled=False``) or AdamW (``decoupled=True``), full batch, by the engine's
    Adam step (:func:`fastlora.engine.steps.adam_update`); returns (x, n_iter, info)."""
    name = "adamw" if decoupled else "adam"
    lr = OPTIONS["lr"].resolve(lr, name, MODEL)
    if betas is not None and (not isinstance(betas, (tuple, list)) or len(betas) != 2):
        raise FastLoRAError(f"betas must be a pair (β1, β2) of numbers in [0, 1], got {betas!r}")
    b1, b2 = ADAM_BETAS if betas is None else betas
    b1 = check_float("betas[0]", b1, low=0.0, high=1.0)
    b2 = check_float("betas[1]", b2, low=0.0, high=1.0)
    eps = check_float("eps", TORCH_EPS if eps is None else eps, low=0.0)
    wd = OPTIONS["weight_decay"].resolve(weight_decay, name, MODEL)
    train = list(train)
    x = {k: (xp.array(v, copy=True) if k in train else v) for k, v in x.items()}  # stepped in place
    value, grads = objective.value_and_grad(x)
    g0 = _norm(xp, grads, train) or 1.0
    m = {k: xp.zeros_like(x[k]) for k in train}
    v = {k: xp.zeros_like(x[k]) for k in train}
    iteration = 0
    for iteration in range(1, max_iter + 1):
        for k in train:
            g = grads[k] + wd * x[k] if wd and not decoupled else grads[k]  # Adam's decay joins the gradient
            adam_update(x[k], g, m[k], v[k], iteration, lr, wd if decoupled else 0.0, b1, b2, eps)
        value, grads = objective.value_and_grad(x)
        if monitor.record(iteration, value, _norm(xp, grads, train) / g0):
            break
    info = {"optimizer": name, "lr": lr, "betas": (b1, b2), "eps": eps, "weight_decay": wd}
    return x, iteration, info
