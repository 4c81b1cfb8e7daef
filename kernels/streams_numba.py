"""numpy's keyed streams in compiled code: ``Generator(PCG64(SeedSequence(entropy, spawn_key=key)))``
and its ``standard_normal``, number for number, without a Python object per stream.

A sweep row draws from about fifteen streams (docs/design.md §7, "A sweep row"), most of them a
few hundred normals (a task's factors, a fine-tuning sample); building each Generator costs ~5 µs,
more than its draws.  Here a stream is its SeedSequence's entropy words:
:func:`fastlora.kernels.seeds.sequence_state` hashes them into PCG64's seed (numpy/random/_pcg64.pyx:
four 64-bit words, state then increment), PCG64 steps in 128-bit integer arithmetic (LLVM's i128;
pcg64.h: XSL-RR output), and the draws are numpy's (numpy/random/src/distributions/distributions.c: the normal
and exponential ziggurats, with the tables Numba's port of it carries, and the chi-squares of the
Bartlett factors that ``sampler="stats"`` draws) — ~2.6 ns a
normal against numpy's ~13 on this project's 2-core EPYC.  Imported by fastlora.seeding where Numba
is; numpy's Generator is the twin every other path (and ``NUMBA_DISABLE_JIT``) uses, and
tests/test_draws.py checks the two number for number, tails included.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, register_jitable
from numba.np.random._constants import (
    fe_double,
    fi_double,
    ke_double,
    ki_double,
    we_double,
    wi_double,
    ziggurat_exp_r,
    ziggurat_nor_inv_r,
    ziggurat_nor_r,
)

import fastlora.kernels as contract

from . import seeds

PCG64_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645  # pcg64.h PCG_DEFAULT_MULTIPLIER_128
_MASK64 = (1 << 64) - 1

register_jitable(seeds.sequence_state)  # callable from the compiled loop below


@intrinsic
def _multiply_add_128(typingctx, a_hi, a_lo, b_hi, b_lo, c_hi, c_lo):
    """(a·b + c) mod 2¹²⁸ of 128-bit integers given as (high, low) uint64 words."""
    u64 = types.uint64
    signature = types.UniTuple(u64, 2)(u64, u64, u64, u64, u64, u64)

    def codegen(context, builder, sig, args):
        wide = ir.IntType(128)
        shift = ir.Constant(wide, 64)

        def join(hi, lo):
            return builder.or_(builder.shl(builder.zext(hi, wide), shift), builder.zext(lo, wide))

        value = builder.add(builder.mul(join(*args[0:2]), join(*args[2:4])), join(*args[4:6]))
        low = builder.trunc(value, ir.IntType(64))
        high = builder.trunc(builder.lshr(value, shift), ir.IntType(64))
        return context.make_tuple(builder, sig.return_type, (high, low))
    return signature, codegen


_MULT_HI, _MULT_LO = np.uint64(PCG64_MULTIPLIER >> 64), np.uint64(PCG64_MULTIPLIER & _MASK64)
_0, _1, _11, _32, _58, _63, _64 = (np.uint64(v) for v in (0, 1, 11, 32, 58, 63, 64))
_TO_UNIT = 1.0 / 9007199254740992.0  # 2⁻⁵³: next_double's 53 bits to [0, 1)


@register_jitable(inline="always")
def _next(hi, lo, inc_hi, inc_lo):
    """PCG64's step (state·M + increment mod 2¹²⁸) and its XSL-RR output: (state hi, lo, output)."""
    hi, lo = _multiply_add_128(hi, lo, _MULT_HI, _MULT_LO, inc_hi, inc_lo)
    mixed = hi ^ lo
    rotation = hi >> _58
    return hi, lo, (mixed >> rotation) | (mixed << ((_64 - rotation) & _63))


@register_jitable
def _word64(words, j):
    """The j-th little-endian uint64 of uint32 values ``words`` (in int64)."""
    return np.uint64(words[2 * j]) | (np.uint64(words[2 * j + 1]) << _32)


