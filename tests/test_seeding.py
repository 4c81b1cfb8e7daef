"""fastlora.seeding: KeyedSeed gives numpy's SeedSequence state word for word (kernels/seeds.py,
compiled and uncompiled), so every stream — and every drawn problem — is what numpy's own
``default_rng(SeedSequence(seed, spawn_key=key))`` gives."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastlora as fl
from fastlora.config import settings
from fastlora.kernels import seeds
from fastlora.problems import ROLE_SHARED, ROLE_TEST, ROLE_TRAIN
from fastlora.seeding import KeyedSeed, as_generator, stream, task_seed

EDGES = (0, 1, 2**32 - 1, 2**32, 2**63 + 12345, 2**100 + 7)


def _cases(count: int = 300):
    rng = np.random.default_rng(20261207)
    for entropy in EDGES:
        for key in ((), (0,), (2**32,), (1, 2, 0), (2**40, 3, 2**32 - 1, 0, 5, 6, 7)):
            yield entropy, key
    for i in range(count):
        entropy = int(rng.integers(0, 2**62)) if i % 2 else int(rng.integers(0, 1000))
        key = tuple(int(v) for v in rng.integers(0, 2**36 if i % 7 == 0 else 30, size=int(rng.integers(0, 8))))
        yield entropy, key


@pytest.mark.parametrize("compiled", [False, True], ids=["uncompiled", "compiled"])
def test_sequence_state_is_numpys_seed_sequence_word_for_word(compiled):
    kernel = seeds.compiled_sequence_state(settings.compiled_code_root()) if compiled else seeds.sequence_state
    for entropy, key in _cases(300 if compiled else 60):
        expected = np.random.SeedSequence(entropy, spawn_key=key).generate_state(9)
        out = np.empty(9, np.int64)
        with warnings.catch_warnings():  # uncompiled: numpy's int64 scalars warn where they wrap (masked after)
            warnings.simplefilter("ignore", RuntimeWarning)
            kernel(seeds.entropy_words(entropy, key), out)
        np.testing.assert_array_equal(out, expected.astype(np.int64), err_msg=f"entropy={entropy}, key={key}")


def test_keyed_seed_generates_the_same_state_and_streams_as_numpy():
    for entropy, key in _cases(50):
        reference = np.random.SeedSequence(entropy, spawn_key=key)
        mine = KeyedSeed(entropy, key)
        for n_words in (1, 4, 7):
            for dtype in (np.uint32, np.uint64):
                got, expected = mine.generate_state(n_words, dtype), reference.generate_state(n_words, dtype)
                assert got.dtype == expected.dtype
                np.testing.assert_array_equal(got, expected)
        ours, theirs = stream(entropy, key), np.random.default_rng(reference)
        assert ours.bit_generator.state == theirs.bit_generator.state
        np.testing.assert_array_equal(ours.standard_normal(5), theirs.standard_normal(5))
        np.testing.assert_array_equal(ours.chisquare(np.arange(3.0, 9.0)), theirs.chisquare(np.arange(3.0, 9.0)))
    children = KeyedSeed(5, (1, 2)).spawn(3)
    for ours, theirs in zip(children, np.random.SeedSequence(5, spawn_key=(1, 2)).spawn(3)):
        np.testing.assert_array_equal(ours.generate_state(4), theirs.generate_state(4))


def test_seeds_are_checked():
    with pytest.raises(ValueError, match="non-negative"):
        KeyedSeed(-1, (2,)).generate_state(4)
    with pytest.raises(ValueError, match="non-negative"):
        KeyedSeed(3, (2**33, -4)).generate_state(4)
    with pytest.raises(ValueError, match="uint32 and uint64"):
        KeyedSeed(3).generate_state(4, np.float64)
    with pytest.raises(ValueError, match="seed"):
        as_generator(-1)
    # a Generator or a SeedSequence passes through task_seed as given; an int becomes the task's keyed seed
    rng, sequence = np.random.default_rng(1), np.random.SeedSequence(2)
    assert task_seed(rng, (1,), 9) is rng and task_seed(sequence, (1,), 9) is sequence
    keyed = task_seed(4, (7, 1, 2), 9)
    np.testing.assert_array_equal(as_generator(keyed).standard_normal(3),
                                  np.random.default_rng(np.random.SeedSequence(4, spawn_key=(7, 1, 2, 9)))
                                  .standard_normal(3))


def test_drawn_problems_are_numpys_seed_sequence_streams():
    """The draws of make_problem follow docs/design.md's seeding: a change of stream turns this red."""
    seed, d, k = 11, 6, 2
    prob = fl.make_problem(d=d, k=k, T=2, n=50, noise=0.1, seed=seed, sampler="stats")
    G = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ROLE_SHARED,))).standard_normal((d, d))
    np.testing.assert_array_equal(prob.A_star, 0.5 * (G + G.T))
    B = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ROLE_TRAIN, 1, 0))).standard_normal((d, k))
    np.testing.assert_array_equal(prob.tasks[1].target.B, B)
    B_test = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ROLE_TEST, 0, 0))).standard_normal((d, k))
    np.testing.assert_array_equal(prob.test_tasks[0].target.B, B_test)
    # a task's data: its own stream, drawn the same whether at once (training) or when first read (held out)
    held_out = prob.test_tasks[2]
    fresh = fl.Task.population(held_out.target, sampler="stats")
    fresh.key, fresh.law = held_out.key, held_out.law
    expected = fresh.sample(50, seed=np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(ROLE_TEST, 2, 1))),
                            noise=0.1)
    np.testing.assert_array_equal(held_out.Sigma, expected.Sigma)
    np.testing.assert_array_equal(held_out.C, expected.C)


