"""The shallow network as a model of :mod:`fastlora.models`: the public functions' arguments mapped
onto :func:`~fastlora.shallow.make_shallow_problem`, :func:`~fastlora.shallow.retrain_shallow`,
:func:`~fastlora.shallow.finetune_shallow` and :func:`~fastlora.shallow.evaluate_shallow` (one
problem at a time: the shallow network has no batched solver)."""
from __future__ import annotations

from ..errors import ERRORS_CHOICES, FastLoRAError, check_choice, check_list, each_or_error, per_entry
from ..finetuning import ground_truth_rank
from ..metrics import evaluation_lists
from ..models import Model, call_checked
from ..options import OPTIONS, POPULATION
from ..peft.registry import finetuning_parameterization
from ..problems import task_law_arguments
from .evaluate import N_FT, evaluate_shallow
from .problem import make_shallow_problem
from .solve import FT_PEFT, finetune_shallow, retrain_shallow


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

    def retrain(self, **arguments):
        """The public retrain's arguments (``max_iter`` / ``tol`` None: the shallow network's defaults in
        the options schema) and :func:`~fastlora.shallow.retrain_shallow`'s own; others are refused."""
        return self._retrain("fastlora.retrain (model='shallow')", arguments)

    def retrain_many(self, problems, seeds=0, errors: str = "raise", **kwargs):
        check_choice("errors", errors, ERRORS_CHOICES)
        problems = check_list("problems", problems, "problem: a ShallowProblem or a list of ShallowTasks; for one "
                              "problem use fastlora.retrain")
        seeds = per_entry("seeds", seeds, len(problems), "problem")
        call = "fastlora.retrain_many (model='shallow')"
        return each_or_error([lambda p=p, s=s: self._retrain(call, {**kwargs, "problem_or_tasks": p, "seed": s})
                              for p, s in zip(problems, seeds)], errors)

    @staticmethod
    def _retrain(call: str, arguments: dict):
        for name in ("as_numpy", "dense_A"):  # the linear model's return options: nothing to change here
            arguments.pop(name, None)
        return call_checked(retrain_shallow, call, arguments)

    def finetune(self, A, task, peft=FT_PEFT, rank=None, n=None, seed=0, **options):
        """The public finetune's arguments (``A``: the shallow retrain result, or (A, c)); ``rank``
        defaults to the task's ground-truth k; ``max_iter`` and ``tol`` None: the shallow network's
        defaults; :func:`~fastlora.shallow.finetune_shallow`'s own options (lr, solver, ...) too."""
        return self._finetune("fastlora.finetune (model='shallow')", A, task, peft, rank, n, seed, options)

    def finetune_many(self, starts, tasks, peft=FT_PEFT, rank=None, n=None, seeds=0, **options):
        tasks, starts = check_list("tasks", tasks, "task"), check_list("starts", starts, "task")
        if len(starts) != len(tasks):
            raise FastLoRAError(f"finetune_many: {len(starts)} starts for {len(tasks)} tasks")
        seeds = per_entry("seeds", seeds, len(tasks), "task")
        return [self._finetune("fastlora.finetune_many (model='shallow')", start, task, peft, rank, n, seed, options)
                for start, task, seed in zip(starts, tasks, seeds)]

    @staticmethod
    def _finetune(call: str, A, task, peft, rank, n, seed, options: dict):
        rank = ground_truth_rank(task) if rank is None else rank
        if rank is None:
            raise FastLoRAError("rank is required: it defaults to the task's ground-truth rank k, which this task "
                                "(the user's own data) does not know")
        return call_checked(finetune_shallow, call, options, res_or_A_and_c=A, task=task, peft=peft, rank=rank, n=n,
                            seed=seed)

    def evaluate(self, res, prob, ft_rank=None, n_ft=N_FT, ft_peft=FT_PEFT, seed=0, rank_tol=None, test_tasks=None,
                 noise_floor=None, metrics=None, ft_peft_options=None, **options):
        """The public evaluate's arguments and :func:`~fastlora.shallow.evaluate_shallow`'s own options
        (n_eval, ft_solver, ...).  ``rank_tol`` and ``noise_floor``, the linear model's adaptation-rank
        options, do not apply; ``n_ft`` is a sample count (the shallow network has no population mode)."""
        return self._evaluate("fastlora.evaluate (model='shallow')", res, prob, ft_rank, n_ft, ft_peft, seed, rank_tol,
                              test_tasks, noise_floor, metrics, ft_peft_options, options)

    def evaluate_many(self, results, problems, ft_rank=None, n_ft=N_FT, ft_peft=FT_PEFT, seeds=0, rank_tol=None,
                      test_tasks=None, noise_floor=None, errors: str = "raise", ft_peft_options=None, **options):
        results, problems, seeds, tasks = evaluation_lists(results, problems, seeds, test_tasks, errors)
        call = "fastlora.evaluate_many (model='shallow')"
        return each_or_error([lambda r=r, p=p, s=s, t=t: self._evaluate(call, r, p, ft_rank, n_ft, ft_peft, s, rank_tol,
                                                                        t, noise_floor, None, ft_peft_options, options)
                              for r, p, s, t in zip(results, problems, seeds, tasks)], errors)

    @staticmethod
    def _evaluate(call: str, res, prob, ft_rank, n_ft, ft_peft, seed, rank_tol, test_tasks, noise_floor, metrics,
                  ft_peft_options, options: dict):
        if rank_tol is not None or noise_floor is not None:
            raise FastLoRAError("rank_tol and noise_floor (the linear model's adaptation-rank options) do not apply "
                                "to model='shallow'")
        if n_ft is None or n_ft == POPULATION:
            raise FastLoRAError(f"n_ft={n_ft!r}: the shallow network has no population fine-tuning; give a number "
                                f"of samples (default {N_FT}, the paper's)")
        if test_tasks is not None:
            test_tasks = check_list("test_tasks", test_tasks, "test task")
        if ft_peft_options is not None:
            ft_peft = finetuning_parameterization(ft_peft, OPTIONS["ft_peft_options"].check(ft_peft_options),
                                                  getattr(res, "peft", None), "ft_peft")
        return call_checked(evaluate_shallow, call, options, res=res, problem=prob, ft_rank=ft_rank, n_ft=n_ft,
                            ft_peft=ft_peft, seed=seed, test_tasks=test_tasks, metrics=metrics)
