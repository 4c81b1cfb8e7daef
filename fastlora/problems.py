"""Synthetic PEFT-ML problems drawn from the paper's law (docs/design.md §2).

Symmetric (the paper's theory): A* = (G + Gᵀ)/2, G_ij ~ N(0, 1); Δ*_t = U*_t U*_tᵀ with
U*_t entries ~ N(0, 1).  General: A* = G (d_out × d_in), Δ*_t = B*_t C*_tᵀ with entries
~ N(0, 1).  Data: x ~ N(0, I), y = W*_t x + ε, ε ~ N(0, σ² I).

Every draw comes from ``numpy.random.SeedSequence(seed)`` with a fixed spawn key per role
(A*, training task t, test task t, extra task s), so a task's ground truth does not
depend on n, σ, the sampler or how many other tasks were drawn.

Limits (checked before any work): the problem's estimated memory — A* (twice, while it is
symmetrised), the task factors, ~1 KB of bookkeeping per task and, with finite n, each
task's Σ_t and C_t (8·(d² + d_out·d) bytes) — must fit in the memory available on this
machine (:func:`fastlora.config.available_memory_bytes`); the raw sampler draws at most
``fastlora.tasks.MAX_RAW_DRAWS`` normals per problem (use ``sampler="stats"`` beyond).
For scale: d=4096, T=1024, k=8 in population mode needs ~0.5 GB here (its solve ~1.9 GB).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import options as schema
from .config import require_memory
from .errors import FastLoRAError, check_choice, check_float, check_int
from .implicit import SeededSymmetricGaussian
from .laws import STANDARD_LAW, DataLaw, make_law, refuse_inexact_statistics
from .seeding import KeyedSeed, keyed_streams, standard_normals_many, stream
from .tasks import (
    SAMPLERS,
    LowRankTarget,
    Task,
    check_raw_draws,
    raw_draws,
    sample_many,
    sampling_bytes_many,
)

ROLE_SHARED, ROLE_TRAIN, ROLE_TEST, ROLE_NEW = 0, 1, 2, 3
_TASK_OVERHEAD_BYTES = 1024  # Python objects per task (measured ~700 bytes)


@dataclass(frozen=True, eq=False)
class Problem:
    """A meta-learning problem: shared ground truth, training tasks and held-out tasks.

    ``A_star`` (d_out, d_in); ``B_star`` (T, d_out, k) and ``C_star`` (T, d_in, k) with
    Δ*_t = B*_t C*_tᵀ; ``U_star`` (T, d, k) when symmetric (then B* = C* = U*).
    ``sampler`` ("raw" or "stats") is how its tasks' data, and later fine-tuning draws, are made.
    ``law`` (:class:`fastlora.laws.DataLaw`): the law of inputs and noise; ``task_ranks`` and
    ``task_scales``: per training task, the rank k_t and scale s_t of Δ*_t = s_t B*_t C*_tᵀ
    (B_star, C_star hold max(k_t) columns, zero beyond k_t); held-out tasks have rank k, scale 1.
    ``sample_seed``: the seed of the tasks' samples and noise (None: ``seed``, which seeds the truth).
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
    sampler: str = "raw"
    _extra: dict = field(default_factory=dict, repr=False)
    law: DataLaw = STANDARD_LAW
    task_ranks: tuple | None = None
    task_scales: tuple | None = None
    sample_seed: int | None = None

    @property
    def data_seed(self) -> int:
        """The seed of the tasks' samples and noise (``sample_seed``, else ``seed``)."""
        return self.seed if self.sample_seed is None else self.sample_seed

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
            self._extra[seed] = _draw_task(self, ROLE_NEW, seed)
        return self._extra[seed]

    def __repr__(self) -> str:
        mode = "population" if self.n is None else f"n={self.n}"
        sampler = "" if self.sampler == "raw" else f", sampler={self.sampler!r}"
        law = "" if self.law.is_standard else f", law=({self.law.describe()})"
        ranks = "" if self.task_ranks is None else f", task_ranks={list(self.task_ranks)}"
        scales = "" if self.task_scales is None else f", task_scales={list(self.task_scales)}"
        return (f"Problem(d={self.d}, d_out={self.d_out}, k={self.k}, T={self.T}, {mode}, "
                f"noise={self.noise}, symmetric={self.symmetric}, seed={self.seed}{sampler}{law}{ranks}{scales})")


