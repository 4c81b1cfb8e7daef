"""Real data under the paper's image protocol (binary tasks from class pairs, a held-out test task).

``digit_pairs(seed)``   scikit-learn's 8×8 digits (needs the extra ``data``: pip install 'fastlora[data]');
``labelled_tasks(X, labels, pairs=..., test_pair=...)``  the same protocol on your own arrays;
``digit_partitions(seed)`` / ``partition_tasks(X, labels, partitions=..., test_partition=...)``  tasks that
conflict: every task sees every class, each labels a different subset of the classes +1;
``load(name, seed, **protocol)``  a dataset by name (what sweeps with a ``dataset`` key call).

Each returns a :class:`LabelledProblem` that carries its learner (the shallow network), so
``fl.retrain(ds, method=...)`` and ``fl.evaluate(res, ds, ft_rank=1, n_ft=50)`` work as with
``fl.make_problem``; its metrics are measured on held-out splits (``test_loss``, ``test_accuracy``).
"""
from __future__ import annotations

import inspect

from ..errors import FastLoRAError, check_choice
from .digits import DIGITS_WIDTH, digit_pairs, digit_partitions
from .protocol import (
    DEFAULT_N_PER_TASK,
    DEFAULT_TEST_FRACTION,
    DIGIT_PARTITIONS,
    DIGIT_TEST_PARTITION,
    PAPER_PAIRS,
    PAPER_TEST_PAIR,
    HeldOutTask,
    LabelledProblem,
    labelled_tasks,
    partition_tasks,
    standardization,
)

LOADERS = {"digits": digit_pairs, "digits-partitions": digit_partitions}
# features of each dataset, known without loading it (sweep spec checks)
WIDTHS = {"digits": DIGITS_WIDTH, "digits-partitions": DIGITS_WIDTH}


def load(name: str, seed: int = 0, **protocol) -> LabelledProblem:
    """The dataset ``name`` (one of ``LOADERS``) under its protocol; ``protocol``: the loader's keyword
    arguments (test_fraction, standardize, pairs, test_pair, k, model; partitions, test_partition,
    n_per_task for "digits-partitions")."""
    loader = LOADERS[check_choice("dataset", name, LOADERS)]
    allowed = [p for p in inspect.signature(loader).parameters if p != "seed"]
    unknown = sorted(set(protocol) - set(allowed))
    if unknown:
        raise FastLoRAError(f"{unknown[0]!r} is not an argument of dataset {name!r}; allowed: {', '.join(allowed)}")
    return loader(seed=seed, **protocol)


def dataset_width(name: str) -> int:
    """Number of features of dataset ``name``, without loading it."""
    return WIDTHS[check_choice("dataset", name, WIDTHS)]


__all__ = ["DEFAULT_N_PER_TASK", "DEFAULT_TEST_FRACTION", "DIGIT_PARTITIONS", "DIGIT_TEST_PARTITION", "LOADERS",
           "PAPER_PAIRS", "PAPER_TEST_PAIR", "HeldOutTask", "LabelledProblem", "dataset_width", "digit_pairs",
           "digit_partitions", "labelled_tasks", "load", "partition_tasks", "standardization"]
