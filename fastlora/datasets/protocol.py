"""The paper's image protocol on labelled arrays: binary tasks from class pairs, a held-out test task.

Given samples X (N, d) and integer class labels (N,):

* every pair (a, b) of ``pairs`` is one retraining task, ``test_pair`` the held-out test task,
  whose classes never appear in retraining (the paper on CIFAR-10: pairs {0,1}, {2,3}, {4,5},
  {6,7}, test task {8,9});
* a task's label is −1 for class a and +1 for class b — for the paper's pairs (2j, 2j+1) that is
  its rule "label = class mod 2", with class mod 2 = 1 (odd) mapped to +1 and 0 (even) to −1;
* inside every task each class is split at random (seeded) into a training part and a held-out
  part of ``test_fraction`` of its samples (at least one sample in each part), so both parts
  hold both classes and are disjoint.  Retraining sees the retraining tasks' training parts
  only; fine-tuning on the test task draws its ``n_ft`` samples from the test task's training
  part (:meth:`HeldOutTask.sample`); every test metric is measured on held-out parts;
* with ``standardize`` every feature is centred and scaled by the mean and standard deviation
  of the retraining tasks' training parts only (features constant there keep scale 1, as
  scikit-learn's StandardScaler does) — no statistic sees held-out samples or the test task.

Seeding: the split of retraining task j comes from ``SeedSequence(seed, spawn_key=(1, j))``,
that of the test task from ``SeedSequence(seed, spawn_key=(2, 0))`` (the roles of
fastlora.problems), so a task's split does not depend on the other tasks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import options as schema
from ..errors import FastLoRAError, check_array, check_choice, check_float, check_int
from ..problems import ROLE_TEST, ROLE_TRAIN
from ..seeding import PURPOSE_SUBSAMPLE, as_generator, stream, task_seed
from ..shallow.problem import MODEL, ShallowTask

PAPER_PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7))
PAPER_TEST_PAIR = (8, 9)
DEFAULT_TEST_FRACTION = schema.OPTIONS["test_fraction"].default
MODELS = (MODEL,)  # the learners a labelled problem can carry


class HeldOutTask(ShallowTask):
    """A task of labelled data: a training part ``X`` (n, d), ``y`` (n,) — what retraining and
    fine-tuning see — and a held-out part ``X_test`` (m, d), ``y_test`` (m,) that only metrics read.

    ``held_out`` = (X_test, y_test).  ``classes`` (the task's (a, b), when built from a class
    pair), ``train_index`` / ``test_index`` (rows of the source arrays, when known) document
    where the samples came from.  The task has no ground truth: :meth:`sample` draws from the
    training part instead of a law.
    """

    def __init__(self, X, y, X_test, y_test, *, classes=None, train_index=None, test_index=None):
        super().__init__(X, y)
        X_test = check_array("X_test", X_test, ndim=2)
        if X_test.shape[1] != self.d:
            raise FastLoRAError(f"X_test has {X_test.shape[1]} features (columns); it must have the training "
                                f"part's d={self.d}")
        y_test = check_array("y_test", y_test)
        if y_test.ndim != 1 or y_test.shape[0] != X_test.shape[0]:
            raise FastLoRAError(f"y_test must hold one label per row of X_test, shape ({X_test.shape[0]},); "
                                f"got shape {y_test.shape}")
        self.X_test, self.y_test = X_test, y_test
        self.classes = None if classes is None else tuple(classes)
        self.train_index = None if train_index is None else np.asarray(train_index)
        self.test_index = None if test_index is None else np.asarray(test_index)

    @property
    def held_out(self) -> tuple[np.ndarray, np.ndarray]:
        return self.X_test, self.y_test

    @property
    def n_test(self) -> int:
        return self.X_test.shape[0]

    def sample(self, n: int, seed=0, noise: float | None = None) -> HeldOutTask:
        """``n`` samples of the training part drawn without replacement (reproducible by ``seed``),
        with the same held-out part: what fine-tuning from ``n_ft`` samples uses."""
        if noise is not None:
            raise FastLoRAError("noise: a task of labelled data cannot add noise to its labels; leave noise=None")
        n = check_int("n", n, low=1)
        if n > self.n:
            raise FastLoRAError(f"n={n} is more than the {self.n} samples of this task's training part; fine-tuning "
                                f"draws n (n_ft) samples from it without replacement")
        rows = _generator(seed, self.key).choice(self.n, size=n, replace=False)
        task = HeldOutTask(self.X[rows], self.y[rows], self.X_test, self.y_test, classes=self.classes,
                           train_index=None if self.train_index is None else self.train_index[rows],
                           test_index=self.test_index)
        task.key = self.key
        return task

    def __repr__(self) -> str:
        classes = "" if self.classes is None else f", classes={self.classes}"
        return f"HeldOutTask(n={self.n}, n_test={self.n_test}, d={self.d}{classes})"


def _generator(seed, key) -> np.random.Generator:
    return as_generator(task_seed(seed, key, PURPOSE_SUBSAMPLE))


@dataclass(frozen=True, eq=False)
class LabelledProblem:
    """Retraining tasks and held-out test tasks built from labelled data (see the module docstring).

    Used like a problem of ``fastlora.make_problem``: ``fl.retrain(problem, method=...)``,
    ``fl.evaluate(res, problem, ft_rank=1, n_ft=50)``.  ``tasks`` (T :class:`HeldOutTask`),
    ``test_tasks``; ``d`` features; ``k`` the adapter rank the protocol uses (LoRA-ML's default
    rank and the default fine-tuning rank); ``n`` the training-part size of each retraining task;
    ``mean`` (d,) and ``scale`` (d,) the standardisation applied (None without); ``model`` the
    learner (``"shallow"``: the network of fastlora.shallow, hidden width d).
    """

    name: str
    tasks: list
    test_tasks: list
    d: int
    k: int
    T: int
    n: tuple
    seed: int
    pairs: tuple
    test_pair: tuple
    test_fraction: float
    mean: np.ndarray | None
    scale: np.ndarray | None
    model: str = MODEL
    protocol: str = "pairs"  # "pairs": tasks from class pairs; "partitions": every class, tasks relabel them

    @property
    def d_in(self) -> int:
        return self.d

    @property
    def d_out(self) -> int:
        """Hidden width of the shallow network (rows of A), d as in the paper's network."""
        return self.d

    def __repr__(self) -> str:
        tasks = (f"pairs={self.pairs}, test_pair={self.test_pair}" if self.protocol == "pairs" else
                 f"partitions={self.pairs}, test_partition={self.test_pair}")
        return (f"LabelledProblem(name={self.name!r}, d={self.d}, T={self.T}, k={self.k}, n={self.n}, "
                f"{tasks}, test_fraction={self.test_fraction}, "
                f"standardized={self.mean is not None}, seed={self.seed}, model={self.model!r})")


