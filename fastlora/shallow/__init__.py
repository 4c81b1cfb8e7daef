"""The paper's second synthetic system: LoRA-ML for a shallow network (docs/design.md §6).

y = c*ᵀ·sigmoid((A* + U*_t U*_tᵀ) x) + σε.  ``make_shallow_problem`` draws it (or wrap your
own data in ``ShallowTask(X, y)``); ``retrain_shallow`` learns the shared (A, c) with
"standard", "lora-ml" or "reptile"; ``finetune_shallow`` fits a new task's adapter with A
and c frozen; ``evaluate_shallow`` scores a retraining on held-out tasks against clean labels.
"""
from .evaluate import align_hidden_units, evaluate_shallow, paper_ft_rank
from .interface import ShallowModel
from .problem import ShallowProblem, ShallowTask, make_shallow_problem
from .solve import ShallowFinetuneResult, finetune_shallow, retrain_shallow

__all__ = ["ShallowFinetuneResult", "ShallowModel", "ShallowProblem", "ShallowTask", "align_hidden_units",
           "evaluate_shallow", "finetune_shallow", "make_shallow_problem", "paper_ft_rank", "retrain_shallow"]
