"""The engine (fastlora.engine): one source, run as Python (numpy backend) and compiled (numba).

What is checked: the compiled primitives against their numpy form; every covered path compiled
against uncompiled (results, iteration counts, status codes); results independent of the batch;
the L-BFGS against SciPy's L-BFGS-B and its direction against the explicit BFGS update of
tests/naive.py; the safeguards as properties (every accepted step lowers the objective); the
objective reported at the returned point; a failing problem inside a batch; raise-or-return
decided the same for one problem and many.
"""
from __future__ import annotations

import naive
import numpy as np
import pytest

import fastlora as fl
from fastlora import engine as E
from fastlora.engine import linalg, loops, status, steps
from fastlora.kernels import fits

# every covered path: (problem, retrain arguments)
PATHS = {
    "standard population": (dict(d=8, k=1, T=3), dict(method="standard")),
    "standard finite": (dict(d=8, k=1, T=3, n=400, noise=0.1), dict(method="standard")),
    "reptile population": (dict(d=8, k=1, T=3), dict(method="reptile")),
    "reptile finite": (dict(d=8, k=1, T=3, n=400, noise=0.1), dict(method="reptile", max_iter=300)),
    "als population lora_sym": (dict(d=8, k=1, T=3), dict(peft="lora_sym", solver="als", reduction="none")),
    "als population lora": (dict(d=6, d_out=5, k=1, T=4, symmetric=False),
                            dict(peft="lora", solver="als", reduction="none")),
    "als population full": (dict(d=6, k=1, T=3), dict(peft="full", solver="als")),
    "als reduced lora_sym": (dict(d=12, k=1, T=3), dict(peft="lora_sym")),
    "als finite lora": (dict(d=6, d_out=5, k=1, T=4, n=2000, noise=0.01, symmetric=False), dict(peft="lora")),
    "als finite full": (dict(d=6, k=1, T=3, n=300, noise=0.1), dict(peft="full", solver="als")),
    "lbfgs finite lora_sym": (dict(d=8, k=1, T=3, n=2000, noise=0.01), dict(peft="lora_sym")),
    "lbfgs joint population lora": (dict(d=6, k=1, T=3, symmetric=False),
                                    dict(peft="lora", solver="gd", optimizer="lbfgs", eliminate_A=False,
                                         reduction="none", max_iter=400)),
    "gd finite lora_sym": (dict(d=6, k=1, T=3, n=500, noise=0.1),
                           dict(peft="lora_sym", solver="gd", optimizer="gd", max_iter=150)),
    # from A = zeros: at the standard solution ∇_A F is rounding noise, and Adam's first step is ±lr in
    # its sign (m/√v), so two roundings would part at once
    "adam finite lora": (dict(d=6, k=1, T=3, n=500, noise=0.1, symmetric=False),
                         dict(peft="lora", solver="gd", optimizer="adam", max_iter=150, init_A="zeros")),
}


def _solve(path, backend, seed=0, **extra):
    problem, kwargs = PATHS[path]
    return fl.retrain(fl.make_problem(seed=seed, **problem), backend=backend, **{**kwargs, **extra})


@pytest.mark.parametrize("path", sorted(PATHS))
def test_compiled_and_uncompiled_engines_agree(path):
    """At tol 1e-12: stopping at a relative change of 1e-10 (the default) leaves A up to a few 1e-10 from
    the optimum, and rounding decides the last iterate of an Anderson-accelerated run."""
    python, compiled = _solve(path, "numpy", tol=1e-12), _solve(path, "numba", tol=1e-12)
    assert python.info["engine"] == "python" and compiled.info["engine"] == "compiled"
    # the same kind of end (two convergence tests can trade places within an iteration by rounding)
    assert python.converged == compiled.converged and ("max_iter" in python.message) == ("max_iter" in compiled.message)
    assert abs(python.n_iter - compiled.n_iter) <= 2
    scale = max(np.linalg.norm(python.A), 1.0)
    assert np.linalg.norm(python.A - compiled.A) <= 1e-10 * scale
    assert compiled.objective == pytest.approx(python.objective, rel=1e-9, abs=1e-14 * scale ** 2)
    if python.params:
        np.testing.assert_allclose(compiled.delta(0), python.delta(0), atol=1e-9 * scale)


@pytest.mark.parametrize("path", ["lbfgs finite lora_sym", "als population lora_sym", "als finite lora"])
def test_float32_runs_compiled_and_agrees_with_float64(path):
    single, double = _solve(path, "numba", dtype="float32"), _solve(path, "numba")
    assert single.A.dtype == np.float32 and single.converged
    assert np.linalg.norm(single.A - double.A) <= 1e-4 * np.linalg.norm(double.A)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("path", ["lbfgs finite lora_sym", "als population lora", "reptile finite"])
def test_a_problem_s_result_does_not_depend_on_the_batch(path, backend):
    problem, kwargs = PATHS[path]
    problems = [fl.make_problem(seed=s, **problem) for s in range(5)]
    together = fl.retrain_many(problems, seeds=list(range(5)), backend=backend, threads=1, **kwargs)
    for s, (prob, res) in enumerate(zip(problems, together)):
        alone = fl.retrain(prob, seed=s, backend=backend, **kwargs)
        np.testing.assert_array_equal(res.A, alone.A)
        assert res.n_iter == alone.n_iter and res.message == alone.message


def test_problems_on_several_threads_agree_with_one_thread():
    problem, kwargs = PATHS["lbfgs finite lora_sym"]
    problems = [fl.make_problem(seed=s, **problem) for s in range(2 * E.PARALLEL_MIN_PROBLEMS)]
    one = fl.retrain_many(problems, backend="numba", threads=1, **kwargs)
    two = fl.retrain_many(problems, backend="numba", threads=2, **kwargs)
    for a, b in zip(one, two):
        assert a.n_iter == b.n_iter
        np.testing.assert_allclose(a.A, b.A, rtol=0, atol=1e-12 * np.linalg.norm(a.A))


