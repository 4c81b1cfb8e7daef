"""LoRA-ML by joint first-order optimisation of A and every task's adapter.

    F(A, θ_1..θ_T) = Σ_t L_t(A + Δ(θ_t)),   ∇_A F = Σ_t G_t,   ∇_θt F = pullback(θ_t, G_t)
    with G_t = ∇L_t(A + Δ(θ_t)).

``optimizer="gd"`` (default): gradient descent with an Armijo backtracking line search
(the step halves until F drops by ½·step·‖∇F‖², then grows by 1.25 for the next
iteration), so no step size needs tuning.  ``optimizer="adam"``: Adam with ``lr``
(default 1e-2), β = (0.9, 0.999).  ``optimizer="lbfgs"``: SciPy's L-BFGS-B on the flattened
(A, θ) in float64 on the host — superlinear near the optimum, for small and medium problems
(arrays of a GPU backend are copied to the host every iteration).  Stops when ‖∇F‖ ≤ tol·‖∇F(start)‖ or F is zero to
tolerance.  With factored population targets and a parameterization that has
``factors`` and ``implicit_gradient``, gradients are formed without any dense
(T, d_out, d_in) array: one GEMM of width T·r with the shared part per product.
"""
from __future__ import annotations

import math

from ..errors import FastLoRAError, check_float
from ..peft.protocol import bind_base, method, trainable


class DenseModel:
    """F and its gradient through dense per-task updates Δ_t (any parameterization)."""

    def __init__(self, ctx):
        self.batch, self.xp, self.peft, self.backend_name = ctx.batch, ctx.xp, ctx.peft, ctx.backend.name

    def value(self, x) -> float:
        delta, _ = bind_base(self.peft, self.backend_name, x["A"])
        return self.batch.objective(x["A"], delta(_params(x)))

    def value_and_grad(self, x):
        params = _params(x)
        delta, pullback = bind_base(self.peft, self.backend_name, x["A"])
        losses, G = self.batch.losses_and_grad(x["A"], delta(params))
        grads = pullback(params, G)
        through_delta = grads.pop("base", None)  # Δ's own dependence on A (uses_base)
        grads["A"] = self.xp.sum(G, axis=0) + (0 if through_delta is None else through_delta)
        return float(self.xp.sum(losses)), grads


class FactoredModel:
    """F and its gradient for W*_t = S + B*_t C*_tᵀ with Δ_t = B_t C_tᵀ, all implicit."""

    def __init__(self, ctx):
        self.batch, self.xp, self.peft = ctx.batch, ctx.xp, ctx.peft
        self.kernels = ctx.backend.kernels
        self.pullback = method(ctx.peft, ctx.backend.name, "pullback")

    def _rows(self, params):
        B, C = self.peft.factors(params)
        return (B.swapaxes(1, 2),) * 2 if B is C else (B.swapaxes(1, 2), C.swapaxes(1, 2))

    def _sum_delta(self, A, B, C):
        return self.kernels.shared_plus_gram(self.xp.zeros_like(A), B, C, 1.0)

    def value(self, x) -> float:
        B, C = self._rows(_params(x))
        return self.batch.objective_factors(x["A"], B, C, self._sum_delta(x["A"], B, C))

    def value_and_grad(self, x):
        A, params = x["A"], _params(x)
        B, C = self._rows(params)
        sum_delta = self._sum_delta(A, B, C)
        value = self.batch.objective_factors(A, B, C, sum_delta)
        grads = self.pullback(params, self.batch.implicit_grad(A, B, C))
        grads["A"] = self.batch.T * (A - self.batch.M) + sum_delta
        return value, grads


def _params(x):
    return {k: v for k, v in x.items() if k != "A"}


def _norm_sq(xp, tree) -> float:
    return float(sum(float(xp.sum(v * v)) for v in tree.values()))


def make_model(ctx):
    peft = ctx.peft
    if ctx.batch.kind == "factored" and callable(getattr(peft, "factors", None)) \
            and getattr(peft, "implicit_gradient", False):
        return FactoredModel(ctx)
    return DenseModel(ctx)


