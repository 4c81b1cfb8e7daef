"""scikit-learn's handwritten digits (1,797 images of 8×8 pixels, values 0..16, classes 0..9) under
the paper's image protocol (fastlora.datasets.protocol).  The data ship inside scikit-learn
(no download); scikit-learn is the optional extra ``data``."""
from __future__ import annotations

import functools

import numpy as np

from ..errors import FastLoRAError
from ..shallow.problem import MODEL
from .protocol import (
    DEFAULT_N_PER_TASK,
    DEFAULT_TEST_FRACTION,
    DIGIT_PARTITIONS,
    DIGIT_TEST_PARTITION,
    PAPER_PAIRS,
    PAPER_TEST_PAIR,
    LabelledProblem,
    labelled_tasks,
    partition_tasks,
)

DIGITS_WIDTH = 64  # 8×8 pixels, flattened
INSTALL_HINT = "pip install 'fastlora[data]'"


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(X (1797, 64) float64 pixel values, labels (1797,) int64 digits), read-only."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FastLoRAError(f"dataset 'digits' needs scikit-learn, an optional extra of fastlora: "
                            f"{INSTALL_HINT}") from None
    data = load_digits()
    X, labels = data.data.astype(np.float64), data.target.astype(np.int64)
    for a in (X, labels):
        a.setflags(write=False)
    return X, labels


def digit_pairs(seed: int = 0, *, pairs=PAPER_PAIRS, test_pair=PAPER_TEST_PAIR,
                test_fraction: float = DEFAULT_TEST_FRACTION, standardize: bool = True, k: int = 1,
                model: str = MODEL) -> LabelledProblem:
    """The paper's image protocol on the digits: retraining tasks {0,1}, {2,3}, {4,5}, {6,7} (label
    +1 for the odd digit, −1 for the even one), the held-out test task {8,9}, a ``seed``-ed split of
    each class holding out ``test_fraction`` of it, pixels standardised with the retraining
    training parts' statistics.  Arguments as :func:`~fastlora.datasets.labelled_tasks`.

    >>> ds = digit_pairs(seed=0)                                # doctest: +SKIP
    >>> res = fl.retrain(ds, method="lora-ml", peft="lora")     # doctest: +SKIP
    >>> fl.evaluate(res, ds, ft_rank=1, n_ft=50)["test_accuracy"]  # doctest: +SKIP
    """
    X, labels = digits_arrays()
    return labelled_tasks(X, labels, pairs=pairs, test_pair=test_pair, seed=seed, test_fraction=test_fraction,
                          standardize=standardize, k=k, model=model, name="digits")


def digit_partitions(seed: int = 0, *, partitions=DIGIT_PARTITIONS, test_partition=DIGIT_TEST_PARTITION,
                     test_fraction: float = DEFAULT_TEST_FRACTION, standardize: bool = True, k: int = 1,
                     n_per_task: int = DEFAULT_N_PER_TASK, model: str = MODEL) -> LabelledProblem:
    """Conflicting tasks on the digits (:func:`~fastlora.datasets.protocol.partition_tasks`): every
    task sees all ten digits; task t labels +1 the digits of ``partitions[t]`` — {0,1,2,3,4},
    {1,3,5,7,9}, {0,2,3,6,8}, {0,1,5,6,7} — the test task those of {2,4,5,8,9}; ``n_per_task``
    samples of the training pool per retraining task.  Arguments as ``partition_tasks``.
    """
    X, labels = digits_arrays()
    return partition_tasks(X, labels, partitions=partitions, test_partition=test_partition, seed=seed,
                           test_fraction=test_fraction, standardize=standardize, k=k, n_per_task=n_per_task,
                           model=model, name="digits (partitions)")