# -- the primitives ----------------------------------------------------------------------------
def test_compiled_primitives_agree_with_their_numpy_form():
    import numba

    import fastlora.engine.compiled  # noqa: F401  (registers the compiled primitives)

    def reference(a, b, out, x, y, m, v):
        linalg.matmul(a, b, out)
        linalg.matmul_add(a, b.T, out, 0.5)
        linalg.axpy(-2.0, x, y)
        linalg.scale(3.0, y)
        linalg.adam_moments(x, m, v, 0.9, 0.999)
        linalg.adam_apply(y, m, v, 0.1, 2.0, 1e-8)
        return linalg.inner(out, out) + linalg.inner(x, y)

    compiled = numba.njit(reference)  # the same source, through the primitives' Numba overloads

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 5)).T, rng.standard_normal((5, 5))  # a: a transposed (F-ordered) view
    x, y, m, v = (rng.standard_normal(9) for _ in range(4))
    v = np.abs(v)
    first = [np.zeros((5, 5)), y.copy(), m.copy(), v.copy()]
    second = [np.zeros((5, 5)), y.copy(), m.copy(), v.copy()]
    got = compiled(a, b, first[0], x, first[1], first[2], first[3])
    want = reference(a, b, second[0], x, second[1], second[2], second[3])
    assert got == pytest.approx(want, rel=1e-13)
    for g, w in zip(first, second):
        np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-14)


def test_compiled_factor_products_and_cholesky_inverse_agree_with_their_numpy_form():
    import numba

    import fastlora.engine.compiled  # noqa: F401

    def reference(B, C, out, M, rtol, inverse):
        linalg.matmul_tn_add(B, C, out, -0.5)
        return fits.cholesky_inverse(M, rtol, inverse)

    compiled = numba.njit(reference)
    rng = np.random.default_rng(4)
    B, C = rng.standard_normal((2, 5)), rng.standard_normal((2, 4))
    X = rng.standard_normal((30, 6))
    cases = {"well conditioned": (X.T @ X, True), "singular": (X[:4].T @ X[:4], False),
             "indefinite": (np.diag([1.0, 2.0, -1e-3, 1.0, 1.0, 1.0]), False),
             "under the cut": (np.diag([1.0] * 5 + [1e-15]), False), "not finite": (np.full((6, 6), np.nan), False)}
    for name, (M, proven) in cases.items():
        got, want = [np.ones((5, 4)), np.zeros((6, 6))], [np.ones((5, 4)), np.zeros((6, 6))]
        assert compiled(B, C, got[0], M, 1e-12, got[1]) is proven, name
        assert reference(B, C, want[0], M, 1e-12, want[1]) is proven, name
        np.testing.assert_allclose(got[0], want[0], rtol=1e-14)
        np.testing.assert_allclose(got[0], 1.0 - 0.5 * B.T @ C, rtol=1e-14)
        if proven:
            np.testing.assert_allclose(got[1], np.linalg.inv(M), rtol=1e-12)
            np.testing.assert_allclose(want[1], np.linalg.inv(M), rtol=1e-12)


