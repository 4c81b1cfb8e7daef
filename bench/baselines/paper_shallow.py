"""Baseline: the paper's shallow-network retraining procedure, as its public code runs it.

From ``shallow/utils.py`` of jacob-block/peft-ml (commit bf9c67b):

* model: ŷ = c·sigmoid((A + Δ_t) x), no biases; A and c initialised as torch's
  ``nn.Linear`` (uniform on ±1/√d); LoRA-ML adapters Δ_t = B_t C_tᵀ built as
  ``nn.Sequential(Linear(d, k), Linear(k, d))`` — C_tᵀ uniform on ±1/√d, B_t = 0;
* loss per task: torch's ``MSELoss`` (1/N) Σ_i (ŷ_i − y_i)², backpropagated task by task so
  the gradient is summed over tasks; one full-batch ``torch.optim.AdamW`` step per epoch
  (lr 1e-3, β (0.9, 0.999), eps 1e-8, weight decay 0.01 on every parameter), 40,000 epochs;
* ``method="standard"``: the same without adapters.

The loss and its gradients come from ``loss_grad`` — by default this module's own numpy code
(written the obvious way); ``fastlora bench`` passes fastlora's fused kernel instead, so the
comparison measures the procedure, not the kernel.
"""
from __future__ import annotations

import math
import time

import numpy as np


def numpy_loss_grad(X, y, W, c):
    """Per-task MSE (1/N) Σ (ŷ − y)² and its gradients: X (T, N, d), y (T, N), W (T, d, d), c (d,).
    Returns (mse (T,), dW (T, d, d), dc (T, d))."""
    N = X.shape[1]
    Z = np.einsum("tnd,thd->tnh", X, W)
    S = 1.0 / (1.0 + np.exp(-Z))
    R = S @ c - y
    dZ = (2.0 / N) * R[:, :, None] * c * S * (1.0 - S)
    return np.mean(R * R, axis=1), np.einsum("tnh,tnd->thd", dZ, X), (2.0 / N) * np.einsum("tn,tnh->th", R, S)


def paper_shallow(X: np.ndarray, y: np.ndarray, k: int = 1, method: str = "lora-ml", steps: int = 40000,
                  lr: float = 1e-3, weight_decay: float = 0.01, betas=(0.9, 0.999), eps: float = 1e-8, seed: int = 0,
                  loss_grad=None, record_every: int = 0):
    """Run the procedure on X (T, N, d), y (T, N).

    ``loss_grad(X, y, W, c) -> (mse (T,), dW (T, d, d), dc (T, d))`` (default :func:`numpy_loss_grad`).
    Returns dict(A, c, B, C, seconds, objective, mse, history): ``objective`` is fastlora's
    Σ_t (1/2N) Σ_i (ŷ − y)² (= Σ_t MSE_t / 2) after the last step; ``history`` that objective
    every ``record_every`` steps (as (step, value) pairs; 0: none).
    """
    if method not in ("lora-ml", "standard"):
        raise ValueError(f"method={method!r}: choose 'lora-ml' or 'standard'")
    loss_grad = numpy_loss_grad if loss_grad is None else loss_grad
    T, _, d = X.shape
    rng = np.random.default_rng(seed)
    bound = 1.0 / math.sqrt(d)
    params = {"A": rng.uniform(-bound, bound, (d, d)), "c": rng.uniform(-bound, bound, d)}
    if method == "lora-ml":
        params["C"] = rng.uniform(-bound, bound, (T, d, k))   # first adapter layer Linear(d, k): fan_in d
        params["B"] = np.zeros((T, d, k))                       # second layer initialised at zero
    m = {name: np.zeros_like(v) for name, v in params.items()}
    v2 = {name: np.zeros_like(v) for name, v in params.items()}
    b1, b2 = betas
    history = []

    def weights(p):
        if method == "standard":
            return np.broadcast_to(p["A"], (T, d, d))
        return p["A"] + p["B"] @ p["C"].transpose(0, 2, 1)

    start = time.perf_counter()
    for step in range(1, steps + 1):
        mse, dW, dc = loss_grad(X, y, weights(params), params["c"])
        grads = {"A": dW.sum(axis=0), "c": dc.sum(axis=0)}
        if method == "lora-ml":
            grads["B"] = dW @ params["C"]
            grads["C"] = dW.transpose(0, 2, 1) @ params["B"]
        if record_every and (step - 1) % record_every == 0:
            history.append((step - 1, 0.5 * float(mse.sum())))
        step_size = lr / (1.0 - b1 ** step)
        root_bias2 = math.sqrt(1.0 - b2 ** step)
        for name, g in grads.items():
            params[name] *= 1.0 - lr * weight_decay
            m[name] = b1 * m[name] + (1.0 - b1) * g
            v2[name] = b2 * v2[name] + (1.0 - b2) * g * g
            params[name] -= step_size * m[name] / (np.sqrt(v2[name]) / root_bias2 + eps)
    seconds = time.perf_counter() - start
    mse, _, _ = loss_grad(X, y, weights(params), params["c"])
    return {**params, "seconds": seconds, "objective": 0.5 * float(mse.sum()), "mse": mse, "history": history}
