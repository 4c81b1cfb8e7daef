"""Hot loops of fastlora, installed as ``fastlora.kernels``.

``reference`` is the array-module-generic (numpy / cupy) reference every fast path must
agree with; ``numba_cpu`` holds the Numba CPU kernels and ``cupy_gpu`` the CuPy GPU ones.
Nothing here compiles at import: the Numba module is imported only by the numba backend.

Conventions: per-task factor matrices are passed as *rows*, shape (T, r, d) — the
transpose of the public (T, d, r) layout — so that the products of all tasks with a
shared dense matrix are one GEMM of width T·r without copies.
"""
