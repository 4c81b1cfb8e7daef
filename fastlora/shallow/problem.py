"""Shallow-network tasks and the paper's synthetic law for them (docs/design.md §6).

Task t's label: y = c*ᵀ·sigmoid(W*_t x) + σ·ε with W*_t = A* + U*_t U*_tᵀ, x ~ N(0, I_d),
ε ~ N(0, 1); A* (d×d), c* (d,) and U*_t (d×k) have standard Gaussian entries (the
authors' code draws A* without symmetrising it).  A nonlinear model has no sufficient
statistics, so tasks keep their raw data X (n, d), y (n,).

Seeding follows ``fastlora.problems``: every draw comes from
``numpy.random.SeedSequence(seed)`` with a fixed spawn key per role (A* and c*, training
task t, test task t, extra task s), and within a task the truth U*_t and the data use
separate keys, so a task's truth does not depend on n, σ or how many tasks were drawn.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import FastLoRAError, check_array, check_float, check_int
from ..laws import STANDARD_LAW, DataLaw, make_law
from ..options import MAX_NOISE
from ..problems import ROLE_NEW, ROLE_SHARED, ROLE_TEST, ROLE_TRAIN, draw_factors, per_task_values
from ..seeding import PURPOSE_SAMPLE, as_generator, stream, task_seed

MODEL = "shallow"
_KEY_DATA = 1  # a task's data (0: its ground truth, drawn as the linear model's; later draws: seeding.PURPOSE_*)


def predict(X, W, c) -> np.ndarray:
    """ŷ = c·sigmoid(W x) for every row of X (n, d): W (h, d), c (h,) -> (n,)."""
    from ..kernels.shallow_reference import shallow_predict
    return shallow_predict(X[None], W[None], c[None])[0]


class ShallowTask:
    """One task of the shallow network: data ``X`` (n, d), labels ``y`` (n,).

    ``ShallowTask(X, y)`` wraps the user's own data (no ground truth).  Tasks drawn by
    :func:`make_shallow_problem` also carry their truth ``W_star`` (d, d) = A* + U*_t U*_tᵀ
    and ``c_star`` (d,), the clean labels ``y_clean`` and the noise level, so they can be
    resampled (:meth:`sample`) and scored against clean labels.
    """

    model = MODEL
    k: int | None = None  # the rank of a drawn task's perturbation U*_t U*_tᵀ (None: the user's own data)
    law: DataLaw = STANDARD_LAW  # the law of sample()'s noise (fastlora.laws; inputs are N(0, I))

    def __init__(self, X, y, *, W_star=None, c_star=None, noise: float | None = None, y_clean=None):
        X = check_array("X", X, ndim=2)
        y = _check_labels(y, X.shape[0])
        if X.shape[0] < 1:
            raise FastLoRAError("X must hold at least one sample (row)")
        self.X, self.y = X, y
        self.n, self.d = X.shape
        self.noise = None if noise is None else check_float("noise", noise, low=0.0, high=MAX_NOISE)
        self.key = None
        self.W_star = self.c_star = None
        if (W_star is None) != (c_star is None):
            raise FastLoRAError("W_star and c_star go together: pass both (the task's truth) or neither")
        if W_star is not None:
            self.W_star = check_array("W_star", W_star, ndim=2)
            self.c_star = check_array("c_star", c_star, shape=(self.W_star.shape[0],))
            if self.W_star.shape[1] != self.d:
                raise FastLoRAError(f"W_star has shape {self.W_star.shape}; its second axis must equal d={self.d}")
        self.y_clean = None if y_clean is None else check_array("y_clean", y_clean, shape=(self.n,))

    @property
    def has_ground_truth(self) -> bool:
        return self.W_star is not None

    @property
    def d_in(self) -> int:
        return self.d

    def loss(self, W, c) -> float:
        """L(W, c) = (1/2n) Σ_i (c·sigmoid(W x_i) − y_i)² on this task's data."""
        r = predict(self.X, check_array("W", W, shape=(None, self.d)), check_array("c", c, ndim=1)) - self.y
        return 0.5 * float(r @ r) / self.n

    def clean_labels(self, X) -> np.ndarray:
        """c*·sigmoid(W* x) for every row of X (n, d): the labels without noise."""
        if not self.has_ground_truth:
            raise FastLoRAError("this task has no ground truth (W_star, c_star): it was built from data alone")
        return predict(X, self.W_star, self.c_star)

    def sample(self, n: int, seed=0, noise: float | None = None) -> ShallowTask:
        """``n`` fresh samples from this task's law (reproducible by ``seed``); same truth."""
        if not self.has_ground_truth:
            raise FastLoRAError("cannot sample from a task without ground truth (W_star, c_star)")
        n = check_int("n", n, low=1)
        noise = self.noise if noise is None else noise
        noise = 0.0 if noise is None else check_float("noise", noise, low=0.0, high=MAX_NOISE)
        rng = as_generator(task_seed(seed, self.key, PURPOSE_SAMPLE))
        task = _draw_data(self.W_star, self.c_star, n, noise, rng, self.law)
        task.key, task.k = self.key, self.k
        return task

    def __repr__(self) -> str:
        return f"ShallowTask(n={self.n}, d={self.d}, ground_truth={self.has_ground_truth})"


