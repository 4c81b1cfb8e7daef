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
``best fit given shared`` (``best_fit_given_shared``) exact on representable targets with the
                    shared parameters fixed, stationary and optimal over the per-task ones, batch = task by task;
``init from residuals`` (``init_from_residuals``) init(..., residuals=R) gives the declared shapes;
``basis equivariance`` (``basis_equivariance``, declared or implied by the family) Δ(change_basis(θ,
                    U, V)) = U Δ(θ) Vᵀ for orthogonal U, V, and lifting a smaller problem's parameters
                    with orthonormal columns gives the declared shapes and Q_out Δ Q_inᵀ; a class's own
                    ``change_basis`` also keeps ‖θ‖ and maps gradients like parameters;
``rank options``    (``rank_options``) each is a keyword of the class, reads back, and another value
                    gives shapes() and init() that agree;
``fast path``       each member a ``fast_paths["numba"]`` object overrides gives the plain
                    member's numbers (1e-10) and dtype (numba backend only: its arrays are numpy;
                    skipped where Numba is not installed).

Whatever the plugin's own code raises inside a check (a method, a property, a fast path)
becomes a :class:`ConformanceError` naming the check and the member, with the checks passed
so far.  A start where every gradient is zero (init's parameters, a random G: e.g. both
factors of a product at 0, from which no gradient method moves) is a
:class:`ConformanceWarning`, not a failure.

:func:`check_problem_generator` checks a problem generator (entry-point group
``fastlora.problems``): the problem's shapes, its ground truth, and its determinism per seed.
:func:`check_installed` runs the kit on every registered parameterization and generator
(``fastlora plugins --check``).
"""
from __future__ import annotations

import warnings

import numpy as np

from .errors import check_float, check_int
from .linop import SharedPlusLowRank
from .peft.protocol import (
    change_basis,
    has_second_order,
    is_basis_equivariant,
    protocol_errors,
    rank_options,
    shared_names,
)


class ConformanceError(AssertionError):
    """A plugin failed one of the conformance checks: ``check`` names it, ``member`` the plugin's
    member that raised (None where the kit found the numbers wrong), and ``passed`` lists the
    checks it passed before that one."""

    def __init__(self, message: str, passed: list[str] | None = None, check: str | None = None,
                 member: str | None = None):
        super().__init__(message)
        self.passed = list(passed or [])
        self.check, self.member = check, member


class ConformanceWarning(UserWarning):
    """Something a plugin may do on purpose but that usually is a mistake (a degenerate start)."""


def _fail(check: str, message: str):
    raise ConformanceError(f"[{check}] {message}", check=check)


class _Stage:
    """The check running now (what a wrapped exception names)."""

    def __init__(self):
        self.check = "protocol"


class _Guarded:
    """A plugin object whose members, read or called, turn any exception into a ConformanceError
    naming the current check and the member (``label`` prefixes the member: "fast_paths['numba'].")."""

    def __init__(self, obj, stage: _Stage, label: str = ""):
        self._obj, self._stage, self._label = obj, stage, label

    def __getattr__(self, member):
        name = f"{self._label}{member}"
        try:
            value = getattr(self._obj, member)
        except AttributeError:
            raise
        except Exception as exc:  # a property of the plugin raising
            raise _wrapped(self._stage.check, f"reading {name}", exc) from exc
        if not callable(value) or isinstance(value, type):
            return value
        stage = self._stage

        def call(*args, **kwargs):
            try:
                return value(*args, **kwargs)
            except ConformanceError:
                raise
            except Exception as exc:  # the plugin's own code raising
                raise _wrapped(stage.check, f"{name}()", exc) from exc
        return call


def _wrapped(check: str, member: str, exc: Exception) -> ConformanceError:
    return ConformanceError(f"[{check}] {member} raised {type(exc).__name__}: {exc}", check=check,
                            member=member.removeprefix("reading ").removesuffix("()"))


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
    name in brackets and names the parameter where the failure is about one, or the member
    whose own exception it wraps; warns :class:`ConformanceWarning` at a degenerate start.
    """
    d_out, d_in = check_int("d_out", d_out, low=1), check_int("d_in", d_in, low=1)
    rank = check_int("rank", rank, low=1, high=min(d_out, d_in))
    T, seed = check_int("T", T, low=1), check_int("seed", seed, low=0)
    fd_rtol = check_float("fd_rtol", fd_rtol, low=0.0, low_open=True)
    fd_eps = check_float("fd_eps", fd_eps, low=0.0, low_open=True)
    passed: list[str] = []
    stage = _Stage()
    try:
        try:
            raw = peft() if isinstance(peft, type) else peft
        except Exception as exc:  # the class's own constructor raising
            raise _wrapped("protocol", f"{getattr(peft, '__name__', peft)}()", exc) from exc
        _run_checks(raw, d_out, d_in, rank, T, seed, fd_rtol, fd_eps, passed, stage)
    except ConformanceError as exc:
        exc.passed = list(passed)
        raise
    except Exception as exc:  # what the plugin returned broke the kit's own code
        raise ConformanceError(f"[{stage.check}] the kit could not use what the plugin returned: "
                               f"{type(exc).__name__}: {exc}", passed, check=stage.check) from exc
    return passed


