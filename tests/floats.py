"""One helper for float comparisons whose tolerance follows from the dtype at the compared magnitude, so that a test
asserts the same thing on every CPU (kernels for other instruction sets round differently in the last bits)."""

from __future__ import annotations

import numpy as np


def resolution(values, dtype=None) -> float:
    """The spacing of ``dtype`` (default: ``values``' own float dtype, ``float64`` for integers) at the largest
    finite magnitude of ``values``: the smallest difference two such numbers can have."""
    a = np.asarray(values)
    dt = np.dtype(dtype) if dtype is not None else (a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64)
    finite = np.abs(a[np.isfinite(a)]) if a.size else np.zeros(1)
    top = float(finite.max()) if finite.size else 0.0
    return float(np.spacing(dt.type(max(top, 1.0))))


def assert_close(actual, desired, ulps: float = 4, dtype=None, err_msg: str = ""):
    """``actual`` equals ``desired`` within ``ulps`` steps of the coarser of their float dtypes (or ``dtype``) at the
    largest magnitude compared; NaNs must match.

    Raises:
        AssertionError: a difference larger than that, naming the tolerance used.
    """
    a, d = np.asarray(actual), np.asarray(desired)
    if dtype is None:
        floats = [x.dtype for x in (a, d) if np.issubdtype(x.dtype, np.floating)]
        dtype = max(floats, key=lambda t: np.finfo(t).eps) if floats else np.float64
    atol = ulps * max(resolution(a, dtype), resolution(d, dtype))
    np.testing.assert_allclose(a, d, rtol=0, atol=atol,
                               err_msg=f"{err_msg} (tolerance {ulps} steps of {np.dtype(dtype).name}: {atol:.3g})")
