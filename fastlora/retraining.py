"""The linear model's retraining (``fastlora.retrain`` and ``retrain_many`` dispatch here through
:mod:`fastlora.models`): standard retraining, LoRA-ML (ALS or gradient methods) and Reptile.

The arguments are checked into a plan (:mod:`fastlora.planning`), whose memory is checked
first (:mod:`fastlora.sizing`), and run (:mod:`fastlora.execution`)."""
from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np

from . import options as schema
from .errors import ERRORS_CHOICES, FastLoRAError, check_choice, check_list, each_or_error, per_entry
from .execution import run_plan
from .peft.protocol import shared_names
from .planning import UNPLANNED, SolveRequest, plan_solve
from .restarts import check_restarts, retrain_many_with_restarts, retrain_with_restarts
from .solvers.common import RetrainResult
from .taskbatch import as_task_list


def retrain(problem_or_tasks, method: str = "lora-ml", peft="lora_sym", rank: int | None = None,
            solver: str = "auto", backend: str = "auto", max_iter: int | None = None, tol: float | None = None,
            seed=0, *,
            dtype="float64", threads: int | None = None, callback=None, as_numpy: bool = True, dense_A: bool = True,
            peft_options: dict | None = None, **options) -> RetrainResult:
    """Retrain a shared A on T tasks.

    Parameters
    ----------
    problem_or_tasks : Problem, Task or list of Task
        The retraining tasks (all population or all finite-sample, same shape).
    method : {"standard", "lora-ml", "reptile"}
        ``standard``: argmin_A Σ_t L_t(A) in closed form.  ``lora-ml``: argmin over A and
        θ_1..θ_T of Σ_t L_t(A + Δ_p(θ_t)).  ``reptile``: first-order meta-learning baseline.
    peft : str, class or instance
        The parameterization p of LoRA-ML (a registered name, see ``fastlora.peft.available()``).
        ``peft``, ``rank``, ``solver`` and ``peft_options`` are checked for every method; standard
        retraining and Reptile use none of them (as in sweeps, where rows record them).
    rank : int
        Adapter rank r, 1 <= r <= min(d_out, d_in); defaults to the problem's k.
    solver : {"auto", "als", "gd"}
        LoRA-ML solver.  ``auto`` (default) picks per problem kind — see
        :mod:`fastlora.solvers.auto` for the table; the choice is in ``res.info["solver"]``.
        ``als``: alternating exact minimisation (adapter steps in ``fastlora.solvers.adapters``)
        with safeguarded Anderson extrapolation; ``gd``: joint gradient descent / Adam / L-BFGS.
    backend : {"auto", "numpy", "numba", "cupy"}
    max_iter, tol : iteration limit and relative tolerance (default 1000 and 1e-10; see the
        options below).  Shallow-network problems (``make_problem(model="shallow")``) are
        retrained by :func:`fastlora.shallow.retrain_shallow`, with its own defaults and options.
    seed : int or numpy Generator — every random draw (initialisation) comes from it.
    restarts : N seeded starts, the lowest objective kept, ``info["restarts_reached"]`` how many
        reached it (default 1; :mod:`fastlora.restarts`; the shallow network's default is its own).
    dtype : "float64" (default) or "float32".
    threads : Numba threads for large kernels (numba backend; restored after the call).
    dense_A : return ``res.A`` as a dense array (default).  ``False``: where the problem was
        solved in the span of the task factors (:mod:`fastlora.reduction`), ``res.A`` is the
        :class:`~fastlora.linop.LowRankUpdate` S + Q_out E Q_inᵀ — no d_out × d_in array.
    callback : called as ``callback(iteration, elapsed_seconds, objective)`` after each iteration.
    as_numpy : return numpy arrays (default) rather than the backend's.
    peft_options : keyword arguments for the parameterization class, e.g. ``{"alpha": 16}``.
    **options : solver options (each applies to the solvers named):

{options}
    """
    restarts = check_restarts(options.pop("restarts", None))  # several seeded starts: fastlora.restarts
    request = SolveRequest(method=method, peft=peft, rank=rank, solver=solver, backend=backend, max_iter=max_iter,
                           tol=tol, seed=seed, dtype=dtype, threads=threads, callback=callback,
                           peft_options=peft_options, options=options, dense_A=dense_A)
    if restarts > 1:
        if callback is not None:
            raise FastLoRAError("callback is not called with restarts > 1 (the starts are solved in one batch)")
        return retrain_with_restarts(retrain_many, problem_or_tasks, restarts, seed,
                                     dict(request.arguments(), as_numpy=as_numpy))
    plan = plan_solve(problem_or_tasks, request)
    return raise_or_return(run_plan(plan, [problem_or_tasks], [plan.rng], as_numpy), "raise")[0]