def _run_checks(plain, d_out, d_in, rank, T, seed, fd_rtol, fd_eps, passed: list, stage: _Stage) -> None:
    """The checks in order, appending each one's name to ``passed`` as it passes; ``stage.check``
    says which one runs (the plugin is called through :class:`_Guarded`)."""
    errors = protocol_errors(plain)
    if errors:
        _fail("protocol", "; ".join(errors))
    passed.append("protocol")
    raw = _Guarded(plain, stage)
    if getattr(raw, "square_only", False):
        d_out = d_in
    rng = np.random.default_rng(seed)
    uses_base = bool(getattr(raw, "uses_base", False))
    base = rng.standard_normal((d_out, d_in))
    obj = _Calls(raw, base if uses_base else None)
    shared = obj.shared
    frozen = set(getattr(raw, "frozen", None) or ())

    stage.check = "shapes"
    params = _check_shapes(raw, d_out, d_in, rank, T, seed, base if uses_base else None, shared, frozen)
    passed.append("shapes")

    stage.check = "delta"
    params = _cast(params, np.float64)
    delta0 = np.asarray(obj.delta(params))
    if delta0.shape != (T, d_out, d_in):
        _fail("delta", f"delta() has shape {delta0.shape}, expected {(T, d_out, d_in)}")
    if not np.isfinite(delta0).all():
        _fail("delta", "delta() at init is not finite")
    passed.append("delta at init")
    stage.check = "start"
    _warn_degenerate_start(obj, params, rng.standard_normal((T, d_out, d_in)), frozen)

    # a generic point (init may sit at a symmetric point such as B = 0); frozen ones stay
    theta = {k: v if k in frozen else v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
    G = rng.standard_normal((T, d_out, d_in))

    stage.check = "dtype"
    _check_dtypes(obj, theta, G, "dtype")
    passed.append("dtype preservation")

    stage.check = "pullback"
    grads = obj.pullback(theta, G)
    train = [k for k in theta if k not in frozen]
    _check_pullback(obj, theta, G, grads, train, rng, fd_rtol, fd_eps)
    passed.append("pullback vs finite differences")

    stage.check = "batch"
    _check_batch(obj, theta, G, grads, T)
    passed.append("batch vs loop")

    if uses_base:
        stage.check = "base gradient"
        _check_base_gradient(raw, theta, base, G, rng, fd_rtol, fd_eps)
        passed.append("base gradient vs finite differences")

    factors = getattr(raw, "factors", None)
    if callable(factors) and not uses_base:
        stage.check = "factors"
        _check_factors(raw, obj, theta, T, d_out, d_in, shared)
        passed.append("factors")
        if getattr(raw, "implicit_gradient", False):
            stage.check = "implicit gradient"
            _check_implicit(obj, theta, rng, T, d_out, d_in, "implicit gradient")
            passed.append("implicit gradient")

    canonicalize = getattr(raw, "canonicalize", None)
    if callable(canonicalize):
        stage.check = "canonicalize"
        canon = canonicalize({k: v.copy() for k, v in theta.items()})
        if set(canon) != set(theta) or any(np.shape(canon[k]) != np.shape(theta[k]) for k in theta):
            _fail("canonicalize", f"canonicalize() returned {_shapes(canon)}, expected {_shapes(theta)}")
        if not _close(obj.delta(_cast(canon, np.float64)), obj.delta(theta), 1e-10):
            _fail("canonicalize", "delta(canonicalize(θ)) differs from delta(θ): canonicalize must not change Δ")
        passed.append("canonicalize")

    if callable(getattr(raw, "best_fit", None)) and not uses_base and not shared:
        stage.check = "best fit"
        _check_best_fit(raw, theta, rank, rng, frozen)
        passed.append("best fit")

    if callable(getattr(raw, "best_fit_given_shared", None)) and shared:
        stage.check = "best fit given shared"
        _check_best_fit_given_shared(raw, obj, theta, rank, rng, frozen)
        passed.append("best fit given shared")

    if getattr(raw, "init_from_residuals", False):
        stage.check = "init from residuals"
        residuals = rng.standard_normal((T, d_out, d_in))
        _check_shapes(raw, d_out, d_in, rank, T, seed, base if uses_base else None, shared, frozen,
                      residuals=residuals, check="init from residuals")
        passed.append("init from residuals")

    if is_basis_equivariant(plain):
        stage.check = "basis equivariance"
        _check_equivariance(raw, obj, theta, G, rank, rng, frozen, seed)
        passed.append("basis equivariance")

    if has_second_order(plain) and not uses_base and not shared:
        stage.check = "second order"
        _check_second_order(raw, theta, G, train, rng, fd_rtol, fd_eps)
        passed.append("second order")

    if rank_options(plain):
        stage.check = "rank options"
        _check_rank_options(plain, stage, d_out, d_in, rank, T, seed, frozen)
        passed.append("rank options")

    stage.check = "fast path numba"
    if _check_fast_path(raw, theta, G, rank, rng, base if uses_base else None, T, d_out, d_in, stage):
        passed.append("fast path numba")


def _shapes(params) -> dict:
    return {k: tuple(np.shape(v)) for k, v in params.items()}


def _check_shapes(raw, d_out, d_in, rank, T, seed, base, shared, frozen, residuals=None, check="shapes") -> dict:
    shapes = raw.shapes(d_out, d_in, rank)
    extra = {} if residuals is None else {"residuals": residuals}
    params = raw.init(np.random.default_rng(seed), d_out, d_in, rank, T, *(() if base is None else (base,)), **extra)
    if not isinstance(params, dict):
        _fail(check, f"init() returned a {type(params).__name__}, expected a dict of arrays")
    if set(params) != set(shapes):
        _fail(check, f"init() returned parameters {sorted(params)} but shapes() declares {sorted(shapes)} "
                     f"(frozen and shared parameters belong to both)")
    missing = sorted((frozen | shared) - set(shapes))
    if missing:
        _fail(check, f"parameters {missing} are declared frozen/shared but are not in shapes() and init()")
    for name, shape in shapes.items():
        want = tuple(shape) if name in shared else (T, *shape)
        if tuple(np.shape(params[name])) != want:
            kind = "shared parameter (no task axis)" if name in shared else "per-task parameter (task axis first)"
            _fail(check, f"init()[{name!r}] has shape {np.shape(params[name])}, expected {want} for a {kind}")
    return params


def _warn_degenerate_start(obj, params, G, frozen) -> None:
    """Warn where every trainable parameter's gradient is zero at init (for a random G)."""
    grads = obj.pullback(params, G)
    trained = [k for k in grads if k not in frozen]
    if trained and all(not np.any(np.asarray(grads[k])) for k in trained):
        warnings.warn(f"[start] init() starts where every gradient is zero (pullback of a random G at init's "
                      f"parameters: {', '.join(repr(k) for k in sorted(trained))} all 0), so gd and ALS's inner "
                      f"steps never leave it; start at least one factor away from 0 (LoRA's init: B = 0, C random)",
                      ConformanceWarning, stacklevel=4)


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


def _check_second_order(raw, theta, G, train, rng, fd_rtol, fd_eps):
    """jvp against finite differences of delta, curvature against those of pullback (G fixed), and
    Δ constant to second order along every symmetry tangent."""
    direction = {k: rng.standard_normal(v.shape) if k in train else np.zeros_like(v) for k, v in theta.items()}

    def moved(step):
        return {k: theta[k] + step * direction[k] for k in theta}

    fd = (np.asarray(raw.delta(moved(fd_eps))) - np.asarray(raw.delta(moved(-fd_eps)))) / (2 * fd_eps)
    if not _close(raw.jvp(theta, direction), fd, 10 * fd_rtol, 10 * fd_rtol):
        _fail("second order", "jvp() disagrees with finite differences of delta()")
    curvature = raw.curvature(theta, G, direction)
    plus, minus = raw.pullback(moved(fd_eps), G), raw.pullback(moved(-fd_eps), G)
    for name in train:
        fd = (np.asarray(plus[name]) - np.asarray(minus[name])) / (2 * fd_eps)
        if not _close(curvature[name], fd, 10 * fd_rtol, 10 * fd_rtol):
            _fail("second order", f"curvature()[{name!r}] disagrees with finite differences of pullback() (G fixed)")
    scale = float(np.abs(np.asarray(raw.delta(theta))).max()) or 1.0
    for tangent in raw.symmetry_tangents(theta):
        change = np.asarray(raw.jvp(theta, tangent))
        if float(np.abs(change).max()) > 1e-10 * scale:
            _fail("second order", "a symmetry_tangents() direction changes Δ to first order (jvp is not 0 along it)")


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


def _check_fast_path(raw, theta, G, rank, rng, base, T, d_out, d_in, stage) -> bool:
    """The members ``fast_paths["numba"]`` overrides give the plain members' numbers and dtypes
    (False where there is no such fast path or Numba is not installed)."""
    fast = (getattr(raw, "fast_paths", None) or {}).get("numba")
    if fast is None:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    fast = _Guarded(fast, stage, "fast_paths['numba'].")
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


def _check_best_fit_given_shared(raw, obj, theta, rank, rng, frozen):
    """best_fit_given_shared(R, rank, shared) returns the per-task parameters only; with the shared
    ones fixed it is exact on representable targets, stationary and optimal over the per-task
    trainable parameters on random ones, and the batch equals task by task."""
    check = "best fit given shared"
    shared = {k: v for k, v in theta.items() if k in obj.shared}
    own = sorted(k for k in theta if k not in obj.shared)
    T = next(v for k, v in theta.items() if k not in obj.shared).shape[0]

    def fitted(R):
        fit = raw.best_fit_given_shared(R, rank, dict(shared))
        if not isinstance(fit, dict) or sorted(fit) != own:
            _fail(check, f"best_fit_given_shared() returned {sorted(fit) if isinstance(fit, dict) else fit!r}, "
                         f"expected the per-task parameters {own} (not the shared ones)")
        return {**shared, **fit}

    def loss(th, R):
        E = np.asarray(obj.delta(th)) - R
        return 0.5 * np.sum(E.reshape(T, -1) ** 2, axis=1)

    R = np.asarray(obj.delta(theta))
    if not np.all(loss(fitted(R), R) <= 1e-16 * max(1.0, float(np.sum(R * R)))):
        _fail(check, f"best_fit_given_shared(Δ(θ)) does not reproduce a Δ with these shared parameters "
                     f"(loss {loss(fitted(R), R).max():.3e})")
    R = rng.standard_normal(R.shape)
    fit = fitted(R)
    base = loss(fit, R)
    grads = obj.pullback(fit, np.asarray(obj.delta(fit)) - R)
    per_task = [k for k in grads if k not in obj.shared and k not in frozen]
    gnorm = np.sqrt(sum(np.sum(np.asarray(grads[k]).reshape(T, -1) ** 2, axis=1) for k in per_task))
    if np.any(gnorm > 1e-8 * max(1.0, float(np.sqrt(np.sum(R * R))))):
        _fail(check, f"best_fit_given_shared(R) is not stationary in the per-task parameters: gradient norm "
                     f"{np.max(gnorm):.3e}")
    for _ in range(5):
        moved = {k: np.asarray(v) + 1e-3 * rng.standard_normal(np.shape(v)) if k in per_task else v
                 for k, v in fit.items()}
        if np.any(loss(moved, R) < base - 1e-10 * np.maximum(base, 1.0)):
            _fail(check, "a small perturbation of the per-task parameters fits R better: the fit is not optimal")
    loop = np.concatenate([np.asarray(obj.delta(obj.task(fitted(R[t:t + 1]), 0))) for t in range(T)])
    if not _close(obj.delta(fit), loop, 1e-8, atol=1e-10):
        _fail(check, "best_fit_given_shared() of the batch differs from task by task")


def _orthonormal(rng, d, m):
    Q, _ = np.linalg.qr(rng.standard_normal((d, m)))
    return Q


def _check_equivariance(raw, obj, theta, G, rank, rng, frozen, seed):
    """Δ(change_basis(θ, U, V)) = U Δ(θ) Vᵀ; lifting parameters of a smaller problem; and for the
    class's own change_basis, ‖θ‖ kept and gradients mapped like parameters."""
    check = "basis equivariance"
    kind = is_basis_equivariant(raw)
    T, d_out, d_in = np.shape(obj.delta(theta))
    if kind == "same_basis" and d_out != d_in:
        _fail(check, f"basis_equivariance='same_basis' needs square updates; Δ is {d_out} × {d_in}")
    U = _orthonormal(rng, d_out, d_out)
    V = U if kind == "same_basis" else _orthonormal(rng, d_in, d_in)
    rotated = change_basis(raw, dict(theta), U, V)
    if not _close(obj.delta(_cast(rotated, np.float64)), U @ np.asarray(obj.delta(theta)) @ V.T, 1e-10):
        _fail(check, f"delta(change_basis(θ, U, V)) differs from U Δ(θ) Vᵀ for orthogonal U, V "
                     f"(basis_equivariance={kind!r})")
    m_out = max(rank, d_out - 1)
    m_in = m_out if kind == "same_basis" else max(rank, d_in - 1)
    small = raw.init(np.random.default_rng(seed), m_out, m_in, rank, T)
    small = {k: v if k in frozen else v + 0.3 * rng.standard_normal(np.shape(v))
             for k, v in _cast(small, np.float64).items()}
    Q_out = _orthonormal(rng, d_out, m_out)
    Q_in = Q_out if kind == "same_basis" else _orthonormal(rng, d_in, m_in)
    lifted = change_basis(raw, small, Q_out, Q_in)
    want = {k: np.shape(v) for k, v in theta.items()}
    if {k: np.shape(v) for k, v in lifted.items()} != want:
        _fail(check, f"change_basis of a {m_out} × {m_in} problem's parameters to {d_out} × {d_in} gave "
                     f"{_shapes(lifted)}, expected {want}")
    if not _close(obj.delta(_cast(lifted, np.float64)), Q_out @ np.asarray(obj.delta(small)) @ Q_in.T, 1e-10):
        _fail(check, "delta(change_basis(θ, Q_out, Q_in)) differs from Q_out Δ(θ) Q_inᵀ for Q with orthonormal "
                     "columns (lifting a smaller problem's parameters)")
    if not callable(getattr(raw, "change_basis", None)):
        return  # lifted through the family (factors / from_factors): Δ is what the reduction needs
    norm = sum(float(np.sum(np.asarray(v) ** 2)) for v in theta.values())
    if abs(sum(float(np.sum(np.asarray(v) ** 2)) for v in rotated.values()) - norm) > 1e-10 * max(norm, 1.0):
        _fail(check, "change_basis(θ, U, V) changes ‖θ‖ for orthogonal U, V: it must be an isometry")
    grads = obj.pullback(theta, G)
    mapped = change_basis(raw, {**theta, **grads}, U, V)
    again = obj.pullback(rotated, U @ G @ V.T)
    for name in grads:
        if not _close(again[name], mapped[name], 1e-10, atol=1e-12):
            _fail(check, f"pullback()[{name!r}] at change_basis(θ, U, V) with U G Vᵀ differs from change_basis of "
                         f"the gradient: gradients must change basis like the parameters")


def _check_rank_options(plain, stage, d_out, d_in, rank, T, seed, frozen):
    """Each rank option is a keyword of the class that reads back; another value gives agreeing
    shapes() and init()."""
    check = "rank options"
    for name, value in rank_options(plain).items():
        other_value = 1 if value != 1 else min(2, d_out, d_in)
        try:
            other = type(plain)(**{name: other_value})
        except Exception as exc:  # the class refusing its own rank option
            raise _wrapped(check, f"{type(plain).__name__}({name}={other_value})", exc) from exc
        if getattr(other, name, None) != other_value:
            _fail(check, f"{type(plain).__name__}({name}={other_value}).{name} reads back as "
                         f"{getattr(other, name, None)!r}: rank options must be attributes of the instance")
        guarded = _Guarded(other, stage, f"{type(plain).__name__}({name}={other_value}).")
        _check_shapes(guarded, d_out, d_in, rank, T, seed, None, set(shared_names(other)), frozen, check=check)


class _Merged:
    """A fast path's members where it has them, the plain ones elsewhere (what the solvers call)."""

    def __init__(self, fast, raw):
        self.fast, self.raw = fast, raw

    def __getattr__(self, member):
        value = getattr(self.fast, member, None)
        return value if value is not None else getattr(self.raw, member)


def check_installed() -> list[dict]:
    """Run the kit on every registered parameterization and problem generator (built-ins, plugins,
    ``register``-ed ones).

    One dict per registry entry, parameterizations then generators, each sorted by name: ``name``,
    ``group`` ("fastlora.peft" or "fastlora.problems"), ``distribution``, ``version``, ``ok``
    (bool), ``passed`` (the checks passed, in order, also when one then failed), ``failure``
    (None, the :class:`ConformanceError` message — which names the member whose own exception it
    wraps — or the load error of a plugin that does not load) and ``warnings`` (the kit's
    :class:`ConformanceWarning` messages).
    """
    from . import generators
    from . import peft as peft_registry
    rows = []
    for registry, check in ((peft_registry, check_parameterization), (generators, check_problem_generator)):
        for info in registry.info():
            row = {"name": info["name"], "group": info["group"], "distribution": info["distribution"],
                   "version": info["version"], "ok": False, "passed": [], "failure": info["error"], "warnings": []}
            if info["error"] is None:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConformanceWarning)
                    try:
                        row.update(ok=True, passed=check(registry.get(info["name"])))
                    except ConformanceError as exc:
                        row.update(ok=False, failure=str(exc), passed=exc.passed)
                    except Exception as exc:  # noqa: BLE001 - a kit bug is a failed row, not a crash
                        row.update(ok=False, failure=f"{type(exc).__name__}: {exc}")
                row["warnings"] = [str(w.message) for w in caught if issubclass(w.category, ConformanceWarning)]
            rows.append(row)
    return rows