def test_a_process_without_numba_hashes_its_first_streams_with_numpy(monkeypatch):
    """Until NUMPY_STREAMS streams (or Numba is imported anyway), numpy's SeedSequence serves — the same
    words — so a one-off make_problem does not import Numba (~0.35 s); then the compiled hash takes over."""
    import types

    from fastlora import seeding
    monkeypatch.setattr(seeding, "_kernel", seeding._UNSET)
    monkeypatch.setattr(seeding, "_numpy_streams", 0)
    monkeypatch.setattr(seeding, "sys", types.SimpleNamespace(modules={}))  # as if Numba were not imported
    expected = [np.random.SeedSequence(7, spawn_key=(i, 2)).generate_state(4, np.uint64)
                for i in range(seeding.NUMPY_STREAMS + 3)]
    for i, words in enumerate(expected):
        np.testing.assert_array_equal(KeyedSeed(7, (i, 2)).generate_state(4, np.uint64), words)
        assert (seeding._kernel is seeding._UNSET) == (i < seeding.NUMPY_STREAMS)


def test_evaluate_takes_int_seeds_only():
    """Test task j of a result fine-tunes from seed + j: a Generator, SeedSequence, bool or array seed is
    refused by name (it raised a TypeError from inside, or was taken as 1)."""
    prob = fl.make_problem(d=6, k=1, T=3, seed=0)
    res = fl.retrain(prob, method="lora-ml", backend="numpy")
    for bad in (np.random.default_rng(0), np.random.SeedSequence(1), None, "7", True, np.array(3)):
        with pytest.raises(fl.FastLoRAError, match=r"^seed must be an integer.*int seed"):
            fl.evaluate(res, prob, n_ft=50, seed=bad)
    with pytest.raises(fl.FastLoRAError, match=r"^seeds\[1\]=-2 is too small"):
        fl.evaluate_many([res, res], [prob, prob], n_ft=50, seeds=[1, -2])
    assert fl.evaluate(res, prob, n_ft=50, seed=np.int64(3)) == fl.evaluate(res, prob, n_ft=50, seed=3)


def test_keyed_seed_spawns_like_numpy_and_takes_ints_only():
    mine, theirs = KeyedSeed(5, (1, 2)), np.random.SeedSequence(5, spawn_key=(1, 2))
    for _ in range(2):  # children follow on from earlier calls
        for a, b in zip(mine.spawn(2), theirs.spawn(2)):
            assert a.spawn_key == b.spawn_key
            np.testing.assert_array_equal(a.generate_state(4), b.generate_state(4))
    for bad in ((1.7, ()), (3, (1.9,)), ("3", ())):
        with pytest.raises(TypeError):
            KeyedSeed(*bad)
    assert KeyedSeed(np.int64(3), (np.uint8(1),)).spawn_key == (1,)


def test_streams_without_a_jit(tmp_path):
    """Under NUMBA_DISABLE_JIT (Numba's debugging switch) every stream comes from numpy's SeedSequence, numpy
    draws every normal (here compiled keyed streams do: fastlora.kernels.streams_numba), and the fits and the
    numba backend's engine run as Python: the same problem, statistics and solves (each raised AttributeError)."""
    import json
    import os
    import subprocess
    import sys
    code = ("import json, fastlora as fl\n"
            "p = fl.make_problem(d=4, k=1, T=3, n=50, noise=0.1, seed=1, sampler='stats')\n"
            "r = fl.retrain(p, method='lora-ml', backend='numpy')\n"
            "c = fl.retrain(p, method='lora-ml', backend='numba')\n"  # the engine's source, run as Python
            "raw = fl.make_problem(d=4, k=1, T=2, n=1100, noise=0.1, seed=2)\n"  # numpy there, compiled here
            "print(json.dumps([p.A_star.tolist(), p.tasks[2].C.tolist(), p.test_tasks[0].sample(20, seed=4).s,"
            " r.objective, c.objective, c.n_iter, raw.tasks[1].C.tolist()]))\n")
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    A_star, C, s, objective, compiled_objective, compiled_iterations, raw_C = json.loads(
        done.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.array(raw_C), fl.make_problem(d=4, k=1, T=2, n=1100, noise=0.1, seed=2).tasks[1].C)
    p = fl.make_problem(d=4, k=1, T=3, n=50, noise=0.1, seed=1, sampler="stats")
    np.testing.assert_array_equal(np.array(A_star), p.A_star)
    np.testing.assert_array_equal(np.array(C), p.tasks[2].C)
    assert s == p.test_tasks[0].sample(20, seed=4).s
    assert objective == pytest.approx(fl.retrain(p, method="lora-ml", backend="numpy").objective, abs=1e-12)
    compiled = fl.retrain(p, method="lora-ml", backend="numba")
    assert compiled_objective == pytest.approx(compiled.objective, rel=1e-10)
    assert abs(compiled_iterations - compiled.n_iter) <= 2
