"""``fastlora.evaluate``: how adaptable a retrained A is (docs/design.md §3)."""
from __future__ import annotations

import functools
import math

import numpy as np

from . import peft as peft_registry
from .errors import (
    ERRORS_CHOICES,
    FastLoRAError,
    check_array,
    check_choice,
    check_choices,
    check_int,
    check_list,
    each_or_error,
    per_entry,
)
from .finetuning import finetune_many, ground_truth_rank, lowrank_residual
from .implicit import is_implicit
from .linop import LowRankUpdate
from .options import OPTIONS
from .peft.protocol import check_shape_supported, shared_names
from .peft.registry import finetuning_parameterization
from .problems import Problem
from .tasks import LowRankTarget, Task, dense_target

# singular values of W*_new − A below this many times one task's least-squares error
# norm are estimation noise, not rank a new task needs (see evaluate)
NOISE_FLOOR_FACTOR = 2.0
# evaluate's defaults, from the options schema
FT_PEFT, RANK_TOL, NOISE_FLOOR = (OPTIONS[name].default for name in ("ft_peft", "rank_tol", "noise_floor"))


def numerical_rank(M, rtol: float, scale: float) -> int:
    """Number of singular values of M above ``rtol · scale``."""
    s = np.linalg.svd(M, compute_uv=False)
    return int(np.sum(s > rtol * scale))


def estimation_noise_floor(noise: float | None, n: int | None, d_out: int, d_in: int) -> float:
    """``NOISE_FLOOR_FACTOR · σ (√d_out + √d_in) / √n``; 0 in population mode or without noise.

    σ(√d_out + √d_in)/√n is the expected spectral norm of one task's least-squares error
    (EᵀX(XᵀX)⁻¹ ≈ σZ/√n with Z a standard normal (d_out, d_in) matrix when Σ ≈ I); a
    retrained A pooled over T tasks errs by less.
    """
    if n is None or not noise:
        return 0.0
    return NOISE_FLOOR_FACTOR * noise * (math.sqrt(d_out) + math.sqrt(d_in)) / math.sqrt(n)


def _relative_error(A, A_star) -> float:
    """‖A − A*‖_F / ‖A*‖_F; for a structured A on A* itself, ‖L Rᵀ‖_F from m×m Grams."""
    if A_star is None:
        return float("nan")
    if isinstance(A, LowRankUpdate) and A.base is not None and (A.base is A_star or np.array_equal(A.base, A_star)):
        return A.correction_norm() / frobenius_norm(A_star)
    if isinstance(A, LowRankUpdate):
        A = A.dense()
    return float(np.linalg.norm(A - A_star) / np.linalg.norm(A_star))


def _adaptation_rank(A, task: Task, rank_tol: float, floor: float) -> int:
    """Numerical rank of W*_new − A above max(rank_tol·‖W*_new‖₂, floor) — without any d×d
    array for a structured A and a factored target on the same base."""
    lowrank = lowrank_residual(A, task) if isinstance(A, LowRankUpdate) else None
    if lowrank is None:
        dense = A.dense() if isinstance(A, LowRankUpdate) else A
        W_star = task.W_star
        return numerical_rank(W_star - dense, 1.0, max(rank_tol * np.linalg.norm(W_star, 2), floor))
    return numerical_rank(lowrank[2], 1.0, max(rank_tol * spectral_norm(task.target), floor))


# an implicit A* larger than this is measured by its law's E‖A*‖²_F (relative error ~2/d) instead of
# regenerating its d² entries (at d = 100,000 about two minutes on two cores)
EXACT_NORM_MAX_DIM = 16384


def frobenius_norm(matrix) -> float:
    """‖M‖_F; an implicit matrix (fastlora.implicit) streams over its tiles, or where d >
    ``EXACT_NORM_MAX_DIM`` takes √E‖M‖²_F from its law (‖A*‖²_F concentrates: relative std ≈ 2/d)."""
    if not is_implicit(matrix):
        return float(np.linalg.norm(matrix))
    if max(matrix.shape) > EXACT_NORM_MAX_DIM and hasattr(matrix, "expected_frobenius_sq"):
        return float(np.sqrt(matrix.expected_frobenius_sq()))
    return float(np.sqrt(matrix.frobenius_sq()))


