"""Tasks: population targets (dense or factored) and finite samples reduced to statistics.

A finite-sample task keeps only its sufficient statistics (docs/design.md §2)::

    Σ = XᵀX/n  (d_in, d_in),   C = YᵀX/n  (d_out, d_in),   s = ‖Y‖²/2n
    L(W) = ½ tr(W Σ Wᵀ) − tr(W Cᵀ) + s,        ∇L(W) = W Σ − C

A population task has L(W) = ½‖W − W*‖²_F.  Its target may be dense or factored,
W* = base + B Cᵀ (:class:`LowRankTarget`), which keeps memory at O(d² + d·k) and lets the
solvers batch the products with the shared ``base`` over all tasks.

Fresh samples (:meth:`Task.sample`) come from one of two samplers with the same law:
``"raw"`` draws X and ε and reduces them (O(n·d) normals), ``"stats"`` draws (Σ, C, s)
directly from their exact joint law (O(d²) normals; see :func:`exact_statistics`).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
from numpy.random.bit_generator import ISeedSequence

from .config import require_memory, settings
from .errors import FastLoRAError, check_array, check_choice, check_float, check_int
from .implicit import is_implicit
from .laws import STANDARD_LAW, DataLaw, refuse_inexact_statistics
from .options import MAX_NOISE
from .seeding import PURPOSE_SAMPLE, as_generator, keyed_streams, separate_streams, task_seed

_SAMPLE_CHUNK = 65536  # rows generated at a time, so memory stays O(chunk · d)
SAMPLERS = ("raw", "stats")
# the raw sampler refuses more normal draws than this in one call (~5 minutes at the
# ~3e7 draws/s measured for d=64): sampler="stats" has the same law at O(d²) draws
MAX_RAW_DRAWS = 10**10


@dataclass(frozen=True, eq=False)
class LowRankTarget:
    """A factored target ``W* = base + B Cᵀ``; ``base`` is usually shared by many tasks.

    Shapes: ``base`` (d_out, d_in), ``B`` (d_out, k), ``C`` (d_in, k).  ``symmetric`` means
    ``B is C`` (the paper's Δ* = U* U*ᵀ).
    """

    base: np.ndarray
    B: np.ndarray
    C: np.ndarray

    def __post_init__(self):
        symmetric = self.B is self.C
        base = check_array("base", self.base, ndim=2)
        B = check_array("B", self.B, ndim=2)
        C = B if symmetric else check_array("C", self.C, ndim=2)
        d_out, d_in = base.shape
        if B.shape[0] != d_out:
            raise FastLoRAError(f"B has shape {B.shape}; its first axis must equal base's rows d_out={d_out}")
        if C.shape != (d_in, B.shape[1]):
            if symmetric:
                raise FastLoRAError(f"C = B (symmetric perturbation) needs a square base; base has shape {base.shape} "
                                    f"and B {B.shape}: pass C of shape ({d_in}, {B.shape[1]})")
            raise FastLoRAError(f"C has shape {C.shape}; expected (d_in, k) = ({d_in}, {B.shape[1]}) "
                                f"for base {base.shape} and B {B.shape}")
        for name, value in (("base", base), ("B", B), ("C", C)):
            object.__setattr__(self, name, value)

    @classmethod
    def _trusted(cls, base, B, C) -> LowRankTarget:
        """A target from arrays already known to be finite float64 of consistent shapes
        (make_problem's draws): skips the O(d²) checks that would otherwise repeat per task."""
        self = object.__new__(cls)
        for name, value in (("base", base), ("B", B), ("C", C)):
            object.__setattr__(self, name, value)
        return self

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


Target = np.ndarray | LowRankTarget


def dense_target(target: Target) -> np.ndarray:
    return target.dense() if isinstance(target, LowRankTarget) else target


# squares of data below this lose every digit to float64's underflow (tiny / eps ≈ 1e-292)
SMALLEST_MOMENT = float(np.finfo(np.float64).tiny / np.finfo(np.float64).eps)


class Task:
    """One task of linear regression, ``y = W* x + ε``.

    ``Task(X, Y)`` builds a finite-sample task from data (``X`` (n, d_in), ``Y`` (n, d_out));
    only (Σ, C, s) are kept.  ``Task.population(W_star)`` builds a population task.
    Optional ``W_star`` on a finite-sample task is its ground truth, used for excess risk.
    ``sampler`` ("raw" or "stats") is how :meth:`sample` draws fresh data from the ground truth.
    """

    sampler = "raw"  # how sample() draws fresh data: "raw" or "stats" (same law; see sample_statistics)
    law: DataLaw = STANDARD_LAW  # the law of sample()'s inputs and noise (fastlora.laws)

    def __init__(self, X, Y, *, W_star: Target | None = None, noise: float | None = None):
        X = check_array("X", X, ndim=2)
        Y = check_array("Y", Y, ndim=2)
        if X.shape[0] != Y.shape[0]:
            raise FastLoRAError(f"X and Y must have the same number of rows (samples); "
                                f"got {X.shape[0]} and {Y.shape[0]}")
        n = X.shape[0]
        with np.errstate(over="ignore", invalid="ignore"):
            Sigma, C, s = X.T @ X / n, Y.T @ X / n, float(np.sum(Y * Y)) / (2 * n)
        if not (np.isfinite(Sigma).all() and np.isfinite(C).all() and np.isfinite(s)):
            raise FastLoRAError(f"X and Y: their second moments overflow float64 (largest |X| = "
                                f"{np.abs(X).max():.3g}, |Y| = {np.abs(Y).max():.3g}); rescale the data")
        for name, largest in (("X", float(np.abs(X).max())), ("Y", float(np.abs(Y).max()))):
            if largest > 0.0 and largest * largest < SMALLEST_MOMENT:  # a square may underflow to 0 itself
                raise FastLoRAError(f"{name}: its second moments underflow float64 (largest |{name}| = {largest:.3g}, "
                                    f"squared {largest * largest:.3g}, below {SMALLEST_MOMENT:.1e} where float64 keeps "
                                    f"no precision); rescale the data (divide X and Y by their largest entries)")
        self._init_statistics(Sigma, C, s, n, W_star=W_star, noise=noise)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def population(cls, W_star: np.ndarray | LowRankTarget | None = None, *, base=None, B=None, C=None,
                   sampler: str = "raw") -> Task:
        """A population task with target ``W_star`` (dense), or factored ``base + B Cᵀ``.

        Pass either ``W_star`` (an array or a :class:`LowRankTarget`) or ``base``, ``B``
        and ``C``; ``C`` defaults to ``B`` (symmetric perturbation).  ``sampler`` is how
        :meth:`sample` (fine-tuning draws) generates data: ``"raw"`` or ``"stats"``.
        """
        if W_star is None:
            if base is None or B is None:
                raise FastLoRAError("Task.population needs W_star, or base and B (and optionally C)")
            W_star = make_lowrank_target(base, B, C)
        elif base is not None or B is not None or C is not None:
            raise FastLoRAError("Task.population takes either W_star or base/B/C, not both")
        target = _check_target("W_star", W_star)
        self = cls.__new__(cls)
        d_out, d_in = target.shape
        # a new task has no derived state to invalidate: its attributes are set without __setattr__
        self.__dict__.update(n=None, target=target, d_out=d_out, d_in=d_in, noise=None, Sigma=None, C=None, s=None,
                             key=None, sampler=check_choice("sampler", sampler, SAMPLERS))
        return self

    @classmethod
    def from_statistics(cls, Sigma, C, s: float, n: int, *, W_star: Target | None = None,
                        noise: float | None = None) -> Task:
        """A finite-sample task from its sufficient statistics Σ = XᵀX/n, C = YᵀX/n, s = ‖Y‖²/2n.

        Σ must be symmetric and positive semi-definite, as XᵀX/n is, to the rounding of statistics
        computed in float32 (``STATISTICS_RTOL`` of its largest entry, or eigenvalue, in size); it is
        symmetrised, ½(Σ + Σᵀ).  An indefinite Σ made losses negative and solves "converge" there.
        For the same reason s must be at least ½tr(CΣ⁺Cᵀ) (to that rounding), as ‖Y‖²/2n is."""
        Sigma = check_array("Sigma", Sigma, ndim=2)
        if Sigma.shape[0] != Sigma.shape[1]:
            raise FastLoRAError(f"Sigma must be square, got shape {Sigma.shape}")
        largest, asymmetry = float(np.abs(Sigma).max()), float(np.abs(Sigma - Sigma.T).max())
        if asymmetry > STATISTICS_RTOL * largest:
            raise FastLoRAError(f"Sigma must be symmetric (it is XᵀX/n); it differs from its transpose by "
                                f"{asymmetry:.3g}, its largest entry being {largest:.3g}")
        if largest > 0:
            lam = np.linalg.eigvalsh(0.5 * (Sigma + Sigma.T) / largest)  # scaled: no overflow at any size
            if lam[0] < -STATISTICS_RTOL * max(abs(lam[0]), abs(lam[-1])):
                raise FastLoRAError(f"Sigma must be positive semi-definite (it is XᵀX/n); its least eigenvalue is "
                                    f"{lam[0] * largest:.3g} and its largest {lam[-1] * largest:.3g}")
        C = check_array("C", C, ndim=2)
        self = cls.__new__(cls)
        self._init_statistics(Sigma, C, check_float("s", s, low=0.0), check_int("n", n, low=1),
                              W_star=W_star, noise=noise)
        # s = ‖Y‖²/2n is at least the part of it the inputs explain, ½tr(CΣ⁺Cᵀ) = L(0) − L(Ŵ): below it the
        # losses would be negative (they were clamped at 0, and the solves' relative tests read nonsense)
        W_hat, _ = least_squares_fits([self])
        with np.errstate(over="ignore", invalid="ignore"):
            explained = 0.5 * float(np.sum(W_hat[0] * self.C))
        if not np.isfinite(explained):
            raise FastLoRAError(f"Sigma and C: ½tr(CΣ⁺Cᵀ), the part of s the inputs explain, overflows float64 "
                                f"({explained}); rescale the data")
        if self.s < (1.0 - STATISTICS_RTOL) * explained:
            raise FastLoRAError(f"s={self.s:.6g} is below ½tr(CΣ⁺Cᵀ) = {explained:.6g}, the part of s = ‖Y‖²/(2n) "
                                f"that the inputs explain: no data have these statistics (s is ‖Y‖²/(2n) with the "
                                f"n of Σ = XᵀX/n and C = YᵀX/n); where s is unknown, s = {explained:.6g} (a zero "
                                f"loss floor) leaves every minimizer unchanged")
        return self

    def _init_statistics(self, Sigma, C, s, n, *, W_star, noise) -> None:
        d_in = Sigma.shape[0]
        if C.shape[1] != d_in:
            raise FastLoRAError(f"C has shape {C.shape}; its second axis must equal d_in={d_in}")
        d_out, d_in = C.shape
        target = None if W_star is None else _check_target("W_star", W_star)
        if target is not None and target.shape != (d_out, d_in):
            raise FastLoRAError(f"W_star has shape {target.shape}; the data imply ({d_out}, {d_in})")
        self._set_statistics(0.5 * (Sigma + Sigma.T), C, float(s), int(n), target,
                             None if noise is None else check_float("noise", noise, low=0.0, high=MAX_NOISE))

    def _set_statistics(self, Sigma, C, s: float, n: int, target, noise) -> None:
        """A new task's statistics, checked and Σ symmetric (nothing derived yet to invalidate)."""
        self.__dict__.update(Sigma=Sigma, C=C, s=s, n=n, d_out=C.shape[0], d_in=C.shape[1], noise=noise, key=None,
                             target=target)

    @classmethod
    def deferred_sample(cls, source: Task, n: int, seed, noise: float, sampler: str) -> Task:
        """``source.sample(n, seed, noise, sampler)``, drawn only when its statistics are first read.

        Held-out tasks of a problem are used through their ground truth (fine-tuning draws
        fresh samples), so their own data usually need never be drawn; when they are, the
        numbers are those an immediate draw gives.
        """
        self = cls.__new__(cls)
        d_out, d_in = source.target.shape
        self.__dict__.update(n=int(n), noise=noise, sampler=sampler, key=source.key, law=source.law,
                             target=source.target, d_out=d_out, d_in=d_in, _deferred=(source, n, seed, noise, sampler))
        return self

    def __setattr__(self, name, value):
        # new statistics make the fit and spectrum kept for the old ones stale (_kept_per_task);
        # the arrays themselves are read, never changed in place, by fastlora
        if name in ("Sigma", "C", "s"):
            for key in _DERIVED:
                self.__dict__.pop(key, None)
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only reached for attributes not set: the statistics of a deferred sample
        deferred = self.__dict__.get("_deferred")
        if deferred is None or name not in ("Sigma", "C", "s"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        source, n, seed, noise, sampler = deferred
        drawn = source.sample(n, seed=seed, noise=noise, sampler=sampler)
        self.Sigma, self.C, self.s = drawn.Sigma, drawn.C, drawn.s
        del self.__dict__["_deferred"]
        return getattr(self, name)

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
        return dense_target(self._ground_truth())

    def _ground_truth(self) -> Target:
        if self.target is None:
            raise FastLoRAError("this task has no ground truth W_star (it was built from data alone)")
        return self.target

    def loss(self, W) -> float:
        """L(W): ½‖W − W*‖²_F (population) or ½ tr(W Σ Wᵀ) − tr(W Cᵀ) + s, evaluated in the stable
        form ½⟨(W − Ŵ)Σ, W − Ŵ⟩ + L(Ŵ) (:func:`least_squares_fits`)."""
        W = check_array("W", W, shape=(self.d_out, self.d_in))
        if self.is_population:
            return 0.5 * float(np.sum((W - self.W_star) ** 2))
        W_hat, floor = least_squares_fits([self])
        return float(quadratic_losses(W[None], self.Sigma[None], W_hat, floor)[0])

    def excess_risk(self, W) -> float:
        """½‖W − W*‖²_F against the task's ground truth."""
        W = check_array("W", W, shape=(self.d_out, self.d_in))
        self._ground_truth()  # (excess_risks gives NaN without one)
        return float(excess_risks([self], W[None])[0])

    def sample(self, n: int, seed=0, noise: float | None = None, sampler: str | None = None) -> Task:
        """Draw ``n`` fresh samples x ~ N(0, I), y = W* x + ε, ε ~ N(0, noise² I) — or the task's
        own ``law`` of inputs and noise (fastlora.laws).

        ``sampler`` (default: the task's own, ``self.sampler``) picks how; the new task
        keeps the sampler, the law, the ground truth and the key.  An int ``seed`` is combined
        with the task's key (two tasks draw different data from one int); a SeedSequence or
        Generator is used as given (the same SeedSequence on two tasks draws the same numbers).
        :func:`sample_many` draws several tasks at once (the same numbers).
        """
        return sample_many([self], n, [seed], noise, sampler)[0]

    def __repr__(self) -> str:
        mode = "population" if self.is_population else f"n={self.n}"
        return f"Task(d_out={self.d_out}, d_in={self.d_in}, {mode})"


def sample_many(tasks: list[Task], n: int, seeds: list, noise: float | None = None,
                sampler: str | None = None) -> list[Task]:
    """``[task.sample(n, seed, noise, sampler) for task, seed in zip(tasks, seeds)]``: each task draws
    the same numbers from its own seed; the statistics of tasks of one shape (:func:`exact_statistics_many`,
    :func:`raw_statistics_many`) are computed as stacks, a fraction of the per-task cost, at most
    ``SAMPLE_BATCH_BYTES`` of them at a time.  Where one Generator serves several tasks, the tasks
    draw one after another, in order, as separate calls would."""
    if len(seeds) != len(tasks):
        raise FastLoRAError(f"sample_many: {len(seeds)} seed(s) for {len(tasks)} task(s)")
    for task in tasks:
        if task.target is None:
            raise FastLoRAError("cannot sample from a task without ground truth W_star")
    n = check_int("n", n, low=1)
    drawn = []  # (task, noise, sampler, source) per task; a source: a Generator, or a seed as_generator takes
    checked = set()  # positive noise levels checked (a problem's tasks share theirs)
    for task, seed in zip(tasks, seeds):
        level = task.noise if noise is None else noise
        if not (type(level) is float and level in checked):
            level = 0.0 if level is None else check_float("noise", level, low=0.0, high=MAX_NOISE)
            if level > 0.0:  # not 0.0: -0.0 == 0.0, and a task keeps its own zero's sign
                checked.add(level)
        kind = task.sampler if sampler is None else check_choice("sampler", sampler, SAMPLERS)
        drawn.append((task, level, kind, task_seed(seed, task.key, PURPOSE_SAMPLE)))
    statistics: list = [None] * len(drawn)
    stacked: dict = {}  # (sampler, shape, noise, raw law) -> tasks whose statistics are drawn as stacks
    # every task its own stream (a seed makes one; a Generator may be given twice): the order of draws is free
    if separate_streams(source for *_, source in drawn if isinstance(source, np.random.Generator)):
        for i, (task, level, kind, _) in enumerate(drawn):
            if n < task.d_in:
                continue
            if kind == "stats" and task.law.is_standard:  # exact_statistics_many
                stacked.setdefault((kind, task.target.shape, level, None), []).append(i)
            elif kind == "raw" and _in_memory(task.target):
                # raw_statistics_many, tasks of equal laws together (every problem has its own DataLaw)
                stacked.setdefault((kind, task.target.shape, level, _law_key(task.law)), []).append(i)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, with its reason
        for (kind, shape, level, _), members in stacked.items():
            law = drawn[members[0]][0].law
            if kind == "raw":
                check_raw_draws(raw_draws(n, shape[1], shape[0], level),
                                f"sampling n={n} samples of a ({shape[0]}, {shape[1]}) task")
            each = sampling_bytes(n, shape[1], shape[0], kind)
            size = _sample_batch(each, kind)
            for start in range(0, len(members), size):
                batch = members[start:start + size]
                require_memory(len(batch) * each, f"sampling {len(batch)} ({shape[0]}, {shape[1]}) task(s)",
                               "use a smaller d (each task keeps d_in² + d_out·d_in statistics)")
                targets, sources = [drawn[i][0].target for i in batch], [drawn[i][3] for i in batch]
                if kind == "stats":
                    Sigma, C, sq = exact_statistics_many(targets, n, level, sources)
                else:
                    W_star = np.array([dense_target(t) for t in targets])
                    Sigma, C, sq = raw_statistics_many(W_star, n, level, sources, law)
                _refuse_overflow(n, Sigma, C, sq)  # a stack at a time
                for j, i in enumerate(batch):  # each task its own arrays (Σ's made below)
                    statistics[i] = (Sigma[j], C[j].copy(), float(sq[j]))
        for i, (task, level, kind, source) in enumerate(drawn):  # the others, in task order
            if statistics[i] is None:
                Sigma, C, sq = sample_statistics(task.target, n, level, as_generator(source), sampler=kind,
                                                 law=task.law)
                _refuse_overflow(n, Sigma, C, sq)
                statistics[i] = (Sigma, C, float(sq))
    out = []
    for i, (task, level, kind, _) in enumerate(drawn):
        (Sigma, C, sq), statistics[i] = statistics[i], None  # released as consumed: no second copy of all Σ
        # drawn here from a checked target and noise level: finite and semi-definite; Σ symmetrised as
        # Task._init_statistics does
        fresh = Task.__new__(Task)
        fresh._set_statistics(0.5 * (Sigma + Sigma.T), C, sq, n, task.target, level)
        fresh.__dict__.update(key=task.key, sampler=kind, law=task.law)
        out.append(fresh)
    return out


def _refuse_overflow(n: int, Sigma, C, sq) -> None:
    """Sampled statistics (one task's, or stacks) must be finite: a clear error where they overflowed."""
    with np.errstate(over="ignore", invalid="ignore"):  # _all_finite's sum may overflow: then it checks entrywise
        if _all_finite(sq) and _all_finite(Sigma) and _all_finite(C):
            return
    raise FastLoRAError(f"sampling n={n} samples: their statistics overflow float64 (the task's targets or its law's "
                        f"inputs are too large); rescale them")


def _all_finite(a) -> bool:
    """np.isfinite(a).all() at the cost of one sum where it holds (a finite sum has only finite terms;
    an inf or NaN term makes it non-finite, and so may an overflow, which the entrywise test then clears)."""
    return bool(np.isfinite(np.sum(a))) or bool(np.isfinite(a).all())


def _law_key(law):
    """What decides a law's draws, so tasks of equal laws (every problem its own DataLaw) share a stack;
    by identity a covariance matrix (comparing arrays would cost more than it saves) and any law that is
    not a plain DataLaw (a subclass may draw its own way)."""
    if type(law) is not DataLaw or law.sqrt is not None:
        return ("object", id(law))
    return (law.input_law, law.input_df, law.noise_law, law.noise_df, law.cov_name)


# sample_many stacks the exact statistics of at most this many bytes of tasks at a time, and raw draws
# (copied into the stack) of at most RAW_BATCH_BYTES: stacks of large raw draws left the caches, and
# two sweep workers drawing them scaled 1.3x instead of 1.8-1.9x (fastlora bench --config points)
SAMPLE_BATCH_BYTES = 16 << 20
RAW_BATCH_BYTES = 1 << 20


def _sample_batch(task_bytes: int, sampler: str = "stats") -> int:
    """How many tasks of ``task_bytes`` (:func:`sampling_bytes`) sample_many draws in one stack."""
    limit = RAW_BATCH_BYTES if sampler == "raw" else SAMPLE_BATCH_BYTES
    return max(1, limit // max(task_bytes, 1))


def sampling_bytes_many(count: int, n: int, d_in: int, d_out: int, sampler: str) -> int:
    """Peak bytes :func:`sample_many` allocates for ``count`` tasks of one shape: one stack of their
    statistics and draws (at most ``SAMPLE_BATCH_BYTES``, or one task's), or one raw sampling call."""
    each = sampling_bytes(n, d_in, d_out, sampler)
    if n >= d_in:  # stacks (an implicit target's raw draws go one task at a time: fewer bytes)
        return each * min(count, _sample_batch(each, sampler))
    return each


def make_lowrank_target(base, B, C=None) -> LowRankTarget:
    """``base + B Cᵀ`` with ``C`` defaulting to ``B`` (symmetric); checked by :class:`LowRankTarget`."""
    if base is None or B is None:
        raise FastLoRAError("a low-rank target needs base (d_out, d_in) and B (d_out, k)")
    if C is None:
        B = check_array("B", B, ndim=2)
        C = B
    return LowRankTarget(base, B, C)


def _check_target(name: str, target) -> Target:
    if isinstance(target, LowRankTarget):
        return target
    return check_array(name, target, ndim=2)


def raw_draws(n: int, d_in: int, d_out: int, noise: float) -> int:
    """Normal draws the raw sampler makes for ``n`` samples (X, and ε when noise > 0)."""
    return int(n) * (d_in + (d_out if noise > 0 else 0))


def check_raw_draws(draws: int, what: str) -> None:
    """Refuse raw sampling that would take minutes to hours (more than ``MAX_RAW_DRAWS`` normals)."""
    if draws > MAX_RAW_DRAWS:
        raise FastLoRAError(f"{what} would draw {draws:.3g} random normals with sampler='raw' (more than "
                            f"MAX_RAW_DRAWS={MAX_RAW_DRAWS:.0e}, minutes to hours of work); pass sampler='stats' "
                            f"(the exact law of the sufficient statistics, O(d²) draws whatever n), or a smaller n")


def sample_statistics(target: Target, n: int, noise: float, rng: np.random.Generator, sampler: str = "raw",
                      law: DataLaw | None = None):
    """(Σ, C, s) of n samples of y = W* x + ε, x ~ N(0, I), ε ~ N(0, noise² I) — or x and ε
    from ``law`` (:class:`fastlora.laws.DataLaw`; None: the standard law).

    ``sampler="raw"`` draws the data in chunks of rows and reduces them; ``"stats"``
    draws the statistics from their exact joint law (:func:`exact_statistics`; Gaussian
    inputs and noise only, any input covariance: :func:`law_statistics`).
    """
    d_out, d_in = target.shape
    sampler = check_choice("sampler", sampler, SAMPLERS)
    law = STANDARD_LAW if law is None else law
    if sampler == "stats":
        refuse_inexact_statistics(law)
    if sampler == "raw":
        check_raw_draws(raw_draws(n, d_in, d_out, noise), f"sampling n={n} samples of a ({d_out}, {d_in}) task")
    require_memory(sampling_bytes(n, d_in, d_out, sampler), f"sampling a ({d_out}, {d_in}) task",
                   "use a smaller d (each task keeps d_in² + d_out·d_in statistics)")
    if sampler == "stats" and n >= d_in:
        return law_statistics(target, n, noise, rng, law)
    # raw draws; also "stats" with n < d_in, where XᵀX is singular (no Bartlett factor)
    # and drawing X itself costs n·d_in < d_in² normals
    return _raw_statistics(target, n, noise, rng, law)


def sampling_bytes(n: int, d_in: int, d_out: int, sampler: str) -> int:
    """Bytes one :func:`sample_statistics` call allocates at most: the statistics Σ, C and their
    reduction buffers (3·(d_in² + d_out·d_in)), and X, Y and the noise for a chunk of rows (the
    Gram form holds X and the noise only) and the dense W* (raw, or stats with n < d_in) or R and M
    (stats)."""
    rows = min(n, _SAMPLE_CHUNK) if sampler == "raw" or n < d_in else d_in
    dense_target = d_in * d_out if sampler == "raw" or n < d_in else 0  # the raw sampler's W* (_raw_statistics)
    return 8 * (3 * d_in * (d_in + d_out) + 3 * rows * (d_in + d_out) + dense_target)


def _raw_statistics(target: Target, n: int, noise: float, rng: np.random.Generator, law: DataLaw = STANDARD_LAW):
    d_out, d_in = target.shape
    in_memory = _in_memory(target)
    if in_memory and n >= d_in:
        Sigma, C, sq = raw_statistics_many(dense_target(target)[None], n, noise, [rng], law)
        return Sigma[0], C[0], float(sq[0])
    # a factored target whose base is in memory is applied as one dense W* (formed once: d_out·d_in like
    # the base itself): one GEMM over the rows instead of three, and two fewer (m, d) temporaries.
    W_T = dense_target(target).T if in_memory else None
    Sigma = np.zeros((d_in, d_in))
    C = np.zeros((d_out, d_in))
    sq = 0.0
    done = 0
    while done < n:
        m = min(_SAMPLE_CHUNK, n - done)
        X = law.inputs(rng, m, d_in)
        Y = _apply_transposed(target, X) if W_T is None else X @ W_T
        if noise > 0:
            Y += noise * law.noise(rng, m, d_out)
        Sigma += X.T @ X
        C += Y.T @ X
        sq += float(np.sum(Y * Y))
        done += m
    return Sigma / n, C / n, sq / (2 * n)


def _in_memory(target: Target) -> bool:
    """Whether a target's base is an array (not an implicit matrix generated tile by tile)."""
    return not (isinstance(target, LowRankTarget) and is_implicit(target.base))


def raw_statistics_many(W_star, n: int, noise: float, rngs: list, law: DataLaw = STANDARD_LAW):
    """The raw statistics (Σ (N, d_in, d_in), C (N, d_out, d_in), s (N,)) of N tasks of dense targets
    ``W_star`` (N, d_out, d_in), task i drawing from ``rngs[i]`` (a Generator, or a KeyedSeed: the stream
    ``as_generator`` makes of it) — X then E, chunk by chunk, as :func:`_raw_statistics` draws — without
    forming Y = X W*ᵀ + σE: from the Grams XᵀX, EᵀX and ‖E‖² of the draws, YᵀX = W* XᵀX + σ EᵀX and
    ‖Y‖² = ⟨W* XᵀX, W*⟩ + 2σ⟨W*, EᵀX⟩ + σ²‖E‖².

    Equal to the definition up to rounding; a third of its work over the samples (no GEMM applying
    W*, no scaled noise, no Y), and at n ≥ d_in the d_out·d_in² of W* XᵀX costs less than that GEMM.
    The products are stacked (a task's numbers do not depend on the others drawn with it).  Gaussian
    draws from KeyedSeeds run in compiled code, every task's at once (fastlora.seeding.keyed_streams:
    the same numbers, ~4.5x as fast as numpy's and no Generator object each)."""
    N, d_out, d_in = W_star.shape
    XX = np.zeros((N, d_in, d_in))
    EX = np.zeros((N, d_out, d_in))
    EE = np.zeros(N)
    chunk = min(_SAMPLE_CHUNK, n)
    gaussian = type(law) is DataLaw and law.exact_statistics  # Gaussian inputs (any covariance) and noise
    streams = keyed_streams(rngs, N * n * (d_in + (d_out if noise > 0 else 0))) if gaussian else None
    if streams is None:
        rngs = _generators(rngs)
    # the draws go straight into two stacks allocated once (no temporaries, no copies)
    own_draws = type(law) is not DataLaw  # a subclass's methods may not take out=
    X_all = np.empty((N, chunk, d_in))
    E_all = np.empty((N, chunk, d_out)) if noise > 0 else None
    done = 0
    while done < n:
        m = min(chunk, n - done)
        X, E = X_all[:, :m], None if E_all is None else E_all[:, :m]
        if streams is not None:
            if m < chunk:  # the last of several chunks: stacks of its own (the compiled filler takes C order)
                X, E = np.empty((N, m, d_in)), None if E is None else np.empty((N, m, d_out))
            streams.fill(X, E)  # every task's X then E (unit draws z), as the loop below draws them
            if law.sqrt is not None:
                for i in range(N):
                    law.correlated(X[i].copy(), out=X[i])
        else:
            for i, rng in enumerate(rngs):
                _draw_into(law.inputs, rng, X[i], own_draws)
                if E is not None:
                    _draw_into(law.noise, rng, E[i], own_draws)
        XX += X.transpose(0, 2, 1) @ X
        if E is not None:
            EX += E.transpose(0, 2, 1) @ X
            EE += np.square(E, out=E).reshape(N, -1).sum(axis=1)  # ‖E‖² (as _inner_each sums), E squared in place
        done += m
    WXX = W_star @ XX
    C = WXX + noise * EX
    sq = _inner_each(WXX, W_star) + 2.0 * noise * _inner_each(W_star, EX) + noise * noise * EE
    return XX / n, C / n, np.maximum(sq, 0.0) / (2 * n)


def _generators(sources: list) -> list:
    """The Generators of a stack's ``sources``: a seed (a KeyedSeed or SeedSequence) makes its stream; anything
    else (a Generator, or an object drawing as one does) draws as given."""
    return [as_generator(s) if isinstance(s, ISeedSequence) else s for s in sources]


def _draw_into(draw, rng, out, copy: bool) -> None:
    """``out[...] = draw(rng, *out.shape)`` (a DataLaw's inputs or noise), generated in place unless ``copy``."""
    if copy:
        out[...] = draw(rng, *out.shape)
    else:
        draw(rng, *out.shape, out=out)


def excess_risks(tasks, W) -> np.ndarray:
    """½‖W_i − W*_i‖²_F of each task i against its ground truth (NaN for a task without one), for a
    stack ``W`` (N, d_out, d_in) of one shape: :meth:`Task.excess_risk` of a batch."""
    W_star = np.array([np.full(W.shape[1:], np.nan) if t.target is None else dense_target(t.target) for t in tasks])
    difference = W - W_star
    return 0.5 * _inner_each(difference, difference)


def _inner_each(a, b):
    """⟨a_k, b_k⟩ of stacks (N, ...) -> (N,): each a sum over one contiguous row, so the same whatever N
    (einsum's summation order changes with the stack's size)."""
    return (a * b).reshape(a.shape[0], -1).sum(axis=1)


def _apply_transposed(target: Target, X):
    """X W*ᵀ for X (m, d_in), without forming a factored W*."""
    if isinstance(target, LowRankTarget):
        return X @ target.base.T + (X @ target.C) @ target.B.T
    return X @ target.T


def _apply_transposed_many(targets: list, X):
    """``[_apply_transposed(t, x) for t, x in zip(targets, X)]`` stacked, for X (N, m, d_in): the same
    numbers, as stacked products where the targets are factored alike (:func:`_stackable`), one by one
    otherwise."""
    if not _stackable(targets):
        return np.array([_apply_transposed(t, x) for t, x in zip(targets, X)])
    base_T = np.array([t.base for t in targets]).swapaxes(1, 2)
    C = np.array([t.C.T for t in targets]).swapaxes(1, 2)  # each C F-ordered, as make_problem's views are
    B_T = np.array([t.B.T for t in targets])
    return X @ base_T + (X @ C) @ B_T


def _stackable(targets: list) -> bool:
    """Whether stacked products give :func:`_apply_transposed`'s numbers target by target: factored targets
    of one rank and at most ``STACKED_TARGET_ENTRIES`` entries (the stacks copy each base), laid out as the
    stacks are (a C-ordered base, F-ordered factors: BLAS may round a product of other layouts otherwise)."""
    first = targets[0]
    if type(first) is not LowRankTarget or math.prod(first.shape) > STACKED_TARGET_ENTRIES:
        return False
    shapes = (first.base.shape, first.B.shape, first.C.shape)
    return all(type(t) is LowRankTarget and isinstance(t.base, np.ndarray) and t.base.flags.c_contiguous
               and t.B.T.flags.c_contiguous and t.C.T.flags.c_contiguous
               and (t.base.shape, t.B.shape, t.C.shape) == shapes for t in targets)


# _apply_transposed_many stacks the factored targets of at most this many entries (64 × 64)
STACKED_TARGET_ENTRIES = 1 << 12


def bartlett_factor(d: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Upper-triangular R (d, d) with RᵀR ~ Wishart_d(n, I), for n >= d (Bartlett decomposition).

    R_ii = sqrt(χ²(n − i)) (i = 0..d−1), R_ij ~ N(0, 1) for i < j, all independent: the
    law of the R factor of the QR decomposition of an (n, d) standard normal matrix.
    """
    _, upper, dfs = _bartlett_layout(d)
    chi = rng.chisquare(float(n) - dfs)  # first: the order of the draws
    return _bartlett_factors(chi[None], rng.standard_normal(len(upper))[None])[0]


def _bartlett_factors(chi, normals) -> np.ndarray:
    """Bartlett factors R (N, d, d) from their draws: chi-squares (N, d), whose roots make the diagonal, and
    normals (N, d(d − 1)/2), the strict upper triangle row by row."""
    count, d = chi.shape
    diagonal, upper, _ = _bartlett_layout(d)
    R = np.zeros((count, d, d))
    flat = R.reshape(count, -1)
    flat[:, diagonal] = np.sqrt(chi)
    flat[:, upper] = normals
    return R


@functools.lru_cache(maxsize=64)
def _bartlett_layout(d: int):
    """Flat indices of the diagonal and the strict upper triangle (row-major) of a (d, d) array, and 0..d−1."""
    rows, cols = np.triu_indices(d, 1)
    layout = (np.arange(d) * (d + 1), rows * d + cols, np.arange(d, dtype=np.float64))
    for a in layout:
        a.setflags(write=False)  # shared by every call through the cache
    return layout


def law_statistics(target: Target, n: int, noise: float, rng: np.random.Generator, law: DataLaw):
    """(Σ, C, s) of n >= d_in samples with Gaussian inputs of covariance Σ_x = L Lᵀ and Gaussian noise,
    drawn exactly.

    x = L z with z ~ N(0, I), so y = (W* L) z + ε: the statistics of z against the target W* L are
    those of :func:`exact_statistics` (Σ̃, C̃, s), and XᵀX/n = L Σ̃ Lᵀ, YᵀX/n = C̃ Lᵀ, ‖Y‖² unchanged.
    """
    if law.sqrt is None:
        return exact_statistics(target, n, noise, rng)
    L = law.sqrt
    Sigma, C, s = exact_statistics(dense_target(target) @ L, n, noise, rng)
    return L @ Sigma @ L.T, C @ L.T, s


def exact_statistics(target: Target, n: int, noise: float, rng: np.random.Generator):
    """(Σ, C, s) of n >= d_in samples, drawn from their exact joint law in O(d²) normals.

    Derivation.  Write the data as X (n, d_in) with i.i.d. N(0, 1) entries, E (n, d_out)
    with i.i.d. N(0, σ²) entries independent of X, and Y = X W*ᵀ + E.  Let X = Q R be the
    thin QR decomposition (Q (n, d_in) with orthonormal columns, R upper triangular with
    positive diagonal).  Then

    * R has the Bartlett law (:func:`bartlett_factor`) and is independent of Q, so
      XᵀX = RᵀR ~ Wishart(n, I) exactly;
    * given X, the columns of E are N(0, σ² I_n); projecting them on the orthonormal
      columns of [Q, Q⊥] gives Z = QᵀE/σ (d_in, d_out) with i.i.d. N(0, 1) entries and
      ‖Q⊥ᵀE‖²/σ² ~ χ²(d_out·(n − d_in)), independent of each other and of X (their law
      does not depend on X);
    * QᵀY = R W*ᵀ + σ Z =: M (d_in, d_out) — the data seen through the column space of X —
      so YᵀX = Mᵀ R, i.e. EᵀX = σ Zᵀ R (matrix normal with row covariance σ² XᵀX);
    * ‖Y‖² = ‖Q QᵀY‖² + ‖Q⊥ᵀY‖² = ‖M‖²_F + ‖Q⊥ᵀE‖² (Q⊥ᵀ X = 0), the second term
      σ² χ²(d_out·(n − d_in)).  Expanding ‖M‖² recovers tr(W* XᵀX W*ᵀ) + 2⟨W*, EᵀX⟩ + ‖P_X E‖².

    Hence Σ = RᵀR/n, C = MᵀR/n and s = (‖M‖²_F + σ² χ²(d_out(n − d_in)))/2n, with R, Z and
    the χ² drawn independently.  Cost: d_in² /2 + d_in·d_out normals and d_in + 1
    chi-squares, O(d_in²·(d_in + d_out)) flops, whatever n.  With σ = 0 no noise is drawn
    (as the raw sampler).  Draw order from ``rng``: the d_in diagonal chi-squares, the
    strict upper triangle of R row by row, then Z, then the residual chi-square.
    """
    Sigma, C, sq = exact_statistics_many([target], n, noise, [rng])
    return Sigma[0], C[0], float(sq[0])


def exact_statistics_many(targets: list, n: int, noise: float, rngs: list):
    """:func:`exact_statistics` of targets of one shape, target i drawing from ``rngs[i]`` (a Generator, or a
    KeyedSeed: the stream ``as_generator`` makes of it; the same draws in the same order); the products and
    sums run on stacks (N, ·, ·), matrix by matrix the same operations.  KeyedSeeds draw in compiled code,
    every task's at once (fastlora.seeding.keyed_streams: the same numbers).  Returns (Σ (N, d_in, d_in),
    C (N, d_out, d_in), s (N,))."""
    d_out, d_in = targets[0].shape
    if n < d_in:
        raise FastLoRAError(f"exact_statistics needs n >= d_in (XᵀX is singular otherwise); got n={n}, d_in={d_in}")
    count = len(targets)
    _, upper, dfs = _bartlett_layout(d_in)
    noisy, residual_drawn = noise > 0, noise > 0 and n > d_in
    streams = keyed_streams(rngs, count * (d_in + len(upper) + (d_in * d_out if noisy else 0)))
    if streams is None:
        R = np.empty((count, d_in, d_in))
        Z = np.empty((count, d_in, d_out)) if noisy else None
        chi = np.empty((count, 1))
        for i, rng in enumerate(_generators(rngs)):  # as bartlett_factor, then the noise
            R[i] = bartlett_factor(d_in, n, rng)
            if noisy:
                Z[i] = rng.standard_normal((d_in, d_out))  # no out=: a duck-typed generator may not take it
                if residual_drawn:
                    chi[i, 0] = rng.chisquare(float(d_out) * float(n - d_in))
    else:  # the same draws: the Bartlett factor's chi-squares and normals, the noise, its residual chi-square
        upper_draws = np.empty((count, 1, len(upper)))
        Z = np.empty((count, d_in, d_out)) if noisy else None
        head, chi = streams.fill(upper_draws, Z, head_dfs=float(n) - dfs,
                                 tail_dfs=[float(d_out) * float(n - d_in)] if residual_drawn else [])
        R = _bartlett_factors(head, upper_draws[:, 0])
    M = _apply_transposed_many(targets, R)  # R W*ᵀ
    residual = np.zeros(count)
    if noisy:
        M += noise * Z
        if residual_drawn:
            residual = noise * noise * chi[:, 0]
    R_T, M_T = R.swapaxes(1, 2), M.swapaxes(1, 2)
    return R_T @ R / n, M_T @ R / n, (np.sum((M * M).reshape(count, -1), axis=1) + residual) / (2 * n)


# Task.from_statistics: how far from symmetric and semi-definite a given Σ may be (relative): the
# rounding of statistics computed in float32 (~1e-7), not a genuinely indefinite matrix
STATISTICS_RTOL = 1e-5

# eigenvalues of Σ below this fraction of the largest are treated as 0 (its pseudo-inverse)
PINV_RTOL = 1e-12


def pinv_rtol(eps, d):
    """The fraction of the largest eigenvalue below which a pseudo-inverse counts an eigenvalue of a
    symmetric d × d matrix as 0, where the eigenvalues were computed with rounding ``eps``:
    ``PINV_RTOL``, or d·eps where rounding is coarser than that (numpy's rule for ranks).  In
    float32 a singular matrix's zero eigenvalues come out ~eps of the largest; inverting them as
    information sent a solve's objective from ~0 to ~56.  Engine source (fastlora.engine.steps)."""
    return max(PINV_RTOL, d * eps)


def pinv_kept(lam, eps, xp=np):
    """Which of the eigenvalues ``lam`` (ascending along the last axis, computed with rounding
    ``eps``) a pseudo-inverse keeps: those above :func:`pinv_rtol` of the largest."""
    cut = pinv_rtol(eps, lam.shape[-1]) * xp.maximum(lam[..., -1:], xp.finfo(lam.dtype).tiny)
    return lam > cut


def pinv_function(lam, V, f, eps, xp=np):
    """V diag(f(λ)) Vᵀ over the eigenvalues a pseudo-inverse keeps (:func:`pinv_kept`; the others
    count as 0): ``f = np.reciprocal`` gives the pseudo-inverse of V diag(λ) Vᵀ, ``xp.sqrt`` its
    root.  Stacks along the leading axes."""
    keep = pinv_kept(lam, eps, xp)
    values = xp.where(keep, f(xp.where(keep, lam, 1.0)), 0.0)
    return (V * values[..., None, :]) @ V.swapaxes(-1, -2)


def least_squares_fits(tasks):
    """(Ŵ, floor) of finite-sample tasks, stacked: the least-squares fit Ŵ_t = C_t Σ_t⁺
    (N, d_out, d_in) and its loss floor_t = L_t(Ŵ_t) (N,).

    With them L_t(W) = ½⟨(W − Ŵ_t)Σ_t, W − Ŵ_t⟩ + floor_t holds exactly (C_t's rows lie in the
    range of Σ_t) and, unlike ½tr(WΣWᵀ) − tr(WCᵀ) + s, has no cancellation: losses near the
    optimum compare to full precision (:func:`quadratic_losses`).  floor_t is itself such a
    difference of terms of the size of s_t, so it is evaluated in extended precision (double-double:
    :func:`fastlora.kernels.fits.fit_floor`).  Σ_t⁺ is Σ_t⁻¹ from its Cholesky factor where that
    factor proves every eigenvalue above the pseudo-inverse's cut (:func:`_cholesky_fits`), else
    from its spectrum.  Kept on each task (:func:`_kept_per_task`).
    """
    return _kept_per_task(tasks, "_fit", _fits)


def spectra(tasks):
    """(λ, V) of finite-sample tasks, stacked: Σ_t = V_t diag(λ_t) V_tᵀ, λ ascending (N, d), (N, d, d);
    read by the whitened fits, Reptile's step and the spectral pseudo-inverse.  Kept on each task
    (:func:`_kept_per_task`)."""
    return _kept_per_task(tasks, "_spectrum", lambda missing: np.linalg.eigh(np.stack([t.Sigma for t in missing])))


# what _kept_per_task keeps on a task, dropped when its statistics are reassigned (Task.__setattr__)
_DERIVED = ("_fit", "_spectrum")


def _kept_per_task(tasks, key: str, compute) -> tuple:
    """Per-task arrays derived from the tasks' statistics, stacked: ``compute(missing)`` (a tuple of
    stacked arrays) for the tasks that lack them under ``key`` — in one batched call — kept read-only on
    each task until its Σ, C or s is reassigned."""
    missing = [t for t in tasks if t.__dict__.get(key) is None]
    if missing:
        computed = compute(missing)
        for i, task in enumerate(missing):
            own = tuple(a[i] for a in computed)
            for a in own:
                a.setflags(write=False)
            task.__dict__[key] = own
        if len(missing) == len(tasks):  # all fresh: copies of the computed stacks (restacking costs 5× more)
            return tuple(a.copy() for a in computed)
    kept = [t.__dict__[key] for t in tasks]
    return tuple(np.array([k[j] for k in kept]) for j in range(len(kept[0])))  # np.array: np.stack's checks cost 4×


def _fits(tasks) -> tuple:
    """(Ŵ, floor) of ``tasks``, computed (see :func:`least_squares_fits`) by the compiled loops of
    :mod:`fastlora.kernels.fits` (their numpy forms are the reference, tests/test_engine.py)."""
    Sigma = np.array([t.Sigma for t in tasks], dtype=np.float64)  # np.array: np.stack's checks cost 4× as much
    cross = np.array([t.C for t in tasks], dtype=np.float64)
    s = np.array([t.s for t in tasks], dtype=np.float64)
    cholesky_fits, fit_floors = _compiled_fits()
    W_hat, proven = _cholesky_fits(Sigma, cross, cholesky_fits)
    if not proven.all():
        lam, V = spectra([t for t, ok in zip(tasks, proven) if not ok])
        W_hat[~proven] = cross[~proven] @ pinv_function(lam, V, np.reciprocal, np.finfo(np.float64).eps)
    floor = np.empty(len(tasks))
    fit_floors(W_hat, Sigma, cross, s, floor)
    return W_hat, floor


def _cholesky_fits(Sigma, cross, cholesky_fits=None) -> tuple:
    """(Ŵ (N, d_out, d_in), proven (N,)): Ŵ_t = C_t Σ_t⁻¹ from Σ_t's Cholesky factor where that factor
    proves Σ_t⁺ = Σ_t⁻¹ — λ_min ≥ 1/‖L⁻¹‖²_F exceeds :func:`pinv_rtol` of tr Σ_t ≥ λ_max, so the
    pseudo-inverse keeps every eigenvalue.  The others (not positive definite, or not provably so;
    their entries unset) take the spectral pseudo-inverse.  A Cholesky solve costs a fraction of an
    eigendecomposition; which way a task takes depends on that task alone.  ``cholesky_fits``: the
    compiled loop, where the caller holds it."""
    W_hat = np.zeros(cross.shape)
    proven = np.zeros(Sigma.shape[0], bool)
    (cholesky_fits or _compiled_fits()[0])(Sigma, cross, pinv_rtol(np.finfo(np.float64).eps, Sigma.shape[1]),
                                           W_hat, proven)
    return W_hat, proven


def whitening_pairs(tasks, Sigma=None) -> tuple:
    """(G, G⁺) of finite-sample tasks, stacked (N, d_in, d_in), with GᵀG = Σ_t: Cholesky's Lᵀ and L⁻ᵀ
    (Σ_t = L Lᵀ) where the factor proves Σ_t⁺ = Σ_t⁻¹ (:func:`fastlora.kernels.fits.cholesky_factors`,
    batched LAPACK: ~6 µs a task at d = 10), else the symmetric roots Σ_t^{1/2} and Σ_t^{+1/2} of the
    spectral pseudo-inverse (:func:`spectra`: ~17 µs).  What the whitened exact fits read
    (fastlora.engine.steps.fit_adapters): ‖R Gᵀ‖_F = ‖R Σ_t^{1/2}‖_F for either (L = Σ_t^{1/2}Q with Q
    orthogonal), so both give the same fits up to rounding.  ``Sigma``: the tasks' Σ stacked, where the
    caller has it."""
    from .kernels.fits import cholesky_factors
    if Sigma is None:
        Sigma = np.array([t.Sigma for t in tasks])  # np.array: np.stack's checks cost 4× as much
    Sigma = np.asarray(Sigma, dtype=np.float64)
    eps = np.finfo(np.float64).eps
    root, inverse_root = np.zeros(Sigma.shape), np.zeros(Sigma.shape)
    proven = np.zeros(len(tasks), bool)
    # n < d_in: Σ is singular by construction, so only the others try Cholesky (a failure in a stack
    # retries it matrix by matrix)
    tried = np.array([t.n >= t.d_in for t in tasks])
    if tried.any():
        L, L_inv, proven[tried] = cholesky_factors(Sigma[tried], pinv_rtol(eps, Sigma.shape[1]))
        root[tried], inverse_root[tried] = L.transpose(0, 2, 1), L_inv.transpose(0, 2, 1)
    if not proven.all():
        lam, V = spectra([t for t, ok in zip(tasks, proven) if not ok])
        root[~proven] = pinv_function(lam, V, np.sqrt, eps)
        inverse_root[~proven] = pinv_function(lam, V, lambda x: 1.0 / np.sqrt(x), eps)
    return root, inverse_root


def prepare_fits() -> float:
    """Make the fits' compiled loops ready in this process (compile them, or load them from the on-disk
    cache); returns the seconds that took (0 once done), which a solve keeps out of its own time."""
    from .kernels import fits_numba
    if fits_numba.is_compiled(settings.compiled_code_root()):
        return 0.0
    started = time.perf_counter()
    _compiled_fits()
    return time.perf_counter() - started


def _compiled_fits() -> tuple:
    """The fits' compiled loops (fastlora.kernels.fits_numba); compiling them (not loading them from the
    on-disk cache) is announced where slow."""
    from .kernels import fits_numba
    root = settings.compiled_code_root()
    if fits_numba.is_compiled(root):
        return fits_numba.compiled_loops(root)
    from .compilation import slow_work_notice
    return fits_numba.compiled_loops(root, announce=lambda: slow_work_notice(
        f"compiling fastlora's least-squares fits of tasks (once; later runs load them from {root})"))


def quadratic_losses(W, Sigma, W_hat, floor):
    """Per task L_t(W_t) = ½⟨(W_t − Ŵ_t)Σ_t, W_t − Ŵ_t⟩ + floor_t for stacks (N, d_out, d_in): the
    one implementation of the finite-sample loss (see :func:`least_squares_fits`)."""
    E = W - W_hat
    return 0.5 * np.sum(((E @ Sigma) * E).reshape(E.shape[0], -1), axis=1) + floor