def labelled_tasks(X, labels, *, pairs=PAPER_PAIRS, test_pair=PAPER_TEST_PAIR, seed: int = 0,
                   test_fraction: float = DEFAULT_TEST_FRACTION, standardize: bool = True, k: int = 1,
                   model: str = MODEL, name: str = "labelled data") -> LabelledProblem:
    """The paper's image protocol on your own arrays (module docstring): a :class:`LabelledProblem`.

    ``X`` (N, d) or (N, ...) — samples, each flattened to d features; ``labels`` (N,) integer class
    ids; ``pairs`` the retraining tasks' class pairs (a, b) (label −1 for a, +1 for b),
    ``test_pair`` the test task's; ``test_fraction`` in (0, 1) the held-out share of each class;
    ``standardize`` centre and scale features with the retraining training parts' statistics;
    ``k`` the adapter rank; ``seed`` the splits.
    """
    X = np.asarray(X) if not isinstance(X, np.ndarray) else X
    if X.ndim < 2:
        raise FastLoRAError(f"X must hold one sample per row, shape (N, d) or (N, ...); got shape {X.shape}")
    X = check_array("X", X.reshape(X.shape[0], -1), ndim=2)
    labels = _class_labels(labels, X.shape[0])
    pairs = _check_pairs(pairs)
    test_pair = _check_pair("test_pair", test_pair)
    _check_disjoint(pairs, test_pair)
    seed, test_fraction, k, model = _check_protocol(seed, test_fraction, standardize, k, model, X.shape[1])

    splits = [_split(labels, pair, f"pairs[{j}]", seed, ROLE_TRAIN, j, test_fraction)
              for j, pair in enumerate(pairs)]
    test_split = _split(labels, test_pair, "test_pair", seed, ROLE_TEST, 0, test_fraction)
    mean = scale = None
    if standardize:
        mean, scale = standardization(X[np.concatenate([train for train, _ in splits])])
        X = (X - mean) / scale
    tasks = [_task(X, labels, pair, split, (seed, ROLE_TRAIN, j))
             for j, (pair, split) in enumerate(zip(pairs, splits))]
    test_tasks = [_task(X, labels, test_pair, test_split, (seed, ROLE_TEST, 0))]
    return LabelledProblem(name=name, tasks=tasks, test_tasks=test_tasks, d=X.shape[1], k=k, T=len(tasks),
                           n=tuple(task.n for task in tasks), seed=seed, pairs=pairs, test_pair=test_pair,
                           test_fraction=test_fraction, mean=mean, scale=scale, model=model)


