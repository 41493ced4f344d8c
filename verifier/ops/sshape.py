"""S-shaped activations: elementwise ``y = sigmoid(x)`` and ``y = tanh(x)`` of one node.

Both are increasing, convex for ``x <= 0`` and concave for ``x >= 0``, and point-symmetric:
``f(-x) = c - f(x)`` (``c = 1`` for sigmoid, ``0`` for tanh).  Their rules:

- interval: ``[f(l), f(u)]`` widened by ``ORT_ERROR`` (below);
- relaxation on ``l <= x <= u`` (CROWN / DeepPoly choices), the upper line by case:
  ``u <= 0`` (convex): the chord; ``l >= 0`` (concave): the tangent at the midpoint; ``l < 0 < u``:
  the chord if it stays above the concave part (``f'(u) >= chord slope``), else the tangent at the
  ``d`` in ``[0, u]`` whose tangent passes through ``(l, f(l))`` (found by bisection), or at the
  midpoint when that is larger (every tangent at ``p >= d`` passes above ``(l, f(l))``, and the one
  at the midpoint has the least area: on ``[-0.1, 447]`` the line through ``(l, f(l))`` reaches
  112 at ``u``, the midpoint tangent stays below 1.0000011).  The lower
  line is the upper line of ``[-u, -l]`` mirrored through the symmetry.  No slope is free
  (``free`` None), so slope optimisation leaves these nodes alone;
- MILP / LP: no binaries, only the two lines and a few more tangents as rows: a linear *outer*
  approximation, so a solver can prove with it but its points are no network evaluations (they
  are forward-evaluated and replayed before anything is called a counterexample);
- ``error_bound(e) = L e + ORT_ERROR`` (Lipschitz ``L`` = 1/4 for sigmoid, 1 for tanh).

Soundness.  A computed line is not trusted as it comes out of the float formulas: every line is
*lifted* (its offset raised, rounding up) until it lies above rigorous upper bounds of ``f`` or of
an exact tangent at check points that prove it above ``f`` on the whole interval (``_upper``).
Every float64 value of ``f`` and ``f'`` is charged ``REL`` relative error, far more than the few
ulps numpy and scipy are off by.  The lines are then widened by

- ``ORT_ERROR``: onnxruntime's float32 Sigmoid and Tanh (MLAS rational approximations) are not
  correctly rounded; their absolute error over every float32 input, measured by
  ``benchmarks/sshape_error.py`` (onnxruntime 1.32.0, x86-64 with AVX-512), is at most 1.78e-7
  (Sigmoid, near x = 16) and 3.25e-7 (Tanh, near x = 8.5, where it returns 1.0000002); ``ORT_ERROR``
  is 1e-6, about 3 to 5 times that.  ``tests/test_sshape.py`` re-measures it on the installed
  onnxruntime.  It is charged in both arithmetics: the nodes do not know which one the engine
  proves for, and in real arithmetic it only loosens the bounds by 1e-6 per activation;
- ``gamma(1) |slope| max(|l|, |u|)``: the engine treats a product of a coefficient with a slope
  outside ``Relaxation.free`` as exact (true for ReLU's 0/1 slopes); this margin covers its
  rounding with these slopes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from ..fp import TINY, absmax, down, gamma, up
from .base import Node, Relaxation

ORT_ERROR = 1e-6          # |onnxruntime's float32 f(x) - f(x)|, every float32 x (see above)
REL = 2.0 ** -40          # relative error charged on each float64 value of f and f'
BISECT_STEPS = 30         # the tangent point d to u / 2^30: the lift makes any d sound
MIN_SLOPE = 1e-9          # MILP rows with smaller slopes are left out (HiGHS drops such entries;
                          # the column bounds already say what they would, to slope x width)


def _lift(s, t, checks):
    """The smallest offset ``>= t`` (rounded up) with ``s x + offset >= need`` exactly at every
    check ``(x, need)``."""
    deficit = np.zeros_like(t)
    for x, need in checks:
        v = s * x + t
        low = v - (gamma(2) * (np.abs(s * x) + np.abs(t)) + TINY)      # <= the exact s x + t
        d = need - low
        deficit = np.maximum(deficit, d + gamma(1) * np.abs(d))
    return np.where(deficit > 0, up(t + deficit), t)


@dataclass(eq=False)
class SShaped(Node):
    """One S-shaped activation per entry (see the module docstring); subclasses give ``f``."""
    center = 0.0          # f(-x) = center - f(x)
    lipschitz = 1.0
    outer = True          # its MILP rows hold more than the function (see encode)

    @staticmethod
    def f(x):
        raise NotImplementedError

    @staticmethod
    def df(x):
        raise NotImplementedError

    # -- rigorous values -------------------------------------------------------------------------
    def _f_hi(self, x):
        v = self.f(x)
        return up(v + (REL * np.abs(v) + TINY))

    def _f_lo(self, x):
        v = self.f(x)
        return down(v - (REL * np.abs(v) + TINY))

    def _tangent_hi(self, p, x):
        """An upper bound of the exact tangent at ``p``, ``f(p) + f'(p) (x - p)``, at ``x``."""
        fp, dp = self.f(p), self.df(p)
        dx = dp * (x - p)
        # TINY |x - p|: f' underflows to 0 (|p| > 700) where its relative error is no bound
        return up(fp + dx + (2 * REL * (np.abs(fp) + np.abs(dx)) + TINY * (1 + np.abs(x - p))))

    # -- lines -----------------------------------------------------------------------------------
    def _through(self, l, u):
        """For ``l < 0 < u`` with ``f'(u) < chord slope``: a ``d`` in ``[0, u]`` whose tangent
        passes (just) above ``(l, f(l))``.  The tangent's value at ``l`` rises with ``d`` (``f''
        < 0`` there), from below ``f(l)`` at ``d = 0`` (f is convex left of 0)."""
        a, b, fl = np.zeros_like(l), u.copy(), self.f(l)
        for _ in range(BISECT_STEPS):
            m = a / 2 + b / 2
            above = self.f(m) + self.df(m) * (l - m) >= fl
            a, b = np.where(above, a, m), np.where(above, m, b)
        return b

    def _upper(self, l, u, at=None):
        """Lines ``s x + t >= f(x)`` for every real ``x`` in ``[l, u]``: the CROWN choice, or with
        ``at`` the tangent at ``max(at, 0)`` (lifted), where ``u > 0``.

        Why the checks suffice: for ``u <= 0`` f is convex on the interval, so a line above ``f``
        at both ends is above it everywhere.  Otherwise the line is built on an exact tangent
        ``T_p`` at ``p >= 0``, which lies above the concave ``f`` on ``[0, inf)``: a line above
        ``T_p`` at both ends of ``[max(l, 0), u]`` is above ``f`` there; when ``l < 0`` it is also
        above ``f(l)`` at ``l`` and above ``T_p(0) >= f(0)`` at 0, so above ``f`` on the convex
        part ``[l, 0]`` too."""
        f, df = self.f, self.df
        convex, straddle = u <= 0, (l < 0) & (u > 0)
        fl, fu = f(l), f(u)
        sc = np.where(u > l, (fu - fl) / np.where(u > l, u - l, 1.0), df(l))
        chord = convex.copy()
        if at is None:
            chord |= straddle & (df(u) * (u - l) >= fu - fl)
            d = l / 2 + u / 2
            far = straddle & ~chord
            if far.any():               # the tangents at p >= d pass above (l, f(l)); the one
                d = d.copy()            # at the midpoint, if among them, has the least area
                d[far] = np.maximum(self._through(l[far], u[far]), d[far])
        else:
            d = at
        p = np.maximum(np.where(chord, u, d), 0.0)
        s = np.where(chord, sc, df(p))
        t = np.where(chord, fl - sc * l, f(p) - s * p)
        # the values the line must reach: f itself on the convex part, T_p on the concave one
        need_l = np.where(l < 0, self._f_hi(l), self._tangent_hi(p, l))
        need_u = np.where(convex, self._f_hi(u), self._tangent_hi(p, u))
        z = np.where(straddle, 0.0, l)
        need_z = np.where(straddle, self._tangent_hi(p, 0.0), need_l)
        return s, _lift(s, t, [(l, need_l), (z, need_z), (u, need_u)])

    def _lower(self, l, u, at=None):
        """Lines ``s x + t <= f(x)`` on ``[l, u]``: an upper line ``h`` of ``[-u, -l]`` gives
        ``f(x) = c - f(-x) >= c - h(-x) = s x + (c - t)``."""
        s, t = self._upper(-u, -l, None if at is None else -at)
        return s, down(self.center - t)

    def _lines(self, l, u, at_lo=None, at_up=None):
        """Lower and upper lines widened by onnxruntime's error and the engine's product rounding;
        constant lines (the interval) where anything is not finite (infinite bounds)."""
        with np.errstate(all="ignore"):
            sl, tl = self._lower(l, u, at_lo)
            su, tu = self._upper(l, u, at_up)
            m = absmax(l, u)
            tl = down(tl - (ORT_ERROR + gamma(1) * np.abs(sl) * m))
            tu = up(tu + (ORT_ERROR + gamma(1) * np.abs(su) * m))
            lo, hi = self.interval(l, u)
            bad = ~(np.isfinite(sl) & np.isfinite(tl) & np.isfinite(su) & np.isfinite(tu))
        if bad.any():
            sl, su = np.where(bad, 0.0, sl), np.where(bad, 0.0, su)
            tl, tu = np.where(bad, lo, tl), np.where(bad, hi, tu)
        return sl, tl, su, tu

    # -- the protocol ----------------------------------------------------------------------------
    def check(self, sizes: list[int]) -> None:
        if len(self.inputs) != 1 or sizes[0] != self.size:
            raise ValueError(f"{self.kind} must keep its input's size")

    def apply(self, xs: list[np.ndarray]) -> np.ndarray:
        return self.f(xs[0])

    def vjp(self, xs, cot: np.ndarray, leak=0.0) -> list[np.ndarray]:
        """``leak`` (scalar or one per sample) floors the derivative at ``leak * L``: a surrogate
        that still sees through saturated units, as the ReLU's leak does through inactive ones."""
        g = self.df(xs[0])
        if np.any(leak):
            leak = np.asarray(leak, np.float64)
            g = np.maximum(g, self.lipschitz * (leak[:, None] if leak.ndim == 1 else leak))
        return [cot * g]

    def interval(self, lo: np.ndarray, hi: np.ndarray):
        with np.errstate(all="ignore"):
            return down(self._f_lo(lo) - ORT_ERROR), up(self._f_hi(hi) + ORT_ERROR)

    def error_bound(self, e: np.ndarray, l=None, u=None) -> np.ndarray:
        """``|f_run(a) - f(b)| <= |f_run(a) - f(a)| + L |a - b| <= ORT_ERROR + L e``."""
        return up(self.lipschitz * e + ORT_ERROR)

    def relax(self, l: np.ndarray, u: np.ndarray) -> Relaxation:
        sl, tl, su, tu = self._lines(l, u)
        return Relaxation(sl, su, tl, tu)

    def support(self, keep: np.ndarray, lo_in: list, hi_in: list) -> list[np.ndarray]:
        return [keep]

    def encode(self, b, xs, lo, up_, own: np.ndarray, l, u, binaries: bool = True):
        """A column per kept entry, bounded by the node's bounds, and as rows the relaxation's two
        lines plus the tangents at both ends of the concave part (upper) and of the convex part
        (lower): an outer approximation whatever ``binaries`` says.  Returns ``((cols, const),
        None)``."""
        xc, xk = xs[0]
        cols = np.full(self.size, -1, np.int64)
        const = np.full(self.size, np.nan)                 # not encoded: must not be read
        k = np.flatnonzero(own)
        if k.size == 0:
            return (cols, const), None
        lk, uk = l[k], u[k]
        y = b.cols(lo[k], up_[k])
        cols[k], const[k] = y, 0.0
        lines = [self._lines(lk, uk)]
        for at_lo, at_up in ((lk, np.maximum(lk, 0.0)), (np.minimum(uk, 0.0), uk)):
            lines.append(self._lines(lk, uk, at_lo, at_up))
        for sl, tl, su, tu in lines:
            for s, t, lower in ((sl, tl, True), (su, tu, False)):
                r = np.flatnonzero(np.abs(s) >= MIN_SLOPE)
                if r.size == 0:
                    continue
                e = np.arange(r.size)
                # rows: y - s x >= t (lower line) or <= t (upper line)
                b.rows(r.size, [(e, y[r], 0, 1.0), (e, xc[k[r]], xk[k[r]], -s[r])],
                       t[r] if lower else -np.inf, np.inf if lower else t[r])
        return (cols, const), None

    def onnx_nodes(self, ins: list[str], out: str, const) -> list:
        from onnx import helper
        return [helper.make_node(type(self).__name__, [ins[0]], [out])]   # Sigmoid, Tanh


def _dsigmoid(x):
    return expit(x) * expit(-x)               # no cancellation in the tails, unlike s (1 - s)


def _dtanh(x):
    return 4.0 * expit(2.0 * x) * expit(-2.0 * x)      # sech^2 x, accurate in the tails


@dataclass(eq=False)
class Sigmoid(SShaped):
    kind, center, lipschitz = "sigmoid", 1.0, 0.25
    f, df = staticmethod(expit), staticmethod(_dsigmoid)


@dataclass(eq=False)
class Tanh(SShaped):
    kind, center, lipschitz = "tanh", 0.0, 1.0
    f, df = staticmethod(np.tanh), staticmethod(_dtanh)
