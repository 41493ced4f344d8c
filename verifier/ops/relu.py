"""Relu: elementwise ``y = max(x, 0)`` of one node.

Relaxation on ``l <= x <= u``: stable entries are exact (``l >= 0``: ``y = x``; ``u <= 0``: ``y =
0``).  An unstable entry (``l < 0 < u``) lies above ``alpha x`` for *any* ``alpha`` in [0, 1] (CROWN's
adaptive choice ``alpha = [u >= -l]`` unless optimised slopes are given) and below the chord
``s x + t`` through ``(l, 0)`` and ``(u, u)``, rounded so that it stays above in exact arithmetic.

MILP (Tjeng et al. 2019): inactive entries are the constant 0, active ones alias their input, and
each unstable entry gets a column ``y`` and a binary ``a`` with ``y >= x, y >= 0, y <= u a,
y <= x - l (1 - a)``; with ``a`` relaxed to [0, 1] this is exactly the triangle.  Without binaries
(``binaries=False``, LP models) the triangle's upper side is the rounded chord instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..fp import U
from .base import Node, Relaxation


def masks(l: np.ndarray, u: np.ndarray):
    """(active, inactive, unstable) entries for input bounds ``l``, ``u``."""
    active = l >= 0
    inactive = (u <= 0) & ~active
    return active, inactive, ~(active | inactive)


def upper_line(l: np.ndarray, u: np.ndarray):
    """For ``l < 0 < u``: float ``s, t`` with ``relu(z) <= s z + t`` for every real ``z`` in ``[l,
    u]``.  The line lies above the convex relu on the interval iff it does at both ends: at ``l``
    it needs ``t >= -s l`` (``t`` is ``-s l`` rounded up), at ``u`` it needs ``s >= u / (u - l)``:
    the computed quotient has relative error below ``2U``, so scaling it by ``1 + 4U`` and one ulp
    up clears it."""
    with np.errstate(all="ignore"):          # stable entries give garbage, masked by callers
        q = u / (u - l)
        s = np.nextafter(q * (1.0 + 4.0 * U), np.inf)
        t = np.nextafter(-(s * l), np.inf)
    return s, t


def adaptive_slope(l: np.ndarray, u: np.ndarray) -> np.ndarray:
    """CROWN's lower slope: 1 where ``u >= -l`` else 0 (the smaller triangle area)."""
    return (u >= -l).astype(np.float64)


@dataclass(eq=False)
class Relu(Node):
    kind = "relu"

    def check(self, sizes: list[int]) -> None:
        if len(self.inputs) != 1 or sizes[0] != self.size:
            raise ValueError("relu must keep its input's size")

    def apply(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.maximum(xs[0], 0.0)

    def vjp(self, xs, cot: np.ndarray, leak=0.0) -> list[np.ndarray]:
        """Derivative 0 at 0; ``leak`` (scalar or one per sample) replaces 0 on inactive inputs."""
        if not np.any(leak):
            return [cot * (xs[0] > 0.0)]
        leak = np.asarray(leak, np.float64)
        leak = leak[:, None] if leak.ndim == 1 else leak
        return [cot * np.where(xs[0] > 0.0, 1.0, leak)]

    def interval(self, lo: np.ndarray, hi: np.ndarray):
        return np.maximum(lo, 0.0), np.maximum(hi, 0.0)

    def error_bound(self, e: np.ndarray, l=None, u=None) -> np.ndarray:
        """``|relu(a) - relu(b)| <= |a - b|``: deviations pass through unchanged, except where the
        input's bounds ``u <= 0`` hold for both values (stably inactive: both outputs are 0)."""
        return e if u is None else np.where(u <= 0, 0.0, e)

    def relax(self, l: np.ndarray, u: np.ndarray, dtype=np.float64) -> Relaxation:
        """CROWN's relaxation; the lower slopes of the ``free`` (unstable) entries may be replaced
        by any values in [0, 1] (``Engine.relaxation`` does, for optimised slopes).  ``dtype``
        float32: the lines rounded to float32 (for estimates only: no longer valid)."""
        active, _, unstable = masks(l, u)
        up_slope = active.astype(dtype)
        lo_slope = up_slope.copy()
        up_off = None
        at = np.flatnonzero(unstable)           # a few percent of the entries: the lines there
        if at.size:
            lu, uu = l.reshape(-1)[at], u.reshape(-1)[at]
            s, t = upper_line(lu, uu)
            np.put(up_slope, at, s)
            np.put(lo_slope, at, adaptive_slope(lu, uu))
            up_off = np.zeros_like(up_slope)
            np.put(up_off, at, t)
        return Relaxation(lo_slope, up_slope, None, up_off, free=unstable)

    def support(self, keep: np.ndarray, lo_in: list, hi_in: list) -> list[np.ndarray]:
        """Inactive entries are the constant 0: they read nothing."""
        return [keep & ~masks(lo_in[0], hi_in[0])[1]]

    def encode(self, b, xs, lo, up, own: np.ndarray, l, u, binaries: bool = True):
        """``l``, ``u``: the input's bounds; ``lo``, ``up``: the node's own (column bounds).
        Returns ``((cols, const), (neurons, binary cols))``."""
        xc, xk = xs[0]
        cols = np.where(l >= 0, xc, -1)                    # active: alias the input
        const = np.where(l >= 0, xk, 0.0)                  # inactive: the constant 0
        k = np.flatnonzero((l < 0) & (u > 0) & own)
        a = np.zeros(0, np.int64)
        if k.size:
            lk, uk = l[k], u[k]
            if not (np.isfinite(lk).all() and np.isfinite(uk).all()):
                raise ValueError("unstable ReLU with an infinite bound: cannot build its big-M")
            y = b.cols(np.maximum(0.0, lo[k]), np.minimum(uk, up[k]))
            r = np.arange(k.size)
            xck, xkk = xc[k], xk[k]
            if binaries:
                a = b.cols(np.zeros(k.size), 1.0, binary=True)
                # rows: y - x >= 0 ;  y - u a <= 0 ;  y - x - l a <= -l
                b.rows(3 * k.size,
                       [(r, y, 0, 1.0), (r, xck, xkk, -1.0),
                        (r + k.size, y, 0, 1.0), (r + k.size, a, 0, -uk),
                        (r + 2 * k.size, y, 0, 1.0), (r + 2 * k.size, xck, xkk, -1.0),
                        (r + 2 * k.size, a, 0, -lk)],
                       np.concatenate([np.zeros(k.size), np.full(2 * k.size, -np.inf)]),
                       np.concatenate([np.full(k.size, np.inf), np.zeros(k.size), -lk]))
            else:
                s, t = upper_line(lk, uk)
                # rows: y - x >= 0 ;  y - s x <= t
                b.rows(2 * k.size,
                       [(r, y, 0, 1.0), (r, xck, xkk, -1.0),
                        (r + k.size, y, 0, 1.0), (r + k.size, xck, xkk, -s)],
                       np.concatenate([np.zeros(k.size), np.full(k.size, -np.inf)]),
                       np.concatenate([np.full(k.size, np.inf), t]))
            cols[k] = y
            const[k] = 0.0
        skipped = (l < 0) & (u > 0) & ~own
        const[skipped] = np.nan                            # not encoded: must not be read
        return (cols.astype(np.int64), const), (k, a)

    def onnx_nodes(self, ins: list[str], out: str, const) -> list:
        from onnx import helper
        return [helper.make_node("Relu", [ins[0]], [out])]
