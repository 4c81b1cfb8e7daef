"""One way to turn a user's ``seed`` into a numpy Generator, and the spawn keys that keep a
task's independent draws apart.

Every stream is ``Generator(PCG64(SeedSequence(entropy, spawn_key=key)))``; :class:`KeyedSeed`
gives that SeedSequence's state words from a compiled hash (fastlora.kernels.seeds) — the
same streams at a tenth of the cost, which a sweep row pays a dozen times."""
from __future__ import annotations

import math
import operator
import sys

import numpy as np
from numpy.random.bit_generator import ISeedSequence, ISpawnableSeedSequence

from .config import settings
from .errors import check_int
from .kernels import seeds

_UINT32, _UINT64 = np.dtype(np.uint32), np.dtype(np.uint64)
_LITTLE_ENDIAN = sys.byteorder == "little"  # then "<u4"/"<u8" words are the native dtypes already


class KeyedSeed(ISpawnableSeedSequence):
    """``numpy.random.SeedSequence(entropy, spawn_key=spawn_key)`` for a non-negative int ``entropy``:
    the same state words (so a bit generator seeded by it draws the same numbers), hashed by
    :func:`fastlora.kernels.seeds.sequence_state`; :meth:`spawn` hands over to numpy's own object
    (:meth:`sequence`, made once: its children follow on from earlier calls, as numpy's do)."""

    def __init__(self, entropy: int, spawn_key: tuple = ()):
        # ints only, as numpy's SeedSequence (a float would be truncated silently otherwise)
        self.entropy, self.spawn_key = operator.index(entropy), tuple(map(operator.index, spawn_key))
        self._sequence = None

    def generate_state(self, n_words: int, dtype=np.uint32) -> np.ndarray:
        # a bit generator asks for np.uint64 words: that case is tested first, by identity (a stream pays this
        # call once; np.dtype conversions were an eighth of it)
        wide = dtype is np.uint64 or np.dtype(dtype) == _UINT64
        if not wide and np.dtype(dtype) != _UINT32:
            raise ValueError(f"dtype={dtype!r}: only uint32 and uint64 state words are supported")
        kernel = _state_kernel()
        if kernel is None:  # numpy's own object: the same words
            return self.sequence().generate_state(n_words, dtype)
        words = np.empty(n_words * (2 if wide else 1), np.int64)
        kernel(seeds.entropy_words(self.entropy, self.spawn_key), words)
        state = words.astype("<u4")
        if not wide:
            return state if _LITTLE_ENDIAN else state.astype(np.uint32)
        return state.view("<u8") if _LITTLE_ENDIAN else state.view("<u8").astype(np.uint64)

    def spawn(self, n_children: int) -> list:
        return self.sequence().spawn(n_children)

    def sequence(self) -> np.random.SeedSequence:
        """numpy's SeedSequence of the same entropy and key (one per KeyedSeed)."""
        if self._sequence is None:
            self._sequence = np.random.SeedSequence(self.entropy, spawn_key=self.spawn_key)
        return self._sequence

    def __repr__(self) -> str:
        return f"KeyedSeed({self.entropy}, spawn_key={self.spawn_key})"


# streams hashed by numpy's own SeedSequence before the compiled hash is loaded, in a process that has
# not imported Numba yet: loading it costs ~0.35 s, which a one-off make_problem should not pay
NUMPY_STREAMS = 64
_UNSET = object()
_kernel = _UNSET
_numpy_streams = 0


def _state_kernel():
    """The compiled hash (looked up once per process: where its code is cached changes nothing it
    computes), or None while numpy's SeedSequence serves: for the first ``NUMPY_STREAMS`` streams of a
    process without Numba imported, and always where Numba cannot compile it."""
    global _kernel, _numpy_streams
    if _kernel is _UNSET:
        if "numba" not in sys.modules and _numpy_streams < NUMPY_STREAMS:
            _numpy_streams += 1
            return None
        _kernel = seeds.compiled_sequence_state(settings.compiled_code_root())
    return _kernel


def stream(entropy: int, spawn_key: tuple = ()) -> np.random.Generator:
    """``default_rng(SeedSequence(entropy, spawn_key=spawn_key))``, at a tenth of its cost."""
    return np.random.Generator(np.random.PCG64(KeyedSeed(entropy, spawn_key)))


