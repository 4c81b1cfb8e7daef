"""LoRA-ML by joint first-order optimisation of A and every task's adapter, for P problems at once.

    F(A, θ_1..θ_T) = Σ_t L_t(A + Δ(θ_t)),   ∇_A F = Σ_t G_t,   ∇_θt F = pullback(θ_t, G_t)
    with G_t = ∇L_t(A + Δ(θ_t)).

``optimizer="gd"`` (default): gradient descent with an Armijo backtracking line search
(the step halves until F drops by ½·step·‖∇F‖², then grows by 1.25 for the next
iteration; the first trial step is 1/Σ_t tr(Σ_t)/d_in, the data's curvature scale:
:func:`fastlora.engine.steps.first_step`), so no step size needs tuning.  Where the predicted decrease is below the
rounding of F (8·eps·|F|) the test accepts any step that does not raise F beyond rounding,
so the step does not collapse once F is at its floor (optima with F > 0).
``optimizer="adam"``: Adam with ``lr`` (default 1e-2), β = (0.9, 0.999), ε = 1e-12 times the RMS
entry of the first gradient (its gradients are divided by that: :func:`fastlora.engine.steps.adam_gradient_scale`).
``optimizer="lbfgs"``: limited-memory BFGS (memory ``LBFGS_MEMORY``, two-loop recursion,
Armijo backtracking from the unit step, a pair kept only when sᵀy > 0) on the flattened
adapters of each problem, with A eliminated by its closed-form minimiser (variable
projection; ``eliminate_A=False``: on the joint (A, θ)) — superlinear near the optimum; every
operation is per problem on (P, n) arrays, so P problems iterate together and each gets the
numbers it would get alone.  Stops when ‖∇F‖ ≤ tol·‖∇F(start)‖, F is zero to tolerance, or F is
constant to rounding.  With factored population targets and a parameterization that has
``factors`` and ``implicit_gradient``, gradients are formed without any dense
(T, d_out, d_in) array (:meth:`fastlora.taskbatch.Batch.value_and_gradient`).

This is the Python driver (plugins, shared parameters, callbacks, large or factored problems,
the GPU): its line search, L-BFGS, Adam and convergence test are the engine's
(:mod:`fastlora.engine.steps`), which runs the same solvers whole for small problems.
"""
from __future__ import annotations

import numpy as np

from ..engine import ARMIJO_C1 as _ARMIJO_C1
from ..engine import LBFGS_MEMORY, status
from ..engine import MAX_BACKTRACKS as _MAX_BACKTRACKS
from ..engine.linalg import row_norms
from ..engine.steps import (
    ADAM_BETAS,
    ADAM_EPS,
    adam_gradient_scale,
    adam_update,
    lbfgs_direction,
    lbfgs_update,
    sufficient_decrease,
)
from ..kernels.packing import Packer
from ..options import OPTIONS
from ..peft.protocol import bind_base, shared_names, trainable
from ..taskbatch import Adapters
from .common import FinishedState, select_where


class Objective:
    """F(A, θ) per problem and its gradient through the batch's interface, for any parameterization."""

    def __init__(self, ctx):
        self.batch, self.xp, self.peft, self.backend_name = ctx.batch, ctx.xp, ctx.peft, ctx.backend.name
        self.implicit = bool(getattr(ctx.peft, "implicit_gradient", False))

    def _bound(self, A, params):
        delta, pullback = bind_base(self.peft, self.backend_name, A[0])  # uses_base: one problem
        return Adapters.from_params(self.peft, params, delta), pullback

    def value_and_grad(self, x, bound=None):
        """(F (P,) host, gradients {"A": (P, d_out, d_in), name: (P·T, ...)}); ``bound``: the
        (adapters, pullback) of x's parameters where already made (Δ not depending on A)."""
        A, params = x["A"], _params(x)
        adapters, pullback = self._bound(A, params) if bound is None else bound
        value, grad_A, G = self.batch.value_and_gradient(A, adapters, implicit=self.implicit)
        grads = pullback(params, G)
        through_delta = grads.pop("base", None)  # Δ's own dependence on A (uses_base)
        grads["A"] = grad_A if through_delta is None else grad_A + through_delta[None]
        return value, grads