def check_problem_arguments(d, k, T, n, noise, seed, d_out, n_test_tasks) -> tuple:
    """make_problem's standard arguments, checked (``d_out`` None: ``d``), in the order given:
    (d, k, T, n, noise, seed, d_out, n_test_tasks) — the linear model's and a problem generator's."""
    d = check_int("d", d, low=1)
    d_out = d if d_out is None else check_int("d_out", d_out, low=1)
    k = check_int("k", k, low=1, high=min(d, d_out))
    T = check_int("T", T, low=1)
    n = schema.OPTIONS["n"].check(n)
    noise = schema.OPTIONS["noise"].check(noise)
    seed = check_int("seed", seed, low=0)
    n_test_tasks = check_int("n_test_tasks", n_test_tasks, low=0)
    return d, k, T, n, noise, seed, d_out, n_test_tasks


def make_linear_problem(d: int = 64, k: int = 2, T: int = 8, n: int | None = None, noise: float = 0.0,
                        seed: int = 0, d_out: int | None = None, symmetric: bool = True,
                        n_test_tasks: int = 4, sampler: str = "raw", implicit: bool = False,
                        # task laws (fastlora.laws; docs/task_laws.md)
                        input_law: str = "gaussian", input_df: float | None = None, input_cov=None,
                        noise_law: str = "gaussian", noise_df: float | None = None, task_ranks=None,
                        task_scales=None, sample_seed: int | None = None):
    """The linear model's problem (the model of :func:`fastlora.make_problem`, which documents every
    argument): ``T`` training tasks and ``n_test_tasks`` held-out tasks of the law of docs/design.md §2,
    with the task laws of docs/task_laws.md."""
    return make_linear_problems([seed], [sample_seed], d=d, k=k, T=T, n=n, noise=noise, d_out=d_out,
                                symmetric=symmetric, n_test_tasks=n_test_tasks, sampler=sampler, implicit=implicit,
                                input_law=input_law, input_df=input_df, input_cov=input_cov, noise_law=noise_law,
                                noise_df=noise_df, task_ranks=task_ranks, task_scales=task_scales)[0]


