"""``evaluate`` for the shallow network: fine-tune held-out tasks, score them against clean labels
(tasks with ground truth) or their held-out split (labelled data, fastlora.datasets)."""
from __future__ import annotations

import numpy as np

from .. import peft as peft_registry
from ..errors import FastLoRAError, check_choices, check_int
from ..options import OPTIONS
from .optim import MODEL
from .scores import labels_are_pm1
from .solve import FT_PEFT, finetune_shallow, shared_of

N_FT = OPTIONS["n_ft"].default_for(model=MODEL)  # the paper's n = 100 fine-tuning samples

# what each metric means for each kind of test task; a metric missing from a kind does not apply to it
METRIC_MEANINGS = {
    "ground truth": {"test_loss": "mean (ŷ − y_clean)² on n_eval fresh inputs",
                     "train_fit": "mean (ŷ − y_clean)² on the fine-tuning inputs"},
    "held-out split": {"test_loss": "mean (ŷ − y_test)² on the held-out split",
                       "test_accuracy": "fraction of the held-out split with sign(ŷ) = y_test (labels ±1)",
                       "train_fit": "mean (ŷ − y)² on the fine-tuning samples"},
    "data only": {"train_fit": "mean (ŷ − y)² on the fine-tuning samples"},
}
TASK_METRICS = ("test_loss", "test_accuracy", "train_fit")


def paper_ft_rank(k: int, T: int) -> int:
    """The paper's fine-tuning rank: k, and 3k when T = 2 (two tasks leave A* identified only
    up to a rank-2k error, so a new task needs rank 3k, docs/design.md §2 fact 3)."""
    return 3 * k if T == 2 else k


def align_hidden_units(A, c, A_star, c_star):
    """Permute the hidden units of (A, c) to best match (A*, c*): returns (A[π], c[π], π).

    The network's output c·sigmoid(A x) does not change when the rows of A and the entries of
    c are permuted together, so A is identifiable only up to such a permutation; comparing A
    with A* without aligning would report the labelling, not the fit.  π minimises
    Σ_j ‖A_π(j) − A*_j‖² + (c_π(j) − c*_j)² (an assignment problem, solved exactly by
    scipy.optimize.linear_sum_assignment).
    """
    from scipy.optimize import linear_sum_assignment
    A, c = np.asarray(A, dtype=np.float64), np.asarray(c, dtype=np.float64)
    rows = np.concatenate([A, c[:, None]], axis=1)
    rows_star = np.concatenate([np.asarray(A_star), np.asarray(c_star)[:, None]], axis=1)
    cost = ((rows[:, None, :] - rows_star[None, :, :]) ** 2).sum(axis=2)   # cost[i, j]: unit i as unit j
    unit, target = linear_sum_assignment(cost)
    perm = np.empty_like(unit)
    perm[target] = unit
    return A[perm], c[perm], perm


def task_kind(task) -> str:
    """Which metrics a test task allows: "ground truth" (a law to draw clean labels from),
    "held-out split" (labelled data with ``task.held_out``, fastlora.datasets) or "data only"."""
    if task.has_ground_truth:
        return "ground truth"
    return "held-out split" if getattr(task, "held_out", None) is not None else "data only"


def available_metrics(problem, tasks) -> tuple[list, str]:
    """(names, note): the metrics :func:`evaluate_shallow` computes for these test tasks, and a
    sentence saying what each means and why the others are NaN.

    A per-task metric is available when it applies to every test task: ``test_loss`` needs
    ground truth or a held-out split, ``test_accuracy`` a held-out split whose labels are all
    ±1; ``rel_err_A``, ``rel_err_c`` need the problem's (A*, c*).
    """
    kinds = [task_kind(task) for task in tasks]
    names, missing = [], []
    for name in TASK_METRICS:
        lacking = [i for i, kind in enumerate(kinds) if name not in METRIC_MEANINGS[kind]]
        if name == "test_accuracy":
            lacking += [i for i, (task, kind) in enumerate(zip(tasks, kinds))
                        if i not in lacking and not labels_are_pm1(task.held_out[1])]
        if lacking:
            missing.append(f"{name}: NaN ({_why_not(kinds[min(lacking)], min(lacking))})")
        else:
            names.append(name)
    if getattr(problem, "A_star", None) is not None and getattr(problem, "c_star", None) is not None:
        names += ["rel_err_A", "rel_err_c"]
    else:
        missing.append("rel_err_A, rel_err_c: NaN (the problem has no ground truth A*, c*)")
    meanings = [f"{name}: {METRIC_MEANINGS[kinds[0]][name]}" for name in names if name in TASK_METRICS]
    return names, "; ".join(meanings + missing)


def _why_not(kind: str, i: int) -> str:
    if kind == "ground truth":
        return f"test task {i} has ground truth but real-valued labels, not ±1"
    if kind == "held-out split":
        return f"the held-out labels of test task {i} are not all ±1"
    return f"test task {i} has neither ground truth nor a held-out split"