def spectral_norm(target) -> float:
    """‖W*‖₂ of a target; a factored one S + B Cᵀ by Lanczos on its products (no extra d×d array).

    With an implicit S (fastlora.implicit) every product regenerates S, so the bound
    ‖S‖_F + ‖B‖₂‖C‖₂ ≥ ‖W*‖₂ is used instead (an adaptation rank counted against it is
    conservative)."""
    if isinstance(target, LowRankTarget) and is_implicit(target.base):
        return frobenius_norm(target.base) + float(np.linalg.norm(target.B, 2) * np.linalg.norm(target.C, 2))
    if not isinstance(target, LowRankTarget) or max(target.shape) <= 512:
        return float(np.linalg.norm(dense_target(target), 2))
    from scipy.sparse.linalg import LinearOperator, svds
    op = LinearOperator(target.shape, dtype=np.float64,
                        matvec=lambda x: target.base @ x + target.B @ (target.C.T @ x),
                        rmatvec=lambda y: target.base.T @ y + target.C @ (target.B.T @ y))
    return float(svds(op, k=1, return_singular_vectors=False, random_state=0)[0])


def evaluate(res, prob, ft_rank: int | None = None, n_ft: int | None = None, ft_peft=FT_PEFT, seed: int = 0,
             rank_tol: float = RANK_TOL, test_tasks=None, noise_floor: bool = NOISE_FLOOR, metrics=None,
             ft_peft_options: dict | None = None) -> dict:
    """Metrics of a retrained model on held-out tasks.

    ``res`` is a retrain result (or the matrix A itself), ``prob`` the :class:`Problem` it
    was retrained on (its ``test_tasks`` are used unless ``test_tasks`` is given; with
    ``test_tasks``, ``prob`` may be None).  Returns a dict with

    ``rel_err_A``  ‖A − A*‖_F / ‖A*‖_F (NaN when there is no A*; for an implicit A* beyond
                   d = ``EXACT_NORM_MAX_DIM``, ‖A*‖_F is √E‖A*‖²_F, accurate to ~2/d relative,
                   and ‖A − A*‖_F comes from the low-rank difference: no d × d work);
    ``adapt_rank`` median over the test tasks of the numerical rank of W*_new − A: its
                   singular values above max(``rank_tol``·‖W*_new‖₂, floor), where with
                   ``noise_floor`` on a finite-sample problem floor =
                   2·σ(√d_out + √d_in)/√n (:func:`estimation_noise_floor`): directions
                   weaker than twice one task's least-squares error cannot be told from
                   estimation noise, so they are not rank a new task needs (population
                   problems and σ = 0: floor 0).  This gives the theory's ranks on noisy
                   data — (T+1)k for standard retraining, k for LoRA-ML at T ≥ 3;
    ``excess_risk`` mean over test tasks of ½‖A + Δ̂ − W*_new‖²_F after fine-tuning with
                   ``ft_peft`` (asymmetric LoRA by default, as the paper does) at ``ft_rank``
                   (default: the problem's k, or with ``prob=None`` the test tasks' shared
                   ground-truth rank; with shared parameters kept, the retrained rank)
                   from ``n_ft`` samples (None: population).  ``ft_peft`` named like the
                   retrained parameterization is the retrained instance, its options kept;
                   ``ft_peft_options`` builds another (refused, naming both, where it differs
                   from the retrained options and shared parameters are kept);
    ``excess_risk_std``, ``excess_risk_per_task`` and the retraining ``objective``,
    ``n_iter``, ``seconds`` and ``converged``;
    ``ft_converged`` whether every test task's fine-tuning met its solver's stopping rule (exact fits
                   do; an iterative one — ``lora_sym`` on samples — may stop at its ``max_iter``, and
                   its excess risk is then that of an unfinished fit; from fewer samples than d its
                   fit can have no minimiser, the adapter running off whether or not it stops);
    ``identified`` True when ``rel_err_A`` is within :func:`fastlora.identify.identification_tolerance`,
                   False when it is not although the objective reached its floor (or the run
                   converged where the floor is unknown), None where that cannot be judged (not
                   converged, no A*); ``identification`` says which (docs/identifiability.md).

    For the shallow network (``model="shallow"``; fastlora.models dispatches) the metrics are those of
    :func:`fastlora.shallow.evaluate_shallow`: ``test_loss`` against clean labels on fresh inputs
    (no ground-truth excess risk exists for a nonlinear model) or on the held-out split of
    labelled data (:mod:`fastlora.datasets`), ``test_accuracy`` for ±1 labels, ``train_fit``,
    aligned ``rel_err_A``, and ``metrics_available`` / ``metrics_note`` saying which apply.

    ``metrics``: names that must come out as numbers (e.g. ``("test_accuracy",)``); one that
    cannot be computed for these tasks raises :class:`~fastlora.errors.FastLoRAError`.
    """
    wanted = () if metrics is None else check_choices("metrics", metrics, LINEAR_METRICS)
    if test_tasks is not None and not isinstance(test_tasks, (list, tuple)):
        raise FastLoRAError(f"test_tasks must be a list of fastlora.Task, got {type(test_tasks).__name__}"
                            + (" (one task: test_tasks=[task])" if isinstance(test_tasks, Task) else ""))
    if "rel_err_A" in wanted and getattr(prob, "A_star", None) is None:
        raise FastLoRAError("metrics: 'rel_err_A' cannot be computed: there is no ground-truth A* to compare with")
    return evaluate_many([res], [prob], ft_rank=ft_rank, n_ft=n_ft, ft_peft=ft_peft, seeds=[seed],
                         rank_tol=rank_tol, test_tasks=None if test_tasks is None else [test_tasks],
                         noise_floor=noise_floor, ft_peft_options=ft_peft_options)[0]