def make_linear_problems(seeds: list, sample_seeds: list | None = None, *, d: int = 64, k: int = 2, T: int = 8,
                         n: int | None = None, noise: float = 0.0, d_out: int | None = None, symmetric: bool = True,
                         n_test_tasks: int = 4, sampler: str = "raw", implicit: bool = False,
                         input_law: str = "gaussian", input_df: float | None = None, input_cov=None,
                         noise_law: str = "gaussian", noise_df: float | None = None, task_ranks=None,
                         task_scales=None) -> list[Problem]:
    """``[make_linear_problem(..., seed=seeds[i], sample_seed=sample_seeds[i]) for i ...]``: the same
    problems, number for number (every draw has its own stream), with each kind of draw — A*, the
    factors, the training tasks' samples — made for all of them in one call: one point's sweep rows
    (fastlora.sweep.runner) build their problems together.  ``sample_seeds``: None for each ``seed``."""
    seeds = _seed_list("seeds", seeds)
    if len(seeds) == 0:
        raise FastLoRAError("seeds is empty: make_linear_problems needs at least one seed")
    sample_seeds = [None] * len(seeds) if sample_seeds is None else _seed_list("sample_seeds", sample_seeds)
    if len(sample_seeds) != len(seeds):
        raise FastLoRAError(f"make_linear_problems: {len(sample_seeds)} sample_seeds for {len(seeds)} seeds")
    if len(seeds) > 1:  # each entry by its name here; one seed is checked as make_problem's, in its order
        seeds = [check_int(f"seeds[{i}]", seed, low=0) for i, seed in enumerate(seeds)]
        sample_seeds = [None if s is None else check_int(f"sample_seeds[{i}]", s, low=0)
                        for i, s in enumerate(sample_seeds)]
    n = schema.OPTIONS["n"].check(n)  # an integer, or None / "population"
    laws = task_law_arguments(d, k, T, n, sampler, input_law, input_df, input_cov, noise_law, noise_df,
                              task_ranks, task_scales, sample_seeds[0], implicit)
    d, k, T, n, noise, seed, d_out, n_test_tasks = check_problem_arguments(d, k, T, n, noise, seeds[0], d_out,
                                                                           n_test_tasks)
    seeds[0], sample_seeds[0] = seed, laws["sample_seed"]
    sampler = check_choice("sampler", sampler, SAMPLERS)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise FastLoRAError(f"symmetric must be True or False, got {symmetric!r}")
    if symmetric and d_out != d:
        raise FastLoRAError(f"symmetric=True needs d_out == d (got d_out={d_out}, d={d}); pass symmetric=False")
    if not isinstance(implicit, (bool, np.bool_)):
        raise FastLoRAError(f"implicit must be True or False, got {implicit!r}")
    if implicit and (n is not None or not symmetric):
        raise FastLoRAError("implicit=True draws the paper's symmetric A* for population problems: it needs n=None "
                            "(population) and symmetric=True")
    check_size(d, d_out, k, T, n, noise, n_test_tasks, bool(symmetric), sampler, bool(implicit))
    law, ranks, scales = laws["law"], laws["task_ranks"], laws["task_scales"]
    if ranks is not None and max(ranks) > min(d, d_out):
        raise FastLoRAError(f"task_ranks={list(ranks)}: every rank must be <= min(d, d_out)={min(d, d_out)}")
    if law.sqrt is not None and law.sqrt.shape != (d, d):
        raise FastLoRAError(f"input_cov has shape {law.sqrt.shape}; it must be (d, d) = ({d}, {d})")

    if implicit:
        shared = [SeededSymmetricGaussian(d, seed, role=ROLE_SHARED) for seed in seeds]
    else:
        shared = []
        for G in standard_normals_many(seeds, (ROLE_SHARED,), (d_out, d)):
            A_star = 0.5 * (G + G.T) if symmetric else G.copy()
            A_star.setflags(write=False)
            shared.append(A_star)
    trained = (_factors_of_problems(seeds, ROLE_TRAIN, T, d_out, d, k, symmetric) if ranks is None else
               [[draw_factors(seed, ROLE_TRAIN, t, d_out, d, ranks[t], symmetric) for t in range(T)]
                for seed in seeds])
    held_out = _factors_of_problems(seeds, ROLE_TEST, n_test_tasks, d_out, d, k, symmetric)
    problems = [_problem_of(A_star, drawn, d=d, d_out=d_out, k=k, T=T, n=n, noise=noise, symmetric=bool(symmetric),
                            seed=seed, sampler=sampler, law=law, ranks=ranks, scales=scales, sample_seed=sample_seed)
                for A_star, drawn, seed, sample_seed in zip(shared, trained, seeds, sample_seeds)]
    if n is not None:  # every training task's data, each from its own stream, all drawn together
        sampled = iter(sample_many([task for prob in problems for task in prob.tasks], n,
                                   [KeyedSeed(prob.data_seed, (ROLE_TRAIN, t, 1)) for prob in problems
                                    for t in range(T)], noise=noise))
        for prob in problems:  # each sampled task carries the checked noise level (sample_many)
            prob.tasks[:] = [next(sampled) for _ in range(T)]
    for prob, drawn in zip(problems, held_out):
        prob.test_tasks.extend(_make_task(prob, prob.A_star, B, C, ROLE_TEST, t) for t, (B, C) in enumerate(drawn))
    return problems


def _seed_list(name: str, values) -> list:
    """``values`` as a list (a list, tuple, range or 1-d array of seeds), or a clear error naming ``name``."""
    if isinstance(values, (list, tuple, range)) or (isinstance(values, np.ndarray) and values.ndim == 1):
        return list(values)
    raise FastLoRAError(f"{name} must be a list of seeds (non-negative ints), one per problem; got {values!r}")


