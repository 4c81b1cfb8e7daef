"""The public functions of fastlora: each dispatches to the model its problem or tasks belong to
(:mod:`fastlora.models`; the linear model's implementation documents the arguments).

``make_problem`` draws a problem of the model it names (or of a problem-generator plugin,
``law="name"``); ``retrain``, ``retrain_many``, ``finetune``, ``finetune_many``, ``evaluate`` and
``evaluate_many`` ask the problem (or task, or result) which model it is.
"""
from __future__ import annotations

import functools

from . import finetuning, metrics, retraining
from .errors import FastLoRAError
from .models import MODELS, get_model, model_of
from .options import check_choice


def make_problem(d: int = 64, k: int = 2, T: int = 8, n: int | None = None, noise: float = 0.0,
                 seed: int = 0, d_out: int | None = None, symmetric: bool = True,
                 n_test_tasks: int = 4, sampler: str = "raw", implicit: bool = False, model: str = "linear",
                 law=None,
                 # task laws (fastlora.laws; docs/task_laws.md)
                 input_law: str = "gaussian", input_df: float | None = None, input_cov=None,
                 noise_law: str = "gaussian", noise_df: float | None = None, task_ranks=None, task_scales=None,
                 sample_seed: int | None = None, **law_options):
    """Draw a problem with ``T`` training tasks and ``n_test_tasks`` held-out tasks.

    ``n=None`` is population mode (L_t(W) = ½‖W − W*_t‖²); an integer ``n`` draws that many
    Gaussian samples per task (kept as sufficient statistics).  ``d`` is d_in; ``d_out``
    defaults to ``d``.  ``symmetric=True`` (the paper's setting) needs ``d_out == d``.
    ``sampler="raw"`` (default; reproduces earlier results bit for bit) draws X and ε;
    ``"stats"`` draws (Σ_t, C_t, s_t) from their exact joint law in O(d²) normals per task
    whatever n (:func:`fastlora.tasks.exact_statistics`); the ground truth is the same
    for both, and fine-tuning draws (``finetune(..., n=...)``) use the same sampler.
    Sizes whose memory or raw draws would not fit are refused first (module docstring).
    ``model="shallow"``: the paper's two-layer network y = c*ᵀ·sigmoid((A* + U*_tU*_tᵀ) x) + σε
    (:func:`fastlora.shallow.make_shallow_problem`; needs a finite n, the paper's σ is 0.1).
    ``implicit=True`` (population, symmetric): A* is a :class:`~fastlora.implicit.SeededSymmetricGaussian`,
    generated tile by tile when needed — the same law with other numbers, and no d × d array,
    so the problem is solvable at d = 100,000 (fastlora.reduction; ``retrain(..., dense_A=False)``).
    ``law="name"``: the tasks come from that problem-generator plugin (entry-point group
    ``fastlora.problems``, :mod:`fastlora.generators`; docs/plugins.md), called with d, k, T, n,
    noise, seed, d_out, n_test_tasks and ``**law_options``, its own keyword options.

    Task laws (:mod:`fastlora.laws`, docs/task_laws.md): ``input_law`` "gaussian" | "rademacher" |
    "student-t" (``input_df`` degrees of freedom, default 5), ``input_cov`` None (identity) | a
    spectrum name ("spiked", "spiked:s", "power-law", "power-law:a") | a (d, d) covariance,
    ``noise_law`` "gaussian" | "rademacher" | "student-t" (``noise_df``) | "laplace" (unit variance,
    times σ); ``task_ranks`` [k_1, ...] and ``task_scales`` [s_1, ...] (positive) give training task t
    the perturbation s_t·B*_t C*_tᵀ of rank k_t (lists cycle over the tasks: [1, 2] alternates);
    held-out tasks keep rank k and scale 1.  Population mode depends on the inputs only through Σ:
    it takes no input_cov (its loss is ½‖W − W*‖²_F).  ``sampler="stats"`` is exact for Gaussian inputs
    and noise (any input_cov) and refuses other laws.  ``sample_seed`` (default ``seed``) seeds the
    tasks' samples and noise apart from the ground truth, which ``seed`` alone fixes (paired draws:
    the same truth at every n, σ and data law).
    """
    arguments = dict(d=d, k=k, T=T, n=n, noise=noise, seed=seed, d_out=d_out, symmetric=symmetric,
                     n_test_tasks=n_test_tasks, sampler=sampler, implicit=implicit)
    laws = dict(input_law=input_law, input_df=input_df, input_cov=input_cov, noise_law=noise_law, noise_df=noise_df,
                task_ranks=task_ranks, task_scales=task_scales, sample_seed=sample_seed)
    if law is not None or law_options:  # a problem-generator plugin (fastlora.generators)
        from .generators import make_problem_of_law
        if _task_law_given(**laws):
            raise FastLoRAError("input_law, input_df, input_cov, noise_law, noise_df, task_ranks, task_scales and "
                                "sample_seed shape make_problem's own law; a problem generator (law=...) takes its "
                                "own options (law_options)")
        return make_problem_of_law(law, law_options, model=model, **arguments)
    return get_model(check_choice("model", model, tuple(MODELS))).draw(**arguments, **laws)


def _task_law_given(input_law, input_df, input_cov, noise_law, noise_df, task_ranks, task_scales, sample_seed) -> bool:
    """Whether any task-law argument differs from the paper's law (make_problem's defaults)."""
    return (input_law != "gaussian" or noise_law != "gaussian" or input_cov not in (None, "identity")
            or any(v is not None for v in (input_df, noise_df, task_ranks, task_scales, sample_seed)))


def _dispatch(implementation, member: str, where):
    """The public function of ``implementation`` (the linear model's, whose signature and docstring it
    shows): it runs ``member`` of the model of its argument ``where(args, kwargs)``."""
    @functools.wraps(implementation)
    def public(*args, **kwargs):
        return getattr(model_of(where(args, kwargs)), member)(*args, **kwargs)
    return public


def _first(name: str, position: int = 0):
    def where(args, kwargs):
        return args[position] if len(args) > position else kwargs.get(name)
    return where


def _evaluated(args, kwargs):
    """evaluate(res, prob, ..., test_tasks=...): the problem, or the first test task where prob is None."""
    prob = args[1] if len(args) > 1 else kwargs.get("prob")
    if prob is None:
        return kwargs.get("test_tasks")  # model_of takes a list's first entry
    return prob


def _evaluated_many(args, kwargs):
    """evaluate_many(results, problems, ..., test_tasks=...): the lists are checked by the model's own
    function, so anything that is not one is passed on as it is."""
    problems = args[1] if len(args) > 1 else kwargs.get("problems")
    if not isinstance(problems, (list, tuple)):
        return problems
    if problems and problems[0] is not None:
        return problems[0]
    tasks = kwargs.get("test_tasks")
    return tasks[0] if isinstance(tasks, (list, tuple)) and tasks else None


retrain = _dispatch(retraining.retrain, "retrain", _first("problem_or_tasks"))
retrain_many = _dispatch(retraining.retrain_many, "retrain_many", _first("problems"))
finetune = _dispatch(finetuning.finetune, "finetune", _first("task", 1))
finetune_many = _dispatch(finetuning.finetune_many, "finetune_many", _first("tasks", 1))
evaluate = _dispatch(metrics.evaluate, "evaluate", _evaluated)
evaluate_many = _dispatch(metrics.evaluate_many, "evaluate_many", _evaluated_many)
