"""The conformance kit a parameterization author runs in their own tests.

>>> from fastlora.testing import check_parameterization
>>> check_parameterization(MyPEFT)          # raises ConformanceError naming the failed check

Checks (protocol versions 1 and 2), in this order — each failure names its check and,
where it is about one parameter, that parameter:

``protocol``        the members and their types (:func:`fastlora.peft.protocol.protocol_errors`);
``shapes``          init() returns exactly the parameters shapes() declares: per-task ones with
                    the task axis (T, *shape), ``shared`` ones (version 2) without it, ``frozen``
                    ones included;
``delta at init``   Δ is finite and (T, d_out, d_in);
``dtype``           float32 in gives float32 out (delta and every pullback entry), float64 likewise;
``pullback``        it returns the gradient of every trainable parameter (not the frozen ones)
                    in that parameter's shape, and each agrees with central finite differences
                    of f(θ) = Σ_t ⟨G_t, Δ(θ_t)⟩ along two random directions of that parameter
                    alone — a shared parameter's gradient is thereby checked as the sum over tasks;
``batch``           Δ and the pullback of the batch equal task-by-task calls (a shared
                    parameter's batch gradient equals the sum of the tasks' ones);
``base gradient``   (``uses_base``) pullback()["base"] agrees with finite differences in A;
``factors``         B·Cᵀ reproduces Δ, ``from_factors`` inverts it (not for shared parameters);
``implicit gradient`` (``implicit_gradient``) an implicit G gives the dense G's pullback;
``canonicalize``    it keeps Δ and the parameters' shapes;
``best fit``        (no shared parameters) exact on representable targets, stationary and no
                    worse than perturbations of its trainable (not ``frozen``) parameters on random
                    ones, batch = task by task;
``fast path``       each member a ``fast_paths["numba"]`` object overrides gives the plain
                    member's numbers (1e-10) and dtype (numba backend only: its arrays are numpy;
                    skipped where Numba is not installed).

:func:`check_installed` runs the kit on every registered parameterization (``fastlora
plugins --check``).
"""
from __future__ import annotations

import numpy as np

from .errors import check_float, check_int
from .linop import SharedPlusLowRank
from .peft.protocol import protocol_errors, shared_names


class ConformanceError(AssertionError):
    """A parameterization failed one of the conformance checks; ``passed`` lists the checks
    it passed before that one."""

    def __init__(self, message: str, passed: list[str] | None = None):
        super().__init__(message)
        self.passed = list(passed or [])


def _fail(check: str, message: str):
    raise ConformanceError(f"[{check}] {message}")


def _close(a, b, rtol, atol=0.0) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.maximum(np.abs(b).max(initial=0), 1e-300)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol + rtol * scale))


def _cast(params, dtype):
    return {k: np.asarray(v, dtype=dtype) for k, v in params.items()}


class _Calls:
    """delta(θ) and pullback(θ, G) of a parameterization (or of one of its fast paths), with the
    base bound for ``uses_base`` ones (their "base" gradient left out), and the task slicing
    that knows shared parameters have no task axis."""

    def __init__(self, raw, base=None, source=None):
        source = raw if source is None else source
        self.raw, self.base, self.shared = raw, base, set(shared_names(raw))
        self._delta, self._pullback = getattr(source, "delta", None), getattr(source, "pullback", None)

    def delta(self, params):
        if self.base is None:
            return self._delta(params)
        return self._delta(params, np.asarray(self.base, dtype=next(iter(params.values())).dtype))

    def pullback(self, params, G):
        if self.base is None:
            return dict(self._pullback(params, G))
        out = dict(self._pullback(params, G, np.asarray(self.base, dtype=G.dtype)))
        out.pop("base", None)
        return out

    def task(self, params, t):
        return {k: v if k in self.shared else v[t:t + 1] for k, v in params.items()}