def _params(x):
    return {k: v for k, v in x.items() if k != "A"}


def grad_norm_sq(batch, grads, shared=()):
    """‖∇F‖² per problem (P,): the A part, every task's parameters and the shared ones (P = 1)."""
    total = batch.problem_sq(grads["A"])
    xp, n_tasks = batch.xp, batch.P * batch.T
    for name, g in grads.items():
        if name in shared:
            total = total + batch.problem_sq(g[None])
        elif name != "A":
            total = total + batch.host(batch.sum_tasks(xp.sum(g.reshape(n_tasks, -1) ** 2, axis=1)))
    return total


def _scaled(batch, step, x, direction, names):
    """x − step·direction with a per-problem step (P,), for the entries in ``names``."""
    out = dict(x)
    for name in names:
        out[name] = x[name] - batch.scalars_over(step, x[name]) * direction[name]
    return out


def solve(ctx):
    optimizer = ctx.option("optimizer")
    model = Objective(ctx)
    A0 = ctx.initial_A()
    eliminated = optimizer == "lbfgs" and ctx.option("eliminate_A")  # A0 unused: they fit the A step's residuals
    x = {"A": A0, **ctx.init_params(A0, from_standard=eliminated)}
    monitor = ctx.monitor(status.step_option("lora-ml", "gd", optimizer))
    info = {"solver": "gd", "optimizer": optimizer}
    if optimizer == "lbfgs":
        return _lbfgs(ctx, model, x, monitor, info)
    return _first_order(ctx, model, x, monitor, info, optimizer)


def _first_order(ctx, model, x, monitor, info, optimizer):
    xp, batch = ctx.xp, ctx.batch
    finished = FinishedState(batch)
    x = {k: xp.array(v, copy=True) for k, v in x.items()}  # updated in place below
    names = ["A", *trainable(ctx.peft, _params(x))]
    shared = set(shared_names(ctx.peft))
    value, grads = model.value_and_grad(x)
    monitor.start(value)
    g0 = np.sqrt(grad_norm_sq(batch, grads, shared))
    if optimizer == "adam":  # gradients divided by each problem's first RMS entry (float64: no underflow)
        size = sum(int(np.prod(x[k].shape)) for k in names) // batch.P
        first = np.sqrt(grad_norm_sq(batch, {k: v.astype(xp.float64) for k, v in grads.items()}, shared))
        adam_units = [adam_gradient_scale(g, size) for g in first]
    g0 = np.where(g0 > 0, g0, 1.0)
    lr = ctx.option("lr")
    if optimizer == "adam":
        lr = OPTIONS["lr"].default_for("adam", "linear") if lr is None else lr
        m = {k: xp.zeros_like(x[k]) for k in names}
        v2 = {k: xp.zeros_like(x[k]) for k in names}
    else:
        lr = batch.first_steps() if lr is None else np.full(batch.P, lr)  # the first trial step: the data's scale
    eps = float(np.finfo(ctx.dtype).eps)
    iteration = 0
    for iteration in range(1, ctx.max_iter + 1):
        if optimizer == "adam":
            for k in names:
                unit = grads[k] * batch.scalars_over(adam_units, x[k])
                adam_update(x[k], unit, m[k], v2[k], iteration, lr, 0.0, *ADAM_BETAS, ADAM_EPS)
            value, grads = model.value_and_grad(x)
        else:
            x, value, grads, lr, stuck = _armijo_step(batch, model, x, value, grads, lr, eps, names, shared,
                                                      monitor.active)
            for p in np.flatnonzero(stuck):  # every finite F takes a small enough step: here F or ∇F is not finite
                monitor.end(p, iteration, status.LINE_SEARCH_NONFINITE)
        was_active = monitor.active.copy()
        all_done = monitor.record(iteration, value, np.sqrt(grad_norm_sq(batch, grads, shared)) / g0)
        finished.keep(x["A"], _params(x), was_active & monitor.done)
        if all_done:
            break
    A, params = finished.result(x["A"], _params(x), monitor.done)
    info["final_lr"] = lr.tolist() if isinstance(lr, np.ndarray) and batch.P > 1 else float(np.atleast_1d(lr)[0])
    return monitor.outcome(A, params, iteration, info=info)


