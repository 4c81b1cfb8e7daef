"""Spurious local minima of LoRA-ML (T ≥ 3): found by a census search, then certified.

The paper states that spurious local minima exist for T ≥ 3; no closed-form construction
was derived here.  Instead :func:`find_spurious_minimum` searches: random starts from broad
initialisation laws (e.g. N(0, 3²) — at the paper's N(0, 0.1²) solvers almost never reach
one), every endpoint classified, and a spurious candidate refined by Newton steps on the
projected Hessian until ‖∇F‖ is at rounding level, then certified again by
:func:`fastlora.landscape.classify` (smallest projected Hessian eigenvalue > 0, F above the
global value).

:func:`spurious_minimum_example` is such a minimum, reproducible from a seed: the population
problem ``make_problem(d=3, k=1, T=3, seed=0)``, reached from start 3 of the census law
N(0, 3²) with seed 0 (F ≈ 0.0702 against the global value 0; smallest Hessian eigenvalue
≈ 3.6e-4, largest ≈ 68; no continuous symmetry at k = 1).  There all three U_t are nearly
parallel to one large common vector w, which A compensates (A − A* ≈ −w wᵀ + …): the tasks
share an adapter direction instead of each fitting its own perturbation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FastLoRAError, check_int
from ..options import rank_or_problem_k
from .census import draw_starts, one_blas_thread, solve_starts
from .classify import Classification, Tolerances, classify_at, global_reference
from .hessian import complement, symmetry_basis
from .objective import LandscapeModel, Point

DEFAULT_SEARCH = (("normal", 3.0), ("uniform", 3.0), ("normal", 1.0))


@dataclass(repr=False)
class SpuriousMinimum:
    """A certified spurious local minimum: ``point`` (A, θ) of F on ``problem``, its
    ``classification`` (``objective``, ``global_value``, ``min_eig`` — the smallest projected
    Hessian eigenvalue, > 0 —, ``max_eig``, ``grad_norm``, also readable here) and how it was
    found (``found_by``: init law, scale, seed, start index)."""

    problem: object
    point: Point
    classification: Classification
    found_by: dict

    objective = property(lambda self: self.classification.objective)
    global_value = property(lambda self: self.classification.global_value)
    min_eig = property(lambda self: self.classification.min_eig)
    max_eig = property(lambda self: self.classification.max_eig)
    grad_norm = property(lambda self: self.classification.grad_norm)

    def __repr__(self) -> str:
        return (f"SpuriousMinimum(objective={self.objective!r}, global_value={self.global_value!r}, "
                f"min_eig={self.min_eig!r}, max_eig={self.max_eig!r}, grad_norm={self.grad_norm!r}, "
                f"found_by={self.found_by!r})")


def polish(model: LandscapeModel, point: Point, max_steps: int = 20) -> Point:
    """Newton steps x ← x − N (NᵀHN)⁻¹ Nᵀ∇F on the normal space N of the symmetry orbit.

    For a point already near a non-degenerate critical point (quadratic convergence);
    stops when ‖∇F‖ no longer decreases and returns the best point seen.
    """
    x = model.point_vector(point)
    best_x, best_g = x, np.inf
    for _ in range(max_steps):
        p = model.point_from_vector(x)
        g = model.flatten(model.gradient(p))
        g_norm = float(np.linalg.norm(g))
        if g_norm >= best_g:
            break
        best_x, best_g = x, g_norm
        N = complement(symmetry_basis(model, p))
        H = N.T @ model.hessian_matrix(p) @ N
        x = x - N @ np.linalg.solve(H, N.T @ g)
    return model.point_from_vector(best_x)


def find_spurious_minimum(problem_or_tasks, peft="lora_sym", rank: int | None = None, *, n_starts: int = 100,
                          laws=DEFAULT_SEARCH, seed: int = 0, global_value: float | None = None,
                          tolerances: Tolerances | None = None, solver: str = "gd", optimizer: str = "lbfgs",
                          max_iter: int = 2000, tol: float = 1e-10) -> SpuriousMinimum | None:
    """Search ``n_starts`` starts per (init law, scale) in ``laws`` for a spurious local minimum.

    Returns the first candidate that, after :func:`polish`, is still certified "spurious"
    (see the module docstring), or None when no start reached one.
    """
    n_starts = check_int("n_starts", n_starts, low=1)
    rank = rank_or_problem_k(rank, problem_or_tasks)
    model = LandscapeModel(problem_or_tasks, peft, check_int("rank", rank, low=1))
    tol_cls = tolerances or Tolerances()
    if global_value is None:
        global_value = global_reference(problem_or_tasks, model.peft, model.rank, model=model)
    with one_blas_thread():
        for init, scale in laws:
            for index, start in enumerate(draw_starts(model, n_starts, init, scale, seed)):
                found = _try_start(problem_or_tasks, model, start, global_value, tol_cls, solver, optimizer, max_iter,
                                   tol, {"init": init, "init_scale": scale, "seed": seed, "start": index})
                if found is not None:
                    return found
    return None


def _try_start(problem_or_tasks, model, start, global_value, tol_cls, solver, optimizer, max_iter, tol, found_by):
    (outcome,) = solve_starts(problem_or_tasks, model.peft, model.rank, [start], solver, optimizer=optimizer,
                               max_iter=max_iter, tol=tol, backend="numpy")
    if isinstance(outcome, BaseException):
        return None
    point = Point(np.asarray(outcome.A), dict(outcome.params))
    if classify_at(model, point, global_value, tol_cls).kind != "spurious":
        return None
    point = polish(model, point)
    c = classify_at(model, point, global_value, tol_cls)
    if c.kind != "spurious":
        return None
    return SpuriousMinimum(problem=problem_or_tasks, point=point, classification=c, found_by=found_by)


def spurious_minimum_example() -> SpuriousMinimum:
    """The reproducible spurious minimum of the module docstring (population, d=3, k=1, T=3).

    Start 3 of the law N(0, 3²) with seed 0 reaches it; should a change of the solver's
    path miss it, the next starts of the same law are tried (about a third of them reach it).
    """
    import fastlora as fl

    problem = fl.make_problem(d=3, k=1, T=3, seed=0, n_test_tasks=0)
    found = find_spurious_minimum(problem, "lora_sym", 1, n_starts=4, laws=(("normal", 3.0),), global_value=0.0) \
        or find_spurious_minimum(problem, "lora_sym", 1, n_starts=60, laws=(("normal", 3.0),), global_value=0.0)
    if found is None:
        raise FastLoRAError("no start of the recorded law reached the spurious minimum; the solver's behaviour changed")
    return found


def embedded_spurious_minimum(d: int, seed: int = 0) -> SpuriousMinimum:
    """A spurious minimum in any dimension d ≥ 3: :func:`spurious_minimum_example` embedded.

    Tasks W*_t = S + ũ_t ũ_tᵀ with ũ_t = (u*_t, 0) (the example's perturbations, padded
    with zeros) and S the symmetric base of ``make_problem(d, seed=seed)``; the point is
    A = S + (A₃ − A₃*) ⊕ 0, U_t = (U_t³, 0).  Every residual stays in the first three
    coordinates, so the Hessian splits into the example's block (positive definite) and
    the out-of-block directions, whose form Σ_t‖dA + DΔ_t[dU_t]‖² (the curvature term
    ⟨G_t, dU dUᵀ⟩ vanishes there) is positive because the U_t are not parallel.  The
    result is certified again by :func:`fastlora.landscape.classify`.
    """
    import fastlora as fl

    d = check_int("d", d, low=3)
    small = spurious_minimum_example()
    base = fl.make_problem(d=d, k=1, T=3, seed=seed, n_test_tasks=0).A_star
    T = small.problem.T
    U_star, U = np.zeros((T, d, 1)), np.zeros((T, d, 1))
    U_star[:, :3], U[:, :3] = small.problem.U_star, small.point.params["U"]
    tasks = [fl.Task.population(base=base, B=U_star[t]) for t in range(T)]
    A = np.array(base)
    A[:3, :3] += small.point.A - small.problem.A_star
    model = LandscapeModel(tasks, "lora_sym", 1)
    point = model.check_point(Point(A, {"U": U}))
    c = classify_at(model, point, 0.0, Tolerances())
    if c.kind != "spurious":
        raise FastLoRAError(f"the embedded point classified as {c.kind!r}, not 'spurious'")
    return SpuriousMinimum(problem=tasks, point=point, classification=c,
                           found_by={**small.found_by, "embedded_in_d": d, "base_seed": seed})