def _problem_of(A_star, drawn: list, *, d, d_out, k, T, n, noise, symmetric, seed, sampler, law, ranks, scales,
                sample_seed) -> Problem:
    """A problem of truth A* and training factors ``drawn`` [(B_t, C_t)], its training tasks not yet sampled
    and no held-out tasks yet."""
    # factors live in (T, k, d) row-contiguous buffers — the layout of the solvers' shared
    # GEMMs — and B_star / C_star are (T, d, k) views of them, so solves copy nothing
    width = k if ranks is None else max(ranks)  # per-task ranks: zero columns beyond k_t
    B_rows = np.zeros((T, width, d_out))
    C_rows = B_rows if symmetric else np.zeros((T, width, d))
    for t, (b, c) in enumerate(drawn):
        k_t = k if ranks is None else ranks[t]
        if scales is not None:
            b, c = _scaled(b, c, scales[t], symmetric)
        B_rows[t, :k_t] = b.T
        if not symmetric:
            C_rows[t, :k_t] = c.T
    for a in (B_rows, C_rows):
        a.setflags(write=False)
    B_star = B_rows.swapaxes(1, 2)
    C_star = B_star if symmetric else C_rows.swapaxes(1, 2)
    factors = [_task_factors(B_star[t], C_star[t], k if ranks is None else ranks[t], symmetric) for t in range(T)]
    prob = Problem(A_star, B_star, C_star, [], [], d, d_out, k, T, n, noise, symmetric, seed, sampler,
                   law=law, task_ranks=ranks, task_scales=scales, sample_seed=sample_seed)
    prob.tasks.extend(_make_task(prob, A_star, b, c, ROLE_TRAIN, t) for t, (b, c) in enumerate(factors))
    return prob


def task_law_arguments(d, k, T, n, sampler, input_law, input_df, input_cov, noise_law, noise_df, task_ranks,
                        task_scales, sample_seed, implicit) -> dict:
    """The task-law arguments of make_problem, checked: {law, task_ranks, task_scales, sample_seed}."""
    d = check_int("d", d, low=1)
    law = make_law(d, input_law, input_df, input_cov, noise_law, noise_df)
    if sampler == "stats":
        refuse_inexact_statistics(law)
    if n is None and law.sqrt is not None:
        raise FastLoRAError(f"input_cov={law.cov_name!r} needs a finite n: population mode is the loss "
                            f"½‖W − W*‖²_F of identity-covariance inputs (sampler='stats' draws any n exactly)")
    if implicit and not law.is_standard:
        raise FastLoRAError("implicit=True draws the paper's law only: input_law, input_cov and noise_law do not apply")
    T = check_int("T", T, low=1)
    ranks = per_task_values("task_ranks", task_ranks, T, integer=True)
    scales = per_task_values("task_scales", task_scales, T, integer=False)
    if implicit and (ranks is not None or scales is not None):
        raise FastLoRAError("implicit=True draws the paper's law only: task_ranks and task_scales do not apply")
    sample_seed = None if sample_seed is None else check_int("sample_seed", sample_seed, low=0)
    return {"law": law, "task_ranks": ranks, "task_scales": scales, "sample_seed": sample_seed}


def per_task_values(name: str, values, T: int, integer: bool) -> tuple | None:
    """``values`` (a list, cycled over the T tasks) as a tuple of T checked entries; None stays None."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) == 0:
        raise FastLoRAError(f"{name} must be a non-empty list with one entry per task (cycled over the T tasks), "
                            f"got {values!r}")
    checked = [check_int(f"{name}[{i}]", v, low=1) if integer else
               check_float(f"{name}[{i}]", v, low=0.0, low_open=True) for i, v in enumerate(values)]
    if len(checked) > T:
        raise FastLoRAError(f"{name} has {len(checked)} entries for T={T} tasks; give at most one per task "
                            f"(shorter lists cycle)")
    return tuple(checked[t % len(checked)] for t in range(T))


def _scaled(B, C, scale: float, symmetric: bool):
    """Factors of scale·B Cᵀ: √scale on both (keeps B is C for symmetric targets), else scale on B."""
    if symmetric:
        B = B * np.sqrt(scale)
        return B, B
    return B * scale, C


def _task_factors(B, C, k_t: int, symmetric: bool):
    """Task t's factors without the zero columns beyond its rank (views; B is C when symmetric)."""
    if k_t == B.shape[1]:
        return B, (B if symmetric else C)
    b = B[:, :k_t]
    return b, (b if symmetric else C[:, :k_t])


def draw_factors(seed, role, index, d_out, d_in, k, symmetric):
    rng = stream(seed, (role, index, 0))
    B = rng.standard_normal((d_out, k))
    C = B if symmetric else rng.standard_normal((d_in, k))
    return B, C