@register_jitable
def _seed(words):
    """numpy's PCG64(seed sequence) from the sequence's 8 state words (uint32 values in int64), read as four
    little-endian uint64 (seed hi, lo, sequence hi, lo): pcg_setseq_128_srandom_r -> (hi, lo, inc hi, lo)."""
    sequence_hi, sequence_lo = _word64(words, 2), _word64(words, 3)
    inc_hi = (sequence_hi << _1) | (sequence_lo >> _63)  # increment = sequence·2 + 1
    inc_lo = (sequence_lo << _1) | _1
    hi, lo, _ = _next(_0, _0, inc_hi, inc_lo)
    hi, lo = _multiply_add_128(hi, lo, _0, _1, _word64(words, 0), _word64(words, 1))  # state += seed
    hi, lo, _ = _next(hi, lo, inc_hi, inc_lo)
    return hi, lo, inc_hi, inc_lo


@register_jitable
def _next_double(hi, lo, inc_hi, inc_lo):
    """next_double: the top 53 bits of the next output in [0, 1), and the stream's new (hi, lo)."""
    hi, lo, r = _next(hi, lo, inc_hi, inc_lo)
    return np.float64(r >> _11) * _TO_UNIT, hi, lo


@register_jitable
def _fill(out, hi, lo, inc_hi, inc_lo):
    """``out`` (1-D) filled with standard normals — numpy's ziggurat (distributions.c
    random_standard_normal), a rejected wedge draw drawing again — and the stream's new (hi, lo)."""
    j = 0
    while j < out.shape[0]:
        hi, lo, r = _next(hi, lo, inc_hi, inc_lo)
        idx = r & 0xff
        r >>= 8
        sign = r & 0x1
        rabs = (r >> 1) & 0x000fffffffffffff
        x = rabs * wi_double[idx]
        if sign & 0x1:
            x = -x
        if rabs >= ki_double[idx]:  # 0.7% of draws
            if idx == 0:  # the tail beyond ziggurat_nor_r
                while True:
                    u, hi, lo = _next_double(hi, lo, inc_hi, inc_lo)
                    xx = -ziggurat_nor_inv_r * np.log1p(-u)
                    u, hi, lo = _next_double(hi, lo, inc_hi, inc_lo)
                    yy = -np.log1p(-u)
                    if yy + yy > xx * xx:
                        x = -(ziggurat_nor_r + xx) if (rabs >> 8) & 0x1 else ziggurat_nor_r + xx
                        break
            else:
                u, hi, lo = _next_double(hi, lo, inc_hi, inc_lo)
                if (fi_double[idx - 1] - fi_double[idx]) * u + fi_double[idx] >= np.exp(-0.5 * x * x):
                    continue
        out[j] = x
        j += 1
    return hi, lo


@register_jitable
def _standard_exponential(hi, lo, inc_hi, inc_lo):
    """numpy's random_standard_exponential (its exponential ziggurat), and the stream's new (hi, lo)."""
    while True:
        hi, lo, r = _next(hi, lo, inc_hi, inc_lo)
        r >>= 3
        idx = r & 0xff
        r >>= 8
        x = r * we_double[idx]
        if r < ke_double[idx]:
            return x, hi, lo
        if idx == 0:
            u, hi, lo = _next_double(hi, lo, inc_hi, inc_lo)
            return ziggurat_exp_r - np.log1p(-u), hi, lo
        u, hi, lo = _next_double(hi, lo, inc_hi, inc_lo)
        if (fe_double[idx - 1] - fe_double[idx]) * u + fe_double[idx] < np.exp(-x):
            return x, hi, lo


