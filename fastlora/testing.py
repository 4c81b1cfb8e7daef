"""The conformance kit a parameterization author runs in their own tests.

>>> from fastlora.testing import check_parameterization
>>> check_parameterization(MyPEFT)          # raises AssertionError naming the failed check

Checks (protocol version 1): protocol members; parameter shapes; dtype preservation
(float32 in, float32 out); Δ at init is finite and of shape (T, d_out, d_in); the pullback
agrees with central finite differences of θ ↦ Σ_t ⟨G_t, Δ(θ_t)⟩; factors reproduce Δ and
``from_factors`` inverts them; an implicit gradient gives the dense pullback; the best fit
is exact on representable targets and stationary and no worse than perturbations of its
trainable (not ``frozen``) parameters on random ones; batched calls agree with a loop over tasks.
"""
from __future__ import annotations

import numpy as np

from .linop import SharedPlusLowRank
from .peft.protocol import protocol_errors


class ConformanceError(AssertionError):
    """A parameterization failed one of the conformance checks."""


def _fail(check: str, message: str):
    raise ConformanceError(f"[{check}] {message}")


def _close(a, b, rtol, atol=0.0) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.maximum(np.abs(b).max(initial=0), 1e-300)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol + rtol * scale))


def _slice(params, t):
    return {k: v[t:t + 1] for k, v in params.items()}


def _cast(params, dtype):
    return {k: np.asarray(v, dtype=dtype) for k, v in params.items()}


class _Bound:
    """A view of a ``uses_base`` parameterization with a fixed base, for the generic checks."""

    def __init__(self, obj, base):
        self.obj, self.base = obj, base
        self.factors = self.best_fit = None

    def delta(self, params):
        return self.obj.delta(params, np.asarray(self.base, dtype=next(iter(params.values())).dtype))

    def pullback(self, params, G):
        out = dict(self.obj.pullback(params, G, np.asarray(self.base, dtype=G.dtype)))
        out.pop("base", None)
        return out