# the partitions protocol (partition_tasks): task t labels +1 the classes of its set, −1 the others;
# balanced sets of the ten digits, pairwise differing on 4, 6 or 8 classes (the tasks conflict)
DIGIT_PARTITIONS = ((0, 1, 2, 3, 4), (1, 3, 5, 7, 9), (0, 2, 3, 6, 8), (0, 1, 5, 6, 7))
DIGIT_TEST_PARTITION = (2, 4, 5, 8, 9)
DEFAULT_N_PER_TASK = 300
_ROLE_POOL = 4  # the split of every class into the shared training pool and held-out part


def partition_tasks(X, labels, *, partitions=DIGIT_PARTITIONS, test_partition=DIGIT_TEST_PARTITION, seed: int = 0,
                    test_fraction: float = DEFAULT_TEST_FRACTION, standardize: bool = True, k: int = 1,
                    n_per_task: int = DEFAULT_N_PER_TASK, model: str = MODEL,
                    name: str = "labelled data (partitions)") -> LabelledProblem:
    """Tasks that conflict on one input law: every task sees samples of *every* class, and task t
    labels them +1 when their class is in ``partitions[t]``, −1 otherwise; the test task does the
    same with ``test_partition``, a labelling retraining never sees (docs/real_data.md).

    Each class is split once (``seed``) into a training pool and a held-out ``test_fraction``; retraining
    task t draws ``n_per_task`` samples of the pool without replacement (seeded per task), so the tasks
    share the input law and disagree on labels — one network cannot fit them all, as in the theory.
    The test task fine-tunes on ``n_ft`` samples of the whole pool; every metric is measured on the
    held-out part, labelled by the task's partition.  ``standardize``: with the pool's statistics.
    """
    X = np.asarray(X) if not isinstance(X, np.ndarray) else X
    if X.ndim < 2:
        raise FastLoRAError(f"X must hold one sample per row, shape (N, d) or (N, ...); got shape {X.shape}")
    X = check_array("X", X.reshape(X.shape[0], -1), ndim=2)
    labels = _class_labels(labels, X.shape[0])
    classes = tuple(int(c) for c in np.unique(labels))
    partitions = _check_partitions("partitions", partitions, classes)
    (test_partition,) = _check_partitions("test_partition", [test_partition], classes)
    for t, part in enumerate(partitions):
        if set(part) in (set(test_partition), set(classes) - set(test_partition)):
            raise FastLoRAError(f"partitions[{t}]={part} labels the classes as test_partition does (or its mirror "
                                f"image): the test task must be a labelling retraining never sees")
    seed, test_fraction, k, model = _check_protocol(seed, test_fraction, standardize, k, model, X.shape[1])
    pool, held = [], []
    for cls in classes:
        train, test = _split(labels, (cls,), f"class {cls}", seed, _ROLE_POOL, cls, test_fraction)
        pool.append(train)
        held.append(test)
    pool, held = np.sort(np.concatenate(pool)), np.sort(np.concatenate(held))
    n_per_task = check_int("n_per_task", n_per_task, low=1)
    if n_per_task > pool.size:
        raise FastLoRAError(f"n_per_task={n_per_task} is more than the {pool.size} samples of the training pool")
    mean = scale = None
    if standardize:
        mean, scale = standardization(X[pool])
        X = (X - mean) / scale
    tasks = []
    for t, part in enumerate(partitions):
        rng = stream(seed, (ROLE_TRAIN, t))
        rows = rng.choice(pool, size=n_per_task, replace=False)
        tasks.append(_partition_task(X, labels, part, rows, held, (seed, ROLE_TRAIN, t)))
    test_task = _partition_task(X, labels, test_partition, pool, held, (seed, ROLE_TEST, 0))
    return LabelledProblem(name=name, tasks=tasks, test_tasks=[test_task], d=X.shape[1], k=k, T=len(tasks),
                           n=tuple(task.n for task in tasks), seed=seed, pairs=partitions, test_pair=test_partition,
                           test_fraction=test_fraction, mean=mean, scale=scale, model=model, protocol="partitions")


def _check_partitions(name: str, partitions, classes: tuple) -> tuple:
    """Each partition: a set of class ids (those labelled +1), non-empty and not every class."""
    if isinstance(partitions, (str, bytes)) or not hasattr(partitions, "__len__") or len(partitions) == 0:
        raise FastLoRAError(f"{name} must be a non-empty sequence of class sets, got {partitions!r}")
    out = []
    for j, part in enumerate(partitions):
        where = f"{name}[{j}]" if name == "partitions" else name
        try:
            members = tuple(sorted({check_int(f"{where} entry", c) for c in part}))
        except TypeError:
            raise FastLoRAError(f"{where} must be a set of class ids, got {part!r}") from None
        unknown = sorted(set(members) - set(classes))
        if unknown:
            raise FastLoRAError(f"{where}={part!r}: class(es) {unknown} have no samples in labels")
        if not members or len(members) == len(classes):
            raise FastLoRAError(f"{where}={part!r} must name some classes but not all (those labelled +1)")
        out.append(members)
    return tuple(out)