def check_parameterization(peft, d_out: int = 7, d_in: int = 6, rank: int = 2, T: int = 3, seed: int = 0,
                           fd_rtol: float = 1e-6, fd_eps: float = 1e-6) -> list[str]:
    """Run every conformance check (module docstring) on ``peft``; returns the names of the checks passed.

    Parameters
    ----------
    peft : a parameterization class (instantiated without arguments) or instance.
    d_out, d_in : the weight shape the checks use (``square_only`` parameterizations get d_out = d_in).
    rank : the adapter rank r passed to ``shapes``, ``init`` and ``best_fit``.
    T : tasks per batch (T ≥ 2 makes the batch and summed-shared-gradient checks meaningful).
    seed : seeds ``init``, the generic point θ (init plus N(0, 0.3²) on every non-frozen entry),
        the gradient batch G and the finite-difference directions; the same seed gives the same checks.
    fd_rtol : tolerance of each directional finite-difference check:
        |analytic − finite difference| ≤ 10·fd_rtol·max(1, |finite difference|).
    fd_eps : step ε of the central differences (f(θ + εV) − f(θ − εV)) / 2ε.

    Raises :class:`ConformanceError` (an AssertionError) whose message starts with the check's
    name in brackets and names the parameter where the failure is about one.
    """
    d_out, d_in = check_int("d_out", d_out, low=1), check_int("d_in", d_in, low=1)
    rank = check_int("rank", rank, low=1, high=min(d_out, d_in))
    T, seed = check_int("T", T, low=1), check_int("seed", seed, low=0)
    fd_rtol = check_float("fd_rtol", fd_rtol, low=0.0, low_open=True)
    fd_eps = check_float("fd_eps", fd_eps, low=0.0, low_open=True)
    raw = peft() if isinstance(peft, type) else peft
    passed: list[str] = []
    try:
        _run_checks(raw, d_out, d_in, rank, T, seed, fd_rtol, fd_eps, passed)
    except ConformanceError as exc:
        exc.passed = list(passed)
        raise
    return passed


