"""Small numerical helpers for the tests."""
import numpy as np


def numerical_rank(M, rtol=1e-6):
    s = np.linalg.svd(M, compute_uv=False)
    return int(np.sum(s > rtol * s[0])) if s[0] > 0 else 0


def procrustes_error(U, U_star):
    """min over orthogonal O of ‖U O − U*‖ / ‖U*‖, and O."""
    P, _, Qt = np.linalg.svd(U.T @ U_star)
    rotation = P @ Qt
    return np.linalg.norm(U @ rotation - U_star) / np.linalg.norm(U_star), rotation


# a small sweep spec: 2 grid points x 2 methods x 2 repeats of quick finite-sample rows
TINY_SPEC = """
name = "tiny"
repeats = 2
[grid]
T = [2, 3]
method = ["standard", "lora-ml"]
[fixed]
d = 8
k = 1
n = 400
noise = 0.05
n_ft = 50
backend = "numpy"
max_iter = 200
"""


def lines_without_notes(output: str) -> list[str]:
    """Non-empty lines of a command's output without its ``note:`` blocks (a note line and the indented
    lines that continue it, e.g. the points a spec's regime warning lists)."""
    out, in_note = [], False
    for line in output.splitlines():
        if line.startswith("note: "):
            in_note = True
            continue
        if in_note and line.startswith("  "):
            continue
        in_note = False
        if line.strip():
            out.append(line)
    return out