def _partition_task(X, labels, members, rows, held, key) -> HeldOutTask:
    inside = np.isin(labels, members)
    sign = np.where(inside, 1.0, -1.0)
    task = HeldOutTask(X[rows], sign[rows], X[held], sign[held], classes=tuple(members), train_index=rows,
                       test_index=held)
    task.key = key
    return task


def standardization(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (mean (d,), scale (d,)) of X (n, d): scale is the standard deviation (ddof 0),
    1 where a feature is constant (as scikit-learn's StandardScaler) — judged by its values being
    equal, not by a computed deviation of 0 (a column constant at 0.1 has std ~1e-17, not 0)."""
    X = check_array("X", X, ndim=2)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[np.ptp(X, axis=0) == 0] = 1.0
    for a in (mean, scale):
        a.setflags(write=False)
    return mean, scale


def _class_labels(labels, n_rows: int) -> np.ndarray:
    values = check_array("labels", labels)
    if values.ndim != 1 or values.shape[0] != n_rows:
        raise FastLoRAError(f"labels must hold one class id per sample of X, shape ({n_rows},); got shape "
                            f"{values.shape}")
    if not np.all(values == np.round(values)):
        raise FastLoRAError("labels must be integer class ids (the tasks are pairs of classes); got non-integer "
                            "values")
    return values.astype(np.int64)


def _check_pair(name: str, pair) -> tuple[int, int]:
    try:
        a, b = pair
    except (TypeError, ValueError):
        raise FastLoRAError(f"{name} must be a pair of class ids (a, b), got {pair!r}") from None
    a, b = check_int(f"{name}[0]", a), check_int(f"{name}[1]", b)
    if a == b:
        raise FastLoRAError(f"{name}={pair!r} must name two different classes")
    return a, b


def _check_protocol(seed, test_fraction, standardize, k, model, d: int) -> tuple:
    """(seed, test_fraction, k, model) of a dataset protocol, checked (``d``: the features)."""
    seed = check_int("seed", seed, low=0)
    test_fraction = check_float("test_fraction", test_fraction, low=0.0, low_open=True)
    if test_fraction >= 1.0:
        raise FastLoRAError(f"test_fraction={test_fraction} leaves no training samples; it must be in (0, 1)")
    if not isinstance(standardize, (bool, np.bool_)):
        raise FastLoRAError(f"standardize must be True or False, got {standardize!r}")
    return seed, test_fraction, check_int("k", k, low=1, high=d), check_choice("model", model, MODELS)


def _check_pairs(pairs) -> tuple:
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__len__") or len(pairs) == 0:
        raise FastLoRAError(f"pairs must be a non-empty sequence of class pairs (a, b), got {pairs!r}")
    return tuple(_check_pair(f"pairs[{j}]", pair) for j, pair in enumerate(pairs))


def _check_disjoint(pairs, test_pair) -> None:
    """Each class belongs to one task: the test task's classes are never seen in retraining."""
    seen = {}
    for where, pair in [*((f"pairs[{j}]", p) for j, p in enumerate(pairs)), ("test_pair", test_pair)]:
        for cls in pair:
            if cls in seen:
                raise FastLoRAError(f"class {cls} appears in both {seen[cls]} and {where}; each class must belong "
                                    f"to one task (the test task's classes are never seen in retraining)")
            seen[cls] = where


def _split(labels, pair, where, seed, role, index, test_fraction) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of the task of ``pair``: each class split at random, in shuffled order."""
    rng = stream(seed, (role, index))
    train, test = [], []
    for cls in pair:
        rows = np.flatnonzero(labels == cls)
        if rows.size < 2:
            found = "no samples" if rows.size == 0 else "only 1 sample"
            raise FastLoRAError(f"{where}={pair}: class {cls} has {found} in labels; every class of a task needs at "
                                f"least 2 (one for training, one held out)")
        rows = rng.permutation(rows)
        n_test = min(max(int(np.floor(test_fraction * rows.size + 0.5)), 1), rows.size - 1)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _task(X, labels, pair, split, key) -> HeldOutTask:
    train, test = split
    sign = {pair[0]: -1.0, pair[1]: 1.0}
    task = HeldOutTask(X[train], [sign[cls] for cls in labels[train]], X[test], [sign[cls] for cls in labels[test]],
                       classes=pair, train_index=train, test_index=test)
    task.key = key
    return task


__all__ = ["DEFAULT_N_PER_TASK", "DEFAULT_TEST_FRACTION", "DIGIT_PARTITIONS", "DIGIT_TEST_PARTITION", "PAPER_PAIRS",
           "PAPER_TEST_PAIR", "HeldOutTask", "LabelledProblem", "labelled_tasks", "partition_tasks", "standardization"]