class KeyedStreams:
    """The streams ``Generator(PCG64(source))`` of :class:`KeyedSeed` sources, drawn in compiled code
    (fastlora.kernels.streams_numba: numpy's PCG64 and distributions, the same numbers) without a Generator
    object each: :meth:`fill` draws what each stream's ``standard_normal`` and ``chisquare`` would.  Made by
    :func:`keyed_streams`; one thread at a time (unlike a Generator, it takes no lock)."""

    def __init__(self, kernel, words: np.ndarray):
        self._kernel = kernel
        self._words = words  # (N, W) int64: each source's seeds.entropy_words
        self._states = np.empty((len(words), 4), np.uint64)
        self._seeded = False

    def fill(self, first: np.ndarray, second: np.ndarray | None = None, head_dfs=(), tail_dfs=()) -> tuple:
        """Stream i draws, in order: chi-squares of ``head_dfs`` degrees of freedom, ``first[i]``, ``second[i]``
        (C-contiguous float64 stacks (N, a, b) of standard normals; ``second`` None: none), then chi-squares
        of ``tail_dfs`` — as ``chisquare(head_dfs)``, ``standard_normal(out=...)`` twice and
        ``chisquare(tail_dfs)`` of its Generator would.  Returns the chi-squares, (N, len(head_dfs)) and
        (N, len(tail_dfs)); later calls go on where this one stopped."""
        count = len(self._states)
        for name, stack in (("first", first), ("second", second)):
            if (stack is not None or name == "first") and not (
                    isinstance(stack, np.ndarray) and stack.ndim == 3 and stack.shape[0] == count
                    and stack.dtype == np.float64 and stack.flags.c_contiguous and stack.flags.writeable):
                raise ValueError(f"KeyedStreams.fill: {name} must be a writeable C-contiguous float64 stack of shape "
                                 f"({count}, a, b), one per stream; got {getattr(stack, 'shape', stack)!r}")
        # copies: the one compiled signature takes writeable C-ordered vectors (a view or read-only input would not)
        head_dfs, tail_dfs = np.array(head_dfs, np.float64).reshape(-1), np.array(tail_dfs, np.float64).reshape(-1)
        head, tail = np.empty((count, len(head_dfs))), np.empty((count, len(tail_dfs)))
        self._kernel(self._words, self._states, not self._seeded, head_dfs, head, first,
                     _NOTHING if second is None else second, tail_dfs, tail)
        self._seeded = True
        return head, tail


_NOTHING = np.empty((0, 0, 0))


def keyed_streams(sources, draws: int) -> KeyedStreams | None:
    """:class:`KeyedStreams` of ``sources`` where they can be drawn in compiled code, else None (the caller
    then draws from ``as_generator(source)`` each, the same numbers): every source a :class:`KeyedSeed` of
    32-bit entropy and key entries, all keys of one length (one array of entropy words), and Numba loaded
    in this process — or ``draws`` (normals in all) at least ``KEYED_DRAWS_IMPORT``, which pays for
    importing it."""
    if not sources or ("numba" not in sys.modules and draws < KEYED_DRAWS_IMPORT):
        return None
    rows = []
    for source in sources:
        if type(source) is not KeyedSeed:
            return None
        rows.append(seeds.short_entropy_words(source.entropy, source.spawn_key))
    try:
        words = np.array(rows, np.int64)
    except (ValueError, OverflowError):  # keys of unequal lengths, or a value beyond int64
        return None
    if words.ndim != 2 or words.min() < 0 or words.max() > seeds.MASK32:  # not the short words of every source
        return None
    kernel = _keyed_kernel()
    return None if kernel is None else KeyedStreams(kernel, words)


def standard_normals_many(entropies: list, spawn_key: tuple, shape: tuple) -> np.ndarray:
    """``[stream(e, spawn_key).standard_normal(shape) for e in entropies]`` stacked (len(entropies), *shape):
    the same numbers, every stream's drawn in one compiled call where keyed streams run."""
    size = math.prod(shape)
    if not entropies:
        return np.empty((0, *shape))
    streams = keyed_streams([KeyedSeed(entropy, spawn_key) for entropy in entropies], len(entropies) * size)
    if streams is None:
        return np.array([stream(entropy, spawn_key).standard_normal(shape) for entropy in entropies])
    out = np.empty((len(entropies), 1, size))  # row-major: the order standard_normal(shape) fills
    streams.fill(out)
    return out.reshape(len(entropies), *shape)


# importing Numba costs ~0.35 s, numpy draws ~13 ns a normal: a process without Numba loaded imports it
# for keyed draws of at least this many normals
KEYED_DRAWS_IMPORT = 1 << 25
_keyed = _UNSET


def _keyed_kernel():
    """fastlora.kernels.streams_numba's compiled filler (once per process), or None where Numba cannot compile."""
    global _keyed
    if _keyed is _UNSET:
        try:
            from .kernels import streams_numba
        except ImportError as exc:  # no Numba, or one without the ziggurat tables read there
            _keyed = _without_keyed_streams(exc, "numba" in sys.modules)
        else:
            from .compilation import slow_work_notice
            root = settings.compiled_code_root()
            try:
                _keyed = streams_numba.compiled_fill_keyed(root, announce=lambda: slow_work_notice(
                    f"compiling fastlora's random draws (once; later runs load them from {root})"))
            except Exception as exc:  # noqa: BLE001 - e.g. a Numba whose extension API changed
                _keyed = _without_keyed_streams(exc, True)
    return _keyed


def _without_keyed_streams(exc: Exception, expected: bool):
    """None (numpy's Generators draw every stream: the same numbers, more slowly), with a warning where
    Numba is installed (``expected``) but the compiled draws could not be made."""
    if expected:
        import warnings
        warnings.warn(f"fastlora's compiled random draws are unavailable ({type(exc).__name__}: {exc}); numpy "
                      f"draws the same numbers, more slowly", RuntimeWarning, stacklevel=3)
    return None


def separate_streams(generators) -> bool:
    """Whether no two of ``generators`` draw from one bit generator (then the order of their draws is free)."""
    streams = [id(g.bit_generator) for g in generators]
    return len(set(streams)) == len(streams)


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
