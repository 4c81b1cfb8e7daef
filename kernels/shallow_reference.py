"""Reference kernels of the shallow network (docs/design.md §6), generic over the array module.

Model of task t: hidden pre-activations z = W_t x, hidden units s = sigmoid(z), output
ŷ = c_t · s; task loss L_t = (1/2n_t) Σ_i (ŷ_i − y_i)².  One fused pass gives the loss and
both gradients::

    r_i  = ŷ_i − y_i
    ∂L_t/∂c_t = (1/n_t) Σ_i r_i s_i                               (d,)
    ∂z_i      = r_i · c_t ⊙ s_i ⊙ (1 − s_i)                        (d,)
    G_t  = ∂L_t/∂W_t = (1/n_t) Σ_i ∂z_i x_iᵀ                        (d, d)

Tasks of unequal size are padded to the largest n; ``n_rows[t]`` says how many rows of
task t are real, and padded rows are ignored (their weight is 0).  ``numba``'s twin
(``shallow_numba``) must agree to rounding (tests/test_shallow.py).
"""
from __future__ import annotations

from fastlora.kernels.arrays import array_module


def sigmoid_and_slope(Z):
    """(sigmoid(Z), sigmoid'(Z)) without overflow: with E = exp(−|Z|),
    sigmoid = 1/(1+E) for Z ≥ 0 and E/(1+E) otherwise; sigmoid' = E/(1+E)² (no cancellation
    in 1 − sigmoid where sigmoid ≈ 1)."""
    xp = array_module(Z)
    E = xp.exp(-xp.abs(Z))
    inv = 1.0 / (1.0 + E)
    return xp.where(Z >= 0, inv, E * inv), E * inv * inv


def shallow_predict(X, W, c):
    """Outputs ŷ = c_t · sigmoid(W_t x) of every row: X (T, n, d), W (T, h, d), c (T, h) -> (T, n)."""
    S, _ = sigmoid_and_slope(X @ W.swapaxes(1, 2))
    return (S @ c[:, :, None])[:, :, 0]


def row_weights(n_rows, n, dtype):
    """(T, n) weights 1/n_t on the real rows of each task, 0 on padding."""
    xp = array_module(n_rows)
    real = xp.arange(n)[None, :] < n_rows[:, None]
    return xp.where(real, 1.0 / xp.maximum(n_rows, 1)[:, None], 0.0).astype(dtype)


def shallow_loss_grad(X, y, n_rows, W, c):
    """Per-task loss and gradients of the shallow network, fused.

    X (T, n, d) inputs (rows ≥ n_rows[t] are padding), y (T, n) labels, n_rows (T,) integer,
    W (T, h, d) hidden weights W_t = A + Δ_t, c (T, h) output weights of each task (a shared
    c is passed broadcast).  Returns losses (T,), G (T, h, d) = ∂L_t/∂W_t and gc (T, h) =
    ∂L_t/∂c_t, for L_t = (1/2n_t) Σ_i (c_t·sigmoid(W_t x_i) − y_i)².
    """
    n = X.shape[1]
    S, slope = sigmoid_and_slope(X @ W.swapaxes(1, 2))         # (T, n, h)
    weights = row_weights(n_rows, n, X.dtype)                   # (T, n)
    residual = (S @ c[:, :, None])[:, :, 0] - y                 # (T, n)
    weighted = weights * residual
    losses = 0.5 * (weighted * residual).sum(axis=1)
    gc = (weighted[:, None, :] @ S)[:, 0, :]
    dZ = weighted[:, :, None] * c[:, None, :] * slope          # (T, n, h)
    G = dZ.swapaxes(1, 2) @ X
    return losses, G, gc
