"""Scores of the shallow network's predictions against labels (tasks without ground truth).

``mean_squared_error``  mean (ŷ − y)² over the samples;
``sign_accuracy``       fraction of samples with sign(ŷ) = y, for labels in {−1, +1} only
                        (a prediction of exactly 0 has no sign and counts as wrong).
"""
from __future__ import annotations

import numpy as np

from ..errors import FastLoRAError


def labels_are_pm1(labels) -> bool:
    """True when every label is −1 or +1 (binary labels that ``sign_accuracy`` can score)."""
    labels = np.asarray(labels)
    return labels.size > 0 and bool(np.all(np.abs(labels) == 1.0))


def mean_squared_error(prediction, labels) -> float:
    """mean_i (ŷ_i − y_i)² of predictions (n,) against labels (n,)."""
    residual = np.asarray(prediction, dtype=np.float64) - np.asarray(labels, dtype=np.float64)
    return float(np.mean(residual * residual))


def sign_accuracy(prediction, labels, name: str = "labels") -> float:
    """mean_i [sign(ŷ_i) = y_i] for labels (n,) in {−1, +1}; other labels raise, naming ``name``."""
    labels = np.asarray(labels, dtype=np.float64)
    if not labels_are_pm1(labels):
        outside = labels[np.abs(labels) != 1.0]
        example = f" (e.g. {outside[0]:g})" if outside.size else ""
        raise FastLoRAError(f"{name}: accuracy compares sign(prediction) with labels in {{-1, +1}}; these labels "
                            f"take other values{example}, so only the mean squared error applies")
    return float(np.mean(np.sign(np.asarray(prediction, dtype=np.float64)) == labels))


__all__ = ["labels_are_pm1", "mean_squared_error", "sign_accuracy"]