def test_compiled_symmetric_eigen_agrees_with_eigh():
    """Jacobi rotations (n <= JACOBI_MAX_DIM) and LAPACK beyond: eigenvalues ascending to rounding of the
    largest, orthonormal eigenvectors, H V = V Λ — at any scale, with repeated and zero eigenvalues, in
    float32 too, and the same as the numpy form's eigenvalues."""
    import numba

    import fastlora.engine.compiled  # noqa: F401
    from fastlora.engine._numba_linalg import JACOBI_MAX_DIM

    compiled = numba.njit(lambda H: linalg.symmetric_eigen(H))
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 4, 5, JACOBI_MAX_DIM, JACOBI_MAX_DIM + 1):
        for trial in range(40):
            G = rng.standard_normal((n, n)) * 10.0 ** int(rng.integers(-150, 150))
            if trial % 4 == 0:  # rank one: n - 1 zero eigenvalues
                G = np.outer(G[:, 0], G[:, 0])
            if trial % 4 == 1:  # a repeated eigenvalue
                G = np.diag(np.r_[np.full(n - n // 2, 2.0), np.arange(n // 2)]) * 10.0 ** int(rng.integers(-50, 50))
            H = 0.5 * (G + G.T)
            lam, V = compiled(H)
            want, _ = linalg.symmetric_eigen(H)
            top = np.abs(want).max()
            assert np.all(np.diff(lam) >= 0), (n, trial)
            np.testing.assert_allclose(lam, want, rtol=0, atol=1e-14 * top)
            np.testing.assert_allclose(V.T @ V, np.eye(n), rtol=0, atol=1e-13)
            np.testing.assert_allclose(H @ V, V * lam, rtol=0, atol=1e-13 * top)
        G = rng.standard_normal((n, n)).astype(np.float32)
        lam32, V32 = compiled(G + G.T)
        assert lam32.dtype == np.float32 and V32.dtype == np.float32
        np.testing.assert_allclose(lam32, np.linalg.eigvalsh(G + G.T), rtol=0, atol=1e-5 * np.abs(lam32).max())
    # entries at the top of float64's range (a scale of 2^1024 was inf: NaN eigenvalues), equal diagonal
    # entries with tiny couplings (a 45° rotation each sweep: 30 sweeps), and a NaN (hidden: its diagonal came back)
    np.testing.assert_allclose(compiled(np.diag([1.7976931348623e308, 1.0]))[0], [1.0, 1.7976931348623e308])
    a, b = -2.552924162973338e-10, -2.2252872894412914e-07
    H = np.array([[1, a, 0, b], [a, -1, b, 0], [0, b, 1, a], [b, 0, a, -1]])
    lam, V = compiled(H)
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(H), rtol=0, atol=1e-14)
    np.testing.assert_allclose(H @ V, V * lam, rtol=0, atol=1e-14)
    H = np.eye(3)
    H[0, 1] = H[1, 0] = np.nan
    with pytest.raises(np.linalg.LinAlgError):
        compiled(H)


def test_a_fits_loss_floor_is_the_exactly_rounded_value_where_float64_cancels():
    """floor = ½⟨ŴΣ, Ŵ⟩ − ⟨Ŵ, C⟩ + s cancels ~9 digits at a near-noiseless task: the compiled
    double-double evaluation equals the exact rational value rounded once (tests/naive.py), the
    numpy form (long double) is within its precision, and plain float64 is not (so this can fail)."""
    import numba

    import fastlora.kernels.fits_numba  # noqa: F401  (registers the Numba forms)
    from fastlora.tasks import least_squares_fits

    rng = np.random.default_rng(5)
    X = rng.standard_normal((200, 5))
    Y = X @ rng.standard_normal((3, 5)).T * 10 + 1e-4 * rng.standard_normal((200, 3))
    task = fl.Task(X, Y)
    W_hat = np.linalg.solve(task.Sigma, task.C.T).T
    exact = naive.exact_task_loss(W_hat, task.Sigma, task.C, task.s)
    assert exact < 1e-8 * task.s  # the cancellation this guards
    compiled = numba.njit(lambda *a: fits.fit_floor(*a))(W_hat, task.Sigma, task.C, task.s)  # its Numba form
    assert compiled == exact or abs(compiled - exact) <= 2 * np.spacing(exact)
    if np.finfo(np.longdouble).eps < 1e-18:  # the numpy form's long double is wider than float64 here
        assert abs(fits.fit_floor(W_hat, task.Sigma, task.C, task.s) - exact) <= 1e-17 * task.s
    # a caller compiled with fastmath does not pass it on (reassociation would undo the error-free sums)
    hasty = numba.njit(fastmath=True)(lambda *a: fits.fit_floor(*a))(W_hat, task.Sigma, task.C, task.s)
    assert hasty == compiled
    plain = 0.5 * np.sum((W_hat @ task.Sigma) * W_hat) - np.sum(W_hat * task.C) + task.s
    assert abs(plain - exact) > 1e3 * abs(compiled - exact) + 1e-18 * task.s
    fitted, floor = least_squares_fits([task])  # the tasks' fits run the compiled evaluation
    assert floor[0] == pytest.approx(naive.exact_task_loss(fitted[0], task.Sigma, task.C, task.s), rel=1e-15)


def test_the_compiled_fits_loops_agree_with_their_numpy_form():
    """fastlora.kernels.fits' loops as compiled (what the tasks' fits run) and as numpy: the same tasks
    proven, fits to rounding, floors to the long double's precision; float32 matrices too for the
    engine's use of the Cholesky inverse."""
    import numba

    from fastlora.kernels import fits_numba
    from fastlora.tasks import pinv_rtol

    rng = np.random.default_rng(6)
    tasks = [fl.Task(X, X @ rng.standard_normal((4, 7)).T + 0.1 * rng.standard_normal((len(X), 4)))
             for X in (rng.standard_normal((m, 7)) for m in (50, 5, 200, 3, 30))]  # two with n < d: singular
    Sigma = np.array([t.Sigma for t in tasks])
    C = np.array([t.C for t in tasks])
    s = np.array([t.s for t in tasks])
    rtol = pinv_rtol(np.finfo(np.float64).eps, 7)
    cholesky_fits, fit_floors = fits_numba.compiled_loops(fl.config.settings.compiled_code_root())
    got, want = (np.zeros(C.shape), np.zeros(5, bool)), (np.zeros(C.shape), np.zeros(5, bool))
    cholesky_fits(Sigma, C, rtol, *got)
    fits.cholesky_fits(Sigma, C, rtol, *want)
    assert got[1].tolist() == want[1].tolist() == [True, False, True, False, True]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-11, atol=1e-13)
    floors = [np.empty(5), np.empty(5)]
    fit_floors(want[0], Sigma, C, s, floors[0])
    fits.fit_floors(want[0], Sigma, C, s, floors[1])
    np.testing.assert_allclose(floors[0], floors[1], rtol=1e-12, atol=1e-15 * s.max())
    assert (floors[0] >= 0).all()
    single = Sigma[0].astype(np.float32)
    inverse = [np.zeros((7, 7), np.float32), np.zeros((7, 7), np.float32)]
    compiled = numba.njit(lambda M, r, out: fits.cholesky_inverse(M, r, out))
    assert compiled(single, 1e-6, inverse[0]) and fits.cholesky_inverse(single, 1e-6, inverse[1])
    np.testing.assert_allclose(inverse[0], inverse[1], rtol=1e-4)


def test_whitening_pairs_whiten_and_the_whitened_fits_match_the_textbook_fit():
    """fastlora.tasks.whitening_pairs: Cholesky's (Lᵀ, L⁻ᵀ) where the factor proves Σ definite — the same
    verdicts as the compiled Cholesky inverse the tasks' fits take — and the symmetric roots where not
    (n < d); either way GᵀG = Σ and G G⁺ projects on Σ's range.  The whitened exact fit that reads them
    (lora fine-tuning on samples, both engines) is the reduced-rank regression of tests/naive.py (scipy's
    sqrtm) — a pair transposed, or the inverse root in place of the root, changes the fit."""
    from fastlora.tasks import _cholesky_fits, pinv_rtol, whitening_pairs

    rng = np.random.default_rng(12)
    W_true = rng.standard_normal((4, 7))
    tasks = [fl.Task(X, X @ W_true.T + 0.1 * rng.standard_normal((len(X), 4)), W_star=W_true)
             for X in (rng.standard_normal((m, 7)) * rng.uniform(0.2, 3.0, 7) for m in (50, 5, 200, 30))]
    Sigma = np.array([t.Sigma for t in tasks])
    L, L_inv, proven = fits.cholesky_factors(Sigma, pinv_rtol(np.finfo(np.float64).eps, 7))
    assert proven.tolist() == _cholesky_fits(Sigma, np.array([t.C for t in tasks]))[1].tolist() \
        == [True, False, True, True]
    one = (np.empty((7, 7)), np.empty((7, 7)))  # the one-matrix form: the stack's entry
    assert fits.cholesky_factor(Sigma[2], 1e-12, *one)
    np.testing.assert_array_equal(one[0], L[2])
    np.testing.assert_array_equal(one[1], L_inv[2])
    root, inverse_root = whitening_pairs(tasks)
    for G, G_plus, S, definite in zip(root, inverse_root, Sigma, proven):
        np.testing.assert_allclose(G.T @ G, S, rtol=1e-12, atol=1e-13 * np.abs(S).max())
        np.testing.assert_allclose(G @ G_plus, S @ np.linalg.pinv(S, rcond=1e-10), atol=1e-10)
        assert np.allclose(np.tril(G, -1), 0.0) == bool(definite)  # Lᵀ is upper triangular; Σ^{1/2} is not
    A = rng.standard_normal((4, 7))
    for backend in ("numba", "numpy"):
        for task in (tasks[0], tasks[2]):  # invertible Σ: the textbook fit is defined
            fitted = fl.finetune(A, task, peft="lora", rank=2, backend=backend)
            assert fitted.exact
            np.testing.assert_allclose(fitted.delta, naive.whitened_lowrank_fit(task, A, 2), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend,options", [("numba", {}), ("numpy", {}),
                                             ("numpy", {"callback": lambda *args: None})])  # the Python driver