def _check_labels(y, n_rows: int) -> np.ndarray:
    y = check_array("y", y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise FastLoRAError(f"y must hold one label per sample, shape (n,) (the shallow network has one output, "
                            f"d_out = 1); got shape {y.shape}")
    if y.shape[0] != n_rows:
        raise FastLoRAError(f"X and y must have the same number of samples; got {n_rows} and {y.shape[0]}")
    return y


def _draw_data(W_star, c_star, n, noise, rng, law: DataLaw = STANDARD_LAW) -> ShallowTask:
    X = law.inputs(rng, n, W_star.shape[1])
    y_clean = predict(X, W_star, c_star)
    y = y_clean + noise * law.noise(rng, n, 1)[:, 0] if noise > 0 else y_clean.copy()
    task = ShallowTask(X, y, W_star=W_star, c_star=c_star, noise=noise, y_clean=y_clean)
    task.law = law
    return task


@dataclass(frozen=True, eq=False)
class ShallowProblem:
    """The paper's shallow-network problem: shared truth (A*, c*), training and held-out tasks.

    ``A_star`` (d, d), ``c_star`` (d,), ``U_star`` (T, d, k); task t's truth is
    W*_t = A* + U*_t U*_tᵀ with output weights c*.  ``tasks`` hold n samples each.
    ``law``: the noise law (inputs are N(0, I)); ``task_ranks``: per-task ranks k_t (``U_star``
    then has max(k_t) columns, zero beyond k_t); ``sample_seed``: the data's seed (None: ``seed``).
    """

    A_star: np.ndarray
    c_star: np.ndarray
    U_star: np.ndarray
    tasks: list
    test_tasks: list
    d: int
    k: int
    T: int
    n: int
    noise: float
    seed: int
    model: str = MODEL
    _extra: dict = field(default_factory=dict, repr=False)
    law: DataLaw = STANDARD_LAW
    task_ranks: tuple | None = None
    sample_seed: int | None = None

    @property
    def data_seed(self) -> int:
        return self.seed if self.sample_seed is None else self.sample_seed

    @property
    def d_in(self) -> int:
        return self.d

    @property
    def d_out(self) -> int:
        """Hidden width (rows of A), equal to d in the paper's network."""
        return self.A_star.shape[0]

    def new_task(self, seed: int) -> ShallowTask:
        """A further held-out task from the same law (same n and noise), reproducible by seed."""
        seed = check_int("seed", seed, low=0)
        if seed not in self._extra:
            self._extra[seed] = _draw_task(self, ROLE_NEW, seed)
        return self._extra[seed]

    def __repr__(self) -> str:
        return (f"ShallowProblem(d={self.d}, k={self.k}, T={self.T}, n={self.n}, noise={self.noise}, "
                f"seed={self.seed})")


def make_shallow_problem(d: int = 10, k: int = 1, T: int = 3, n: int | None = 1000, noise: float = 0.1,
                         seed: int = 0, n_test_tasks: int = 4, *, noise_law: str = "gaussian",
                         noise_df: float | None = None, task_ranks=None, sample_seed: int | None = None
                         ) -> ShallowProblem:
    """Draw the paper's shallow-network problem: ``T`` training tasks of ``n`` samples each and
    ``n_test_tasks`` held-out tasks (same law).  Defaults are the paper's (d=10, k=1, T=3,
    N=1000, σ=0.1).  ``n=None`` (population mode) has no closed form for this model and is refused.
    ``noise_law``/``noise_df``, ``task_ranks`` and ``sample_seed`` as in :func:`fastlora.make_problem`.
    """
    d = check_int("d", d, low=1)
    k = check_int("k", k, low=1, high=d)
    T = check_int("T", T, low=1)
    if n is None:
        raise FastLoRAError("n=None (population mode) is not defined for model='shallow': its loss has no closed "
                            "form; pass a number of samples per task, e.g. n=1000")
    n = check_int("n", n, low=1)
    noise = check_float("noise", noise, low=0.0, high=MAX_NOISE)
    seed = check_int("seed", seed, low=0)
    n_test_tasks = check_int("n_test_tasks", n_test_tasks, low=0)
    law = make_law(d, noise_law=noise_law, noise_df=noise_df)
    ranks = per_task_values("task_ranks", task_ranks, T, integer=True)
    if ranks is not None and max(ranks) > d:
        raise FastLoRAError(f"task_ranks={list(ranks)}: every rank must be <= d={d}")
    sample_seed = None if sample_seed is None else check_int("sample_seed", sample_seed, low=0)

    rng = stream(seed, (ROLE_SHARED,))
    A_star = rng.standard_normal((d, d))
    c_star = rng.standard_normal(d)
    widths = [k] * T if ranks is None else list(ranks)
    U_star = np.zeros((T, d, max(widths)))
    for t in range(T):
        U_star[t, :, :widths[t]] = _draw_factor(seed, ROLE_TRAIN, t, d, widths[t])
    for a in (A_star, c_star, U_star):
        a.setflags(write=False)
    prob = ShallowProblem(A_star, c_star, U_star, [], [], d, k, T, n, noise, seed, law=law, task_ranks=ranks,
                          sample_seed=sample_seed)
    prob.tasks.extend(_make_task(prob, U_star[t, :, :widths[t]], ROLE_TRAIN, t) for t in range(T))
    prob.test_tasks.extend(_draw_task(prob, ROLE_TEST, t) for t in range(n_test_tasks))
    return prob


def _draw_factor(seed, role, index, d, k) -> np.ndarray:
    """U*_t, drawn as the linear model's symmetric factor of the same task (same seed, role, index)."""
    return draw_factors(seed, role, index, d, d, k, True)[0]


def _draw_task(prob: ShallowProblem, role: int, index: int) -> ShallowTask:
    return _make_task(prob, _draw_factor(prob.seed, role, index, prob.d, prob.k), role, index)


def _make_task(prob: ShallowProblem, U, role: int, index: int) -> ShallowTask:
    W_star = prob.A_star + U @ U.T
    W_star.setflags(write=False)
    rng = stream(prob.data_seed, (role, index, _KEY_DATA))
    task = _draw_data(W_star, prob.c_star, prob.n, prob.noise, rng, prob.law)
    task.key = (prob.seed, role, index)
    task.U_star, task.k = U, U.shape[1]
    return task


def as_shallow_tasks(problem_or_tasks) -> list:
    """The retraining tasks of a problem, a task or a list of tasks, checked for one shape.

    A problem is any object of this model (``.model == "shallow"`` and ``.tasks``): a
    :class:`ShallowProblem` or e.g. :class:`fastlora.datasets.LabelledProblem`."""
    if not isinstance(problem_or_tasks, (ShallowTask, list, tuple)) \
            and getattr(problem_or_tasks, "model", None) == MODEL and hasattr(problem_or_tasks, "tasks"):
        tasks = list(problem_or_tasks.tasks)
    elif isinstance(problem_or_tasks, ShallowTask):
        tasks = [problem_or_tasks]
    elif isinstance(problem_or_tasks, (list, tuple)):
        tasks = list(problem_or_tasks)
    else:
        raise FastLoRAError(f"problem_or_tasks must be a shallow problem (make_problem(model='shallow')), a "
                            f"ShallowTask or a list of them; got {type(problem_or_tasks).__name__}")
    if not tasks:
        raise FastLoRAError("problem_or_tasks holds no tasks (T must be >= 1)")
    for i, task in enumerate(tasks):
        if not isinstance(task, ShallowTask):
            raise FastLoRAError(f"problem_or_tasks[{i}] is a {type(task).__name__}, not a ShallowTask; build tasks of "
                                f"your own data with ShallowTask(X, y)")
        if task.d != tasks[0].d:
            raise FastLoRAError(f"all tasks must have the same input dimension d; task 0 has {tasks[0].d}, "
                                f"task {i} has {task.d}")
    return tasks
