"""The shallow network's objective over named parameters, on a backend (docs/design.md §6).

    F(A, c, θ_1..θ_T) = Σ_t L_t(A + Δ(θ_t), c),  L_t(W, c) = (1/2n_t) Σ_i (c·sigmoid(W x_i) − y_i)²
    ∇_A F = Σ_t G_t,   ∇_c F = Σ_t ∂L_t/∂c,   ∇_θt F = pullback(θ_t, G_t),   G_t = ∂L_t/∂W at W_t

G_t and ∂L_t/∂c come from one fused kernel per call (``shallow_loss_grad``: the numpy / cupy
reference or its Numba twin); the adapter gradient goes through the parameterization's
``pullback``, so every registered PEFT works (lora, lora_sym, full, plugins).  Without a
parameterization (standard retraining) every task uses W_t = A.
"""
from __future__ import annotations

import numpy as np

from ..errors import FastLoRAError
from ..peft.protocol import bind_base, trainable


def kernel_for(backend):
    """The fused loss-and-gradient kernel of ``backend`` (numba: the Numba twin; else the reference)."""
    if backend.name == "numba":
        from ..kernels.shallow_numba import shallow_loss_grad
        return shallow_loss_grad
    from ..kernels.shallow_reference import shallow_loss_grad
    return shallow_loss_grad


class ShallowData:
    """The tasks' raw data on a backend, padded to one (T, n_max, d) array.

    Padding (rather than a loop over tasks) keeps one kernel call per evaluation; the kernel
    skips rows i ≥ n_rows[t], so unequal task sizes cost only the memory of the padding.
    """

    def __init__(self, tasks, backend, dtype):
        self.backend, self.xp, self.dtype = backend, backend.xp, dtype
        self.T, self.d = len(tasks), tasks[0].d
        n_max = max(task.n for task in tasks)
        X = np.zeros((self.T, n_max, self.d))
        y = np.zeros((self.T, n_max))
        for t, task in enumerate(tasks):
            X[t, :task.n], y[t, :task.n] = task.X, task.y
        n_rows = np.array([task.n for task in tasks], dtype=np.int64)
        self.X, self.y = backend.asarray(X, dtype), backend.asarray(y, dtype)
        self.n_rows = self.xp.asarray(n_rows)
        self.kernel = kernel_for(backend)

    def loss_grad(self, W, c):
        """Per-task losses (T,), G (T, h, d) and ∂L_t/∂c (T, h) at W (T, h, d) and c (h,) or (T, h)."""
        xp = self.xp
        C = c if c.ndim == 2 else xp.broadcast_to(c, (self.T, c.shape[0]))
        return self.kernel(self.X, self.y, self.n_rows, W, C)

    def null_objective(self) -> float:
        """Σ_t L_t at c = 0 (every output 0): the scale against which 'objective ≈ 0' is judged."""
        xp = self.xp
        per_task = xp.sum(self.y * self.y, axis=1) / (2.0 * self.n_rows)
        return float(xp.sum(per_task))


class ShallowObjective:
    """F and its gradient over a dict of named parameters ``{"A", "c", **θ}``.

    ``peft`` None: standard retraining (no adapters).  ``train`` names the parameters the
    optimizer moves (e.g. only the adapters when fine-tuning with A and c frozen); gradients
    are returned for those only.
    """

    def __init__(self, data: ShallowData, peft, train):
        self.data, self.xp, self.peft = data, data.xp, peft
        self.train = list(train)
        self.backend_name = data.backend.name

    def adapter_names(self, x) -> list:
        return [name for name in x if name not in ("A", "c")]

    def weights(self, x):
        """W_t = A + Δ(θ_t) for every task, (T, h, d)."""
        A = x["A"]
        if self.peft is None:
            return self.xp.ascontiguousarray(self.xp.broadcast_to(A, (self.data.T, *A.shape)))
        delta, _ = bind_base(self.peft, self.backend_name, A)
        return A[None] + delta({name: x[name] for name in self.adapter_names(x)})

    def losses(self, x):
        losses, _, _ = self.data.loss_grad(self.weights(x), x["c"])
        return losses

    def value(self, x) -> float:
        return float(self.xp.sum(self.losses(x)))

    def value_and_grad(self, x):
        xp, A = self.xp, x["A"]
        losses, G, gc = self.data.loss_grad(self.weights(x), x["c"])
        grads = {}
        if self.peft is not None and any(name not in ("A", "c") for name in self.train):
            _, pullback = bind_base(self.peft, self.backend_name, A)
            params = {name: x[name] for name in self.adapter_names(x)}
            grads = pullback(params, G)
            through_delta = grads.pop("base", None)  # Δ's own dependence on A (uses_base)
            if "A" in self.train and through_delta is not None:
                grads["A"] = through_delta
        if "A" in self.train:
            grads["A"] = xp.sum(G, axis=0) + grads.get("A", 0)
        if "c" in self.train:
            grads["c"] = xp.sum(gc, axis=0)
        return float(xp.sum(losses)), {name: grads[name] for name in self.train}


def trainable_names(peft, params: dict, shared: tuple = ("A", "c")) -> list:
    """The shared names plus the adapters' trainable ones (the parameterization's frozen ones excluded)."""
    names = list(shared)
    if peft is not None:
        names += trainable(peft, params)
    if not names:
        raise FastLoRAError("nothing to train: no shared parameters and the parameterization has no trainable ones")
    return names
