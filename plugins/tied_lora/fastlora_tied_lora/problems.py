"""Tied problems: tasks sharing one low-rank basis, W*_t = A* + B*·diag(s*_t)·C*ᵀ.

Law (seeded like ``fastlora.make_problem``, each role from its own
``numpy.random.SeedSequence(seed, spawn_key=...)`` so a task does not depend on n, σ or how
many other tasks were drawn): A* (d_out, d_in), B* (d_out, r), C* (d_in, r) entries
~ N(0, 1); s*_t ~ N(0, I_r) for every training, held-out and further task; data
x ~ N(0, I), y = W*_t x + ε, ε ~ N(0, σ² I).  The targets are factored
(``LowRankTarget(A*, B* diag(s*_t), C*)`` sharing one A*), so population problems are
solved without T dense matrices.

The law is a problem-generator plugin: :func:`tied_law` is registered as ``tied`` in the
entry-point group ``fastlora.problems``, so ``fl.make_problem(law="tied", d=..., k=r, ...)`` and
sweep specs (``law = "tied"``) draw these problems.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastlora import Problem, Task
from fastlora.errors import check_float, check_int
from fastlora.tasks import LowRankTarget

ROLE_SHARED, ROLE_TRAIN, ROLE_TEST, ROLE_NEW = 0, 1, 2, 3


@dataclass(frozen=True, eq=False)
class TiedProblem(Problem):
    """A :class:`fastlora.Problem` whose tasks share the basis (B*, C*).

    Beyond Problem's fields: ``B_basis`` (d_out, r), ``C_basis`` (d_in, r), ``s_star``
    (T, r) and ``s_test`` (n_test_tasks, r).  ``B_star`` (T, d_out, r) = B*·diag(s*_t) and
    ``C_star`` (T, d_in, r) = C* per task, so Δ*_t = B_star[t] C_star[t]ᵀ as for any Problem;
    ``k`` is the shared rank r.  ``new_task(seed)`` draws a further task of the same law.
    """

    B_basis: np.ndarray | None = None
    C_basis: np.ndarray | None = None
    s_star: np.ndarray | None = None
    s_test: np.ndarray | None = None

    def new_task(self, seed: int) -> Task:
        seed = check_int("seed", seed, low=0)
        if seed not in self._extra:
            self._extra[seed] = _task(self, _scales(self.seed, ROLE_NEW, seed, self.k), ROLE_NEW, seed)
        return self._extra[seed]

    def __repr__(self) -> str:
        mode = "population" if self.n is None else f"n={self.n}"
        return (f"TiedProblem(d={self.d}, d_out={self.d_out}, r={self.k}, T={self.T}, {mode}, "
                f"noise={self.noise}, seed={self.seed})")


def make_tied_problem(d: int = 16, r: int = 2, T: int = 8, n: int | None = None, noise: float = 0.0,
                      seed: int = 0, d_out: int | None = None, n_test_tasks: int = 4) -> TiedProblem:
    """Draw ``T`` training and ``n_test_tasks`` held-out tasks W*_t = A* + B*·diag(s*_t)·C*ᵀ.

    ``d`` is d_in, ``d_out`` defaults to ``d``; ``r`` the shared rank (1 ≤ r ≤ min(d, d_out));
    ``n=None``: population tasks (L_t(W) = ½‖W − W*_t‖²_F), else ``n`` samples per task with
    noise σ = ``noise``.  Works with ``fl.retrain``, ``fl.evaluate`` (ground truth of the
    held-out tasks) and ``prob.new_task(seed)`` like ``fl.make_problem``'s problems.
    """
    d = check_int("d", d, low=1)
    d_out = d if d_out is None else check_int("d_out", d_out, low=1)
    r = check_int("r", r, low=1, high=min(d, d_out))
    T = check_int("T", T, low=1)
    n = check_int("n", n, low=1, allow_none=True)
    noise = check_float("noise", noise, low=0.0)
    seed = check_int("seed", seed, low=0)
    n_test_tasks = check_int("n_test_tasks", n_test_tasks, low=0)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ROLE_SHARED,)))
    A_star, B_basis, C_basis = (rng.standard_normal((d_out, d)), rng.standard_normal((d_out, r)),
                                rng.standard_normal((d, r)))
    for a in (A_star, B_basis, C_basis):
        a.setflags(write=False)
    s_star = np.stack([_scales(seed, ROLE_TRAIN, t, r) for t in range(T)])
    s_test = np.stack([_scales(seed, ROLE_TEST, t, r) for t in range(n_test_tasks)]) if n_test_tasks \
        else np.zeros((0, r))
    # the solvers' layout: (T, r, d) row-contiguous buffers, B_star / C_star (T, d, r) views of them
    B_rows = np.ascontiguousarray((B_basis[None] * s_star[:, None, :]).swapaxes(1, 2))
    C_rows = np.ascontiguousarray(np.broadcast_to(C_basis.T, (T, r, d)))
    prob = TiedProblem(A_star, B_rows.swapaxes(1, 2), C_rows.swapaxes(1, 2), [], [], d, d_out, r, T, n,
                       noise, False, seed, B_basis=B_basis, C_basis=C_basis, s_star=s_star,
                       s_test=s_test)
    prob.tasks.extend(_task(prob, s_star[t], ROLE_TRAIN, t) for t in range(T))
    prob.test_tasks.extend(_task(prob, s_test[t], ROLE_TEST, t) for t in range(n_test_tasks))
    return prob


def _scales(seed, role, index, r):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(role, index, 0))).standard_normal(r)


def _task(prob: TiedProblem, scales, role: int, index: int) -> Task:
    task = Task.population(LowRankTarget(prob.A_star, prob.B_basis * scales, prob.C_basis))
    if prob.n is not None:
        data = np.random.default_rng(np.random.SeedSequence(prob.seed, spawn_key=(role, index, 1)))
        task = task.sample(prob.n, seed=data, noise=prob.noise)
    task.noise = prob.noise
    task.key = (prob.seed, role, index)
    return task


def tied_law(d: int, k: int, T: int, n: int | None, noise: float, seed: int, d_out: int,
             n_test_tasks: int) -> TiedProblem:
    """The problem generator ``law = "tied"`` (fastlora.problems): :func:`make_tied_problem` with the
    shared rank r = k, called by ``fl.make_problem(law="tied", ...)`` and sweep specs."""
    return make_tied_problem(d=d, r=k, T=T, n=n, noise=noise, seed=seed, d_out=d_out, n_test_tasks=n_test_tasks)
