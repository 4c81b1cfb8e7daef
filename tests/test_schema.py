"""Every entry point takes its defaults and checks from the one options schema (fastlora.options).

A default written in two places drifts: the shallow network's solvers once had their own tol,
peft and Reptile steps, and sweeps of the shallow network ran 'lora_sym' while
``fl.retrain`` of the same problem ran the paper's 'lora'.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import fastlora as fl
from fastlora import finetuning, metrics, retraining
from fastlora.errors import FastLoRAError
from fastlora.landscape import census
from fastlora.options import OPTIONS
from fastlora.shallow import finetune_shallow, retrain_shallow
from fastlora.shallow.evaluate import evaluate_shallow

# (function, model, case, {argument: the option it spells})
ENTRY_POINTS = [
    (retraining.retrain, "linear", "retrain", {}),
    (retraining.retrain_many, "linear", "retrain", {}),
    (finetuning.finetune, "linear", "finetune", {"peft": "ft_peft"}),
    (finetuning.finetune_many, "linear", "finetune", {"peft": "ft_peft"}),
    (metrics.evaluate, "linear", None, {}),
    (metrics.evaluate_many, "linear", None, {}),
    (census, "linear", "retrain", {"init": "census_init"}),
    (retrain_shallow, "shallow", None, {}),
    (finetune_shallow, "shallow", None, {"peft": "ft_peft"}),
    (evaluate_shallow, "shallow", None, {}),
]
# arguments whose default is the entry point's own, by design (and said in its docstring)
OWN_DEFAULTS = {
    (census, "n_starts"),  # a census needs starts; in a sweep n_starts=None means "no census"
    (census, "solver"),  # L-BFGS reaches the stationary points a census classifies
    (finetune_shallow, "rank"),  # the paper's fine-tuning rank 1 when called directly
}


def _schema_defaults(option, model, case):
    """What a signature may show: the option's default for this model and case, or None (the
    function then resolves it from the schema at call time)."""
    return {None, option.default_for(case, model), option.default_for(model=model)}


@pytest.mark.parametrize("function, model, case, aliases", ENTRY_POINTS, ids=lambda v: getattr(v, "__name__", None))
def test_signature_defaults_are_the_schemas(function, model, case, aliases):
    checked = 0
    for name, parameter in inspect.signature(function).parameters.items():
        option = OPTIONS.get(aliases.get(name, name))
        if option is None or parameter.default is inspect.Parameter.empty or (function, name) in OWN_DEFAULTS:
            continue
        allowed = _schema_defaults(option, model, case)
        assert parameter.default in allowed, (f"{function.__name__}({name}={parameter.default!r}): the schema's "
                                              f"default for {model}/{case} is {allowed - {None}}")
        checked += 1
    assert checked >= 2  # the test reads the signatures it names


def test_the_shallow_networks_defaults_resolve_from_the_schema():
    prob = fl.make_problem(d=4, k=1, T=2, n=40, noise=0.1, seed=0, model="shallow", n_test_tasks=1)
    res = fl.retrain(prob, method="lora-ml", max_iter=3, restarts=1)
    assert res.peft.name == OPTIONS["peft"].default_for(model="shallow") == "lora"
    reptile = fl.retrain(prob, method="reptile", max_iter=2)
    assert {k: reptile.info[k] for k in ("inner_lr", "inner_steps", "outer_lr")} == \
        {k: OPTIONS[k].default for k in ("inner_lr", "inner_steps", "outer_lr")}
    adam = fl.retrain(prob, method="standard", solver="gd", max_iter=2)
    assert adam.info["lr"] == OPTIONS["lr"].default_for("adamw", "shallow") == 1e-3
    assert adam.info["weight_decay"] == OPTIONS["weight_decay"].default_for("adamw", "shallow") == 0.01
    with pytest.raises(FastLoRAError, match=r"tol=2\.0 is out of range; it must be <= 1\.0"):
        fl.retrain(prob, tol=2.0)  # the schema's range, as for the linear model


def test_a_sweep_of_the_shallow_network_runs_its_default_parameterization(tmp_path):
    from fastlora.sweep import parse_spec
    spec = parse_spec('name = "s"\n[grid]\nmodel = ["linear", "shallow"]\n[fixed]\nd = 4\nk = 1\nT = 2\nn = 40\n'
                      'noise = 0.1\n', check_points=False)
    pefts = {point["model"]: point["peft"] for point in spec.points()}
    assert pefts == {"linear": "lora_sym", "shallow": "lora"}
    only_linear = parse_spec('name = "l"\n[grid]\nT = [2, 3]\n', check_points=False)
    assert only_linear.fixed["peft"] == "lora_sym"  # recorded as before: such stores resume unchanged


def test_a_mixed_sweep_fills_n_ft_per_model_and_keeps_the_linear_row_keys():
    """n_ft was once recorded as the linear default (population) for shallow points too; and a point
    whose filled value equals the recorded default must keep the row key it has in a linear-only spec
    (else adding a shallow point to a spec would re-run every finished linear row)."""
    from fastlora.sweep import parse_spec
    fixed = '[fixed]\nd = 4\nk = 1\nT = 2\nn = 40\nnoise = 0.1\n'
    mixed = parse_spec('name = "s"\n[grid]\nmodel = ["linear", "shallow"]\n' + fixed, check_points=False)
    n_ft = {point["model"]: point["n_ft"] for point in mixed.points()}
    assert n_ft == {"linear": "population", "shallow": OPTIONS["n_ft"].default_for(model="shallow")}
    assert n_ft["shallow"] == 100  # the paper's
    linear = parse_spec('name = "s"\n[grid]\nmodel = ["linear"]\n' + fixed, check_points=False)
    key = {row["point"]["model"]: row["row_key"] for row in mixed.rows()}
    assert [row["row_key"] for row in linear.rows()] == [key["linear"]]
    assert key["shallow"] != key["linear"]


def test_the_census_validates_through_the_schema():
    prob = fl.make_problem(d=4, k=1, T=3, seed=0, n_test_tasks=0)
    with pytest.raises(FastLoRAError, match=r"init='gaussian'.*normal"):
        census(prob, n_starts=1, init="gaussian")
    with pytest.raises(FastLoRAError, match="init_scale"):
        census(prob, n_starts=1, init_scale=-1.0)
    result = census(prob, n_starts=2, solver="auto", max_iter=50)
    assert result.settings["solver"] == "gd" and result.settings["optimizer"] == "lbfgs"


def test_fastlora_solve_has_a_flag_for_every_schema_option_it_lists_and_no_other():
    import click

    from fastlora.cli import solve
    params = {p.name for p in solve.params if isinstance(p, click.Option)}
    own = {"seed", "asymmetric", "implicit", "peft_options", "ft_peft_options", "as_json", "progress", "help"}
    listed = {name for name, o in OPTIONS.items() if o.cli and o.group in ("problem", "retrain", "solver", "evaluate")}
    assert listed <= params
    assert params - listed - own == set()


def test_a_linear_finetune_takes_the_schemas_limits():
    prob = fl.make_problem(d=6, k=1, T=3, n=50, seed=0, n_test_tasks=1)
    res = fl.retrain(prob, rank=1)
    with pytest.raises(FastLoRAError, match="max_iter"):
        fl.finetune(res.A, prob.test_tasks[0], max_iter=0)
    ft = fl.finetune(res.A, prob.test_tasks[0], peft="lora_sym", rank=1)
    assert np.isfinite(ft.loss)