def check_problem_generator(generator, d: int = 6, k: int = 2, T: int = 3, n: int = 30, seed: int = 0,
                            d_out: int | None = None, n_test_tasks: int = 2, **options) -> list[str]:
    """Run the generator checks on ``generator`` (a callable, or a registered law's name) with its
    ``options``; returns the names of the checks passed.

    ``protocol`` (it takes the standard arguments), ``problem`` (a fastlora.Problem whose d, d_out,
    k, T, n, noise, seed are those asked for), ``shapes`` (A_star (d_out, d), B_star (T, d_out, k),
    C_star (T, d, k), T training and ``n_test_tasks`` held-out tasks of that shape),
    ``ground truth`` (every task has W_star; W*_t = A* + B*_t C*_tᵀ for the training tasks; each
    held-out task's W*_t − A* has rank <= k), ``determinism`` (the same seed draws the same
    problem, another seed another one, ``new_task(s)`` the same task twice and a new one for
    s + 1), ``finite samples`` (with ``n`` samples: tasks with n and the same statistics for the
    same seed).  Raises :class:`ConformanceError` like :func:`check_parameterization`.
    """
    from . import generators
    d, k, T = check_int("d", d, low=1), check_int("k", k, low=1), check_int("T", T, low=1)
    n, seed = check_int("n", n, low=1), check_int("seed", seed, low=0)
    n_test_tasks = check_int("n_test_tasks", n_test_tasks, low=1)
    d_out = d if d_out is None else check_int("d_out", d_out, low=1)
    passed: list[str] = []
    stage = _Stage()
    try:
        _run_generator_checks(generators, generator, dict(d=d, k=k, T=T, n=None, noise=0.1, seed=seed, d_out=d_out,
                                                          n_test_tasks=n_test_tasks), n, options, passed, stage)
    except ConformanceError as exc:
        exc.passed = list(passed)
        raise
    except Exception as exc:  # what the generator returned broke the kit's own code
        raise ConformanceError(f"[{stage.check}] the kit could not use what the generator returned: "
                               f"{type(exc).__name__}: {exc}", passed, check=stage.check) from exc
    return passed


