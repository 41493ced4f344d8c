"""Sound lower bounds on an LP's optimum from any row multipliers: the one weak-duality routine.

For the model ``min c x + offset`` s.t. ``rl <= A x <= ru``, ``lb <= x <= ub`` and any ``y``:
``c x = y (A x) + r x`` with ``r = c - A^T y``; ``y_i (A x)_i >= y_i rl_i`` if ``y_i >= 0`` else
``y_i ru_i``, and ``r_j x_j >= min(r_j lb_j, r_j ub_j)``.  Multipliers pointing at an infinite row
bound are zeroed first (still a valid ``y``).  ``r`` is computed in float: its error, at most
``gamma(nnz_col + 1) (|c| + |A|^T |y|)`` per column, is charged against ``|x_j| <= max(|lb_j|,
|ub_j|)``; the two sums get a ``gamma(m + n)`` relative error term; the result is rounded down.
Both ``y`` and ``-y`` are tried, so a solver's sign convention does not matter.  Nothing read back
from a solver is trusted beyond this: a wrong or stale ``y`` only gives a weaker bound.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..fp import TINY, absmax, down, gamma


class DualBound:
    """Weak-duality bounds for one model, for many objectives and multipliers."""

    def __init__(self, model):
        self.model = model
        self.AT = sp.csr_array(model.A.T)
        self.absAT = abs(self.AT)
        self.g_col = gamma(int(np.diff(self.AT.indptr).max(initial=0)) + 1)
        self.g_sum = gamma(model.A.shape[0] + model.A.shape[1])
        mag = absmax(model.lb, model.ub)
        self.colmag = np.where(np.isfinite(mag), mag, np.inf)

    def bound(self, y, c: np.ndarray | None = None, offset: float | None = None) -> float:
        """A sound lower bound of ``min c x + offset`` (default: the model's objective) over the
        model's polytope, from multipliers ``y``; ``-inf`` if the needed bounds are infinite."""
        m = self.model
        c = m.c if c is None else np.asarray(c, np.float64)
        offset = m.offset if offset is None else float(offset)
        y0 = np.nan_to_num(np.asarray(y, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        best = -np.inf
        for y in (y0, -y0):
            best = max(best, self._one(c, offset, y))
        return best

    def _one(self, c, offset, y) -> float:
        m = self.model
        y = np.where((y > 0) & np.isneginf(m.rl), 0.0, y)
        y = np.where((y < 0) & np.isposinf(m.ru), 0.0, y)
        r = c - self.AT @ y
        with np.errstate(invalid="ignore"):
            row = np.where(y > 0, y * np.where(y > 0, m.rl, 0.0),
                           np.where(y < 0, y * np.where(y < 0, m.ru, 0.0), 0.0))
            col = np.where(r > 0, r * np.where(r > 0, m.lb, 0.0),
                           np.where(r < 0, r * np.where(r < 0, m.ub, 0.0), 0.0))
        if not (np.all(np.isfinite(row)) and np.all(np.isfinite(col))):
            return -np.inf
        total = row.sum() + col.sum() + offset
        with np.errstate(invalid="ignore"):
            cerr = self.g_col * (np.abs(c) + self.absAT @ np.abs(y))
            e_red = float(np.sum(np.where(cerr > 0, cerr * self.colmag, 0.0)))
        err = e_red + self.g_sum * (np.abs(row).sum() + np.abs(col).sum() + abs(offset)) \
            + (m.A.shape[0] + m.A.shape[1] + 2) * TINY
        if not np.isfinite(err):
            return -np.inf
        return float(down(total - err))


def lp_dual_bound(model, row_dual) -> float:
    """``DualBound(model).bound(row_dual)``: one bound, no reuse."""
    return DualBound(model).bound(row_dual)
