"""Tasks: population targets (dense or factored) and finite samples reduced to statistics.

A finite-sample task keeps only its sufficient statistics (DESIGN.md §2)::

    Σ = XᵀX/n  (d_in, d_in),   C = YᵀX/n  (d_out, d_in),   s = ‖Y‖²/2n
    L(W) = ½ tr(W Σ Wᵀ) − tr(W Cᵀ) + s,        ∇L(W) = W Σ − C

A population task has L(W) = ½‖W − W*‖²_F.  Its target may be dense or factored,
W* = base + B Cᵀ (:class:`LowRankTarget`), which keeps memory at O(d² + d·k) and lets the
solvers batch the products with the shared ``base`` over all tasks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from .errors import FastLoRAError, check_array, check_float, check_int

_SAMPLE_CHUNK = 65536  # rows generated at a time, so memory stays O(chunk · d)


@dataclass(frozen=True, eq=False)
class LowRankTarget:
    """A factored target ``W* = base + B Cᵀ``; ``base`` is usually shared by many tasks.

    Shapes: ``base`` (d_out, d_in), ``B`` (d_out, k), ``C`` (d_in, k).  ``symmetric`` means
    ``B is C`` (the paper's Δ* = U* U*ᵀ).
    """

    base: np.ndarray
    B: np.ndarray
    C: np.ndarray

    @property
    def symmetric(self) -> bool:
        return self.B is self.C

    @property
    def shape(self) -> tuple[int, int]:
        return self.base.shape

    def dense(self) -> np.ndarray:
        return self.base + self.B @ self.C.T

    def perturbation(self) -> np.ndarray:
        return self.B @ self.C.T


Target = Union[np.ndarray, LowRankTarget]


def dense_target(target: Target) -> np.ndarray:
    return target.dense() if isinstance(target, LowRankTarget) else target


class Task:
    """One task of linear regression, ``y = W* x + ε``.

    ``Task(X, Y)`` builds a finite-sample task from data (``X`` (n, d_in), ``Y`` (n, d_out));
    only (Σ, C, s) are kept.  ``Task.population(W_star)`` builds a population task.
    Optional ``W_star`` on a finite-sample task is its ground truth, used for excess risk.
    """

    def __init__(self, X, Y, *, W_star: Target | None = None, noise: float | None = None):
        X = check_array("X", X, ndim=2)
        Y = check_array("Y", Y, ndim=2)
        if X.shape[0] != Y.shape[0]:
            raise FastLoRAError(f"X and Y must have the same number of rows (samples); got {X.shape[0]} and {Y.shape[0]}")
        if X.shape[0] < 1:
            raise FastLoRAError("X must hold at least one sample (row)")
        n = X.shape[0]
        self._init_statistics(X.T @ X / n, Y.T @ X / n, float(np.sum(Y * Y)) / (2 * n), n,
                              W_star=W_star, noise=noise)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def population(cls, W_star: np.ndarray | LowRankTarget | None = None, *, base=None, B=None, C=None) -> "Task":
        """A population task with target ``W_star`` (dense), or factored ``base + B Cᵀ``.

        Pass either ``W_star`` (an array or a :class:`LowRankTarget`) or ``base``, ``B``
        and ``C``; ``C`` defaults to ``B`` (symmetric perturbation).
        """
        if W_star is None:
            if base is None or B is None:
                raise FastLoRAError("Task.population needs W_star, or base and B (and optionally C)")
            W_star = make_lowrank_target(base, B, C)
        elif base is not None or B is not None or C is not None:
            raise FastLoRAError("Task.population takes either W_star or base/B/C, not both")
        target = _check_target("W_star", W_star)
        self = cls.__new__(cls)
        self.n = None
        self.target = target
        self.d_out, self.d_in = target.shape
        self.noise = None
        self.Sigma = self.C = None
        self.s = None
        self.key = None
        return self

    @classmethod
    def from_statistics(cls, Sigma, C, s: float, n: int, *, W_star: Target | None = None,
                        noise: float | None = None) -> "Task":
        """A finite-sample task from its sufficient statistics Σ = XᵀX/n, C = YᵀX/n, s = ‖Y‖²/2n."""
        Sigma = check_array("Sigma", Sigma, ndim=2)
        if Sigma.shape[0] != Sigma.shape[1]:
            raise FastLoRAError(f"Sigma must be square, got shape {Sigma.shape}")
        C = check_array("C", C, ndim=2)
        self = cls.__new__(cls)
        self._init_statistics(Sigma, C, check_float("s", s, low=0.0), check_int("n", n, low=1),
                              W_star=W_star, noise=noise)
        return self

    def _init_statistics(self, Sigma, C, s, n, *, W_star, noise) -> None:
        d_in = Sigma.shape[0]
        if C.shape[1] != d_in:
            raise FastLoRAError(f"C has shape {C.shape}; its second axis must equal d_in={d_in}")
        self.Sigma = 0.5 * (Sigma + Sigma.T)
        self.C = C
        self.s = float(s)
        self.n = int(n)
        self.d_out, self.d_in = C.shape
        self.noise = None if noise is None else check_float("noise", noise, low=0.0)
        self.key = None
        self.target = None
        if W_star is not None:
            self.target = _check_target("W_star", W_star)
            if self.target.shape != (self.d_out, self.d_in):
                raise FastLoRAError(f"W_star has shape {self.target.shape}; the data imply ({self.d_out}, {self.d_in})")

    # -- properties ---------------------------------------------------------------------
    @property
    def is_population(self) -> bool:
        return self.n is None

    @property
    def has_ground_truth(self) -> bool:
        return self.target is not None

    @property
    def W_star(self) -> np.ndarray:
        """The dense ground-truth matrix (built on request from a factored target)."""
        if self.target is None:
            raise FastLoRAError("this task has no ground truth W_star (it was built from data alone)")
        return dense_target(self.target)

    def loss(self, W) -> float:
        """L(W): ½‖W − W*‖²_F (population) or ½ tr(W Σ Wᵀ) − tr(W Cᵀ) + s."""
        W = check_array("W", W, shape=(self.d_out, self.d_in))
        if self.is_population:
            return 0.5 * float(np.sum((W - self.W_star) ** 2))
        return float(0.5 * np.sum((W @ self.Sigma) * W) - np.sum(W * self.C) + self.s)

    def excess_risk(self, W) -> float:
        """½‖W − W*‖²_F against the task's ground truth."""
        W = check_array("W", W, shape=(self.d_out, self.d_in))
        return 0.5 * float(np.sum((W - self.W_star) ** 2))

    def sample(self, n: int, seed=0, noise: float | None = None) -> "Task":
        """Draw ``n`` fresh samples x ~ N(0, I), y = W* x + ε, ε ~ N(0, noise² I)."""
        if self.target is None:
            raise FastLoRAError("cannot sample from a task without ground truth W_star")
        n = check_int("n", n, low=1)
        noise = self.noise if noise is None else noise
        noise = 0.0 if noise is None else check_float("noise", noise, low=0.0)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(_task_seed(self, seed))
        Sigma, C, s = sample_statistics(self.target, n, noise, rng)
        task = Task.from_statistics(Sigma, C, s, n, W_star=self.target, noise=noise)
        task.key = self.key
        return task

    def __repr__(self) -> str:
        mode = "population" if self.is_population else f"n={self.n}"
        return f"Task(d_out={self.d_out}, d_in={self.d_in}, {mode})"


def _task_seed(task: Task, seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    seed = check_int("seed", seed, low=0)
    key = tuple(task.key) if task.key is not None else ()
    return np.random.SeedSequence(entropy=seed, spawn_key=(*key, 9))


def make_lowrank_target(base, B, C=None) -> LowRankTarget:
    base = check_array("base", base, ndim=2)
    B = check_array("B", B, ndim=2)
    if B.shape[0] != base.shape[0]:
        raise FastLoRAError(f"B has shape {B.shape}; its first axis must equal d_out={base.shape[0]}")
    if C is None:
        C = B
    else:
        C = check_array("C", C, ndim=2)
        if C.shape != (base.shape[1], B.shape[1]):
            raise FastLoRAError(f"C has shape {C.shape}; expected ({base.shape[1]}, {B.shape[1]})")
    return LowRankTarget(base, B, C)


def _check_target(name: str, target) -> Target:
    if isinstance(target, LowRankTarget):
        return target
    return check_array(name, target, ndim=2)


def sample_statistics(target: Target, n: int, noise: float, rng: np.random.Generator):
    """Sufficient statistics of n samples of y = W* x + ε, generated in chunks."""
    d_out, d_in = target.shape
    Sigma = np.zeros((d_in, d_in))
    C = np.zeros((d_out, d_in))
    sq = 0.0
    done = 0
    while done < n:
        m = min(_SAMPLE_CHUNK, n - done)
        X = rng.standard_normal((m, d_in))
        if isinstance(target, LowRankTarget):
            Y = X @ target.base.T + (X @ target.C) @ target.B.T
        else:
            Y = X @ target.T
        if noise > 0:
            Y += noise * rng.standard_normal((m, d_out))
        Sigma += X.T @ X
        C += Y.T @ X
        sq += float(np.sum(Y * Y))
        done += m
    return Sigma / n, C / n, sq / (2 * n)
