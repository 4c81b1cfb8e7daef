"""One way to turn a user's ``seed`` into a numpy Generator, and the spawn keys that keep a
task's independent draws apart."""
from __future__ import annotations

import numpy as np

from .errors import check_int


def as_generator(seed, name: str = "seed") -> np.random.Generator:
    """``seed``: a non-negative int, a ``numpy.random.SeedSequence`` or a ``Generator`` (used as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    return np.random.default_rng(check_int(name, seed, low=0))


# the last spawn-key entry of each kind of draw from a task (after the task's own key); problems
# use 0 and 1 for a task's ground truth and data
PURPOSE_SAMPLE = 9      # fresh samples of a task (Task.sample, ShallowTask.sample)
PURPOSE_EVAL = 10       # fresh evaluation inputs of a fine-tuned shallow task
PURPOSE_SUBSAMPLE = 11  # fine-tuning subsamples of a held-out dataset task


def task_seed(seed, key, purpose: int):
    """The seed of one kind of draw from a task with spawn key ``key``: a Generator or SeedSequence
    as given; an int combined with the key and ``purpose`` (a ``PURPOSE_*``)."""
    if isinstance(seed, (np.random.SeedSequence, np.random.Generator)):
        return seed
    seed = check_int("seed", seed, low=0)
    return np.random.SeedSequence(entropy=seed, spawn_key=(*(tuple(key) if key is not None else ()), purpose))
