"""The law of a task's data: x = L z with E[x xᵀ] = Σ = L Lᵀ, and y = W* x + σ ε (docs/task_laws.md).

``z`` has i.i.d. entries of mean 0 and variance 1 from the **input law**:

* ``"gaussian"``   N(0, 1) (the paper's law);
* ``"rademacher"`` ±1 with probability ½ each (bounded);
* ``"student-t"``  t with ``input_df`` = ν > 2 degrees of freedom, scaled by √((ν − 2)/ν) to
  variance 1 (heavy tails; the fourth moment is finite only for ν > 4).

``ε`` has i.i.d. unit-variance entries from the **noise law** (the same names, plus
``"laplace"``, scale 1/√2), with ``noise_df`` for ``"student-t"``.

The **input covariance** Σ is the identity (``None`` or ``"identity"``), a named spectrum on the
coordinate axes, scaled to mean eigenvalue 1 (tr Σ = d, so the signal power matches the identity's):

* ``"spiked"`` or ``"spiked:s"``       eigenvalues (s, 1, …, 1) before scaling (s = 10 by default);
* ``"power-law"`` or ``"power-law:a"`` eigenvalues i^(−a), i = 1..d, before scaling (a = 1 by default);

or a user's (d, d) symmetric positive semi-definite array (used as given).  The ground truth's law
is invariant under rotations, so axis-aligned spectra lose no generality.

``sampler="stats"`` draws the sufficient statistics exactly only for Gaussian inputs and Gaussian
noise (any Σ: the statistics of the whitened target W* L, then Σ = L Σ̃ Lᵀ and C = C̃ Lᵀ);
other laws need ``sampler="raw"`` and are refused with ``"stats"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import FastLoRAError, check_array, check_choice, check_float

INPUT_LAWS = ("gaussian", "rademacher", "student-t")
NOISE_LAWS = ("gaussian", "rademacher", "student-t", "laplace")
SPECTRA = ("identity", "spiked", "power-law")
SPECTRUM_DEFAULTS = {"spiked": 10.0, "power-law": 1.0}
DEFAULT_DF = 5.0  # degrees of freedom of a student-t law when none is given


def check_spectrum(value) -> str:
    """A named input covariance, normalised (``"spiked"`` -> ``"spiked:10"``); refuses unknown names."""
    if value is None:
        return "identity"
    if not isinstance(value, str):
        raise FastLoRAError(f"input_cov must be None, a spectrum name ({', '.join(SPECTRA)}, e.g. 'spiked:10', "
                            f"'power-law:1.5') or a (d, d) array; got {type(value).__name__}")
    name, _, parameter = value.strip().partition(":")
    name = check_choice("input_cov", name.strip(), SPECTRA)
    if name == "identity":
        if parameter:
            raise FastLoRAError(f"input_cov={value!r}: 'identity' takes no parameter")
        return name
    if not parameter:
        return f"{name}:{SPECTRUM_DEFAULTS[name]:g}"
    try:
        number = float(parameter)
    except ValueError:
        number = math.nan
    if name == "spiked" and not (math.isfinite(number) and number > 0):
        raise FastLoRAError(f"input_cov={value!r}: the spike s in 'spiked:s' must be a positive number")
    if name == "power-law" and not (math.isfinite(number) and number >= 0):
        raise FastLoRAError(f"input_cov={value!r}: the exponent a in 'power-law:a' must be a number >= 0")
    return f"{name}:{number:g}"


def spectrum(name: str, d: int) -> np.ndarray:
    """Eigenvalues (d,) of a named covariance (:func:`check_spectrum`), mean 1."""
    kind, _, parameter = check_spectrum(name).partition(":")
    if kind == "identity":
        return np.ones(d)
    value = float(parameter)
    raw = np.ones(d)
    if kind == "spiked":
        raw[0] = value
    else:
        raw = np.arange(1, d + 1, dtype=np.float64) ** (-value)
    return raw * (d / raw.sum())


@dataclass(frozen=True, eq=False)
class DataLaw:
    """How a task's inputs and noise are drawn (module docstring).

    ``cov_name``: "identity", a normalised spectrum name, or "matrix" (a user's Σ);
    ``sqrt`` (d, d) with ``sqrt @ sqrt.T`` = Σ, or None for the identity.
    """

    input_law: str = "gaussian"
    input_df: float | None = None
    cov_name: str = "identity"
    sqrt: np.ndarray | None = None
    noise_law: str = "gaussian"
    noise_df: float | None = None

    @property
    def is_standard(self) -> bool:
        """x ~ N(0, I), Gaussian noise: the paper's law."""
        return self.input_law == "gaussian" and self.sqrt is None and self.noise_law == "gaussian"

    @property
    def exact_statistics(self) -> bool:
        """Whether ``sampler="stats"`` can draw (Σ, C, s) exactly: Gaussian inputs and noise."""
        return self.input_law == "gaussian" and self.noise_law == "gaussian"

    def covariance(self, d: int) -> np.ndarray:
        return np.eye(d) if self.sqrt is None else self.sqrt @ self.sqrt.T

    def inverse_trace(self, d: int) -> float:
        """tr(Σ⁻¹) (d for the identity; inf for a singular Σ)."""
        if self.sqrt is None:
            return float(d)
        eigenvalues = np.linalg.eigvalsh(self.covariance(d))
        return math.inf if eigenvalues[0] <= 0 else float(np.sum(1.0 / eigenvalues))

    def inputs(self, rng: np.random.Generator, m: int, d: int, out: np.ndarray | None = None) -> np.ndarray:
        """m inputs (m, d), rows x = L z; ``out``: a C-contiguous (m, d) array to hold them (returned)."""
        if self.sqrt is None:
            return _unit_draws(rng, self.input_law, self.input_df, (m, d), out)
        return self.correlated(_unit_draws(rng, self.input_law, self.input_df, (m, d)), out)

    def correlated(self, z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Inputs x = L z of unit draws ``z`` (m, d) (``z`` itself for the identity); ``out`` as for inputs."""
        return z if self.sqrt is None else np.matmul(z, self.sqrt.T, out=out)

    def noise(self, rng: np.random.Generator, m: int, d_out: int, out: np.ndarray | None = None) -> np.ndarray:
        """m unit-variance noise vectors (m, d_out) (multiplied by σ by the caller); ``out`` as for inputs."""
        return _unit_draws(rng, self.noise_law, self.noise_df, (m, d_out), out)

    def describe(self) -> str:
        parts = [self.input_law + (f"(df={self.input_df:g})" if self.input_law == "student-t" else ""),
                 f"cov={self.cov_name}", "noise " + self.noise_law
                 + (f"(df={self.noise_df:g})" if self.noise_law == "student-t" else "")]
        return ", ".join(parts)


STANDARD_LAW = DataLaw()


def make_law(d: int, input_law="gaussian", input_df=None, input_cov=None, noise_law="gaussian",
             noise_df=None) -> DataLaw:
    """The :class:`DataLaw` of these arguments (checked; errors name the argument)."""
    input_law = check_choice("input_law", input_law, INPUT_LAWS)
    noise_law = check_choice("noise_law", noise_law, NOISE_LAWS)
    input_df = _check_df("input_df", input_df, input_law, "input_law")
    noise_df = _check_df("noise_df", noise_df, noise_law, "noise_law")
    if isinstance(input_cov, np.ndarray) or (input_cov is not None and not isinstance(input_cov, str)):
        cov_name, sqrt = "matrix", covariance_sqrt(input_cov, d)
    else:
        cov_name = check_spectrum(input_cov)
        sqrt = None if cov_name == "identity" else np.diag(np.sqrt(spectrum(cov_name, d)))
    if sqrt is not None:
        sqrt.setflags(write=False)
    return DataLaw(input_law, input_df, cov_name, sqrt, noise_law, noise_df)


def covariance_sqrt(matrix, d: int) -> np.ndarray:
    """L (d, d) with L Lᵀ = Σ for a user's symmetric positive semi-definite Σ (eigen-decomposition)."""
    Sigma = check_array("input_cov", matrix, shape=(d, d))
    scale = max(float(np.abs(Sigma).max()), np.finfo(np.float64).tiny)
    if not np.allclose(Sigma, Sigma.T, rtol=0.0, atol=1e-12 * scale):
        raise FastLoRAError("input_cov must be a symmetric (d, d) matrix (a covariance)")
    values, vectors = np.linalg.eigh(0.5 * (Sigma + Sigma.T))
    if values[0] < -1e-10 * max(values[-1], 0.0) or values[-1] <= 0:
        raise FastLoRAError(f"input_cov must be positive semi-definite and nonzero (a covariance); its smallest "
                            f"eigenvalue is {values[0]:.3g}")
    return vectors * np.sqrt(np.clip(values, 0.0, None))


def _check_df(name: str, df, law: str, law_name: str) -> float | None:
    if law != "student-t":
        if df is not None:
            raise FastLoRAError(f"{name}={df!r} applies to {law_name}='student-t' only (got {law_name}={law!r})")
        return None
    return check_float(name, DEFAULT_DF if df is None else df, low=2.0, low_open=True)


def _unit_draws(rng: np.random.Generator, law: str, df: float | None, shape, out: np.ndarray | None = None):
    """i.i.d. draws of mean 0 and variance 1 from ``law``, into ``out`` where given (generated there, or
    scaled there from one temporary: the same numbers)."""
    if law == "gaussian":
        return rng.standard_normal(shape) if out is None else rng.standard_normal(out=out)
    if law == "laplace":
        draws = rng.laplace(0.0, 1.0 / math.sqrt(2.0), size=shape)
        if out is None:
            return draws
        out[...] = draws
        return out
    if out is None:
        out = np.empty(shape)
    if law == "rademacher":
        np.multiply(rng.integers(0, 2, size=shape), 2.0, out=out)
        out -= 1.0
        return out
    return np.multiply(rng.standard_t(df, size=shape), math.sqrt((df - 2.0) / df), out=out)


def refuse_inexact_statistics(law: DataLaw) -> None:
    """``sampler="stats"`` with a law it cannot draw exactly: a clear error (module docstring)."""
    if not law.exact_statistics:
        what = [f"input_law={law.input_law!r}"] if law.input_law != "gaussian" else []
        what += [f"noise_law={law.noise_law!r}"] if law.noise_law != "gaussian" else []
        verb = "need" if len(what) > 1 else "needs"
        raise FastLoRAError(f"sampler='stats' draws the sufficient statistics exactly only for Gaussian inputs and "
                            f"noise (any input_cov); {' and '.join(what)} {verb} sampler='raw'")