def test_lbfgs_finds_the_same_minimizer_whatever_the_scale_of_the_objective(backend, options):
    """Σ, C and s scaled by c scale F by c and leave its minimizer: squared gradient norms of c = 1e155
    overflow and of 1e-170 underflow, which ended L-BFGS at once ("converged", A 77% off) before its
    norms were scaled (linalg.norm)."""
    problem = fl.make_problem(d=8, k=1, T=3, n=2000, noise=0.01, seed=2, sampler="stats")
    plain = fl.retrain(problem, backend=backend, **options)
    for c in (1e155, 1e-170):
        tasks = [fl.Task.from_statistics(t.Sigma * c, t.C * c, t.s * c, t.n) for t in problem.tasks]
        scaled = fl.retrain(tasks, rank=1, backend=backend, **options)
        assert scaled.converged and abs(scaled.n_iter - plain.n_iter) <= 2, (c, scaled.message)
        np.testing.assert_allclose(scaled.A, plain.A, rtol=0, atol=1e-8 * np.linalg.norm(plain.A))
        assert scaled.objective / c == pytest.approx(plain.objective, rel=1e-8)


@pytest.mark.parametrize("backend,options", [
    ("numba", {"solver": "gd"}), ("numpy", {"solver": "gd"}),
    ("numpy", {"solver": "gd", "callback": lambda *args: None}),  # the Python driver
    ("numpy", {"solver": "gd", "peft": "lora"}),
    ("numpy", {"solver": "als"}),  # lora_sym on samples: the inner-gradient adapter step (Python driver)
    ("numba", {"solver": "gd", "optimizer": "adam"}), ("numpy", {"solver": "gd", "optimizer": "adam"}),
    ("numpy", {"solver": "gd", "optimizer": "adam", "callback": lambda *args: None}),
])
def test_first_order_steps_start_at_the_datas_scale(backend, options):
    """gd's line search and ALS's inner gradient steps start at 1/tr(Σ)-sized steps (engine.steps.first_step):
    a fixed first step of 1/T (gd) or 1 (inner steps) on statistics ×1e-16 decreased F by less than its
    rounding, and the stall test reported the start converged (A 89-92 % off, F 92,000× the optimum).
    Adam's gradients are divided by the first one's RMS entry (engine.steps.adam_gradient_scale): with an
    absolute ε on the raw gradients of statistics ×1e-16 Adam did not move."""
    problem = fl.make_problem(d=6, k=1, T=3, n=2000, noise=0.01, seed=4, sampler="stats")
    plain = fl.retrain(problem, backend=backend, max_iter=3000, **options)
    assert plain.converged, plain.message
    for c in (1e-16, 1e-30, 1e16):
        tasks = [fl.Task.from_statistics(t.Sigma * c, t.C * c, t.s * c, t.n) for t in problem.tasks]
        scaled = fl.retrain(tasks, rank=1, backend=backend, max_iter=3000, **options)
        assert scaled.converged, (c, scaled.message)
        np.testing.assert_allclose(np.asarray(scaled.A), np.asarray(plain.A), rtol=0,
                                   atol=1e-6 * np.linalg.norm(plain.A))
        assert scaled.objective / c == pytest.approx(plain.objective, rel=1e-6)


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_first_steps_are_per_problem_in_the_python_driver(optimizer):
    """Problems at different scales batched in the Python driver (d > ENGINE_MAX_DIM) each take their own
    first step (gd) or gradient scale (Adam): retrain_many gives every problem what it gets alone."""
    problems = [fl.make_problem(d=34, k=1, T=2, n=400, noise=0.05, seed=s, sampler="stats") for s in (1, 2)]
    tasks = [[fl.Task.from_statistics(t.Sigma * c, t.C * c, t.s * c, t.n) for t in p.tasks]
             for p, c in zip(problems, (1.0, 1e-8))]
    options = dict(rank=1, solver="gd", optimizer=optimizer, max_iter=15, backend="numpy")
    together = fl.retrain_many(tasks, **options)
    for own, res in zip(tasks, together):
        np.testing.assert_array_equal(np.asarray(res.A), np.asarray(fl.retrain(own, **options).A))


