"""Keyed streams drawn in compiled code (fastlora.seeding.keyed_streams, kernels/streams_numba.py) are
numpy's ``default_rng(SeedSequence(entropy, spawn_key=key)).standard_normal``, number for number; the
raw sampler's statistics and drawn problems do not depend on which of the two draws them."""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import fastlora as fl
import fastlora.seeding as seeding
import fastlora.tasks as tasks_module
from fastlora.laws import make_law
from fastlora.seeding import KeyedSeed, as_generator, keyed_streams


def _streams(sources, draws=0):
    streams = keyed_streams(sources, draws)
    assert streams is not None, ("the compiled draws did not load (Numba missing, NUMBA_DISABLE_JIT set, or a Numba "
                                 "without numba.np.random._constants): a warning said why")
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


@pytest.mark.parametrize("sampler, n, d_out", [("raw", 5000, None), ("raw", None, None), ("raw", 40, None),
                                               ("stats", 5000, None), ("stats", 10, None), ("raw", 3000, 7),
                                               ("stats", 300, 7), ("raw", None, 7)])
def test_problems_are_the_same_whoever_draws(monkeypatch, sampler, n, d_out):
    """The paper's problem through make_problem (raw and exact finite samples, population; symmetric, and
    d_out != d with its own C*) and fine-tuning samples of its test tasks: compiled draws against numpy's
    (no compiled filler) — the targets' factors, A*, the statistics, and what a retraining on the test
    tasks finds (a symmetric target's B is its C: LowRankTarget.symmetric)."""
    def problem():
        prob = fl.make_problem(d=10, d_out=d_out, k=2, T=3, n=n, noise=0.01, seed=3, sampler=sampler,
                               symmetric=d_out is None)
        return prob, [task.sample(100, seed=7) for task in prob.test_tasks]

    ours, our_samples = problem()
    monkeypatch.setattr(seeding, "_keyed", None)
    theirs, their_samples = problem()
    for a, b in zip(ours.tasks + our_samples, theirs.tasks + their_samples):
        for name in ("Sigma", "C", "s"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(ours.A_star, theirs.A_star)
    for a, b in zip(ours.tasks + ours.test_tasks, theirs.tasks + theirs.test_tasks):
        np.testing.assert_array_equal(a.target.B, b.target.B)
        np.testing.assert_array_equal(a.target.C, b.target.C)
        assert a.target.symmetric == b.target.symmetric == (d_out is None)
    if n is None:  # population test tasks, retrained on: the same whoever drew them
        args = dict(rank=2, max_iter=20, backend="numpy", peft="lora_sym" if d_out is None else "lora")
        np.testing.assert_array_equal(fl.retrain(ours.test_tasks, **args).A, fl.retrain(theirs.test_tasks, **args).A)


def test_keyed_streams_only_where_they_can_run(monkeypatch):
    """None (numpy's Generators draw) for a Generator or numpy SeedSequence, for entropy words of unequal
    lengths, and in a process without Numba loaded unless the draws outweigh importing it."""
    assert keyed_streams([KeyedSeed(1, (2,)), np.random.default_rng(0)], 0) is None
    assert keyed_streams([np.random.SeedSequence(1)], 0) is None
    assert keyed_streams([KeyedSeed(1, (2,)), KeyedSeed(1, (2, 3))], 0) is None
    assert keyed_streams([KeyedSeed(2**40, (2,))], 0) is None  # an entropy beyond 32 bits: two words
    assert keyed_streams([KeyedSeed(-1, (2,))], 0) is None  # numpy refuses it (as_generator then says why)
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


def test_a_law_subclass_draws_its_own_way(monkeypatch):
    """A DataLaw subclass may draw otherwise than its fields say: its own inputs, never the compiled normals."""
    class Shifted(type(make_law(3))):
        def inputs(self, rng, m, d, out=None):
            return rng.standard_normal((m, d)) + 1.0

    law, W_star = Shifted(), np.ones((1, 2, 3))
    ours = tasks_module.raw_statistics_many(W_star, 5000, 0.1, [KeyedSeed(3, (1,))], law)
    reference = as_generator(KeyedSeed(3, (1,)))
    X = reference.standard_normal((5000, 3)) + 1.0
    np.testing.assert_allclose(ours[0][0], X.T @ X / 5000, rtol=1e-12)


def test_fill_refuses_stacks_it_cannot_fill():
    streams = _streams([KeyedSeed(1, (t,)) for t in range(3)])
    for bad in (np.zeros((1, 2, 2)), np.zeros((3, 2, 2), np.float32), np.zeros((3, 4, 2))[:, ::2], np.zeros((3, 4))):
        with pytest.raises(ValueError, match="C-contiguous float64 stack of shape \\(3, a, b\\)"):
            streams.fill(bad)
    with pytest.raises(ValueError, match="second"):
        streams.fill(np.zeros((3, 1, 1)), np.zeros((2, 1, 1)))
    read_only = np.zeros((3, 2, 2))
    read_only.setflags(write=False)
    for bad in (read_only, None):
        with pytest.raises(ValueError, match="first must be a writeable"):
            streams.fill(bad)
    # chi-square degrees of freedom as a strided or read-only view: copied for the one compiled signature
    dfs = np.array([5.0, 0.0, 6.0, 0.0])[::2]
    dfs_read_only = dfs.copy()
    dfs_read_only.setflags(write=False)
    head, _ = streams.fill(np.zeros((3, 0, 0)), head_dfs=dfs)
    again, _ = _streams([KeyedSeed(1, (t,)) for t in range(3)]).fill(np.zeros((3, 0, 0)), head_dfs=dfs_read_only)
    np.testing.assert_array_equal(head[0], as_generator(KeyedSeed(1, (0,))).chisquare([5.0, 6.0]))
    np.testing.assert_array_equal(again, head)


def test_the_compiled_filler_takes_one_signature():
    """Other dtypes are the caller's error, not a silent second compile (fill's checks come first)."""
    kernel = seeding._keyed_kernel()
    with pytest.raises(TypeError, match="No matching definition"):
        kernel(np.zeros((1, 1), np.int64), np.zeros((1, 4), np.uint64), True, np.zeros(0), np.zeros((1, 0)),
               np.zeros((1, 1, 1), np.float32), np.zeros((1, 0, 0)), np.zeros(0), np.zeros((1, 0)))


def test_draws_fall_back_to_numpy_with_a_warning_where_the_kernel_fails(monkeypatch):
    """A Numba whose extension API changed (compiling fails): a warning once, then numpy's Generators draw."""
    from fastlora.kernels import streams_numba

    def broken(*args, **kwargs):
        raise RuntimeError("planted")
    monkeypatch.setattr(streams_numba, "compiled_fill_keyed", broken)
    monkeypatch.setattr(seeding, "_keyed", seeding._UNSET)
    with pytest.warns(RuntimeWarning, match="compiled random draws are unavailable .*planted.*numpy draws the same"):
        assert keyed_streams([KeyedSeed(1, (2,))], 0) is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prob = fl.make_problem(d=10, k=1, T=3, n=5000, noise=0.01, seed=3)  # drawn by numpy
    assert not caught  # the failure is remembered: one warning a process
    monkeypatch.setattr(seeding, "_keyed", seeding._UNSET)
    monkeypatch.undo()
    again = fl.make_problem(d=10, k=1, T=3, n=5000, noise=0.01, seed=3)  # drawn compiled
    np.testing.assert_array_equal(prob.tasks[0].C, again.tasks[0].C)
