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