@pytest.mark.parametrize("backend,options", [("numba", {}), ("numpy", {}), ("numpy", {"callback": lambda *a: None})])
def test_adam_in_float32_follows_the_datas_scale(backend, options):
    """In float32, (1 − β₂)·g² of statistics ×1e-20 underflows: with ε relative to the raw gradients the
    first step was lr/ε-sized and the solve diverged; Adam runs on gradients divided by the first one's RMS."""
    problem = fl.make_problem(d=6, k=1, T=3, n=2000, noise=0.01, seed=4, sampler="stats")
    kw = dict(rank=1, solver="gd", optimizer="adam", dtype="float32", max_iter=400, backend=backend, **options)
    plain = fl.retrain(problem.tasks, **kw)
    tasks = [fl.Task.from_statistics(t.Sigma * 1e-20, t.C * 1e-20, t.s * 1e-20, t.n) for t in problem.tasks]
    scaled = fl.retrain(tasks, **kw)
    np.testing.assert_allclose(np.asarray(scaled.A), np.asarray(plain.A), rtol=0, atol=1e-3 * np.linalg.norm(plain.A))
    assert scaled.objective / 1e-20 == pytest.approx(plain.objective, rel=2e-2)  # F: float32 cancellation in s


def test_shared_parameters_start_at_the_datas_scale():
    """tied_lora's shared parameters (ALS's inner steps) start at 1/mean tr(Σ_t)/d_in: a step of 1 on
    statistics ×1e-16 never moved them (converged=True at 3× the optimum)."""
    import fastlora_tied_lora  # noqa: F401  (the test command installs the shipped plugins)
    problem = fl.make_problem(d=6, k=1, T=3, n=2000, noise=0.01, seed=4, sampler="stats")
    plain = fl.retrain(problem.tasks, rank=1, peft="tied_lora", solver="als", backend="numpy")
    for c in (1e-16, 1e16):
        tasks = [fl.Task.from_statistics(t.Sigma * c, t.C * c, t.s * c, t.n) for t in problem.tasks]
        scaled = fl.retrain(tasks, rank=1, peft="tied_lora", solver="als", backend="numpy")
        assert scaled.objective / c == pytest.approx(plain.objective, rel=1e-6), c
        np.testing.assert_allclose(np.asarray(scaled.A), np.asarray(plain.A), rtol=0,
                                   atol=1e-6 * np.linalg.norm(plain.A))


@pytest.mark.parametrize("backend,options,d", [("numba", {}, 8), ("numpy", {}, 8),
                                               ("numpy", {"callback": lambda *args: None}, 8),  # the Python driver
                                               ("numpy", {}, 34),  # the Python driver by size
                                               ("numba", {"peft": "lora"}, 8), ("numpy", {"peft": "lora"}, 34)])
def test_the_default_solver_finds_the_optimum_whatever_the_labels_scale(backend, options, d):
    """Labels ×c (C ×c, s ×c²) scale the minimiser A by c.  From lora_sym's drawn start (Δ ~ its rank) the
    relative gradient test stopped far from it at c = 1e-5 and called that converged (F 2.7e4× the optimum,
    A/c 2e3 off); the start is now scaled to the residuals (solvers.common.start_factors)."""
    problem = fl.make_problem(d=d, k=1, T=4, n=400, noise=0.01, seed=0)
    plain = fl.retrain(problem.tasks, rank=1, backend=backend, **options)
    for c in (1e-5, 1e-8):
        tasks = [fl.Task.from_statistics(t.Sigma, c * t.C, c * c * t.s, t.n) for t in problem.tasks]
        scaled = fl.retrain(tasks, rank=1, backend=backend, **options)
        assert scaled.converged, (c, scaled.message)
        assert scaled.objective / (c * c) == pytest.approx(plain.objective, rel=1e-6), c
        np.testing.assert_allclose(np.asarray(scaled.A) / c, np.asarray(plain.A), rtol=0,
                                   atol=1e-6 * np.linalg.norm(plain.A))


@pytest.mark.parametrize("n,options", [(2000, {}), (2000, {"init_A": "zeros"}), (4, {}),  # n < d_in
                                       (2000, {"peft": "lora"})])
def test_tiny_task_differences_are_identified(n, options):
    """task_scales 1e-6: the tasks differ from A* by ~1e-6; the optimum is 0 and A = A*.  With A eliminated
    the start is scaled to the standard solution's residuals whatever init_A says (A0 is not used), and on
    fewer samples than inputs they are measured in Σ_t's metric (Ŵ_t's null-space part is arbitrary)."""
    problem = fl.make_problem(d=8, k=1, T=8 if n == 4 else 4, n=n, noise=0.0, seed=0, task_scales=[1e-6])
    res = fl.retrain(problem, **options)
    assert res.converged and fl.evaluate(res, problem)["rel_err_A"] < 1e-8, res.message


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_fine_tuning_finds_the_optimum_whatever_the_labels_scale(backend):
    """lora_sym fine-tuning (L-BFGS over the adapter, A fixed) starts at the residual W*_new − A's scale."""
    problem = fl.make_problem(d=8, k=1, T=3, n=400, noise=0.01, seed=0)
    task = problem.test_tasks[0].sample(400, seed=1)
    A = fl.retrain(problem, backend=backend).A
    plain = fl.finetune(A, task, rank=1, peft="lora_sym", backend=backend)
    c = 1e-8
    small = fl.Task.from_statistics(task.Sigma, c * task.C, c * c * task.s, task.n)
    scaled = fl.finetune(c * np.asarray(A), small, rank=1, peft="lora_sym", backend=backend)
    assert scaled.converged
    assert scaled.loss / (c * c) == pytest.approx(plain.loss, rel=1e-6)