def _factors_of_problems(seeds: list, role, count, d_out, d_in, k, symmetric) -> list:
    """For each seed, ``[draw_factors(seed, role, t, d_out, d_in, k, symmetric) for t in range(count)]``: the
    same numbers, every problem's drawn in one compiled call where keyed streams run
    (fastlora.seeding.keyed_streams)."""
    streams = keyed_streams([KeyedSeed(seed, (role, t, 0)) for seed in seeds for t in range(count)],
                            len(seeds) * count * k * (d_out + d_in))
    if streams is None:
        return [[draw_factors(seed, role, t, d_out, d_in, k, symmetric) for t in range(count)] for seed in seeds]
    B = np.empty((len(seeds) * count, d_out, k))
    C = None if symmetric else np.empty((len(seeds) * count, d_in, k))
    streams.fill(B, C)
    # one object for both factors where symmetric (LowRankTarget.symmetric reads B is C, as draw_factors gives)
    pairs = [(b, b) for b in B] if symmetric else list(zip(B, C))
    return [pairs[p * count:(p + 1) * count] for p in range(len(seeds))]


def _draw_task(prob: Problem, role: int, index: int) -> Task:
    B, C = draw_factors(prob.seed, role, index, prob.d_out, prob.d, prob.k, prob.symmetric)
    return _make_task(prob, prob.A_star, B, C, role, index)


def _make_task(prob: Problem, A_star, B, C, role: int, index: int) -> Task:
    """Task ``index`` of ``role`` with target A* + B Cᵀ, its data (with the problem's n) from the stream
    (data_seed, (role, index, 1)): a training task is returned as a population task for the caller to
    sample (:func:`make_linear_problems`, all of them together); a held-out one draws its data when first read
    (evaluate draws its own n_ft)."""
    task = Task.population(LowRankTarget._trusted(A_star, B, C), sampler=prob.sampler)
    task.law = prob.law
    task.key = (prob.seed, role, index)
    if prob.n is not None and role != ROLE_TRAIN:
        task = Task.deferred_sample(task, prob.n, KeyedSeed(prob.data_seed, (role, index, 1)), prob.noise,
                                    prob.sampler)
    task.noise = prob.noise
    return task


def problem_bytes(d: int, d_out: int, k: int, T: int, n: int | None, n_test_tasks: int, symmetric: bool,
                  sampler: str = "raw", implicit: bool = False) -> int:
    """Estimated peak memory of ``make_problem`` with these sizes (float64 bytes).

    A* and its draw G (2·d_out·d), the factors (k·(d_out + d) per task, d_out only when
    symmetric), ~1 KB of Python objects per task, and with finite n each task's Σ_t, C_t
    (d² + d_out·d) plus the temporaries of sampling the training tasks
    (:func:`fastlora.tasks.sampling_bytes_many`);
    then 10% and 1 MB of headroom for numpy's temporaries.
    """
    tasks = T + n_test_tasks
    per_task = 8 * k * (d_out + (0 if symmetric else d)) + _TASK_OVERHEAD_BYTES
    total = (0 if implicit else 16 * d_out * d) + tasks * per_task
    if n is not None:
        total += tasks * 8 * (d * d + d_out * d) + sampling_bytes_many(T, n, d, d_out, sampler)
    return int(1.1 * total) + (1 << 20)


def check_size(d, d_out, k, T, n, noise, n_test_tasks, symmetric, sampler="raw", implicit=False,
               offer_implicit=True) -> None:
    """What make_problem refuses for these sizes before drawing anything (module docstring);
    ``offer_implicit``: whether the advice may name implicit=True (sweep specs have no such key)."""
    call = f"make_problem(d={d}, d_out={d_out}, k={k}, T={T}, n={n}, n_test_tasks={n_test_tasks})"
    advice = "use a smaller d, d_out, T or n_test_tasks"
    if n is not None:
        advice += ", or population mode (n=None: no per-task d×d statistics)"
    elif symmetric and not implicit and offer_implicit:
        advice += ", or implicit=True (A* generated on demand, not stored)"
    require_memory(problem_bytes(d, d_out, k, T, n, n_test_tasks, symmetric, sampler, implicit), call, advice)
    if n is not None and sampler == "raw":
        check_raw_draws((T + n_test_tasks) * raw_draws(n, d, d_out, noise), call)