LINEAR_METRICS = ("rel_err_A", "adapt_rank", "excess_risk")



def evaluation_lists(results, problems, seeds, test_tasks, errors: str):
    """evaluate_many's list arguments, checked: (results, problems, seeds, test task lists), one entry
    per result (a test_tasks entry of None: that problem's own test tasks)."""
    check_choice("errors", errors, ERRORS_CHOICES)
    results, problems = check_list("results", results, "result"), check_list("problems", problems, "result")
    per_entry("problems", problems, len(results), "result")
    seeds = per_entry("seeds", seeds, len(results), "result")
    if test_tasks is None:
        return results, problems, seeds, [None] * len(results)
    test_tasks = per_entry("test_tasks", check_list("test_tasks", test_tasks, "result"), len(results), "result")
    return results, problems, seeds, [None if tasks is None else check_list(f"test_tasks[{i}]", tasks,
                                                                            f"test task of results[{i}]")
                                      for i, tasks in enumerate(test_tasks)]


def evaluate_many(results: list, problems: list, ft_rank: int | None = None, n_ft: int | None = None,
                  ft_peft=FT_PEFT, seeds=0, rank_tol: float = RANK_TOL, test_tasks=None,
                  noise_floor: bool = NOISE_FLOOR,
                  errors: str = "raise", ft_peft_options: dict | None = None) -> list:
    """:func:`evaluate` of ``results[i]`` on ``problems[i]`` (seed ``seeds[i]``) for every i; the
    fine-tuning of every test task of every result is one batched call (:func:`finetune_many`),
    and each dict is what a lone evaluate gives.  ``errors="return"`` puts the exception of an
    entry that cannot be evaluated in its place."""
    results, problems, seeds, test_lists = evaluation_lists(results, problems, seeds, test_tasks, errors)
    seeds = _fine_tuning_seeds(seeds)
    ft_peft_options = OPTIONS["ft_peft_options"].check(ft_peft_options)
    try:
        peft_registry.get(ft_peft, **(ft_peft_options or {}))
    except FastLoRAError as exc:
        message = str(exc)
        message = "ft_" + message if message.startswith(("peft=", "peft ")) else f"ft_peft: {message}"
        raise type(exc)(message.replace("peft options ", "ft_peft_options ")) from None
    rank_tol = OPTIONS["rank_tol"].check(rank_tol)
    noise_floor = OPTIONS["noise_floor"].check(noise_floor)
    n_ft = OPTIONS["n_ft"].check(n_ft)
    plans = each_or_error([functools.partial(_plan_evaluation, res, prob, tasks, ft_rank, (ft_peft, ft_peft_options),
                                             rank_tol, noise_floor)
                           for res, prob, tasks in zip(results, problems, test_lists)], errors)
    adapt_ranks = _adaptation_ranks(plans)
    for i, rank in enumerate(adapt_ranks):
        if isinstance(rank, Exception):
            if errors == "raise":
                raise rank
            plans[i] = rank  # this result's entry is its error; the others go on
    jobs = [(i, j, plan["start"], task, seeds[i] + j) for i, plan in enumerate(plans)
            if not isinstance(plan, Exception) for j, task in enumerate(plan["tasks"])]
    by_rank: dict = {}  # fine-tuning runs on the backend that retrained (arrays given as res: "auto")
    for job in jobs:
        plan = plans[job[0]]
        key = (plan["ft_rank"], getattr(results[job[0]], "backend", "auto"), id(plan["ft_peft"]))
        by_rank.setdefault(key, []).append(job)
    fits = {}  # (result, test task) -> its FinetuneResult
    for (rank, backend, _), group in by_rank.items():
        fitted = finetune_many([j[2] for j in group], [j[3] for j in group], peft=plans[group[0][0]]["ft_peft"],
                               rank=rank, n=n_ft, seeds=[j[4] for j in group], backend=backend)
        fits.update({(j[0], j[1]): ft for j, ft in zip(group, fitted)})
    evaluated = [i for i, plan in enumerate(plans) if not isinstance(plan, Exception)]
    risks = _mean_and_std({i: [fits[(i, j)].excess_risk for j in range(len(plans[i]["tasks"]))] for i in evaluated})
    out = []
    for i, plan in enumerate(plans):
        if isinstance(plan, Exception):
            out.append(plan)
            continue
        values, mean, std = risks[i]
        metrics = {"rel_err_A": plan["rel_err_A"], "adapt_rank": adapt_ranks[i], "excess_risk": mean,
                   "excess_risk_std": std, "excess_risk_per_task": values,
                   "ft_converged": all(fits[(i, j)].converged for j in range(len(values)))}
        for key in ("objective", "n_iter", "seconds", "converged"):
            if hasattr(results[i], key):
                metrics[key] = getattr(results[i], key)
        metrics.update(identification_metrics(results[i], problems[i], plan["rel_err_A"]))
        out.append(metrics)
    return out


