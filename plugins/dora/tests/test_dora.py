import numpy as np
from fastlora_dora import DoRA

import fastlora as fl
from fastlora.testing import check_parameterization


def test_dora_conforms():
    assert "base gradient vs finite differences" in check_parameterization(DoRA)


def test_dora_is_registered_through_its_entry_point():
    assert "dora" in fl.peft.available()
    info = {row["name"]: row for row in fl.peft.info()}["dora"]
    assert info["distribution"] == "fastlora-dora" and info["error"] is None


def test_dora_lora_ml_end_to_end():
    prob = fl.make_problem(d=10, k=1, T=4, seed=0)
    std = fl.retrain(prob, method="standard", backend="numpy")
    res = fl.retrain(prob, peft="dora", rank=1, solver="gd", backend="numpy", max_iter=3000)
    assert res.objective < 0.05 * std.objective
    m = fl.evaluate(res, prob)
    assert m["excess_risk"] < fl.evaluate(std, prob)["excess_risk"]
    np.testing.assert_allclose(res.A + res.delta(0), res.A + res.delta(0))


def test_dora_finetunes():
    prob = fl.make_problem(d=8, k=1, T=3, seed=1)
    ft = fl.finetune(prob.A_star, prob.test_tasks[0], peft="dora", rank=1, max_iter=2000)
    zero = fl.finetune(prob.A_star, prob.test_tasks[0], peft="lora", rank=1).excess_risk
    assert ft.excess_risk < 0.5 * prob.test_tasks[0].excess_risk(prob.A_star) + zero