def solve(ctx):
    xp = ctx.xp
    optimizer = ctx.option("optimizer", "gd")
    if optimizer not in ("gd", "adam", "lbfgs"):
        raise FastLoRAError(f"optimizer={optimizer!r} is not allowed; choose 'gd', 'adam' or 'lbfgs'")
    model = make_model(ctx)
    A0 = ctx.initial_A("standard")
    x = {"A": A0, **ctx.init_params(A0)}
    if "A" in x and len(x) == 1:
        raise FastLoRAError("the parameterization returned no parameters from init()")
    monitor = ctx.monitor()
    if optimizer == "lbfgs":
        return _lbfgs(ctx, model, x, monitor)
    value, grads = model.value_and_grad(x)
    g0 = math.sqrt(_norm_sq(xp, grads)) or 1.0
    if optimizer == "adam":
        lr = check_float("lr", ctx.option("lr", 1e-2), low=0.0, low_open=True)
        m = {k: xp.zeros_like(v) for k, v in grads.items()}
        v2 = {k: xp.zeros_like(v) for k, v in grads.items()}
    else:
        lr = check_float("lr", ctx.option("lr", 1.0 / ctx.batch.T), low=0.0, low_open=True)
    iteration = 0
    for iteration in range(1, ctx.max_iter + 1):
        if optimizer == "adam":
            b1, b2, eps = 0.9, 0.999, 1e-12
            for k in grads:
                m[k] = b1 * m[k] + (1 - b1) * grads[k]
                v2[k] = b2 * v2[k] + (1 - b2) * grads[k] ** 2
                mhat, vhat = m[k] / (1 - b1 ** iteration), v2[k] / (1 - b2 ** iteration)
                x[k] = x[k] - lr * mhat / (xp.sqrt(vhat) + eps)
            value, grads = model.value_and_grad(x)
        else:
            x, value, grads, lr, moved = _armijo_step(xp, model, x, value, grads, lr)
            if not moved:
                monitor.message = "line search found no decrease: the objective is at its rounding floor"
                break
        gnorm = math.sqrt(_norm_sq(xp, grads))
        if monitor.record(iteration, value, gnorm / g0):
            break
    return x.pop("A"), x, monitor, iteration, {"optimizer": optimizer, "final_lr": lr,
                                              "model": type(model).__name__}


def _armijo_step(xp, model, x, value, grads, lr):
    gsq = _norm_sq(xp, grads)
    for _ in range(60):
        cand = {k: (v - lr * grads[k]) if k in grads else v for k, v in x.items()}
        cand_value, cand_grads = model.value_and_grad(cand)
        if cand_value <= value - 0.5 * lr * gsq:
            return cand, cand_value, cand_grads, lr * 1.25, True
        lr *= 0.5
    return x, value, grads, lr * 2.0 ** 60, False


def _lbfgs(ctx, model, x, monitor):
    import numpy as np
    from scipy.optimize import minimize

    be = ctx.backend
    names = ["A"] + trainable(ctx.peft, _params(x))
    fixed = {k: v for k, v in x.items() if k not in names}
    shapes = [tuple(x[k].shape) for k in names]
    sizes = [int(np.prod(s)) for s in shapes]

    def unpack(vec):
        out, start = dict(fixed), 0
        for name, shape, size in zip(names, shapes, sizes):
            out[name] = be.asarray(vec[start:start + size].reshape(shape), ctx.dtype)
            start += size
        return out

    last = {}

    def fun(vec):
        value, grads = model.value_and_grad(unpack(vec))
        flat = np.concatenate([np.asarray(be.to_numpy(grads[k]), dtype=np.float64).ravel() for k in names])
        last.update(x=vec.copy(), gnorm=float(np.linalg.norm(flat)))
        return value, flat

    x0 = np.concatenate([np.asarray(be.to_numpy(x[k]), dtype=np.float64).ravel() for k in names])
    g0 = float(np.linalg.norm(fun(x0)[1])) or 1.0
    state = {"iteration": 0, "stop": False}

    def callback(intermediate_result):
        state["iteration"] += 1
        value = float(intermediate_result.fun)
        if not np.array_equal(last.get("x"), intermediate_result.x):
            fun(intermediate_result.x)
        if monitor.record(state["iteration"], value, last["gnorm"] / g0):
            raise StopIteration

    result = minimize(fun, x0, jac=True, method="L-BFGS-B", callback=callback,
                      options={"maxiter": ctx.max_iter, "ftol": 0.0, "gtol": monitor.tol * g0, "maxcor": 20})
    if not monitor.converged and result.status == 0:
        monitor.converged, monitor.message = True, f"L-BFGS-B: {result.message}"
    elif not monitor.converged:
        monitor.message = f"L-BFGS-B: {result.message}"
    if not monitor.history:
        monitor.record(1, float(result.fun))
    final = unpack(result.x)
    return final.pop("A"), final, monitor, max(state["iteration"], 1), {"optimizer": "lbfgs", "model": type(model).__name__}
