"""Keyed streams drawn in compiled code (fastlora.seeding.keyed_streams, kernels/streams_numba.py) are
numpy's ``default_rng(SeedSequence(entropy, spawn_key=key)).standard_normal``, number for number; the
raw sampler's statistics and drawn problems do not depend on which of the two draws them."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import fastlora as fl
import fastlora.seeding as seeding
import fastlora.tasks as tasks_module
from fastlora.laws import make_law
from fastlora.seeding import KeyedSeed, as_generator, keyed_streams


def _streams(sources, draws=0):
    streams = keyed_streams(sources, draws)
    assert streams is not None, "Numba is installed and the JIT enabled in the test environment"
    return streams


def _cases(count):
    rng = np.random.default_rng(20261208)
    edges = [(0, ()), (2**32 - 1, (2**32 - 1,)), (5, (0, 0, 0, 0, 0, 0))]
    return edges + [(int(rng.integers(0, 2**32)), tuple(int(v) for v in rng.integers(0, 40, size=int(k))))
                    for k in rng.integers(0, 6, size=count)]


@pytest.mark.parametrize("first, second", [((7, 5), (3, 2)), ((1, 1), None), ((2, 3), (0, 4)), ((0, 3), (2, 2))])
def test_keyed_streams_draw_numpys_numbers(first, second):
    """Each source alone (its key's length decides its words), twice in a row (the stream goes on)."""
    for entropy, key in _cases(60):
        source = KeyedSeed(entropy, key)
        streams = _streams([source])
        a, b = np.full((1, *first), np.nan), None if second is None else np.full((1, *second), np.nan)
        streams.fill(a, b)
        again = np.full((1, 4, 2), np.nan)
        streams.fill(again)
        reference = as_generator(source)
        np.testing.assert_array_equal(a[0], reference.standard_normal(first), err_msg=f"{entropy}, {key}")
        if second is not None:
            np.testing.assert_array_equal(b[0], reference.standard_normal(second))
        np.testing.assert_array_equal(again[0], reference.standard_normal((4, 2)))


def test_keyed_streams_of_a_stack_are_each_tasks_own():
    sources = [KeyedSeed(12, (1, t, 1, 9)) for t in range(6)] + [KeyedSeed(12, (1, 0, 1, 9))]  # one stream twice
    X, E = np.empty((7, 50, 4)), np.empty((7, 50, 3))
    _streams(sources).fill(X, E)
    for i, source in enumerate(sources):
        reference = as_generator(source)
        np.testing.assert_array_equal(X[i], reference.standard_normal((50, 4)))
        np.testing.assert_array_equal(E[i], reference.standard_normal((50, 3)))


def test_keyed_draws_match_numpy_in_the_tails():
    """Enough draws (4 million) that the ziggurat's rare paths run: beyond 3.65 (its tail) and the wedges."""
    source = KeyedSeed(20261208, (3,))
    X = np.empty((1, 400_000, 10))
    _streams([source]).fill(X)
    np.testing.assert_array_equal(X[0], as_generator(source).standard_normal((400_000, 10)))
    assert np.abs(X).max() > 3.66  # the tail was drawn


@pytest.mark.parametrize("n, noise, count, cov", [(5000, 0.01, 3, None), (5000, 0.0, 2, None),
                                                 (70_000, 0.5, 2, None), (300, 0.1, 3, None),
                                                 (2000, 0.1, 2, "spiked:5"), (2000, 0.0, 1, "matrix")])
def test_raw_statistics_are_the_same_whoever_draws(monkeypatch, n, noise, count, cov):
    """KeyedSeeds (compiled draws) against their Generators (numpy's): the same statistics, bit for bit,
    chunked n (70,000 > one chunk of rows), noise 0 and input covariances included."""
    W_star = np.random.default_rng(1).standard_normal((count, 3, 4))
    G = np.random.default_rng(2).standard_normal((4, 4))
    law = make_law(4, input_cov=G @ G.T if cov == "matrix" else cov)
    sources = [KeyedSeed(40 + i, (2, i, 1)) for i in range(count)]
    compiled = []
    monkeypatch.setattr(tasks_module, "keyed_streams", lambda *a: compiled.append(keyed_streams(*a)) or compiled[-1])
    ours = tasks_module.raw_statistics_many(W_star, n, noise, sources, law)
    theirs = tasks_module.raw_statistics_many(W_star, n, noise, [as_generator(s) for s in sources], law)
    assert compiled[0] is not None and compiled[1] is None  # the first drew in compiled code, the second not
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sampler, n", [("raw", 5000), ("raw", None), ("raw", 40), ("stats", 5000), ("stats", 10)])
def test_problems_are_the_same_whoever_draws(monkeypatch, sampler, n):
    """The paper's problem through make_problem (raw and exact finite samples, population) and fine-tuning
    samples of its test tasks: compiled draws against numpy's (no compiled filler)."""
    def problem():
        prob = fl.make_problem(d=10, k=1, T=3, n=n, noise=0.01, seed=3, sampler=sampler)
        return prob, [task.sample(100, seed=7) for task in prob.test_tasks]

    ours, our_samples = problem()
    monkeypatch.setattr(seeding, "_keyed", None)
    theirs, their_samples = problem()
    for a, b in zip(ours.tasks + our_samples, theirs.tasks + their_samples):
        for name in ("Sigma", "C", "s"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(ours.A_star, theirs.A_star)
    for a, b in zip(ours.test_tasks, theirs.test_tasks):
        np.testing.assert_array_equal(a.W_star, b.W_star)


def test_keyed_streams_only_where_they_can_run(monkeypatch):
    """None (numpy's Generators draw) for a Generator or numpy SeedSequence, for entropy words of unequal
    lengths, and in a process without Numba loaded unless the draws outweigh importing it."""
    assert keyed_streams([KeyedSeed(1, (2,)), np.random.default_rng(0)], 0) is None
    assert keyed_streams([np.random.SeedSequence(1)], 0) is None
    assert keyed_streams([KeyedSeed(1, (2,)), KeyedSeed(1, (2, 3))], 0) is None
    assert keyed_streams([KeyedSeed(2**40, (2,))], 0) is None  # more entropy words than the others would have
    assert keyed_streams([KeyedSeed(1, (2,)), KeyedSeed(9, (4,))], 0) is not None
    monkeypatch.delitem(sys.modules, "numba")
    assert keyed_streams([KeyedSeed(1, (2,))], 10**6) is None  # importing Numba (~0.35 s) would cost more
    assert keyed_streams([KeyedSeed(1, (2,))], seeding.KEYED_DRAWS_IMPORT) is not None


def test_keyed_chisquares_are_numpys():
    """Every branch of numpy's standard gamma: shape < 1 (df 1, 0.3), the exponential at shape 1 (df 2), and
    Marsaglia and Tsang's method above (df 3 to 1e9) — in many streams, before and after normals."""
    head_dfs = np.array([1.0, 2.0, 0.3, 3.0, 7.5, 2.0, 1.0, 50.0, 1e4, 1e9])
    tail_dfs = np.array([2.0, 1.0, 4000.0])
    sources = [KeyedSeed(77, (4, t, 1, 9)) for t in range(300)]
    first = np.empty((300, 3, 2))
    head, tail = _streams(sources).fill(first, None, head_dfs=head_dfs, tail_dfs=tail_dfs)
    for i, source in enumerate(sources):
        reference = as_generator(source)
        np.testing.assert_array_equal(head[i], reference.chisquare(head_dfs))
        np.testing.assert_array_equal(first[i], reference.standard_normal((3, 2)))
        np.testing.assert_array_equal(tail[i], reference.chisquare(tail_dfs))


@pytest.mark.parametrize("n, noise, d_out", [(5000, 0.01, 4), (4, 0.1, 4), (5, 0.1, 3), (4, 0.0, 4), (70_000, 0.5, 6)])
def test_exact_statistics_are_the_same_whoever_draws(monkeypatch, n, noise, d_out):
    """sampler="stats" from KeyedSeeds (compiled) against their Generators (numpy's), bit for bit: n = d_in and
    d_in + 1 (chi-squares of 1 and 2 degrees of freedom), noise 0 (no noise draws, no residual), dense and
    factored targets."""
    rng = np.random.default_rng(3)
    targets = [rng.standard_normal((d_out, 4)) for _ in range(2)]
    targets.append(fl.make_problem(d=4, d_out=d_out, k=1, T=1, symmetric=False, seed=1).tasks[0].target)
    sources = [KeyedSeed(50 + i, (1, i, 1, 9)) for i in range(3)]
    compiled = []
    monkeypatch.setattr(tasks_module, "keyed_streams", lambda *a: compiled.append(keyed_streams(*a)) or compiled[-1])
    ours = tasks_module.exact_statistics_many(targets, n, noise, sources)
    theirs = tasks_module.exact_statistics_many(targets, n, noise, [as_generator(s) for s in sources])
    assert compiled[0] is not None and compiled[1] is None
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