def evaluate_shallow(res, problem, ft_rank: int | None = None, n_ft: int | None = N_FT, ft_peft=FT_PEFT, seed: int = 0,
                     n_eval: int = 10000, test_tasks=None, ft_solver: str = "auto", ft_optimizer: str | None = None,
                     ft_max_iter: int | None = None, ft_restarts: int | None = None, backend: str = "auto",
                     metrics=None) -> dict:
    """Metrics of a retrained shallow network on held-out tasks.

    Each test task gets a rank-``ft_rank`` ``ft_peft`` adapter fitted with A and c frozen on
    ``n_ft`` samples — fresh draws from its law (ground truth), or drawn without replacement
    from its training split (labelled data, fastlora.datasets); None: the task's own data; then

    ``test_loss``     mean over test tasks of mean (ŷ − y_clean)² on ``n_eval`` fresh inputs
                      (ground truth), or of mean (ŷ − y_test)² on the task's held-out split
                      (labelled data); ``test_loss_median``, ``test_loss_per_task`` beside it;
    ``test_accuracy`` mean over test tasks of the fraction of the held-out split with
                      sign(ŷ) = y_test (labels ±1 only; ``test_accuracy_per_task`` beside it);
    ``train_fit``     mean over test tasks of mean (ŷ − y_clean)² on the fine-tuning inputs —
                      the number the paper reports (its code has no held-out inputs); against
                      the given labels for tasks without ground truth;
    ``rel_err_A``     ‖A[π] − A*‖_F / ‖A*‖_F after aligning hidden units (:func:`align_hidden_units`),
                      ``rel_err_c`` likewise;
    ``metrics_available``  the names above that hold numbers for these tasks, and
    ``metrics_note``  what each means here and why the others are NaN (:func:`available_metrics`);
    and the retraining ``objective``, ``n_iter``, ``seconds``, ``converged``, the ``ft_rank`` used.

    ``metrics``: names that must be computable (e.g. ``("test_accuracy",)``); one that does not
    apply to these tasks raises :class:`~fastlora.errors.FastLoRAError` before any fine-tuning.
    None (the default): compute what applies, NaN for the rest.

    ``ft_rank`` None follows the paper: the problem's k, and 3k when T = 2.  ``ft_solver``,
    ``ft_optimizer``, ``ft_max_iter``, ``ft_restarts`` go to :func:`finetune_shallow` (default:
    L-BFGS with 5 adapter starts; the paper's procedure: ``ft_solver="gd"``, AdamW 15,000 steps).
    Test task i is fine-tuned with seed ``seed + i``.
    """
    A, c = (np.asarray(a, dtype=np.float64) for a in shared_of(res))
    tasks = list(test_tasks if test_tasks is not None else getattr(problem, "test_tasks", []))
    if not tasks:
        raise FastLoRAError("evaluate needs test tasks: the problem has none (n_test_tasks=0) and test_tasks was "
                            "not given")
    available, note = available_metrics(problem, tasks)
    if metrics is not None:
        for name in check_choices("metrics", metrics, (*TASK_METRICS, "rel_err_A", "rel_err_c")):
            if name not in available:
                raise FastLoRAError(f"metrics: {name!r} cannot be computed for these test tasks — {note}")
    if ft_rank is None:
        k, T = getattr(problem, "k", None), getattr(problem, "T", None)
        if k is None or T is None:
            raise FastLoRAError("ft_rank is required when the problem has no k and T")
        ft_rank = min(paper_ft_rank(k, T), min(A.shape))
    ft_rank = check_int("ft_rank", ft_rank, low=1, high=min(A.shape))
    n_ft = check_int("n_ft", n_ft, low=1, allow_none=True)
    seed = check_int("seed", seed, low=0)
    try:
        peft_registry.get(ft_peft)
    except FastLoRAError as exc:
        raise type(exc)(f"ft_peft: {exc}") from None
    A_star, c_star = getattr(problem, "A_star", None), getattr(problem, "c_star", None)
    if A_star is not None and c_star is not None:
        A_aligned, c_aligned, _ = align_hidden_units(A, c, A_star, c_star)
        rel_err_A = float(np.linalg.norm(A_aligned - A_star) / np.linalg.norm(A_star))
        rel_err_c = float(np.linalg.norm(c_aligned - c_star) / np.linalg.norm(c_star))
    else:
        rel_err_A = rel_err_c = float("nan")
    test, fit, accuracy = [], [], []
    for i, task in enumerate(tasks):
        ft = finetune_shallow((A, c), task, peft=ft_peft, rank=ft_rank, n=n_ft, seed=seed + i, solver=ft_solver,
                              optimizer=ft_optimizer, max_iter=ft_max_iter, restarts=ft_restarts, n_eval=n_eval,
                              backend=backend)
        test.append(ft.test_loss)
        fit.append(ft.train_fit)
        accuracy.append(ft.test_accuracy)
    test = np.asarray(test)
    out = {"test_loss": float(test.mean()), "test_loss_median": float(np.median(test)),
           "test_loss_per_task": test.tolist(), "test_accuracy": float(np.mean(accuracy)),
           "test_accuracy_per_task": accuracy, "train_fit": float(np.mean(fit)), "train_fit_per_task": fit,
           "rel_err_A": rel_err_A, "rel_err_c": rel_err_c, "ft_rank": ft_rank, "metrics_available": available,
           "metrics_note": note, "identified": None,
           "identification": "shallow network: not judged (no theorem; A is identified up to a permutation of "
                             "hidden units at best)"}
    for name in ("objective", "n_iter", "seconds", "converged"):
        if hasattr(res, name):
            out[name] = getattr(res, name)
    return out