def test_start_factors_leave_unit_scale_data_alone_and_are_per_problem():
    from fastlora.arrays import residual_spreads
    from fastlora.engine.steps import START_SCALE_LIMIT
    from fastlora.solvers.common import start_factors
    edge = START_SCALE_LIMIT
    factors = start_factors(np.array([1.0, 3.0, edge, edge / 2 ** 8, 2.0 ** -20, 0.0, np.nan, 2.0 ** -20]), 1)
    np.testing.assert_array_equal(factors, [1, 1, 1, 2.0 ** -4, 2.0 ** -10, 1, 1, 2.0 ** -10])
    assert start_factors(np.array([2.0 ** -20]), 16)[0] == 2.0 ** -11  # per √rank
    rng = np.random.default_rng(0)
    W = rng.standard_normal((2, 3, 4, 5))
    want = [np.sqrt(np.mean([np.sum((W[p, t] - W[p].mean(axis=0)) ** 2) for t in range(3)])) for p in range(2)]
    np.testing.assert_allclose(residual_spreads(W), want, rtol=1e-14)
    np.testing.assert_allclose(residual_spreads(W * 1e-200), np.array(want) * 1e-200, rtol=1e-14)  # no underflow
    A = rng.standard_normal((2, 4, 5))
    want = [np.sqrt(np.mean(np.sum((W[p] - A[p]) ** 2, axis=(1, 2)))) for p in range(2)]
    np.testing.assert_allclose(residual_spreads(W, None, A), want, rtol=1e-14)
    X = rng.standard_normal((2, 3, 3, 5))  # n = 3 < d_in = 5: Ŵ_t's null-space part is arbitrary, not residual
    Sigma = X.swapaxes(2, 3) @ X / 3
    null = np.linalg.svd(X)[2][..., 3:, :]  # rows spanning each Σ_t's null space
    moved = W + rng.standard_normal((2, 3, 4, 2)) @ null
    np.testing.assert_allclose(residual_spreads(moved, Sigma, A), residual_spreads(W, Sigma, A), rtol=1e-12)
    from fastlora import engine as E
    from fastlora.engine.loops import problem as quad_problem
    from fastlora.engine.steps import residual_spread
    for n in (300, 4, None):  # the engine's form of the rule agrees with the Python driver's stacks
        tasks = fl.make_problem(d=6, k=1, T=3, n=n, noise=0.1 if n else 0.0, seed=3).tasks
        qb = E.quad_batch([tasks], np.float64)
        start = rng.standard_normal((1, 6, 6))
        engine_form = residual_spread(quad_problem(*qb, 0), start[0])
        stacks = residual_spreads(qb.W_hat, None if qb.identity else qb.Sigma, start)
        assert engine_form == pytest.approx(stacks[0], rel=1e-12)
    problems = [fl.make_problem(d=d, k=1, T=3, n=300, noise=0.01, seed=s) for s in (1, 2, 3) for d in (6, 34)]
    for d in (6, 34):  # the engine and the Python driver
        tasks = [[fl.Task.from_statistics(t.Sigma, c * t.C, c * c * t.s, t.n) for t in p.tasks]
                 for p, c in zip([p for p in problems if p.d == d], (1.0, 1e-6, 1e-3))]
        together = fl.retrain_many(tasks, rank=1, backend="numpy")
        for own, res in zip(tasks, together):  # one problem's scaled start does not move another's
            np.testing.assert_array_equal(np.asarray(res.A), np.asarray(fl.retrain(own, rank=1, backend="numpy").A))


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_the_engine_and_the_python_driver_scale_the_same_start(optimizer):
    """gd and Adam move A and θ jointly: both paths measure the residuals from their start A (here 0), not
    from the standard solution (the engine did, as L-BFGS with A eliminated does)."""
    rng = np.random.default_rng(0)
    M = rng.standard_normal((8, 8))
    tasks = [fl.Task.population(M + 1e-6 * (N + N.T)) for N in rng.standard_normal((4, 8, 8))]
    kw = dict(rank=1, solver="gd", optimizer=optimizer, init_A="zeros", max_iter=5, backend="numpy")
    engine = fl.retrain(tasks, **kw)
    driver = fl.retrain(tasks, callback=lambda *args: None, **kw)
    np.testing.assert_allclose(np.asarray(engine.params["U"]), np.asarray(driver.params["U"]), rtol=1e-10, atol=0)


def test_first_step_is_the_inverse_total_curvature_scale():
    from fastlora.engine.steps import curvature_scale, first_step
    Sigma = np.stack([np.diag([1.0, 2.0, 3.0]), 4.0 * np.eye(3)])
    scales = np.array([curvature_scale(False, S) for S in Sigma])
    np.testing.assert_allclose(scales, [2.0, 4.0])
    assert first_step(scales) == pytest.approx(1 / 6.0)
    assert curvature_scale(True, np.zeros((0, 0))) == 1.0 and first_step(np.ones(3)) == pytest.approx(1 / 3)
    assert first_step(np.zeros(2)) == 0.5 and first_step(np.array([np.inf, 1.0])) == 0.5  # no data: 1/T