def _mean_and_std(values: dict) -> dict:
    """{key: (its values as floats, their np.mean, their np.std)}: one reduction per length of list (a row's
    mean and std along a stack's last axis are those of the row alone)."""
    by_length: dict = {}
    for key, row in values.items():
        by_length.setdefault(len(row), []).append(key)
    out = {}
    for keys in by_length.values():
        stack = np.array([values[key] for key in keys], dtype=np.float64)
        for key, row, mean, std in zip(keys, stack.tolist(), stack.mean(axis=1).tolist(), stack.std(axis=1).tolist()):
            out[key] = (row, mean, std)
    return out


def _fine_tuning_seeds(seeds: list) -> list[int]:
    """Each result's seed, checked: a non-negative int (test task j of a result fine-tunes from seed + j)."""
    checked = []
    for i, seed in enumerate(seeds):
        name = "seed" if len(seeds) == 1 else f"seeds[{i}]"
        try:
            checked.append(check_int(name, seed, low=0))
        except FastLoRAError as exc:
            raise FastLoRAError(f"{exc} (evaluate takes an int seed: test task j of a result fine-tunes from "
                                f"seed + j)") from None
    return checked


def identification_metrics(res, prob, rel_err_A: float) -> dict:
    """``identified`` (True / False / None) and ``identification`` (why), fastlora.identify."""
    from .identify import identification
    identified, reason = identification(res, prob, rel_err_A)
    return {"identified": identified, "identification": reason}