def retrain_many(problems, method: str = "lora-ml", peft="lora_sym", rank: int | None = None,
                 solver: str = "auto", backend: str = "auto", max_iter: int | None = None, tol: float | None = None,
                 seeds=0, *,
                 dtype="float64", threads: int | None = None, as_numpy: bool = True, dense_A: bool = True,
                 peft_options: dict | None = None, errors: str = "raise", **options) -> list:
    """Retrain many problems of one shape in one batched solve; the same arguments as :func:`retrain`.

    ``problems``: Problems (or lists of Tasks) with the same T, d_out, d_in and sample mode.
    ``seeds``: one seed for all, or one per problem.  Small problems (d ≤ ``DENSE_MAX_DIM``;
    dense targets and finite samples) are stacked on a leading problem axis and iterate
    together — every operation is per problem, so each result is identical to
    ``retrain(problem, seed=its_seed)`` whatever the batch; larger factored problems are
    solved one after another.  ``errors="return"`` puts the exception of a problem that
    fails (e.g. diverges) in its place in the list and goes on with the others;
    ``errors="raise"`` raises the first.  Arguments that are wrong for the whole call — an entry that
    is not a problem or a list of tasks, problems of different shapes — raise whatever ``errors`` says.
    """
    check_choice("errors", errors, ERRORS_CHOICES)
    problems = check_list("problems", problems, "problem: a Problem or a list of Tasks; for one problem use "
                          "fastlora.retrain")
    if not problems:
        return []
    seeds = schema.OPTIONS["seed"].check_each("seeds", per_entry("seeds", seeds, len(problems), "problem"))
    task_lists = []
    for i, problem in enumerate(problems):
        try:
            task_lists.append(as_task_list(problem))
        except FastLoRAError as exc:
            raise FastLoRAError(f"problems[{i}]: {exc}") from None
    if rank is None:  # each problem's default rank is its own k: one batched solve has one rank
        ks = sorted({getattr(p, "k", None) for p in problems}, key=str)
        if len(ks) > 1:
            raise FastLoRAError(f"problems have different k ({', '.join(map(str, ks))}) and rank is not given: "
                                f"retrain_many solves at one rank; pass rank=, or call it once per k")
    restarts = check_restarts(options.pop("restarts", None))  # several seeded starts: fastlora.restarts
    request = SolveRequest(method=method, peft=peft, rank=rank, solver=solver, backend=backend, max_iter=max_iter,
                           tol=tol, seed=seeds[0], dtype=dtype, threads=threads, peft_options=peft_options,
                           options=options, dense_A=dense_A)
    if restarts > 1:
        return retrain_many_with_restarts(retrain_many, problems, seeds, restarts, errors,
                                          dict(request.arguments(), as_numpy=as_numpy))
    plan = plan_solve(problems[0], request)
    first = task_lists[0]
    shape = (len(first), first[0].d_out, first[0].d_in, first[0].is_population)
    for i, tasks in enumerate(task_lists):
        if (len(tasks), tasks[0].d_out, tasks[0].d_in, tasks[0].is_population) != shape:
            raise FastLoRAError(f"problems[{i}] has (T, d_out, d_in, population) = "
                                f"{(len(tasks), tasks[0].d_out, tasks[0].d_in, tasks[0].is_population)}; "
                                f"problems[0] has {shape}: retrain_many solves problems of one shape")
    stackable = plan.kind != "factored" and not shared_names(plan.peft) and not getattr(plan.peft, "uses_base", False)
    reductions = None
    if stackable:  # each problem reduced as alone (problem 0 not reducing says nothing of the others' spans)
        reductions = [plan.reduction, *plan.reduce_many(problems[1:])]
        stackable = len({r.sizes if r is not None else None for r in reductions}) == 1
        if plan.reduction is None and stackable:  # none reduces: the plan's full-space solve
            reductions = None
    if not stackable:  # large structured problems (or reductions of different sizes): one at a time
        known = reductions or [plan.reduction] + [UNPLANNED] * (len(problems) - 1)

        def alone(i, problem, seed):
            own = _starts_of_problem(options, i, len(problems), plan.T, shared_names(plan.peft))
            own_plan = plan_solve(problem, replace(request, seed=seed, options=own), reduction=known[i])
            return run_plan(own_plan, [problem], [own_plan.rng], as_numpy)[0]
        return each_or_error([functools.partial(alone, i, problem, seed)
                              for i, (problem, seed) in enumerate(zip(problems, seeds))], errors)
    return raise_or_return(run_plan(plan, problems, seeds, as_numpy, reductions), errors)


def raise_or_return(results: list, errors: str) -> list:
    """The one place where a failed problem's error is raised (``errors="raise"``: the first) or left
    in its place in the list (``"return"``) — the same for one problem and for many."""
    if errors == "raise":
        for r in results:
            if isinstance(r, Exception):
                raise r
    return results


def _starts_of_problem(options: dict, i: int, P: int, T: int, shared=()) -> dict:
    """``options`` for problem ``i`` of ``P`` solved alone: its slice of stacked starts
    (``init_A`` (P, d_out, d_in) — a 2-d one is shared by all —, per-task ``init_params``
    (P·T, ...); shared parameters (no task axis) stay as given)."""
    own = dict(options)
    A0 = options.get("init_A")
    if A0 is not None and not isinstance(A0, str) and np.ndim(A0) == 3 and P > 1:
        own["init_A"] = A0[i:i + 1]
    given = options.get("init_params")
    if given is not None and P > 1:
        own["init_params"] = {}
        for k, v in given.items():
            if k not in shared and np.shape(v)[:1] != (P * T,):  # as the stacked solve requires
                raise FastLoRAError(f"init_params[{k!r}] has shape {np.shape(v)}; {P} problems of {T} tasks need "
                                    f"one start per task of every problem: {P * T} along the first axis")
            own["init_params"][k] = v if k in shared else v[i * T:(i + 1) * T]
    return own


retrain.__doc__ = retrain.__doc__.replace("{options}", schema.table(schema.SOLVER))
