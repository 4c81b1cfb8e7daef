"""The linear model (docs/design.md §2): y = W x + ε, W = A + Δ_t — the interface of
:mod:`fastlora.models` over :mod:`fastlora.problems`, :mod:`fastlora.retraining`,
:mod:`fastlora.finetuning` and :mod:`fastlora.metrics`."""
from __future__ import annotations

from . import finetuning, metrics, problems, retraining
from .models import Model


class LinearModel(Model):
    name = "linear"

    def draw(self, **arguments):
        return problems.make_linear_problem(**arguments)

    def retrain(self, problem_or_tasks, *args, **kwargs):
        return retraining.retrain(problem_or_tasks, *args, **kwargs)

    def retrain_many(self, problems_, *args, **kwargs):
        return retraining.retrain_many(problems_, *args, **kwargs)

    def finetune(self, start, task, *args, **kwargs):
        return finetuning.finetune(start, task, *args, **kwargs)

    def finetune_many(self, starts, tasks, *args, **kwargs):
        return finetuning.finetune_many(starts, tasks, *args, **kwargs)

    def evaluate(self, res, prob, *args, **kwargs):
        return metrics.evaluate(res, prob, *args, **kwargs)

    def evaluate_many(self, results, problems_, *args, **kwargs):
        return metrics.evaluate_many(results, problems_, *args, **kwargs)