def test_compiled_norm_agrees_with_its_numpy_form_and_neither_overflows():
    import numba

    import fastlora.engine.compiled  # noqa: F401
    compiled = numba.njit(lambda x: linalg.norm(x))
    rng = np.random.default_rng(7)
    x = rng.standard_normal(30)
    for v in (x, x * 1e200, x * 1e-200, np.zeros(5), x.reshape(5, 6) * 1e160):
        want = np.linalg.norm(v / np.abs(v).max()) * np.abs(v).max() if v.any() else 0.0
        assert compiled(v) == pytest.approx(want, rel=1e-14) and linalg.norm(v) == pytest.approx(want, rel=1e-14)
    for bad in (np.array([1.0, np.nan, 2.0]), np.array([np.nan, 3.0]), np.array([1.0, np.inf])):
        assert np.isnan(compiled(bad)) == np.isnan(linalg.norm(bad)) == bool(np.isnan(bad).any())
        assert compiled(bad) == linalg.norm(bad) or np.isnan(compiled(bad))


def test_the_two_loop_direction_is_the_bfgs_update_of_the_kept_pairs():
    rng = np.random.default_rng(1)
    m, n = 4, 7
    S, Y, rho, alpha = np.zeros((m, n)), np.zeros((m, n)), np.zeros(m), np.zeros(m)
    pairs = head = 0
    gamma = 1.0
    kept = []
    for _ in range(6):  # more pairs than memory: the oldest are dropped
        s = rng.standard_normal(n)
        y = s + 0.3 * rng.standard_normal(n)
        if s @ y <= 0:
            continue
        pairs, head, gamma = steps.lbfgs_update(S, Y, rho, pairs, head, s, y, gamma, 1e-16)
        kept = ([*kept, (s, y)])[-m:]
    grad = rng.standard_normal(n)
    out = np.empty(n)
    steps.lbfgs_direction(S, Y, rho, alpha, pairs, head, grad, gamma, out)
    Sk = np.array([p[0] for p in kept])[None]
    Yk = np.array([p[1] for p in kept])[None]
    want = -naive.lbfgs_direction(Sk, Yk, np.ones((1, len(kept)), bool), grad[None], np.array([gamma]))[0]
    np.testing.assert_allclose(out, want, rtol=1e-10)


def test_a_pair_with_nonpositive_curvature_is_not_kept():
    S, Y, rho = np.zeros((3, 2)), np.zeros((3, 2)), np.zeros(3)
    pairs, head, gamma = steps.lbfgs_update(S, Y, rho, 0, 0, np.array([1.0, 0.0]), np.array([-1.0, 0.0]), 0.7, 1e-16)
    assert (pairs, head, gamma) == (0, 0, 0.7)


def test_the_lbfgs_reaches_scipy_s_lbfgs_b_optimum_on_the_same_objective():
    from scipy.optimize import minimize
    prob = fl.make_problem(d=6, k=1, T=3, n=400, noise=0.1, seed=3)
    ours = fl.retrain(prob, peft="lora_sym", backend="numpy")
    qb = E.quad_batch([prob.tasks], np.float64)
    q = loops.problem(*qb, 0)
    spec = E.make_spec(E.LORA_SYM, 1, 3, 6, 6)
    w = steps.make_work(spec, np.zeros((6, 6)))
    A = np.zeros((6, 6))

    def f(theta):
        grad = np.zeros_like(theta)
        return steps.projected_value_grad(q, spec, theta, w, A, grad), grad

    start = E.theta_of(E.LORA_SYM, fl.peft.get("lora_sym").init(np.random.default_rng(0), 6, 6, 1, 3), 1, 3, 1, 6,
                       6, np.float64)[0]
    scipy_result = minimize(f, start, jac=True, method="L-BFGS-B", options={"ftol": 0, "gtol": 1e-12,
                                                                            "maxiter": 5000})
    assert ours.objective == pytest.approx(scipy_result.fun, rel=1e-12)
    f(scipy_result.x)
    np.testing.assert_allclose(ours.A, A, atol=1e-6 * np.linalg.norm(A))


def test_the_spd_solve_of_the_mixing_coefficients_agrees_with_lapack():
    rng = np.random.default_rng(4)
    M = rng.standard_normal((5, 5))
    M = M @ M.T + 0.1 * np.eye(5)
    b = rng.standard_normal(5)
    np.testing.assert_allclose(steps.spd_solve(M.copy(), b), np.linalg.solve(M, b), rtol=1e-12)


# -- the safeguards, as properties -------------------------------------------------------------
def _non_increasing(history):
    eps = np.finfo(np.float64).eps
    steps_up = np.diff(history)
    return bool(np.all(steps_up <= 8 * eps * np.abs(history[:-1]) + 1e-300))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["population", "rank > k", "finite"])
def test_anderson_extrapolations_never_raise_the_objective(seed, kind):
    problem = {"population": dict(d=10, k=2, T=4), "rank > k": dict(d=8, k=1, T=3),
               "finite": dict(d=8, k=2, T=4, n=100, noise=0.5)}[kind]
    prob = fl.make_problem(seed=seed, symmetric=False, **problem)
    res = fl.retrain(prob, peft="lora", rank=2, solver="als", reduction="none", backend="numpy", tol=1e-14)
    assert res.info["extrapolations_accepted"] > 0
    assert _non_increasing(res.history)


@pytest.mark.parametrize("seed", range(12))
def test_every_lbfgs_step_decreases_the_objective_sufficiently(seed):
    prob = fl.make_problem(d=8, k=2, T=3, n=200, noise=0.3, seed=seed)
    start = {"U": 3.0 * np.random.default_rng(seed).standard_normal((3, 8, 2))}
    res = fl.retrain(prob, peft="lora_sym", backend="numpy", init_params=start)
    assert _non_increasing(res.history)


