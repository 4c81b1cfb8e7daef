"""Synthetic PEFT-ML problems drawn from the paper's law (DESIGN.md §2).

Symmetric (the paper's theory): A* = (G + Gᵀ)/2, G_ij ~ N(0, 1); Δ*_t = U*_t U*_tᵀ with
U*_t entries ~ N(0, 1).  General: A* = G (d_out × d_in), Δ*_t = B*_t C*_tᵀ with entries
~ N(0, 1).  Data: x ~ N(0, I), y = W*_t x + ε, ε ~ N(0, σ² I).

Every draw comes from ``numpy.random.SeedSequence(seed)`` with a fixed spawn key per role
(A*, training task t, test task t, extra task s), so a task's ground truth does not
depend on n, σ or how many other tasks were drawn.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import FastLoRAError, check_float, check_int
from .tasks import LowRankTarget, Task

_ROLE_SHARED, _ROLE_TRAIN, _ROLE_TEST, _ROLE_NEW = 0, 1, 2, 3


@dataclass(frozen=True, eq=False)
class Problem:
    """A meta-learning problem: shared ground truth, training tasks and held-out tasks.

    ``A_star`` (d_out, d_in); ``B_star`` (T, d_out, k) and ``C_star`` (T, d_in, k) with
    Δ*_t = B*_t C*_tᵀ; ``U_star`` (T, d, k) when symmetric (then B* = C* = U*).
    """

    A_star: np.ndarray
    B_star: np.ndarray
    C_star: np.ndarray
    tasks: list[Task]
    test_tasks: list[Task]
    d: int
    d_out: int
    k: int
    T: int
    n: int | None
    noise: float
    symmetric: bool
    seed: int
    _extra: dict = field(default_factory=dict, repr=False)

    @property
    def U_star(self) -> np.ndarray:
        if not self.symmetric:
            raise FastLoRAError("U_star exists only for symmetric problems (symmetric=True); use B_star, C_star")
        return self.B_star

    @property
    def d_in(self) -> int:
        return self.d

    def new_task(self, seed: int) -> Task:
        """A further held-out task from the same law (same n and noise), reproducible by seed."""
        seed = check_int("seed", seed, low=0)
        if seed not in self._extra:
            self._extra[seed] = _draw_task(self, _ROLE_NEW, seed)
        return self._extra[seed]

    def __repr__(self) -> str:
        mode = "population" if self.n is None else f"n={self.n}"
        return (f"Problem(d={self.d}, d_out={self.d_out}, k={self.k}, T={self.T}, {mode}, "
                f"noise={self.noise}, symmetric={self.symmetric}, seed={self.seed})")


def make_problem(d: int = 64, k: int = 2, T: int = 8, n: int | None = None, noise: float = 0.0,
                 seed: int = 0, d_out: int | None = None, symmetric: bool = True,
                 n_test_tasks: int = 4) -> Problem:
    """Draw a problem with ``T`` training tasks and ``n_test_tasks`` held-out tasks.

    ``n=None`` is population mode (L_t(W) = ½‖W − W*_t‖²); an integer ``n`` draws that many
    Gaussian samples per task (kept as sufficient statistics).  ``d`` is d_in; ``d_out``
    defaults to ``d``.  ``symmetric=True`` (the paper's setting) needs ``d_out == d``.
    """
    d = check_int("d", d, low=1)
    d_out = d if d_out is None else check_int("d_out", d_out, low=1)
    k = check_int("k", k, low=1, high=min(d, d_out))
    T = check_int("T", T, low=1)
    n = check_int("n", n, low=1, allow_none=True)
    noise = check_float("noise", noise, low=0.0)
    seed = check_int("seed", seed, low=0)
    n_test_tasks = check_int("n_test_tasks", n_test_tasks, low=0)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise FastLoRAError(f"symmetric must be True or False, got {symmetric!r}")
    if symmetric and d_out != d:
        raise FastLoRAError(f"symmetric=True needs d_out == d (got d_out={d_out}, d={d}); pass symmetric=False")

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_ROLE_SHARED,)))
    G = rng.standard_normal((d_out, d))
    A_star = 0.5 * (G + G.T) if symmetric else G
    A_star.setflags(write=False)

    # factors live in (T, k, d) row-contiguous buffers — the layout of the solvers' shared
    # GEMMs — and B_star / C_star are (T, d, k) views of them, so solves copy nothing
    B_rows = np.empty((T, k, d_out))
    C_rows = B_rows if symmetric else np.empty((T, k, d))
    for t in range(T):
        b, c = _draw_factors(seed, _ROLE_TRAIN, t, d_out, d, k, symmetric)
        B_rows[t] = b.T
        if not symmetric:
            C_rows[t] = c.T
    for a in (B_rows, C_rows):
        a.setflags(write=False)
    B_star = B_rows.swapaxes(1, 2)
    C_star = B_star if symmetric else C_rows.swapaxes(1, 2)
    factors = [(B_star[t], B_star[t] if symmetric else C_star[t]) for t in range(T)]
    proto = Problem(A_star, B_star, C_star, [], [], d, d_out, k, T, n, noise, bool(symmetric), seed)
    proto.tasks.extend(_make_task(proto, A_star, b, c, _ROLE_TRAIN, t) for t, (b, c) in enumerate(factors))
    proto.test_tasks.extend(_draw_task(proto, _ROLE_TEST, t) for t in range(n_test_tasks))
    return proto


def _draw_factors(seed, role, index, d_out, d_in, k, symmetric):
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(role, index, 0)))
    B = rng.standard_normal((d_out, k))
    C = B if symmetric else rng.standard_normal((d_in, k))
    return B, C


def _draw_task(prob: Problem, role: int, index: int) -> Task:
    B, C = _draw_factors(prob.seed, role, index, prob.d_out, prob.d, prob.k, prob.symmetric)
    return _make_task(prob, prob.A_star, B, C, role, index)


def _make_task(prob: Problem, A_star, B, C, role: int, index: int) -> Task:
    target = LowRankTarget(A_star, B, C)
    key = (prob.seed, role, index)
    if prob.n is None:
        task = Task.population(target)
    else:
        data_seq = np.random.SeedSequence(prob.seed, spawn_key=(role, index, 1))
        task = Task.population(target).sample(prob.n, seed=np.random.default_rng(data_seq), noise=prob.noise)
    task.noise = prob.noise
    task.key = key
    return task
