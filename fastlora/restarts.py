"""``retrain(..., restarts=N)`` for the linear model: N seeded starts solved in one batch, the lowest
objective kept (the shallow network's restarts live in fastlora.shallow.solve).

Start 0 uses the caller's seed (so it is exactly ``retrain(..., seed=seed)``); start i > 0 the seed
``SeedSequence(seed, spawn_key=(RESTART_KEY, i))``.  With the default ``init_A="standard"`` the starts
differ in their adapters only.  ``info["restart_objectives"]`` holds every start's objective
(NaN for one that failed), ``info["restarts_reached"]`` how many came within ``REACHED_RTOL`` (relative,
plus ``REACHED_ATOL`` times the null objective's scale) of the best.
"""
from __future__ import annotations

import functools

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from .errors import check_int, each_or_error
from .seeding import KeyedSeed

RESTART_KEY = 0x5EED
REACHED_RTOL = 1e-6
REACHED_ATOL = 1e-12


def restart_seeds(seed, restarts: int) -> list:
    """The seeds of ``restarts`` starts (module docstring); a Generator seed draws them from itself."""
    if isinstance(seed, np.random.Generator):
        return [seed] + [int(v) for v in seed.integers(0, 2**31 - 1, size=restarts - 1)]
    base = check_int("seed", seed, low=0) if not isinstance(seed, ISeedSequence) else \
        int(seed.generate_state(1)[0] >> 1)
    return [seed] + [int(KeyedSeed(base, (RESTART_KEY, i)).generate_state(1)[0] >> 1)
                     for i in range(1, restarts)]


def check_restarts(restarts) -> int:
    return 1 if restarts is None else check_int("restarts", restarts, low=1)


def retrain_with_restarts(retrain_many, problem_or_tasks, restarts: int, seed, kwargs: dict):
    """The best of ``restarts`` starts of ``retrain_many(...)`` on one problem (module docstring)."""
    seeds = restart_seeds(seed, restarts)
    results = retrain_many([problem_or_tasks] * restarts, seeds=seeds, errors="return", **kwargs)
    solved = [r for r in results if not isinstance(r, Exception)]
    if not solved:
        raise results[0]
    objectives = [float("nan") if isinstance(r, Exception) else float(r.objective) for r in results]
    best = min(solved, key=lambda r: r.objective)
    scale = max(abs(best.objective), float(best.history[0]) if len(best.history) else 0.0, 1.0)
    reached = sum(1 for v in objectives if np.isfinite(v) and v - best.objective
                  <= REACHED_RTOL * abs(best.objective) + REACHED_ATOL * scale)
    best.info.update(restarts=restarts, restart_objectives=objectives, restarts_reached=reached,
                     kept_start=next(i for i, r in enumerate(results) if r is best))
    best.seconds = float(sum(r.seconds for r in solved))
    return best


def retrain_many_with_restarts(retrain_many, problems, seeds: list, restarts: int, errors: str, kwargs: dict) -> list:
    """:func:`retrain_with_restarts` of each problem with its seed; errors as ``retrain_many``'s."""
    return each_or_error([functools.partial(retrain_with_restarts, retrain_many, problem, restarts, seed, kwargs)
                          for problem, seed in zip(problems, seeds)], errors)