def test_a_rejected_extrapolation_falls_back_to_the_plain_step(monkeypatch):
    """Force every candidate to be bad: the solve must equal plain ALS step for step."""
    original = loops.anderson_mix

    def bad(X, F, count, x, gx, out):
        mixed, count = original(X, F, count, x, gx, out)
        out += 10.0 * mixed
        return mixed, count

    monkeypatch.setattr(loops, "anderson_mix", bad)
    prob = fl.make_problem(d=10, k=1, T=3, seed=1)
    forced = fl.retrain(prob, solver="als", backend="numpy")
    monkeypatch.undo()
    plain = fl.retrain(prob, solver="als", acceleration="none", backend="numpy")
    assert forced.info["extrapolations_accepted"] == 0 and forced.info["extrapolations_rejected"] > 0
    np.testing.assert_array_equal(forced.A, plain.A)
    np.testing.assert_array_equal(forced.history, plain.history)


# -- what a result reports ---------------------------------------------------------------------
def _objective_extended(prob, res) -> float:
    """F at the returned point from the tasks' statistics, in extended precision."""
    ext = np.longdouble
    total = ext(0)
    for t, task in enumerate(prob.tasks):
        W = res.A.astype(ext) + res.delta(t).astype(ext)
        S, C = task.Sigma.astype(ext), task.C.astype(ext)
        total += ext(0.5) * np.sum((W @ S) * W) - np.sum(W * C) + ext(task.s)
    return float(total)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_the_objective_is_f_at_the_returned_point(backend):
    for seed in range(5):
        prob = fl.make_problem(d=10, k=1, T=3, n=5000, noise=0.01, seed=seed)
        res = fl.retrain(prob, backend=backend)
        assert res.objective == pytest.approx(_objective_extended(prob, res), rel=1e-13)
        assert res.history[-1] == res.objective


def test_a_failing_problem_in_a_compiled_batch_is_one_error_and_the_others_go_on():
    problems = [fl.make_problem(d=6, k=1, T=3, n=300, noise=0.1, seed=s) for s in range(4)]
    starts = np.zeros((4, 6, 6))
    starts[2] = 1e200  # its objective overflows at the start
    out = fl.retrain_many(problems, peft="lora_sym", solver="gd", optimizer="lbfgs", eliminate_A=False,
                          init_A=starts, backend="numba", errors="return")
    assert isinstance(out[2], fl.errors.DivergenceError) and "starting point" in str(out[2])
    assert all(r.converged for i, r in enumerate(out) if i != 2)


@pytest.mark.parametrize("count", [1, 2])
def test_raise_or_return_does_not_depend_on_the_batch_size(count):
    problems = [fl.make_problem(d=6, k=1, T=3, n=300, noise=0.1, seed=0)] * count
    out = fl.retrain_many(problems, solver="gd", optimizer="adam", lr=1e3, errors="return")
    assert len(out) == count and all(isinstance(r, fl.errors.DivergenceError) for r in out)
    with pytest.raises(fl.errors.DivergenceError):
        fl.retrain_many(problems, solver="gd", optimizer="adam", lr=1e3)
    with pytest.raises(fl.errors.DivergenceError):
        fl.retrain(problems[0], solver="gd", optimizer="adam", lr=1e3)


def test_every_status_code_has_one_message():
    codes = [v for k, v in vars(status).items() if k.isupper() and isinstance(v, int)
             and k not in ("STALL_WINDOW", "RUNNING")]
    for code in codes:
        message, converged, error = status.describe(code, 3, float("nan"), 1.0, 10)
        assert message and (error is None) == (code >= 0) and converged == (code in status.CONVERGED)


@pytest.mark.parametrize("driver", ["engine", "python"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("method", ["standard", "lora-ml"])
def test_float32_finite_sample_solves_stay_at_the_optimum_when_the_gram_matrix_is_singular(method, backend, driver):
    """T·n < d: Σ_t Σ_t is singular, and rounded to float32 its zero eigenvalues become ~eps of the
    largest. Inverted as if they were information, they sent the float32 objective to ~56 (engine)
    and ~1600 (the Python driver, which a callback selects) where float64 reaches ~1e-14: the
    pseudo-inverse's cut-off follows the precision its eigenvalues were computed in (tasks.pinv_rtol)."""
    prob = fl.make_problem(d=12, k=1, T=3, n=2, noise=0.1, seed=0)
    options = {"callback": lambda *args: None} if driver == "python" else {}
    wide = fl.retrain(prob, method=method, backend=backend, **options)
    narrow = fl.retrain(prob, method=method, backend=backend, dtype="float32", **options)
    assert wide.objective < 1e-10
    assert abs(narrow.objective) < 1e-4 and np.isfinite(narrow.A).all()


def test_float32_whiteners_keep_the_directions_a_float64_spectrum_resolves():
    """Σ_t's spectrum comes from float64 (tasks.spectra) also for float32 solves: its
    whiteners cut at PINV_RTOL, not at float32's d·eps, so an ill-conditioned, full-rank Σ_t
    (eigenvalues down to 1e-8 of the largest) is whitened in full."""
    from fastlora.backends import get_backend
    from fastlora.taskbatch.policy import make_batch
    from fastlora.tasks import pinv_kept, spectra
    rng = np.random.default_rng(0)
    d, n = 8, 400
    X = rng.standard_normal((n, d)) * np.logspace(0, -4, d)
    task = fl.Task(X, X @ rng.standard_normal((d, d)).T)
    lam = spectra([task])[0]
    assert pinv_kept(lam, np.finfo(np.float64).eps).all() and not pinv_kept(lam, np.finfo(np.float32).eps).all()
    half, _ = make_batch([task], get_backend("numpy"), np.float32).sigma_pinv_half()
    whitened = half[0].astype(np.float64) @ task.Sigma @ half[0].astype(np.float64)
    np.testing.assert_allclose(whitened, np.eye(d), atol=1e-3)  # all d directions, not d − 2
