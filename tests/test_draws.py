"""fastlora.kernels.draws: compiled standard normal draws are numpy's, number for number, and leave the
bit generator where numpy's would; the raw sampler's statistics do not depend on which draws them."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import fastlora as fl
import fastlora.tasks as tasks_module
from fastlora.config import settings
from fastlora.kernels import draws
from fastlora.laws import STANDARD_LAW, make_law


def _compiled():
    fill = draws.compiled_fill_normals(settings.compiled_code_root())
    assert fill is not None, "Numba is installed and the JIT enabled in the test environment"
    return fill


@pytest.mark.parametrize("compiled", [False, True], ids=["uncompiled", "compiled"])
@pytest.mark.parametrize("shapes", [((3, 4), (3, 2)), ((7, 5), (0, 5)), ((1, 1), (2, 3))])
def test_fill_normals_draws_numpys_numbers(compiled, shapes):
    fill = _compiled() if compiled else draws.fill_normals
    first, second = np.full(shapes[0], np.nan), np.full(shapes[1], np.nan)
    ours, theirs = np.random.default_rng(11), np.random.default_rng(11)
    fill(ours, first, second)
    np.testing.assert_array_equal(first, theirs.standard_normal(shapes[0]))
    np.testing.assert_array_equal(second, theirs.standard_normal(shapes[1]))
    np.testing.assert_array_equal(ours.standard_normal(4), theirs.standard_normal(4))  # the stream goes on alike


def test_compiled_draws_match_numpy_in_the_tails():
    """Enough draws (4 million) that the ziggurat's rare paths run: beyond 3.65 (its tail) and the wedges."""
    fill = _compiled()
    ours, theirs = np.random.default_rng(20261208), np.random.default_rng(20261208)
    first, second = np.empty((200_000, 10)), np.empty((200_000, 10))
    fill(ours, first, second)
    np.testing.assert_array_equal(first, theirs.standard_normal((200_000, 10)))
    np.testing.assert_array_equal(second, theirs.standard_normal((200_000, 10)))
    assert np.abs(np.concatenate([first, second])).max() > 3.66  # the tail was drawn
    assert ours.bit_generator.state == theirs.bit_generator.state


@pytest.mark.parametrize("n, noise, count, cov", [(5000, 0.01, 3, None), (5000, 0.0, 2, None),
                                                 (70_000, 0.5, 2, None), (300, 0.1, 3, None),
                                                 (2000, 0.1, 2, "spiked:5"), (2000, 0.0, 1, "matrix")])
def test_raw_statistics_are_the_same_whoever_draws(monkeypatch, n, noise, count, cov):
    """Compiled draws (every call) against numpy's (none): the same statistics, bit for bit, chunked n
    (70,000 > one chunk of rows), noise 0 and input covariances included, and the streams left alike."""
    W_star = np.random.default_rng(1).standard_normal((count, 3, 4))
    G = np.random.default_rng(2).standard_normal((4, 4))
    law = make_law(4, input_cov=G @ G.T if cov == "matrix" else cov)

    def statistics(minimum):
        monkeypatch.setattr(tasks_module, "COMPILED_DRAWS_MIN", minimum)
        monkeypatch.setattr(tasks_module, "COMPILED_DRAWS_IMPORT", 0)
        rngs = [np.random.default_rng(40 + i) for i in range(count)]
        out = tasks_module.raw_statistics_many(W_star, n, noise, rngs, law)
        return out, [rng.standard_normal() for rng in rngs]

    (compiled, after_compiled), (numpy_drawn, after_numpy) = statistics(0), statistics(10**18)
    for ours, theirs in zip(compiled, numpy_drawn):
        np.testing.assert_array_equal(ours, theirs)
    assert after_compiled == after_numpy


def test_raw_problem_is_the_same_whoever_draws(monkeypatch):
    """The paper's raw problem through make_problem: compiled draws (the default at n = 5000) against numpy's."""
    def problem(minimum):
        monkeypatch.setattr(tasks_module, "COMPILED_DRAWS_MIN", minimum)
        return fl.make_problem(d=10, k=1, T=3, n=5000, noise=0.01, seed=3)

    ours, theirs = problem(tasks_module.COMPILED_DRAWS_MIN), problem(10**18)
    for a, b in zip(ours.tasks, theirs.tasks):
        np.testing.assert_array_equal(a.Sigma, b.Sigma)
        np.testing.assert_array_equal(a.C, b.C)
        assert a.s == b.s


def test_compiled_draws_are_used_where_they_pay(monkeypatch):
    """Only Gaussian draws, only calls of at least COMPILED_DRAWS_MIN normals, and in a process
    without Numba loaded only where the draws outweigh importing it."""
    calls = []
    real = tasks_module._compiled_normals

    def counting(per_call, total):
        fill = real(per_call, total)
        calls.append(fill is not None)
        return fill

    monkeypatch.setattr(tasks_module, "_compiled_normals", counting)
    rngs = [np.random.default_rng(0)]
    W_star = np.ones((1, 2, 2))
    tasks_module.raw_statistics_many(W_star, 3000, 0.1, rngs, STANDARD_LAW)  # 12,000 normals a call
    tasks_module.raw_statistics_many(W_star, 1000, 0.1, rngs, STANDARD_LAW)  # 4,000 < COMPILED_DRAWS_MIN
    assert calls == [True, False]
    heavy_tails = make_law(2, input_law="student-t")
    tasks_module.raw_statistics_many(W_star, 3000, 0.1, rngs, heavy_tails)
    assert calls == [True, False]  # not asked: numpy draws every other law
    monkeypatch.delitem(sys.modules, "numba")
    assert real(10**6, 10**6) is None  # importing Numba (~0.35 s) would cost more than it saves
    assert real(10**6, tasks_module.COMPILED_DRAWS_IMPORT) is not None