def _plan_evaluation(res, prob, test_tasks, ft_rank, ft_peft, rank_tol, noise_floor) -> dict:
    """Checks of one evaluation, and what needs no fine-tuning: rel_err_A and the adaptation rank.
    ``ft_peft``: (ft_peft, ft_peft_options) as given, resolved here against the retrained instance."""
    if test_tasks is None:
        if not isinstance(prob, Problem):
            raise FastLoRAError(f"prob must be a fastlora.Problem (from make_problem), got {type(prob).__name__}; "
                                f"for your own tasks pass test_tasks=[Task, ...]")
        tasks = list(prob.test_tasks)
        if not tasks:
            raise FastLoRAError("evaluate needs test tasks: the problem has none (n_test_tasks=0) and test_tasks "
                                "was not given")
    else:
        if prob is not None and not isinstance(prob, Problem):
            raise FastLoRAError(f"prob must be a fastlora.Problem or None, got {type(prob).__name__}")
        tasks = list(test_tasks) if isinstance(test_tasks, (list, tuple)) else None
        if not tasks or not all(isinstance(t, Task) for t in tasks):
            raise FastLoRAError("test_tasks must be a non-empty list of fastlora.Task with ground truth W_star")
    for i, task in enumerate(tasks):
        if not task.has_ground_truth:
            raise FastLoRAError(f"test task {i} has no ground truth W_star; evaluate needs it for the excess risk")
    d_out, d_in = tasks[0].d_out, tasks[0].d_in
    if any((t.d_out, t.d_in) != (d_out, d_in) for t in tasks):
        raise FastLoRAError("test_tasks must all have the same (d_out, d_in)")
    name = "res.A" if hasattr(res, "A") else "res"
    A = getattr(res, "A", res)
    if not isinstance(A, LowRankUpdate) and np.ndim(A) == 0:  # a Problem, None, a string or a number
        raise FastLoRAError(f"res must be a fastlora.RetrainResult (from retrain) or the retrained matrix A "
                            f"(d_out, d_in), got {type(res).__name__}")
    if not isinstance(A, LowRankUpdate):
        A = check_array(name, A, ndim=2)
    if A.shape != (d_out, d_in):
        raise FastLoRAError(f"{name} has shape {A.shape} but the test tasks are ({d_out}, {d_in}): "
                            f"the result comes from a problem of another size")
    ft_parameterization, ft_rank = _finetuning_plan(res, ft_peft, ft_rank, prob, A.shape, tasks)
    floor = estimation_noise_floor(prob.noise, prob.n, d_out, d_in) if noise_floor and prob is not None else 0.0
    # a parameterization with shared parameters fine-tunes on the retrain result (its A and shared ones)
    start = res if shared_names(ft_parameterization) and hasattr(res, "shared") else A
    return {"tasks": tasks, "start": start, "ft_rank": ft_rank, "ranks": (A, rank_tol, floor),
            "rel_err_A": _relative_error(A, getattr(prob, "A_star", None)), "ft_peft": ft_parameterization}


