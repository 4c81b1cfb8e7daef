"""The state words of ``numpy.random.SeedSequence(entropy, spawn_key=key)``, hashed by compiled code.

numpy's SeedSequence object costs ~12 µs to build and a PCG64 seeded from it ~10 µs more; a
sweep row draws from a dozen of them (fastlora.seeding).  :func:`sequence_state` is numpy's own
algorithm (numpy/random/bit_generator.pyx: O'Neill's seed_seq variant, a pool of four 32-bit
words): the same words, so the same streams, for ~0.3 µs compiled.  It is written once, over
64-bit integers with every 32-bit product masked, so that it runs unchanged uncompiled (numpy
int64 scalars wrap like Numba's integers and the masks keep the low 32 bits either way);
tests/test_seeding.py checks both forms word for word against numpy's SeedSequence.
"""
from __future__ import annotations

import numpy as np

import fastlora.kernels as contract

POOL_SIZE = 4
MASK32 = 0xFFFFFFFF
INIT_A, MULT_A = 0x43B0D7E5, 0x931E8875  # hashing entropy into the pool
INIT_B, MULT_B = 0x8B51F9DD, 0x58F38DED  # hashing the pool into output words
MIX_MULT_L, MIX_MULT_R = 0xCA01F9DD, 0x4973F715


def sequence_state(words, out):
    """``out[:] = SeedSequence.generate_state(len(out))`` (uint32 values, in int64) for the assembled
    entropy ``words`` (int64 array of 32-bit words: the entropy's words, zero-padded to the pool
    size when there is a spawn key, then the spawn key's words)."""
    pool = np.zeros(POOL_SIZE, np.int64)
    hash_const = INIT_A
    for i in range(POOL_SIZE):  # hash the first words into the pool
        value = words[i] if i < words.shape[0] else 0
        value = (value ^ hash_const) & MASK32
        hash_const = (hash_const * MULT_A) & MASK32
        value = (value * hash_const) & MASK32
        pool[i] = value ^ (value >> 16)
    # mix every pool word into every other, then each remaining word into every pool word
    for i_src in range(max(POOL_SIZE, words.shape[0])):
        for i_dst in range(POOL_SIZE):
            if i_src == i_dst:
                continue
            value = pool[i_src] if i_src < POOL_SIZE else words[i_src]
            value = (value ^ hash_const) & MASK32
            hash_const = (hash_const * MULT_A) & MASK32
            value = (value * hash_const) & MASK32
            value ^= value >> 16
            mixed = (MIX_MULT_L * pool[i_dst] - MIX_MULT_R * value) & MASK32
            pool[i_dst] = mixed ^ (mixed >> 16)
    hash_const = INIT_B
    for i in range(out.shape[0]):  # cycle over the pool
        value = (pool[i % POOL_SIZE] ^ hash_const) & MASK32
        hash_const = (hash_const * MULT_B) & MASK32
        value = (value * hash_const) & MASK32
        out[i] = value ^ (value >> 16)


def entropy_words(entropy: int, spawn_key: tuple) -> np.ndarray:
    """The assembled entropy of ``SeedSequence(entropy, spawn_key=spawn_key)`` (non-negative ints): each
    int as its little-endian 32-bit words (0 as one word), the entropy's padded with zeros to the pool
    size where a spawn key follows."""
    if 0 <= entropy <= MASK32 and (not spawn_key or (0 <= min(spawn_key) and max(spawn_key) <= MASK32)):  # usual
        return np.array(short_entropy_words(entropy, spawn_key), np.int64)
    words = _int_words(entropy)
    if spawn_key:
        words += [0] * (POOL_SIZE - len(words))
        for part in spawn_key:
            words += _int_words(part)
    return np.array(words, np.int64)


def short_entropy_words(entropy: int, spawn_key: tuple) -> tuple:
    """:func:`entropy_words` where the entropy and every key entry fit in 32 bits (the caller checks), as a
    tuple: one word each, the entropy's padded to the pool size where a spawn key follows."""
    return (entropy, 0, 0, 0, *spawn_key) if spawn_key else (entropy,)


def _int_words(value: int) -> list[int]:
    if value < 0:
        raise ValueError(f"a SeedSequence's entropy and spawn key are non-negative integers, got {value}")
    words = [value & MASK32]
    value >>= 32
    while value:
        words.append(value & MASK32)
        value >>= 32
    return words


@contract.PerCacheRoot
def compiled_sequence_state(cache_root: str):
    """:func:`sequence_state` compiled (or loaded from the on-disk cache under ``cache_root``), once per
    process; None where Numba cannot compile it (not installed, or ``NUMBA_DISABLE_JIT``): then numpy's
    own SeedSequence is the faster way to the same words."""
    return _compile(cache_root)


def _compile(cache_root: str):
    try:
        import numba
        from numba import types
    except ImportError:
        return None
    if numba.config.DISABLE_JIT:
        return None
    dispatcher = contract.njit_cached(sequence_state, str(contract.source_folder(cache_root, "seeds", (__file__,))))
    vector = types.Array(types.int64, 1, "C")
    dispatcher.compile((vector, vector))
    return dispatcher
