"""The public functions of fastlora: each dispatches to the model its problem or tasks belong to
(:mod:`fastlora.models`; the linear model's implementation documents the arguments).

``make_problem`` draws a problem of the model it names (or of a problem-generator plugin,
``law="name"``); ``retrain``, ``retrain_many``, ``finetune``, ``finetune_many``, ``evaluate`` and
``evaluate_many`` ask the problem (or task, or result) which model it is.
"""
from __future__ import annotations

import functools
import inspect

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
    ``sampler="raw"`` (default; the same draws as earlier versions, their statistics to rounding) draws X and ε;
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
        if law is None:
            raise FastLoRAError(f"make_problem() has no argument(s) {', '.join(sorted(law_options))}; keyword "
                                f"options beyond its own go to a problem generator: pass law='name' "
                                f"(fastlora.generators)")
        return make_problem_of_law(law, law_options, model=model, **arguments)
    return get_model(check_choice("model", model, tuple(MODELS))).draw(**arguments, **laws)


def _task_law_given(input_law, input_df, input_cov, noise_law, noise_df, task_ranks, task_scales, sample_seed) -> bool:
    """Whether any task-law argument differs from the paper's law (make_problem's defaults)."""
    return (input_law != "gaussian" or noise_law != "gaussian" or input_cov not in (None, "identity")
            or any(v is not None for v in (input_df, noise_df, task_ranks, task_scales, sample_seed)))


def _dispatch(implementation, member: str, where, made_by: str | None = None):
    """The public function of ``implementation`` (the linear model's, whose signature and docstring it
    shows): the call's arguments bound to that signature's names, it runs ``member`` of the model of
    ``where(arguments)``; ``made_by``: the argument holding a retrained start, which must be that
    model's."""
    signature = inspect.signature(implementation)
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())

    @functools.wraps(implementation)
    def public(*args, **kwargs):
        # keywords the linear signature lacks are the model's to take or refuse (models.call_checked)
        own = {} if open_ended else {k: kwargs.pop(k) for k in list(kwargs) if k not in signature.parameters}
        arguments = _by_name(implementation.__name__, signature, args, kwargs)
        model = model_of(where(arguments))
        if made_by is not None:
            _check_made_by(model, made_by, arguments.get(made_by))
        return getattr(model, member)(**arguments, **own)
    return public


def _by_name(function: str, signature: inspect.Signature, args, kwargs) -> dict:
    """A call's arguments by parameter name (a ``**options`` parameter's entries as they are); a call
    the signature cannot take (too many positional arguments, one given twice) raises TypeError
    naming the function, as the function itself would."""
    try:
        bound = signature.bind(*args, **kwargs).arguments
    except TypeError as exc:
        raise TypeError(f"{function}(): {exc}") from None
    out = {}
    for name, value in bound.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def _check_made_by(model, name: str, value) -> None:
    """Retrained starts (``name``: a result, or a list of them) must come from the model of the
    problems or tasks they are used on: a shallow network's A is no linear model's W.  Arrays, (A, c)
    pairs and results that do not say their model are taken as given."""
    entries = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for i, entry in entries:
        made = getattr(entry, "model", None)
        if made is not None and made != model.name:
            where = name if i is None else f"{name}[{i}]"
            raise FastLoRAError(f"{where} was retrained by model={made!r}, but the problem or task it is used on is "
                                f"model={model.name!r}: use a start of the same model")


def _named(name: str):
    return lambda arguments: arguments.get(name)


def _evaluated(arguments):
    """evaluate(res, prob, ..., test_tasks=...): the problem, or the test tasks where prob is None."""
    prob = arguments.get("prob")
    return arguments.get("test_tasks") if prob is None else prob


def _evaluated_many(arguments):
    """evaluate_many(results, problems, ..., test_tasks=...): anything but a list is passed on as it is
    (the model's function checks it)."""
    problems = arguments.get("problems")
    if isinstance(problems, (list, tuple)) and problems and problems[0] is None:
        return arguments.get("test_tasks")
    return problems


retrain = _dispatch(retraining.retrain, "retrain", _named("problem_or_tasks"))
retrain_many = _dispatch(retraining.retrain_many, "retrain_many", _named("problems"))
finetune = _dispatch(finetuning.finetune, "finetune", _named("task"), made_by="A")
finetune_many = _dispatch(finetuning.finetune_many, "finetune_many", _named("tasks"), made_by="starts")
evaluate = _dispatch(metrics.evaluate, "evaluate", _evaluated, made_by="res")
evaluate_many = _dispatch(metrics.evaluate_many, "evaluate_many", _evaluated_many, made_by="results")
