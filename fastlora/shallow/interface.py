"""The shallow network as a model of :mod:`fastlora.models`: the public functions' arguments mapped
onto :func:`~fastlora.shallow.make_shallow_problem`, :func:`~fastlora.shallow.retrain_shallow`,
:func:`~fastlora.shallow.finetune_shallow` and :func:`~fastlora.shallow.evaluate_shallow` (one
problem at a time: the shallow network has no batched solver)."""
from __future__ import annotations

from ..errors import ERRORS_CHOICES, FastLoRAError, check_choice, per_entry
from ..finetuning import ground_truth_rank
from ..models import Model
from ..options import OPTIONS
from ..peft.registry import finetuning_parameterization
from ..problems import task_law_arguments
from .evaluate import N_FT, evaluate_shallow
from .problem import make_shallow_problem
from .solve import FT_PEFT, finetune_shallow, retrain_shallow

_RETRAIN_POSITIONS = ("method", "peft", "rank", "solver", "backend", "max_iter", "tol", "seed")


class ShallowModel(Model):
    name = "shallow"

    def draw(self, *, d, k, T, n, noise, seed, d_out, symmetric, n_test_tasks, sampler, implicit, input_law,
             input_df, input_cov, noise_law, noise_df, task_ranks, task_scales, sample_seed):
        n = OPTIONS["n"].check(n)
        if n is None:
            raise FastLoRAError("model='shallow' needs a finite n (samples per task; the paper uses n=1000): the "
                                "shallow network has no population mode")
        if d_out not in (None, d) or symmetric is not True or sampler != "raw" or implicit:
            raise FastLoRAError("model='shallow' draws the paper's square network from raw samples: d_out, "
                                "symmetric=False, sampler='stats' and implicit=True do not apply")
        laws = task_law_arguments(d, k, T, n, sampler, input_law, input_df, input_cov, noise_law, noise_df,
                                  task_ranks, task_scales, sample_seed, implicit)
        law = laws["law"]
        if laws["task_scales"] is not None or law.sqrt is not None or law.input_law != "gaussian":
            raise FastLoRAError("model='shallow' draws x ~ N(0, I) and Δ*_t = U*_t U*_tᵀ: input_law, input_cov and "
                                "task_scales do not apply (noise_law and task_ranks do)")
        return make_shallow_problem(d=d, k=k, T=T, n=n, noise=noise, seed=seed, n_test_tasks=n_test_tasks,
                                    noise_law=law.noise_law, noise_df=law.noise_df, task_ranks=laws["task_ranks"],
                                    sample_seed=laws["sample_seed"])

    def retrain(self, problem_or_tasks, *args, **kwargs):
        """The linear retrain's positional arguments by name (``max_iter`` / ``tol`` None: the shallow
        network's defaults in the options schema); options it does not take are named in one error."""
        kwargs.update(zip(_RETRAIN_POSITIONS, args))
        for name in ("as_numpy", "dense_A"):  # the linear model's return options: nothing to change here
            kwargs.pop(name, None)
        try:
            return retrain_shallow(problem_or_tasks, **kwargs)
        except TypeError as exc:
            raise FastLoRAError(f"{exc}; see help(fastlora.shallow.retrain_shallow) for the shallow network's "
                                f"options") from None

    def retrain_many(self, problems, *args, seeds=0, errors: str = "raise", **kwargs):
        check_choice("errors", errors, ERRORS_CHOICES)
        seeds = per_entry("seeds", seeds, len(problems), "problem")
        out = []
        for problem, seed in zip(problems, seeds):
            try:
                out.append(self.retrain(problem, *args, **{**kwargs, "seed": seed}))
            except FastLoRAError as exc:
                if errors == "raise":
                    raise
                out.append(exc)
        return out

    def finetune(self, start, task, peft=FT_PEFT, rank=None, n=None, seed=0, *, backend="auto", dtype="float64",
                 max_iter=None, tol=None, peft_options=None):
        """The public finetune's arguments; ``rank`` defaults to the task's ground-truth k; ``max_iter``
        and ``tol`` None: the shallow solvers' own (:func:`~fastlora.shallow.finetune_shallow`)."""
        rank = ground_truth_rank(task) if rank is None else rank
        if rank is None:
            raise FastLoRAError("rank is required: it defaults to the task's ground-truth rank k, which this task "
                                "does not know")
        limits = {k: v for k, v in (("max_iter", max_iter), ("tol", tol)) if v is not None}
        return finetune_shallow(start, task, peft=peft, rank=rank, n=n, seed=seed, backend=backend, dtype=dtype,
                                peft_options=peft_options, **limits)

    def finetune_many(self, starts, tasks, *args, seeds=0, **kwargs):
        seeds = per_entry("seeds", seeds, len(tasks), "task")
        return [self.finetune(start, task, *args, seed=seed, **kwargs)
                for start, task, seed in zip(starts, tasks, seeds)]

    def evaluate(self, res, prob, ft_rank=None, n_ft=N_FT, ft_peft=FT_PEFT, seed=0, rank_tol=None, test_tasks=None,
                 noise_floor=None, metrics=None, ft_peft_options=None):
        """The public evaluate's arguments (``rank_tol`` and ``noise_floor``, the linear model's
        adaptation-rank options, do not apply); the shallow network's own are those of
        :func:`~fastlora.shallow.evaluate_shallow`."""
        if ft_peft_options is not None:
            ft_peft = finetuning_parameterization(ft_peft, OPTIONS["ft_peft_options"].check(ft_peft_options),
                                                  getattr(res, "peft", None), "ft_peft")
        return evaluate_shallow(res, prob, ft_rank=ft_rank, n_ft=n_ft, ft_peft=ft_peft, seed=seed,
                                test_tasks=test_tasks, metrics=metrics)

    def evaluate_many(self, results, problems, *args, seeds=0, errors: str = "raise", test_tasks=None, **kwargs):
        check_choice("errors", errors, ERRORS_CHOICES)
        seeds = per_entry("seeds", seeds, len(results), "result")
        tasks = test_tasks if test_tasks is not None else [None] * len(results)
        out = []
        for res, prob, seed, own in zip(results, problems, seeds, tasks):
            try:
                out.append(self.evaluate(res, prob, *args, seed=seed, test_tasks=own, **kwargs))
            except FastLoRAError as exc:
                if errors == "raise":
                    raise
                out.append(exc)
        return out
