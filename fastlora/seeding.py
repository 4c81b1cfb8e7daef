"""One way to turn a user's ``seed`` into a numpy Generator, and the spawn keys that keep a
task's independent draws apart.

Every stream is ``Generator(PCG64(SeedSequence(entropy, spawn_key=key)))``; :class:`KeyedSeed`
gives that SeedSequence's state words from a compiled hash (fastlora.kernels.seeds) — the
same streams at a tenth of the cost, which a sweep row pays a dozen times."""
from __future__ import annotations

import functools

import numpy as np
from numpy.random.bit_generator import ISeedSequence, ISpawnableSeedSequence

from .config import settings
from .errors import check_int
from .kernels import seeds


class KeyedSeed(ISpawnableSeedSequence):
    """``numpy.random.SeedSequence(entropy, spawn_key=spawn_key)`` for a non-negative int ``entropy``:
    the same state words (so a bit generator seeded by it draws the same numbers), hashed by
    :func:`fastlora.kernels.seeds.sequence_state`; ``spawn`` and :meth:`sequence` hand over to
    numpy's own object."""

    __slots__ = ("entropy", "spawn_key")

    def __init__(self, entropy: int, spawn_key: tuple = ()):
        self.entropy, self.spawn_key = entropy, spawn_key

    def generate_state(self, n_words: int, dtype=np.uint32) -> np.ndarray:
        wide = np.dtype(dtype) == np.dtype(np.uint64)
        if not wide and np.dtype(dtype) != np.dtype(np.uint32):
            raise ValueError(f"dtype={dtype!r}: only uint32 and uint64 state words are supported")
        words = np.empty(n_words * (2 if wide else 1), np.int64)
        _state_kernel()(seeds.entropy_words(self.entropy, self.spawn_key), words)
        state = words.astype("<u4")
        return state.view("<u8").astype(np.uint64) if wide else state.astype(np.uint32)

    def spawn(self, n_children: int) -> list:
        return self.sequence().spawn(n_children)

    def sequence(self) -> np.random.SeedSequence:
        """numpy's SeedSequence of the same entropy and key."""
        return np.random.SeedSequence(self.entropy, spawn_key=self.spawn_key)

    def __repr__(self) -> str:
        return f"KeyedSeed({self.entropy}, spawn_key={self.spawn_key})"


@functools.cache
def _state_kernel():
    """The compiled hash, looked up once per process (where its code is cached changes nothing it computes)."""
    return seeds.compiled_sequence_state(settings.compiled_code_root())


def stream(entropy: int, spawn_key: tuple = ()) -> np.random.Generator:
    """``default_rng(SeedSequence(entropy, spawn_key=spawn_key))``, at a tenth of its cost."""
    return np.random.Generator(np.random.PCG64(KeyedSeed(entropy, spawn_key)))


def as_generator(seed, name: str = "seed") -> np.random.Generator:
    """``seed``: a non-negative int, a ``numpy.random.SeedSequence`` (or :class:`KeyedSeed`) or a
    ``Generator`` (used as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, ISeedSequence):
        return np.random.Generator(np.random.PCG64(seed))
    return stream(check_int(name, seed, low=0))


# the last spawn-key entry of each kind of draw from a task (after the task's own key); problems
# use 0 and 1 for a task's ground truth and data
PURPOSE_SAMPLE = 9      # fresh samples of a task (Task.sample, ShallowTask.sample)
PURPOSE_EVAL = 10       # fresh evaluation inputs of a fine-tuned shallow task
PURPOSE_SUBSAMPLE = 11  # fine-tuning subsamples of a held-out dataset task


def task_seed(seed, key, purpose: int):
    """The seed of one kind of draw from a task with spawn key ``key``: a Generator or SeedSequence
    as given; an int combined with the key and ``purpose`` (a ``PURPOSE_*``)."""
    if isinstance(seed, (ISeedSequence, np.random.Generator)):
        return seed
    seed = check_int("seed", seed, low=0)
    return KeyedSeed(seed, (*(tuple(key) if key is not None else ()), purpose))