def _run_generator_checks(generators, generator, args, n, options, passed, stage) -> None:
    from .problems import Problem
    fn = generators.get(generator) if isinstance(generator, str) else generator
    errors = generators.generator_errors(fn)
    if errors:
        _fail("protocol", "; ".join(errors))
    passed.append("protocol")

    def draw(check, **changes):
        stage.check = check
        try:
            return fn(**{**args, **changes}, **options)
        except Exception as exc:  # the generator's own code raising
            raise _wrapped(check, "generate()", exc) from exc

    prob = draw("problem")
    if not isinstance(prob, Problem):
        _fail("problem", f"the generator returned a {type(prob).__name__}, expected a fastlora.Problem")
    asked = {"d": args["d"], "d_out": args["d_out"], "k": args["k"], "T": args["T"], "n": None,
             "noise": args["noise"], "seed": args["seed"]}
    got = {key: getattr(prob, key, None) for key in asked}
    if got != asked:
        _fail("problem", f"the problem says {got}, asked for {asked}")
    passed.append("problem")

    stage.check = "shapes"
    d, d_out, k, T = args["d"], args["d_out"], args["k"], args["T"]
    for name, want in (("A_star", (d_out, d)), ("B_star", (T, d_out, k)), ("C_star", (T, d, k))):
        value = getattr(prob, name, None)
        if value is None or tuple(np.shape(value)) != want:
            _fail("shapes", f"prob.{name} is {None if value is None else np.shape(value)}, expected {want}")
    if len(prob.tasks) != T or len(prob.test_tasks) != args["n_test_tasks"]:
        _fail("shapes", f"{len(prob.tasks)} training and {len(prob.test_tasks)} held-out tasks, expected {T} and "
                        f"{args['n_test_tasks']}")
    for i, task in enumerate([*prob.tasks, *prob.test_tasks]):
        if (task.d_out, task.d_in) != (d_out, d) or not task.is_population:
            _fail("shapes", f"task {i} is {task.d_out} × {task.d_in} (population: {task.is_population}), expected "
                            f"{d_out} × {d} population tasks for n=None")
    passed.append("shapes")

    stage.check = "ground truth"
    A_star = np.asarray(prob.A_star, dtype=np.float64)
    if not np.isfinite(A_star).all():
        _fail("ground truth", "prob.A_star is not finite")
    for i, task in enumerate([*prob.tasks, *prob.test_tasks]):
        if not task.has_ground_truth:
            _fail("ground truth", f"task {i} has no W_star: evaluate measures excess risk against it")
    for t, task in enumerate(prob.tasks):
        if not _close(task.W_star, A_star + prob.B_star[t] @ np.asarray(prob.C_star[t]).T, 1e-10, atol=1e-12):
            _fail("ground truth", f"training task {t}: W_star differs from A_star + B_star[{t}] C_star[{t}]ᵀ")
    for t, task in enumerate(prob.test_tasks):
        singular = np.linalg.svd(task.W_star - A_star, compute_uv=False)
        if np.sum(singular > 1e-9 * max(1.0, singular[0])) > k:
            _fail("ground truth", f"held-out task {t}: W_star − A_star has rank > k={k}")
    passed.append("ground truth")

    again, other = draw("determinism"), draw("determinism", seed=args["seed"] + 1)
    stage.check = "determinism"
    if not (np.array_equal(again.A_star, prob.A_star) and all(
            np.array_equal(a.W_star, b.W_star) for a, b in zip([*again.tasks, *again.test_tasks],
                                                                 [*prob.tasks, *prob.test_tasks]))):
        _fail("determinism", f"two draws with seed={args['seed']} differ: the problem must be a function of the seed")
    if np.array_equal(other.A_star, prob.A_star) and all(
            np.array_equal(a.W_star, b.W_star) for a, b in zip(other.tasks, prob.tasks)):
        _fail("determinism", f"seed={args['seed'] + 1} draws the same problem as seed={args['seed']}")
    if not callable(getattr(prob, "new_task", None)):
        _fail("determinism", "the problem has no new_task(seed)")
    first, second = prob.new_task(0).W_star, again.new_task(0).W_star
    if not np.array_equal(first, second) or np.array_equal(first, prob.new_task(1).W_star):
        _fail("determinism", "new_task(s) must give the same task for the same s and seed, another for s + 1")
    passed.append("determinism")

    finite, twin = draw("finite samples", n=n), draw("finite samples", n=n)
    stage.check = "finite samples"
    for t, (task, same) in enumerate(zip(finite.tasks, twin.tasks)):
        if task.is_population or task.n != n or (task.d_out, task.d_in) != (d_out, d):
            _fail("finite samples", f"with n={n}, training task {t} has n={task.n}, expected {n} samples")
        if not (np.array_equal(task.Sigma, same.Sigma) and np.array_equal(task.C, same.C)):
            _fail("finite samples", f"with n={n}, two draws with the same seed give task {t} different data")
    passed.append("finite samples")
