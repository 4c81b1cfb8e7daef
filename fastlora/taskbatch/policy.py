"""Which batch a solve gets, and building it: the tasks of a solve checked (:func:`as_task_list`),
the dense-or-factored choice (:func:`batch_kind`), the factors of targets sharing one base
(:func:`factored_targets`), and :func:`make_batch` / :func:`stack_problems`."""
from __future__ import annotations

import functools

import numpy as np

from ..errors import FastLoRAError
from ..tasks import LowRankTarget, Task, dense_target, least_squares_fits, spectra
from .base import Batch
from .finite import FiniteSample
from .population import DensePopulation, FactoredPopulation


def as_task_list(problem_or_tasks) -> list[Task]:
    tasks = getattr(problem_or_tasks, "tasks", problem_or_tasks)
    if isinstance(tasks, Task):
        tasks = [tasks]
    try:
        tasks = tasks if isinstance(tasks, list) else list(tasks)
    except TypeError:
        raise FastLoRAError("tasks must be a Problem, a Task or a list of Tasks") from None
    if len(tasks) < 1:
        raise FastLoRAError("T must be >= 1: got an empty list of tasks")
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            raise FastLoRAError(f"tasks[{i}] is a {type(t).__name__}, not a fastlora.Task")
    shapes = {(t.d_out, t.d_in) for t in tasks}
    if len(shapes) > 1:
        raise FastLoRAError(f"all tasks must have the same (d_out, d_in); got {sorted(shapes)}")
    modes = {t.is_population for t in tasks}
    if len(modes) > 1:
        raise FastLoRAError("tasks mix population and finite-sample modes; use one mode per solve")
    return tasks


# Problems up to this size are batched densely (their factored targets materialised): a
# full eigen/singular decomposition per task is then cheaper than the many more iterations
# of subspace ALS it saves (and makes Anderson extrapolation possible), and same-shape
# problems can be stacked on a leading problem axis.  Above it, the factored structure wins.
DENSE_MAX_DIM = 32


def is_small(d_out: int, d_in: int) -> bool:
    return max(d_out, d_in) <= DENSE_MAX_DIM


FACTORED_CHOICES = ("auto", "always")


def batch_kind(tasks: list[Task], *, factored: str = "auto", source=None) -> str:
    """The kind :func:`make_batch` builds for ``tasks``: "factored", "dense" or "finite".

    Population targets sharing one base stay ``factored`` (W*_t = S + B*_tC*_tᵀ kept as factors)
    where the problem is larger than ``DENSE_MAX_DIM`` (``factored="auto"``) or whatever its size
    (``"always"``, which the subspace adapter step needs); otherwise they are materialised (dense).
    """
    if not tasks[0].is_population:
        return "finite"
    if factored != "always" and is_small(tasks[0].d_out, tasks[0].d_in):
        return "dense"
    return "factored" if _from_problem(tasks, source) or shares_one_base(tasks) else "dense"


def shares_one_base(tasks) -> bool:
    """Whether every task's target is a LowRankTarget S + B*_t C*_tᵀ with one base S."""
    targets = [t.target for t in tasks]
    return all(isinstance(g, LowRankTarget) for g in targets) \
        and all(g.base is targets[0].base or np.array_equal(g.base, targets[0].base) for g in targets)


def factored_targets(tasks, source=None):
    """(S, B* (T, d_out, k), C* (T, d_in, k), symmetric) of population targets sharing one base
    (factors of unequal rank zero-padded to the largest), else None; a Problem's own batched
    factors (``source``) are used as they are."""
    if not tasks[0].is_population:
        return None
    if _from_problem(tasks, source):
        return source.A_star, source.B_star, source.C_star, source.symmetric
    if not shares_one_base(tasks):
        return None
    targets = [t.target for t in tasks]
    k = max(g.B.shape[1] for g in targets)
    symmetric = all(g.symmetric for g in targets)
    B = np.stack([_pad(g.B, k) for g in targets])
    C = B if symmetric else np.stack([_pad(g.C, k) for g in targets])
    return targets[0].base, B, C, symmetric


def _from_problem(tasks, source) -> bool:
    return source is not None and getattr(source, "n", 0) is None and getattr(source, "tasks", None) is tasks \
        and hasattr(source, "B_star")


def make_batch(tasks: list[Task], backend, dtype, *, factored: str = "auto", source=None) -> Batch:
    """Batch one problem's ``tasks`` on ``backend``; large factored targets sharing one base
    stay factored (``factored``: as in :func:`batch_kind`).

    ``source``: the Problem the tasks came from, if any; its batched factors are then used
    as they are (no copy on CPU backends in float64).
    """
    kind = batch_kind(tasks, factored=factored, source=source)
    if kind != "factored":
        return stack_problems([tasks], backend, dtype, kind)
    return FactoredPopulation(backend, dtype, *factored_targets(tasks, source))


def stack_problems(problems: list[list[Task]], backend, dtype, kind: str) -> Batch:
    """P problems of the same shape and T as one batch of kind "dense" or "finite" (problem-major)."""
    tasks = [t for problem in problems for t in problem]
    P = len(problems)
    if kind == "finite":
        return FiniteSample(backend, dtype, np.stack([t.Sigma for t in tasks]), np.stack([t.C for t in tasks]),
                            np.array([t.s for t in tasks]), [t.n for t in tasks], P=P,
                            fits=least_squares_fits(tasks), spectrum=functools.partial(spectra, tasks))
    return DensePopulation(backend, dtype, np.stack([dense_target(t.target) for t in tasks]), P=P)


def _pad(F, k):
    return F if F.shape[1] == k else np.concatenate([F, np.zeros((F.shape[0], k - F.shape[1]))], axis=1)
