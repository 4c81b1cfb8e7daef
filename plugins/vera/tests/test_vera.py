import numpy as np
import pytest
from fastlora_vera import VeRA

import fastlora as fl
from fastlora.testing import check_parameterization


def test_vera_conforms():
    passed = check_parameterization(VeRA)
    assert "implicit gradient" in passed and "pullback vs finite differences" in passed


def test_vera_is_registered_through_its_entry_point():
    assert "vera" in fl.peft.available()
    info = {row["name"]: row for row in fl.peft.info()}["vera"]
    assert info["distribution"] == "fastlora-vera" and info["error"] is None


@pytest.mark.parametrize("solver", ["als", "gd"])
def test_vera_lora_ml_end_to_end(solver):
    prob = fl.make_problem(d=12, k=1, T=4, seed=0)
    std = fl.retrain(prob, method="standard", backend="numpy")
    res = fl.retrain(prob, peft="vera", rank=12, solver=solver, backend="numpy", max_iter=400)
    assert res.objective < std.objective
    if solver == "als":
        assert res.info["adapter_step"] == "inner"


def test_frozen_matrices_are_shared_reproducible_and_never_trained():
    Ba, Ca = VeRA(seed=3).frozen_matrices(5, 4, 2)
    Bb, Cb = VeRA(seed=3).frozen_matrices(5, 4, 2)
    np.testing.assert_array_equal(Ba, Bb)
    np.testing.assert_array_equal(Ca, Cb)
    prob = fl.make_problem(d=6, k=1, T=3, seed=0)
    res = fl.retrain(prob, peft="vera", rank=6, solver="gd", backend="numpy", max_iter=50)
    B, C = VeRA().frozen_matrices(6, 6, 6)
    for t in range(3):
        np.testing.assert_array_equal(res.params["B0"][t], B)
        np.testing.assert_array_equal(res.params["C0"][t], C)