@register_jitable
def _chisquare(df, normal, hi, lo, inc_hi, inc_lo):
    """numpy's random_chisquare, 2·random_standard_gamma(df / 2) (Marsaglia and Tsang's method from shape 1
    up, the exponential at shape 1, Johnk's below), and the stream's new (hi, lo); ``normal``: a scratch
    array of one entry."""
    shape = df / 2.0
    if shape == 1.0:
        x, hi, lo = _standard_exponential(hi, lo, inc_hi, inc_lo)
        return 2.0 * x, hi, lo
    if shape == 0.0:
        return 0.0, hi, lo
    if shape < 1.0:
        while True:
            U, hi, lo = _next_double(hi, lo, inc_hi, inc_lo)
            V, hi, lo = _standard_exponential(hi, lo, inc_hi, inc_lo)
            if U <= 1.0 - shape:
                X = U ** (1.0 / shape)
                if X <= V:
                    return 2.0 * X, hi, lo
            else:
                Y = -np.log((1 - U) / shape)
                X = (1.0 - shape + shape * Y) ** (1.0 / shape)
                if X <= V + Y:
                    return 2.0 * X, hi, lo
    b = shape - 1.0 / 3.0
    c = 1.0 / np.sqrt(9 * b)
    while True:
        while True:
            hi, lo = _fill(normal, hi, lo, inc_hi, inc_lo)
            X = normal[0]
            V = 1.0 + c * X
            if V > 0.0:
                break
        V = V * V * V
        U, hi, lo = _next_double(hi, lo, inc_hi, inc_lo)
        if U < 1.0 - 0.0331 * (X * X) * (X * X):
            return 2.0 * (b * V), hi, lo
        if np.log(U) < 0.5 * X * X + b * (1.0 - V + np.log(V)):
            return 2.0 * (b * V), hi, lo


def fill_keyed(words, states, seed, head_dfs, head, first, second, tail_dfs, tail):
    """For each stream i, in its order: ``head[i, j]`` a chi-square of ``head_dfs[j]`` degrees of freedom for
    each j, ``first[i]`` then ``second[i]`` (C-contiguous float64 stacks; either may hold no numbers) filled
    row-major with standard normals, then ``tail[i, j]`` chi-squares of ``tail_dfs[j]`` — what
    ``rng.chisquare(head_dfs)``, ``rng.standard_normal(out=...)`` twice and ``rng.chisquare(tail_dfs)`` of
    ``rng = default_rng(SeedSequence(entropy, spawn_key=key))`` draw.  ``states`` (N, 4) uint64: the
    streams' PCG64 states (hi, lo, increment hi, lo), advanced in place — set first from ``words[i]`` (the
    sequences' entropy words, :func:`seeds.entropy_words`) where ``seed``, so that later calls go on drawing
    where these stopped."""
    flat_first = first.reshape(first.shape[0], first.shape[1] * first.shape[2])
    flat_second = second.reshape(second.shape[0], second.shape[1] * second.shape[2])
    state_words = np.empty(8, np.int64)
    normal = np.empty(1)
    for i in range(states.shape[0]):
        if seed:
            seeds.sequence_state(words[i], state_words)
            states[i, 0], states[i, 1], states[i, 2], states[i, 3] = _seed(state_words)
        hi, lo, inc_hi, inc_lo = states[i, 0], states[i, 1], states[i, 2], states[i, 3]
        for j in range(head_dfs.shape[0]):
            head[i, j], hi, lo = _chisquare(head_dfs[j], normal, hi, lo, inc_hi, inc_lo)
        hi, lo = _fill(flat_first[i], hi, lo, inc_hi, inc_lo)
        hi, lo = _fill(flat_second[i], hi, lo, inc_hi, inc_lo)
        for j in range(tail_dfs.shape[0]):
            tail[i, j], hi, lo = _chisquare(tail_dfs[j], normal, hi, lo, inc_hi, inc_lo)
        states[i, 0], states[i, 1] = hi, lo


@contract.PerCacheRoot
def compiled_fill_keyed(cache_root: str, announce=None):
    """:func:`fill_keyed` compiled (or loaded from the on-disk cache under ``cache_root``) once per process,
    or None under ``NUMBA_DISABLE_JIT`` (then numpy's Generators draw the same numbers).  ``announce``: a
    context manager factory wrapped around compiling where the cache lacks it (a notice)."""
    import numba
    if numba.config.DISABLE_JIT:
        return None
    folder = contract.source_folder(cache_root, "streams", (__file__, seeds.__file__))
    dispatcher = contract.njit_cached(fill_keyed, str(folder), nogil=True)
    stack, matrix = types.Array(types.float64, 3, "C"), types.Array(types.float64, 2, "C")
    vector = types.Array(types.float64, 1, "C")
    contract.compile_announced([(dispatcher, (types.Array(types.int64, 2, "C"), types.Array(types.uint64, 2, "C"),
                                              types.boolean, vector, matrix, stack, stack, vector, matrix))], announce)
    dispatcher.disable_compile()  # other types are the caller's error, not a silent second compile
    return dispatcher