def check_parameterization(peft, d_out: int = 7, d_in: int = 6, rank: int = 2, T: int = 3, seed: int = 0,
                           fd_rtol: float = 1e-6) -> list[str]:
    """Run every conformance check on ``peft`` (a class or an instance); returns the checks passed."""
    raw = peft() if isinstance(peft, type) else peft
    passed = []
    errors = protocol_errors(raw)
    if errors:
        _fail("protocol", "; ".join(errors))
    passed.append("protocol")
    if getattr(raw, "square_only", False):
        d_out = d_in
    rng = np.random.default_rng(seed)
    uses_base = bool(getattr(raw, "uses_base", False))
    base = rng.standard_normal((d_out, d_in))
    obj = _Bound(raw, base) if uses_base else raw

    # shapes
    shapes = raw.shapes(d_out, d_in, rank)
    params = raw.init(np.random.default_rng(seed), d_out, d_in, rank, T, *((base,) if uses_base else ()))
    if set(params) != set(shapes):
        _fail("shapes", f"init() returned parameters {sorted(params)} but shapes() declares {sorted(shapes)}")
    for name, shape in shapes.items():
        if tuple(np.shape(params[name])) != (T, *shape):
            _fail("shapes", f"init()[{name!r}] has shape {np.shape(params[name])}, expected {(T, *shape)}")
    passed.append("shapes")

    # Δ at init
    params = _cast(params, np.float64)
    delta0 = np.asarray(obj.delta(params))
    if delta0.shape != (T, d_out, d_in):
        _fail("delta", f"delta() has shape {delta0.shape}, expected {(T, d_out, d_in)}")
    if not np.isfinite(delta0).all():
        _fail("delta", "delta() at init is not finite")
    passed.append("delta at init")

    # a generic point (init may sit at a symmetric point such as B = 0); frozen ones stay
    frozen = set(getattr(raw, "frozen", None) or ())
    theta = {k: v if k in frozen else v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
    G = rng.standard_normal((T, d_out, d_in))

    # dtype preservation
    for dtype in (np.float32, np.float64):
        d = obj.delta(_cast(theta, dtype))
        if np.asarray(d).dtype != dtype:
            _fail("dtype", f"delta() turned {np.dtype(dtype).name} parameters into {np.asarray(d).dtype}")
        g = obj.pullback(_cast(theta, dtype), G.astype(dtype))
        for name, value in g.items():
            if np.asarray(value).dtype != dtype:
                _fail("dtype", f"pullback()[{name!r}] turned {np.dtype(dtype).name} into {np.asarray(value).dtype}")
    passed.append("dtype preservation")

    # pullback vs finite differences of f(θ) = Σ_t ⟨G_t, Δ(θ_t)⟩
    grads = obj.pullback(theta, G)
    train = [k for k in theta if k not in frozen]
    if set(grads) != set(train):
        _fail("pullback", f"pullback() returned {sorted(grads)}, expected the trainable parameters {sorted(train)}")
    for name in train:
        if np.shape(grads[name]) != np.shape(theta[name]):
            _fail("pullback", f"pullback()[{name!r}] has shape {np.shape(grads[name])}, "
                              f"expected {np.shape(theta[name])}")

    def f(th):
        return float(np.sum(G * np.asarray(obj.delta(th))))

    for trial in range(3):
        V = {k: rng.standard_normal(theta[k].shape) if k in grads else 0.0 for k in theta}
        eps = 1e-6
        fd = (f({k: theta[k] + eps * V[k] for k in theta}) - f({k: theta[k] - eps * V[k] for k in theta})) / (2 * eps)
        an = sum(float(np.sum(np.asarray(grads[k]) * V[k])) for k in grads)
        if abs(fd - an) > fd_rtol * max(1.0, abs(fd)) * 10:
            _fail("pullback", f"the pullback disagrees with finite differences: directional derivative "
                              f"{an:.10g} (pullback) vs {fd:.10g} (finite differences), direction {trial}")
    passed.append("pullback vs finite differences")

    # batch vs loop
    loop_delta = np.concatenate([np.asarray(obj.delta(_slice(theta, t))) for t in range(T)])
    if not _close(obj.delta(theta), loop_delta, 1e-12):
        _fail("batch", "delta() of the batch differs from delta() task by task")
    for name in grads:
        loop = np.concatenate([np.asarray(obj.pullback(_slice(theta, t), G[t:t + 1])[name]) for t in range(T)])
        if not _close(grads[name], loop, 1e-12):
            _fail("batch", f"pullback()[{name!r}] of the batch differs from task by task")
    passed.append("batch vs loop")

    if uses_base:
        _check_base_gradient(raw, theta, base, G, rng, fd_rtol)
        passed.append("base gradient vs finite differences")

    factors = getattr(obj, "factors", None)
    if callable(factors):
        B, C = factors(theta)
        if not _close(np.asarray(B) @ np.swapaxes(np.asarray(C), 1, 2), obj.delta(theta), 1e-10):
            _fail("factors", "factors() B·Cᵀ differs from delta()")
        from_factors = getattr(obj, "from_factors", None)
        if callable(from_factors):
            again = from_factors(B, C)
            if not _close(obj.delta(again), obj.delta(theta), 1e-10):
                _fail("factors", "delta(from_factors(*factors(θ))) differs from delta(θ)")
        passed.append("factors")
        if getattr(obj, "implicit_gradient", False):
            shared = rng.standard_normal((d_out, d_in))
            P, Q = rng.standard_normal((T, 2, d_out)), rng.standard_normal((T, 2, d_in))
            implicit = SharedPlusLowRank(shared, P, Q)
            dense = shared[None] + np.swapaxes(P, 1, 2) @ Q
            gi, gd = obj.pullback(theta, implicit), obj.pullback(theta, dense)
            for name in gd:
                if not _close(gi[name], gd[name], 1e-10):
                    _fail("implicit gradient", f"pullback()[{name!r}] with an implicit G differs from the dense G")
            passed.append("implicit gradient")

    best_fit = getattr(obj, "best_fit", None)
    if callable(best_fit):
        _check_best_fit(obj, theta, rank, rng, frozen)
        passed.append("best fit")
    return passed


def _check_base_gradient(obj, theta, base, G, rng, fd_rtol):
    """For uses_base: pullback()["base"] is ∂/∂A of Σ_t ⟨G_t, Δ(θ_t, A)⟩."""
    grads = obj.pullback(theta, G, base)
    if "base" not in grads:
        _fail("base gradient", "uses_base is set but pullback() returns no 'base' entry")
    if np.shape(grads["base"]) != base.shape:
        _fail("base gradient", f"pullback()['base'] has shape {np.shape(grads['base'])}, expected {base.shape}")
    V = rng.standard_normal(base.shape)
    eps = 1e-6

    def f(B):
        return float(np.sum(G * np.asarray(obj.delta(theta, B))))

    fd = (f(base + eps * V) - f(base - eps * V)) / (2 * eps)
    an = float(np.sum(np.asarray(grads["base"]) * V))
    if abs(fd - an) > fd_rtol * max(1.0, abs(fd)) * 10:
        _fail("base gradient", f"pullback()['base'] disagrees with finite differences: {an:.10g} vs {fd:.10g}")


def _check_best_fit(obj, theta, rank, rng, frozen=frozenset()):
    """best_fit is exact on representable targets, stationary, and no worse than small
    perturbations of its trainable parameters (``frozen`` ones are fixed by definition:
    moving them changes the parameterization, not the fit)."""
    T = next(iter(theta.values())).shape[0]

    def loss(th, R):
        E = np.asarray(obj.delta(th)) - R
        return 0.5 * np.sum(E.reshape(T, -1) ** 2, axis=1)

    # a representable target is fitted exactly
    R = np.asarray(obj.delta(theta))
    fit = obj.best_fit(R, rank)
    if not np.all(loss(fit, R) <= 1e-16 * max(1.0, float(np.sum(R * R)))):
        _fail("best fit", f"best_fit(Δ(θ)) does not reproduce a representable Δ (loss {loss(fit, R).max():.3e})")
    # a random target: stationary, and no perturbation does better
    R = rng.standard_normal(R.shape)
    fit = obj.best_fit(R, rank)
    base = loss(fit, R)
    grads = obj.pullback(fit, np.asarray(obj.delta(fit)) - R)
    gnorm = np.sqrt(sum(np.sum(np.asarray(g).reshape(T, -1) ** 2, axis=1) for g in grads.values()))
    if np.any(gnorm > 1e-8 * max(1.0, float(np.sqrt(np.sum(R * R))))):
        _fail("best fit", f"best_fit(R) is not stationary: gradient norm {gnorm.max():.3e}")
    for _ in range(5):
        moved = {k: v if k in frozen else np.asarray(v) + 1e-3 * rng.standard_normal(np.shape(v))
                 for k, v in fit.items()}
        if np.any(loss(moved, R) < base - 1e-10 * np.maximum(base, 1.0)):
            _fail("best fit", "a small perturbation of best_fit(R) fits R better: the fit is not optimal")
    loop = np.concatenate([np.asarray(obj.delta(obj.best_fit(R[t:t + 1], rank))) for t in range(T)])
    if not _close(obj.delta(fit), loop, 1e-8, atol=1e-10):
        _fail("batch", "best_fit() of the batch differs from best_fit() task by task")
