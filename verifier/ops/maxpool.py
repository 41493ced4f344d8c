"""MaxPool: ``y_i = max_j x[windows[i, j]]``; entries ``-1`` in ``windows`` are padding (ignored).

Relaxation on input bounds ``[l, u]``: ``y_i >= x[sel_i]`` where ``sel_i`` is the window entry with
the largest lower bound, and ``y_i <= max_W u`` (or ``y_i <= x[sel_i]``, exact, where that entry's
lower bound reaches every other entry's upper bound: the window is *dominated*).

MILP (Tjeng et al. 2019, as MIPVerify): in each window, entries whose upper bound is at most the
largest lower bound are dropped (they never exceed the entry holding it); one survivor means ``y``
is that entry; otherwise ``y >= x_j``, ``y <= x_j + (U - l_j)(1 - a_j)``, ``sum_j a_j = 1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Node, Relaxation


def _windowed(W: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``v[..., W]`` with padding (-1) reading -inf: ``(..., size_y, window)``."""
    pad = np.full(v.shape[:-1] + (1,), -np.inf)
    return np.concatenate([v, pad], axis=-1)[..., W]


@dataclass(eq=False)
class MaxPool(Node):
    windows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    kind = "maxpool"

    def check(self, sizes: list[int]) -> None:
        if len(self.inputs) != 1 or self.windows.shape[0] != self.size:
            raise ValueError("bad maxpool windows")
        if (self.windows.max(axis=1) < 0).any():
            raise ValueError("a maxpool window holds only padding")
        if self.windows.max() >= sizes[0]:
            raise ValueError("a maxpool window reads past its input")

    def apply(self, xs: list[np.ndarray]) -> np.ndarray:
        return _windowed(self.windows, xs[0]).max(axis=-1)

    def vjp(self, xs, cot: np.ndarray, leak=0.0) -> list[np.ndarray]:
        """Each window's cotangent goes to its (first) maximal entry."""
        x = xs[0]
        N, n_in = x.shape
        arg = _windowed(self.windows, x).argmax(axis=2)               # never a padding slot
        src = self.windows[np.arange(self.size)[None, :], arg]         # (N, size) input index
        flat = (np.arange(N)[:, None] * n_in + src).ravel()
        return [np.bincount(flat, weights=cot.ravel(), minlength=N * n_in).reshape(N, n_in)]

    def interval(self, lo: np.ndarray, hi: np.ndarray):
        return _windowed(self.windows, lo).max(axis=-1), _windowed(self.windows, hi).max(axis=-1)

    def error_bound(self, e: np.ndarray, l=None, u=None) -> np.ndarray:
        """``|max(a) - max(b)| <= max |a - b|`` over each window."""
        return _windowed(self.windows, e).max(axis=-1)

    def _selection(self, l: np.ndarray, u: np.ndarray):
        """Per window (batched over leading axes): the entry with the largest lower bound, that
        bound, whether it dominates the window, and the window's largest upper bound."""
        W = self.windows
        lw, uw = _windowed(W, l), _windowed(W, u)
        arg = lw.argmax(axis=-1)
        lmax = np.take_along_axis(lw, arg[..., None], axis=-1)[..., 0]
        other = uw.copy()
        np.put_along_axis(other, arg[..., None], -np.inf, axis=-1)
        sel = W[np.arange(W.shape[0]), arg]
        return sel, lmax, lmax >= other.max(axis=-1), uw.max(axis=-1)

    def relax(self, l: np.ndarray, u: np.ndarray, hi_out=None) -> Relaxation:
        sel, _, dominated, umax = self._selection(l, u)
        if hi_out is not None:
            umax = np.minimum(umax, hi_out)
        one = np.ones(sel.shape)
        return Relaxation(one, dominated.astype(np.float64), None,
                          np.where(dominated, 0.0, umax), select=sel)

    def support(self, keep: np.ndarray, lo_in: list, hi_in: list) -> list[np.ndarray]:
        W = self.windows
        l, u = lo_in[0], hi_in[0]
        lw, uw = _windowed(W, l), _windowed(W, u)
        jstar = lw.argmax(axis=1)
        lmax = lw[np.arange(W.shape[0]), jstar]
        live = (W >= 0) & ((uw > lmax[:, None]) | (np.arange(W.shape[1]) == jstar[:, None]))
        m = np.zeros(l.size, bool)
        m[W[live & keep[:, None]]] = True
        return [m]

    def encode(self, b, xs, lo, up, own: np.ndarray, l, u, binaries: bool = True):
        """Returns ``((cols, const), (windows, input entries, binary cols))``; without
        ``binaries`` the selection binaries become continuous in [0, 1] (the LP relaxation)."""
        W = self.windows
        xc, xk = xs[0]
        n, K = W.shape
        valid = W >= 0
        Lw, Uw = _windowed(W, l), _windowed(W, u)
        if not (np.isfinite(Lw[valid & own[:, None]]).all()
                and np.isfinite(Uw[valid & own[:, None]]).all()):
            raise ValueError("maxpool input with an infinite bound: cannot build its big-M")
        jstar = Lw.argmax(axis=1)
        Lmax = Lw[np.arange(n), jstar]
        keep = valid & ((Uw > Lmax[:, None]) | (np.arange(K)[None, :] == jstar[:, None]))
        src = W[np.arange(n), jstar]
        cols = xc[src].copy()                               # single survivor: alias it
        const = xk[src].copy()
        multi = np.flatnonzero((keep.sum(axis=1) > 1) & own)
        cols[~own] = -1
        const[~own] = np.nan                                # not encoded: must not be read
        none = (np.zeros(0, np.int64),) * 3
        if multi.size == 0:
            return (cols, const), none
        Umax = Uw[multi].max(axis=1)
        y = b.cols(np.maximum(Lmax[multi], lo[multi]), np.minimum(Umax, up[multi]))
        wi, wj = np.nonzero(keep[multi])                    # kept entries, grouped by window
        srcs = W[multi][wi, wj]
        a = b.cols(np.zeros(wi.size), 1.0, binary=binaries)
        M = Umax[wi] - l[srcs]
        e = np.arange(wi.size)
        m, q = multi.size, wi.size
        xcs, xks = xc[srcs], xk[srcs]
        # rows: y_w - x_j >= 0 (q) ; y_w - x_j + M a_j <= M (q) ; sum_j a_j = 1 (m)
        b.rows(2 * q + m,
               [(e, y[wi], 0, 1.0), (e, xcs, xks, -1.0),
                (e + q, y[wi], 0, 1.0), (e + q, xcs, xks, -1.0), (e + q, a, 0, M),
                (2 * q + wi, a, 0, 1.0)],
               np.concatenate([np.zeros(q), np.full(q, -np.inf), np.ones(m)]),
               np.concatenate([np.full(q, np.inf), M, np.ones(m)]))
        cols[multi] = y
        const[multi] = 0.0
        return (cols, const), (multi[wi], srcs, a if binaries else np.zeros(0, np.int64))

    def onnx_nodes(self, ins: list[str], out: str, const) -> list:
        from onnx import helper
        pad = const(f"{out}_pad", np.full((1, 1), -np.inf, np.float32))
        idx = const(f"{out}_win", self.windows.astype(np.int64))
        # index -1 addresses the appended -inf column, as in apply
        return [helper.make_node("Concat", [ins[0], pad], [f"{out}_p"], axis=1),
                helper.make_node("Gather", [f"{out}_p", idx], [f"{out}_g"], axis=1),
                helper.make_node("ReduceMax", [f"{out}_g"], [out], axes=[2], keepdims=0)]