def _finetuning_plan(res, ft_peft, ft_rank, prob, shape, tasks=()) -> tuple:
    """(the fine-tuning parameterization, ft_rank): ``ft_peft`` named like the retrained one is the
    retrained instance (fastlora.peft.registry.finetuning_parameterization); where fine-tuning keeps
    the retrained shared parameters, ft_rank defaults to their rank and must equal it; otherwise to the
    problem's k, or without a problem the ground-truth rank the test ``tasks`` share (as finetune's)."""
    name, options = ft_peft
    retrained = getattr(res, "peft", None)
    retrained_rank = getattr(res, "rank", None) if getattr(res, "shared", None) else None
    sizes = (*shape, ft_rank or retrained_rank or getattr(prob, "k", None) or 1)
    parameterization = finetuning_parameterization(name, options, retrained, "ft_peft", sizes)
    check_shape_supported(parameterization, *shape, "ft_peft")
    names = shared_names(parameterization)
    keeps_shared = retrained_rank is not None and bool(names) and set(names) <= set(res.shared)
    if ft_rank is None:
        ft_rank = res.rank if keeps_shared else getattr(prob, "k", None)
        if ft_rank is None and prob is None:
            known = {ground_truth_rank(task) for task in tasks}
            ft_rank = known.pop() if len(known) == 1 else None
        if ft_rank is None:
            raise FastLoRAError("ft_rank is required when the problem has no k"
                                + (" and the test tasks share no known ground-truth rank" if prob is None else ""))
    ft_rank = check_int("ft_rank", ft_rank, low=1, high=min(shape))
    if keeps_shared and ft_rank != res.rank:
        raise FastLoRAError(f"ft_rank={ft_rank} differs from the rank {res.rank} the shared parameters "
                            f"{list(shared_names(parameterization))} of ft_peft={parameterization.name!r} were "
                            f"retrained with; fine-tuning keeps them: use ft_rank={res.rank} (its default here)")
    return parameterization, ft_rank


def _adaptation_ranks(plans: list) -> list:
    """The median :func:`_adaptation_rank` over each plan's tasks (None for a plan that is an exception,
    the exception for one whose ranks cannot be computed).  Small dense ones — every plan's together,
    per shape, ``RANK_BATCH_BYTES`` at a time — by two batched SVDs (the same singular values, task by
    task, as one SVD each)."""
    ranks: dict = {}
    failed: dict = {}
    dense: dict = {}  # shape -> [(plan index, task index)]
    for i, plan in enumerate(plans):
        if isinstance(plan, Exception):
            continue
        A, rank_tol, floor = plan["ranks"]
        for j, task in enumerate(plan["tasks"]):
            if not isinstance(A, LowRankUpdate) and max(task.d_out, task.d_in) <= 512:
                dense.setdefault(A.shape, []).append((i, j))
                continue
            try:
                ranks[i, j] = _adaptation_rank(A, task, rank_tol, floor)
            except FastLoRAError as exc:  # this result's error (errors="return"), not every result's
                failed.setdefault(i, exc)
    for shape, members in dense.items():
        size = max(1, RANK_BATCH_BYTES // (16 * shape[0] * shape[1]))
        for start in range(0, len(members), size):
            batch = members[start:start + size]
            W = np.array([plans[i]["tasks"][j].W_star for i, j in batch])
            scales = np.linalg.svd(W, compute_uv=False)[:, 0]
            for k, (i, _) in enumerate(batch):
                W[k] -= plans[i]["ranks"][0]
            singular = np.linalg.svd(W, compute_uv=False)
            cuts = [max(plans[i]["ranks"][1] * scale, plans[i]["ranks"][2]) for (i, _), scale in zip(batch, scales)]
            counts = np.sum(singular > np.array(cuts)[:, None], axis=1).tolist()
            ranks.update(zip(batch, counts))
    return [None if isinstance(plan, Exception) else failed[i] if i in failed else
            _median([ranks[i, j] for j in range(len(plan["tasks"]))]) for i, plan in enumerate(plans)]


def _median(values: list) -> float:
    """np.median of a short list of ints (as a float), without an array per call."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return float(ordered[middle]) if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# the adaptation ranks' batched SVDs hold at most this many bytes of stacked targets at a time
RANK_BATCH_BYTES = 32 << 20
