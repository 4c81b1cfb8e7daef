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
        return call_checked(retraining.retrain, arguments, "fastlora.retrain")

    def retrain_many(self, **arguments):
        return call_checked(retraining.retrain_many, arguments, "fastlora.retrain_many")

    def finetune(self, **arguments):
        return call_checked(finetuning.finetune, arguments, "fastlora.finetune")

    def finetune_many(self, **arguments):
        return call_checked(finetuning.finetune_many, arguments, "fastlora.finetune_many")

    def evaluate(self, **arguments):
        return call_checked(metrics.evaluate, arguments, "fastlora.evaluate")

    def evaluate_many(self, **arguments):
        return call_checked(metrics.evaluate_many, arguments, "fastlora.evaluate_many")