def _armijo_step(batch, model, x, value, grads, lr, eps, names, shared=(), active=None):
    """One backtracking step per ``active`` problem (default: all), accepted by the engine's rule
    (:func:`fastlora.engine.steps.sufficient_decrease`: Armijo, or at the rounding floor of F a step
    that keeps F within rounding).  Returns (x, F, ∇F, next step sizes, stuck (P,) bool: an active
    problem for which no step was accepted down to a zero step, which only a non-finite F or ∇F
    can cause)."""
    gsq = grad_norm_sq(batch, grads, shared)
    floor = 8 * eps * np.abs(value)
    active = np.ones(batch.P, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    hopeless = active & ~(np.isfinite(value) & np.isfinite(gsq))
    pending = active & ~hopeless
    new_x, new_value, new_grads, new_lr = x, value.copy(), grads, lr.copy()
    while pending.any():
        cand = _scaled(batch, lr, x, grads, names)
        cand_value, cand_grads = model.value_and_grad(cand)
        ok = pending & sufficient_decrease(value, cand_value, 0.5 * lr * gsq, floor)
        if ok.any():
            new_x = _merge(batch, ok, cand, new_x, shared)
            new_grads = _merge(batch, ok, cand_grads, new_grads, shared)
            new_value = np.where(ok, cand_value, new_value)
            new_lr = np.where(ok, lr * 1.25, new_lr)
        pending &= ~ok
        # halve until accepted, however long the first step was (a small enough step always is:
        # Armijo's decrease, or at the rounding floor a step that keeps F), down to the smallest double
        again = pending & (lr > 0) & np.isfinite(lr)
        if not again.any():
            break
        lr = np.where(again, lr * 0.5, lr)
    return new_x, new_value, new_grads, new_lr, pending | hopeless


def _merge(batch, problems, new: dict, old: dict, shared=()) -> dict:
    """Per parameter: ``new`` for the problems where ``problems`` (P,) is True, else ``old``."""
    tasks = batch.task_mask(problems)
    out = {}
    for k, v in new.items():
        if k in shared:  # one problem
            out[k] = v if bool(problems[0]) else old[k]
        else:
            out[k] = select_where(batch.xp, problems if k == "A" else tasks, v, old[k])
    return out


# ---------------------------------------------------------------------------------------------
class _Packing:
    """(A, θ) of P problems <-> (P, n) float arrays (the one packer, fastlora.kernels.packing): A's
    entries (unless A is eliminated), then each trainable parameter's entries for the problem's T
    tasks (shared parameters: their own entries; P = 1)."""

    def __init__(self, batch, x, names, shared=()):
        self.batch, self.names, self.shared = batch, names, set(shared)
        self.fixed = {k: v for k, v in x.items() if k not in names}
        T = batch.T
        self.packer = Packer({k: x[k].shape[1:] if k == "A" else
                              x[k].shape if k in self.shared else (T, *x[k].shape[1:]) for k in names})

    def pack(self, tree):
        P = self.batch.P
        return self.packer.pack({k: tree[k].reshape(P, *self.packer.shapes[k]) for k in self.names}, (P,))

    def unpack(self, vec) -> dict:
        out = dict(self.fixed)
        for k, v in self.packer.unpack(vec).items():
            if k == "A":
                out[k] = v
            elif k in self.shared:
                out[k] = v.reshape(self.packer.shapes[k])
            else:
                out[k] = v.reshape((-1, *self.packer.shapes[k][1:]))
        return out


def _rowdot(xp, a, b):
    return xp.sum(a * b, axis=1)


class _Memory:
    """The L-BFGS curvature pairs of P problems: ring buffers S, Y (P, m, n) read by the engine's
    two-loop recursion and updated by its pair rule (:func:`fastlora.engine.steps.lbfgs_direction`,
    :func:`~fastlora.engine.steps.lbfgs_update`), one problem at a time."""

    def __init__(self, xp, depth: int, P: int, n: int, dtype, eps: float):
        self.S = xp.zeros((P, depth, n), dtype=dtype)
        self.Y = xp.zeros((P, depth, n), dtype=dtype)
        self.rho = np.zeros((P, depth))
        self.alpha = np.zeros(depth)
        self.pairs = np.zeros(P, dtype=int)
        self.head = np.zeros(P, dtype=int)
        self.eps = eps

    def forget(self, problems) -> None:
        self.pairs[np.asarray(problems, dtype=bool)] = 0

    def direction(self, grad, gamma, out):
        """out = −H∇ per problem."""
        for p in range(grad.shape[0]):
            lbfgs_direction(self.S[p], self.Y[p], self.rho[p], self.alpha, int(self.pairs[p]), int(self.head[p]),
                            grad[p], float(gamma[p]), out[p])
        return out

    def add(self, s, y, keep, gamma) -> np.ndarray:
        """Offer each kept problem's pair (s, y); returns the new γ per problem."""
        gamma = np.array(gamma, dtype=np.float64)
        for p in np.flatnonzero(keep):
            self.pairs[p], self.head[p], gamma[p] = lbfgs_update(self.S[p], self.Y[p], self.rho[p], int(self.pairs[p]),
                                                                 int(self.head[p]), s[p], y[p], gamma[p], self.eps)
        return gamma


def _lbfgs(ctx, model, x, monitor, info):
    """L-BFGS per problem.  Where A has a closed-form minimiser (every kind, unless Δ depends on
    A), A is eliminated — variable projection, Golub & Pereyra: f(θ) = min_A F(A, θ) is
    minimised over θ with A = A-step(θ), and ∇f = ∇_θ F at that A (∇_A F = 0 there) — which
    removes the A–θ coupling that makes the joint problem ill-conditioned (~3x fewer
    iterations at the paper's size)."""
    xp, batch = ctx.xp, ctx.batch
    # a start given for A (an array) asks for the joint problem from there
    eliminate = ctx.option("eliminate_A") and not getattr(ctx.peft, "uses_base", False) and len(x) > 1 \
        and isinstance(ctx.option("init_A"), str)
    trainable_names = trainable(ctx.peft, _params(x))
    names = trainable_names if eliminate else ["A", *trainable_names]
    packing = _Packing(batch, x, names, shared_names(ctx.peft))

    def evaluate(vec):
        tree = packing.unpack(vec)
        bound = None
        if eliminate:  # Δ does not depend on A here: its adapters serve the A step and the gradient
            bound = model._bound(x["A"], _params(tree))
            tree["A"] = batch.minimizing_A(bound[0])
        value, grads = model.value_and_grad(tree, bound)
        if eliminate:
            grads.pop("A")
        return value, packing.pack(grads), tree["A"]

    vec, A_now, iteration = minimize_lbfgs(evaluate, packing.pack(x), monitor, ctx.max_iter,
                                           float(np.finfo(ctx.dtype).eps), xp, batch.host)
    final = packing.unpack(vec)
    packed_A = final.pop("A")  # with A eliminated: the start, carried with the frozen parameters
    info.update(memory=LBFGS_MEMORY, eliminate_A=bool(eliminate))
    return monitor.outcome(packed_A if not eliminate else A_now, final, iteration, info=info)


def minimize_lbfgs(evaluate, vec, monitor, max_iter: int, eps: float, xp=np, host=np.asarray):
    """L-BFGS on the flat variables (P, n) of P problems — the one L-BFGS of the Python driver (the
    engine's rules: :func:`~fastlora.engine.steps.lbfgs_direction`, :func:`~fastlora.engine.steps.lbfgs_update`,
    :func:`~fastlora.engine.steps.sufficient_decrease`): memory ``LBFGS_MEMORY``, Armijo backtracking
    from the unit step, ``monitor`` (a :class:`~fastlora.solvers.common.Monitor`) judging each problem.

    ``evaluate(vec)`` -> (F (P,) host, ∇F (P, n), extra): ``extra`` is carried with each accepted point
    (an array with a leading problem axis, e.g. the eliminated A; or None).  Returns (the points each
    problem finished at, their extra, the last iteration)."""
    value, grad, extra = evaluate(vec)
    monitor.start(value)
    P = vec.shape[0]
    gnorm = host(row_norms(xp, grad))
    g0 = np.where(gnorm > 0, gnorm, 1.0)
    memory = _Memory(xp, LBFGS_MEMORY, P, vec.shape[1], vec.dtype, eps)
    gamma = 1.0 / g0                             # H₀ = γI; the first step has unit length
    done_vec, done_extra = vec, extra
    direction = xp.empty_like(vec)
    iteration = 0
    for iteration in range(1, max_iter + 1):
        active = monitor.active
        memory.direction(grad, gamma, direction)
        slope = host(_rowdot(xp, grad, direction))
        bad = ~(slope < 0)                       # not a descent direction: restart from −γ∇F
        if bad.any():
            memory.forget(bad)
            direction = xp.where(xp.asarray(bad)[:, None], -xp.asarray(gamma, dtype=grad.dtype)[:, None] * grad,
                                 direction)
            slope = host(_rowdot(xp, grad, direction))
        step = np.ones(P)
        pending = active.copy()
        new_vec, new_value, new_grad, new_extra = vec, value.copy(), grad, extra
        floor = 8 * eps * np.abs(value)
        for _ in range(_MAX_BACKTRACKS):
            trial = vec + xp.asarray(step, dtype=vec.dtype)[:, None] * direction
            trial_value, trial_grad, trial_extra = evaluate(trial)
            ok = pending & sufficient_decrease(value, trial_value, -_ARMIJO_C1 * step * slope, floor)
            if ok.any():
                rows = xp.asarray(ok)[:, None]
                new_vec = xp.where(rows, trial, new_vec)
                new_grad = xp.where(rows, trial_grad, new_grad)
                new_value = np.where(ok, trial_value, new_value)
                new_extra = _where_rows(xp, ok, trial_extra, new_extra)
            pending &= ~ok
            if not pending.any():
                break
            step = np.where(pending, 0.5 * step, step)
        stuck = pending
        overflowed = stuck & ~np.isfinite(trial_value)  # even the shortest trial step is not finite
        gamma = memory.add(new_vec - vec, new_grad - grad, active & ~stuck, gamma)
        vec, value, grad, extra = new_vec, new_value, new_grad, new_extra
        gnorm = host(row_norms(xp, grad))
        was_active = monitor.active.copy()
        monitor.record(iteration, value, gnorm / g0)
        for p in np.flatnonzero(stuck & monitor.active):
            monitor.end(p, iteration, status.LINE_SEARCH_NONFINITE if overflowed[p] else status.LINE_SEARCH_FLOOR)
        all_done = bool(monitor.done.all())
        newly = was_active & monitor.done | (stuck & active)
        if newly.any():
            done_vec = xp.where(xp.asarray(newly)[:, None], vec, done_vec)
            done_extra = _where_rows(xp, newly, extra, done_extra)
        if all_done:
            break
    finished = monitor.done
    return xp.where(xp.asarray(finished)[:, None], done_vec, vec), _where_rows(xp, finished, done_extra, extra), \
        iteration


def _where_rows(xp, rows, new, old):
    """``new`` for the problems (leading axis) where ``rows``, else ``old``; None stays None."""
    if new is None:
        return None
    return xp.where(xp.asarray(rows).reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