def _run_checks(raw, d_out, d_in, rank, T, seed, fd_rtol, fd_eps, passed: list) -> None:
    """The checks in order, appending each one's name to ``passed`` as it passes."""
    errors = protocol_errors(raw)
    if errors:
        _fail("protocol", "; ".join(errors))
    passed.append("protocol")
    if getattr(raw, "square_only", False):
        d_out = d_in
    rng = np.random.default_rng(seed)
    uses_base = bool(getattr(raw, "uses_base", False))
    base = rng.standard_normal((d_out, d_in))
    obj = _Calls(raw, base if uses_base else None)
    shared = obj.shared
    frozen = set(getattr(raw, "frozen", None) or ())

    params = _check_shapes(raw, d_out, d_in, rank, T, seed, base if uses_base else None, shared, frozen)
    passed.append("shapes")

    params = _cast(params, np.float64)
    delta0 = np.asarray(obj.delta(params))
    if delta0.shape != (T, d_out, d_in):
        _fail("delta", f"delta() has shape {delta0.shape}, expected {(T, d_out, d_in)}")
    if not np.isfinite(delta0).all():
        _fail("delta", "delta() at init is not finite")
    passed.append("delta at init")

    # a generic point (init may sit at a symmetric point such as B = 0); frozen ones stay
    theta = {k: v if k in frozen else v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
    G = rng.standard_normal((T, d_out, d_in))

    _check_dtypes(obj, theta, G, "dtype")
    passed.append("dtype preservation")

    grads = obj.pullback(theta, G)
    train = [k for k in theta if k not in frozen]
    _check_pullback(obj, theta, G, grads, train, rng, fd_rtol, fd_eps)
    passed.append("pullback vs finite differences")

    _check_batch(obj, theta, G, grads, T)
    passed.append("batch vs loop")

    if uses_base:
        _check_base_gradient(raw, theta, base, G, rng, fd_rtol, fd_eps)
        passed.append("base gradient vs finite differences")

    factors = getattr(raw, "factors", None)
    if callable(factors) and not uses_base:
        _check_factors(raw, obj, theta, T, d_out, d_in, shared)
        passed.append("factors")
        if getattr(raw, "implicit_gradient", False):
            _check_implicit(obj, theta, rng, T, d_out, d_in, "implicit gradient")
            passed.append("implicit gradient")

    canonicalize = getattr(raw, "canonicalize", None)
    if callable(canonicalize):
        canon = canonicalize({k: v.copy() for k, v in theta.items()})
        if set(canon) != set(theta) or any(np.shape(canon[k]) != np.shape(theta[k]) for k in theta):
            _fail("canonicalize", f"canonicalize() returned {_shapes(canon)}, expected {_shapes(theta)}")
        if not _close(obj.delta(_cast(canon, np.float64)), obj.delta(theta), 1e-10):
            _fail("canonicalize", "delta(canonicalize(θ)) differs from delta(θ): canonicalize must not change Δ")
        passed.append("canonicalize")

    if callable(getattr(raw, "best_fit", None)) and not uses_base and not shared:
        _check_best_fit(raw, theta, rank, rng, frozen)
        passed.append("best fit")

    if _check_fast_path(raw, theta, G, rank, rng, base if uses_base else None, T, d_out, d_in):
        passed.append("fast path numba")


def _shapes(params) -> dict:
    return {k: tuple(np.shape(v)) for k, v in params.items()}


def _check_shapes(raw, d_out, d_in, rank, T, seed, base, shared, frozen) -> dict:
    shapes = raw.shapes(d_out, d_in, rank)
    params = raw.init(np.random.default_rng(seed), d_out, d_in, rank, T, *(() if base is None else (base,)))
    if set(params) != set(shapes):
        _fail("shapes", f"init() returned parameters {sorted(params)} but shapes() declares {sorted(shapes)} "
                        f"(frozen and shared parameters belong to both)")
    missing = sorted((frozen | shared) - set(shapes))
    if missing:
        _fail("shapes", f"parameters {missing} are declared frozen/shared but are not in shapes() and init()")
    for name, shape in shapes.items():
        want = tuple(shape) if name in shared else (T, *shape)
        if tuple(np.shape(params[name])) != want:
            kind = "shared parameter (no task axis)" if name in shared else "per-task parameter (task axis first)"
            _fail("shapes", f"init()[{name!r}] has shape {np.shape(params[name])}, expected {want} for a {kind}")
    return params


def _check_dtypes(obj, theta, G, check):
    for dtype in (np.float32, np.float64):
        d = obj.delta(_cast(theta, dtype))
        if np.asarray(d).dtype != dtype:
            _fail(check, f"delta() turned {np.dtype(dtype).name} parameters into {np.asarray(d).dtype}")
        g = obj.pullback(_cast(theta, dtype), G.astype(dtype))
        for name, value in g.items():
            if np.asarray(value).dtype != dtype:
                _fail(check, f"pullback()[{name!r}] turned {np.dtype(dtype).name} into {np.asarray(value).dtype}")


def _check_pullback(obj, theta, G, grads, train, rng, fd_rtol, fd_eps):
    """One directional finite-difference check per trainable parameter, so a failure names it."""
    if set(grads) != set(train):
        _fail("pullback", f"pullback() returned {sorted(grads)}, expected the trainable parameters {sorted(train)} "
                          f"(frozen ones are not returned)")
    for name in train:
        if np.shape(grads[name]) != np.shape(theta[name]):
            what = "a shared parameter's gradient is summed over tasks" if name in obj.shared else "one per task"
            _fail("pullback", f"pullback()[{name!r}] has shape {np.shape(grads[name])}, expected "
                              f"{np.shape(theta[name])} ({what})")

    def f(th):
        return float(np.sum(G * np.asarray(obj.delta(th))))

    for name in train:
        for trial in range(2):
            V = rng.standard_normal(theta[name].shape)
            plus, minus = dict(theta), dict(theta)
            plus[name], minus[name] = theta[name] + fd_eps * V, theta[name] - fd_eps * V
            fd = (f(plus) - f(minus)) / (2 * fd_eps)
            an = float(np.sum(np.asarray(grads[name]) * V))
            if abs(fd - an) > 10 * fd_rtol * max(1.0, abs(fd)):
                kind = "shared parameter, gradient summed over tasks" if name in obj.shared else "per-task parameter"
                _fail("pullback", f"pullback()[{name!r}] disagrees with finite differences ({kind}): directional "
                                  f"derivative {an:.10g} (pullback) vs {fd:.10g} (finite differences), "
                                  f"direction {trial}")


def _check_batch(obj, theta, G, grads, T):
    loop_delta = np.concatenate([np.asarray(obj.delta(obj.task(theta, t))) for t in range(T)])
    if not _close(obj.delta(theta), loop_delta, 1e-12):
        _fail("batch", "delta() of the batch differs from delta() task by task")
    per_task = [obj.pullback(obj.task(theta, t), G[t:t + 1]) for t in range(T)]
    for name in grads:
        if name in obj.shared:
            loop = sum(np.asarray(one[name]) for one in per_task)
            what = "the sum over tasks of its task-by-task gradients"
        else:
            loop = np.concatenate([np.asarray(one[name]) for one in per_task])
            what = "task by task"
        if not _close(grads[name], loop, 1e-12):
            _fail("batch", f"pullback()[{name!r}] of the batch differs from {what}")


def _check_base_gradient(obj, theta, base, G, rng, fd_rtol, fd_eps):
    """For uses_base: pullback()["base"] is ∂/∂A of Σ_t ⟨G_t, Δ(θ_t, A)⟩."""
    grads = obj.pullback(theta, G, base)
    if "base" not in grads:
        _fail("base gradient", "uses_base is set but pullback() returns no 'base' entry")
    if np.shape(grads["base"]) != base.shape:
        _fail("base gradient", f"pullback()['base'] has shape {np.shape(grads['base'])}, expected {base.shape}")
    V = rng.standard_normal(base.shape)

    def f(B):
        return float(np.sum(G * np.asarray(obj.delta(theta, B))))

    fd = (f(base + fd_eps * V) - f(base - fd_eps * V)) / (2 * fd_eps)
    an = float(np.sum(np.asarray(grads["base"]) * V))
    if abs(fd - an) > 10 * fd_rtol * max(1.0, abs(fd)):
        _fail("base gradient", f"pullback()['base'] disagrees with finite differences: {an:.10g} vs {fd:.10g}")


def _check_factors(raw, obj, theta, T, d_out, d_in, shared):
    B, C = raw.factors(theta)
    B, C = np.asarray(B), np.asarray(C)
    if B.ndim != 3 or C.ndim != 3 or B.shape[:2] != (T, d_out) or C.shape[:2] != (T, d_in) or B.shape[2] != C.shape[2]:
        _fail("factors", f"factors() returned B {B.shape} and C {C.shape}; expected (T, d_out, m) = ({T}, {d_out}, m) "
                         f"and (T, d_in, m) = ({T}, {d_in}, m)")
    if not _close(B @ np.swapaxes(C, 1, 2), obj.delta(theta), 1e-10):
        _fail("factors", "factors() B·Cᵀ differs from delta()")
    from_factors = getattr(raw, "from_factors", None)
    if callable(from_factors) and not shared:
        again = from_factors(B, C)
        if not _close(obj.delta(again), obj.delta(theta), 1e-10):
            _fail("factors", "delta(from_factors(*factors(θ))) differs from delta(θ)")


def _check_implicit(obj, theta, rng, T, d_out, d_in, check):
    shared_part = rng.standard_normal((d_out, d_in))
    P, Q = rng.standard_normal((T, 2, d_out)), rng.standard_normal((T, 2, d_in))
    implicit = SharedPlusLowRank(shared_part, P, Q)
    dense = shared_part[None] + np.swapaxes(P, 1, 2) @ Q
    gi, gd = obj.pullback(theta, implicit), obj.pullback(theta, dense)
    for name in gd:
        if name not in gi or not _close(gi[name], gd[name], 1e-10):
            _fail(check, f"pullback()[{name!r}] with an implicit G differs from the dense G")


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
    if set(fit) != set(theta):
        _fail("best fit", f"best_fit() returned {sorted(fit)}, expected every parameter {sorted(theta)} "
                          f"(frozen ones too)")
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


def _check_fast_path(raw, theta, G, rank, rng, base, T, d_out, d_in) -> bool:
    """The members ``fast_paths["numba"]`` overrides give the plain members' numbers and dtypes
    (False where there is no such fast path or Numba is not installed)."""
    fast = (getattr(raw, "fast_paths", None) or {}).get("numba")
    if fast is None:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    check = "fast path numba"
    plain = _Calls(raw, base)
    if getattr(fast, "delta", None) is not None:
        if not _close(_Calls(raw, base, fast).delta(theta), plain.delta(theta), 1e-10):
            _fail(check, "fast_paths['numba'].delta differs from delta()")
    if getattr(fast, "pullback", None) is not None:
        fast_pullback = _Calls(raw, base, fast).pullback(theta, G)
        for name, value in plain.pullback(theta, G).items():
            if name not in fast_pullback or not _close(fast_pullback[name], value, 1e-10):
                _fail(check, f"fast_paths['numba'].pullback()[{name!r}] differs from pullback()[{name!r}]")
    fast_calls = _Calls(raw, base, _Merged(fast, raw))
    _check_dtypes(fast_calls, theta, G, check)
    if getattr(raw, "implicit_gradient", False) and base is None:
        _check_implicit(fast_calls, theta, rng, T, d_out, d_in, check)
    best_fit = getattr(fast, "best_fit", None)
    if best_fit is not None and callable(getattr(raw, "best_fit", None)) and base is None:
        R = rng.standard_normal((T, d_out, d_in))
        if not _close(plain.delta(best_fit(R, rank)), plain.delta(raw.best_fit(R, rank)), 1e-8, atol=1e-10):
            _fail(check, "fast_paths['numba'].best_fit gives another fit than best_fit()")
    return True


class _Merged:
    """A fast path's members where it has them, the plain ones elsewhere (what the solvers call)."""

    def __init__(self, fast, raw):
        self.fast, self.raw = fast, raw

    def __getattr__(self, member):
        value = getattr(self.fast, member, None)
        return value if value is not None else getattr(self.raw, member)


def check_installed() -> list[dict]:
    """Run the kit on every registered parameterization (built-ins, plugins, ``register``-ed ones).

    One dict per registry entry, sorted by name: ``name``, ``distribution``, ``version``,
    ``ok`` (bool), ``passed`` (the checks passed, in order) and ``failure`` (None, the
    :class:`ConformanceError` message, the load error of a plugin that does not load, or
    ``"<ExceptionType>: message"`` when a method raised inside the kit).
    """
    from . import peft as peft_registry
    rows = []
    for info in peft_registry.info():
        row = {"name": info["name"], "distribution": info["distribution"], "version": info["version"],
               "ok": False, "passed": [], "failure": info["error"]}
        if info["error"] is None:
            try:
                row.update(ok=True, passed=check_parameterization(peft_registry.get(info["name"])))
            except ConformanceError as exc:
                row.update(failure=str(exc), passed=exc.passed)
            except Exception as exc:  # noqa: BLE001 - a plugin's own bug is a failed check, not a crash
                row["failure"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows
