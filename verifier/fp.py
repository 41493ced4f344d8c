"""The float error model and outward rounding, shared by the bound engine and the dual bounds.

The error model (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3): with unit roundoff
``u = 2**-53``, any floating-point evaluation of a sum of ``n`` products ``sum_i a_i x_i`` — in any
summation order, with or without FMA, blocked as BLAS does — differs from the exact sum by at most
``gamma(n) * sum_i |a_i| |x_i|`` plus an absolute underflow term below ``n * 2**-1074``.  Every rule
in the package turns such an error into an explicit nonnegative slack that is subtracted from a lower
bound (added to an upper bound), so the bounds hold for the exact real-arithmetic network *and* for
the network evaluated in float64 (``Graph.forward``), whose Linear outputs deviate from the exact ones
by at most the same kind of term -- and, in ``float32`` arithmetic, for the model as onnxruntime runs
it: every affine op in float32, ``u = 2**-24``, in any summation order.  Slacks are themselves sums of nonnegative terms computed in float;
their own relative error is below ``gamma(n)`` and is covered by the 1.01 factor in ``gamma``.
"""
from __future__ import annotations

import numpy as np

U = 2.0 ** -53                     # unit roundoff of float64 (round to nearest)
TINY = 1e-300                      # per-operation allowance for gradual underflow (>> 2**-1074)
U32 = 2.0 ** -24                   # unit roundoff of float32, as onnxruntime runs a model
TINY32 = 2.0 ** -125               # per operation: underflow, even with denormals flushed to zero

ARITHMETICS = ("float32", "real")  # what a proof covers: the model run in float32 (by any
                                   # summation order), or real (and float64) arithmetic


def gamma(n: int, u: float = U) -> float:
    """An upper bound on the relative error of an ``n``-term dot product with unit roundoff ``u``,
    with a safety factor."""
    k = (int(n) + 3) * u
    return 1.01 * k / (1.0 - k)


def down(x):
    """The next float below ``x``: below the exact value of whatever rounded-to-nearest result ``x`` is."""
    return np.nextafter(x, -np.inf)


def up(x):
    return np.nextafter(x, np.inf)


def absmax(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``max |v|`` over the interval (exact in float)."""
    return np.maximum(np.abs(lower), np.abs(upper))


def affine_interval(C: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """The interval image of ``C @ y - d`` for ``lo <= y <= hi`` (``y`` rows of ``(..., n)``
    arrays), rounded outward, and the magnitude ``|C| max|y| + |d|`` of each row: the one
    output-interval formula of the package."""
    C = np.atleast_2d(np.asarray(C, np.float64))
    d = np.asarray(d, np.float64).ravel()
    P, N = np.maximum(C, 0.0), np.minimum(C, 0.0)
    a = lo @ P.T + hi @ N.T - d
    b = hi @ P.T + lo @ N.T - d
    mag = absmax(lo, hi) @ np.abs(C).T + np.abs(d)
    err = gamma(C.shape[1] + 1) * mag
    return down(a - err), up(b + err), mag
