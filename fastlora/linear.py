"""The linear model (docs/design.md §2): y = W x + ε, W = A + Δ_t — the interface of
:mod:`fastlora.models` over :mod:`fastlora.problems`, :mod:`fastlora.retraining`,
:mod:`fastlora.finetuning` and :mod:`fastlora.metrics`."""
from __future__ import annotations

from . import finetuning, metrics, problems, retraining
from .models import Model, call_checked


class LinearModel(Model):
    name = "linear"

    def draw(self, **arguments):
        return problems.make_linear_problem(**arguments)

    def retrain(self, **arguments):
        return call_checked(retraining.retrain, "fastlora.retrain", arguments)

    def retrain_many(self, **arguments):
        return call_checked(retraining.retrain_many, "fastlora.retrain_many", arguments)

    def finetune(self, **arguments):
        return call_checked(finetuning.finetune, "fastlora.finetune", arguments)

    def finetune_many(self, **arguments):
        return call_checked(finetuning.finetune_many, "fastlora.finetune_many", arguments)

    def evaluate(self, **arguments):
        return call_checked(metrics.evaluate, "fastlora.evaluate", arguments)

    def evaluate_many(self, **arguments):
        return call_checked(metrics.evaluate_many, "fastlora.evaluate_many", arguments)
