"""Interval arithmetic on the layer graph (the bottom rung of the bound ladder).

Linear: ``lower = sum_k (A_k+ l_k + A_k- u_k) + b``, ``upper = sum_k (A_k+ u_k + A_k- l_k) + b``,
widened by our own rounding error plus the deviation of the float64 forward pass
(``core.set_float_slack``) and rounded one ulp outward.  Relu and MaxPool only take maxima of
bounds, which is exact in float.
"""
from __future__ import annotations

import numpy as np

from ..graph import Input, Linear
from ._fp import absmax, down, gamma, up
from .core import Context, intersect, linear_absimg, matvec, nonlinear_bounds, set_float_slack


def linear_interval(ctx: Context, i: int, lower: list, upper: list, mags: list):
    """Sound bounds of Linear node ``i`` from its inputs' bounds.  Our evaluation of the sums errs by
    at most ``gamma(n) absimg`` and the float64 network deviates by at most ``fwd``: both are added,
    then one ulp outward for the final addition."""
    n = ctx.nodes[i]
    lo = n.bias.astype(np.float64).copy()
    hi = lo.copy()
    for k, j in enumerate(n.inputs):
        P, N = ctx.pos(i, k), ctx.neg(i, k)
        lo += matvec(P, lower[j]) + matvec(N, upper[j])
        hi += matvec(P, upper[j]) + matvec(N, lower[j])
    set_float_slack(ctx, i, mags)
    delta = ctx.fwd[i] + gamma(ctx.n_terms(i)) * linear_absimg(ctx, i, mags)
    return down(lo - delta), up(hi + delta)


def node_interval(ctx: Context, i: int, lower: list, upper: list, mags: list):
    """Interval bounds of node ``i`` (any kind) from the current bounds of its inputs."""
    n = ctx.nodes[i]
    if isinstance(n, Input):
        return ctx.box_lower.copy(), ctx.box_upper.copy()
    if isinstance(n, Linear):
        return linear_interval(ctx, i, lower, upper, mags)
    j = n.inputs[0]
    return nonlinear_bounds(n, lower[j], upper[j])


def interval_bounds(ctx: Context, lower: list | None = None, upper: list | None = None):
    """Interval bounds of every node, in topological order.  If ``lower``/``upper`` are given
    (earlier sound bounds), each node's result is intersected with them, so the outcome is never
    looser.  Fills the float slack of Linear nodes in ``ctx`` (first call)."""
    N = len(ctx.nodes)
    lo_out, hi_out, mags = [None] * N, [None] * N, [None] * N
    for i in range(N):
        lo, hi = node_interval(ctx, i, lo_out, hi_out, mags)
        if lower is not None and lower[i] is not None:
            lo, hi = intersect(lower[i], upper[i], lo, hi)
        lo_out[i], hi_out[i] = lo, hi
        mags[i] = absmax(lo, hi)
    return lo_out, hi_out


def interval_margin_bounds(y_lo: np.ndarray, y_hi: np.ndarray, C: np.ndarray, d: np.ndarray):
    """Interval image of ``C @ y - d`` for ``y`` in ``[y_lo, y_hi]``, rounded outward."""
    P, N = np.maximum(C, 0.0), np.minimum(C, 0.0)
    a = P @ y_lo + N @ y_hi - d
    b = P @ y_hi + N @ y_lo - d
    err = gamma(C.shape[1] + 1) * (np.abs(C) @ absmax(y_lo, y_hi) + np.abs(d))
    return down(a - err), up(b + err)
