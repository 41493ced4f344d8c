"""What solver back ends return, and what ``solve_case`` makes of it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SolveResult:
    """What a back end returns.  ``status`` is one of optimal, infeasible, time_limit,
    interrupted, cutoff, target, limit, unbounded, infeasible_or_unbounded, unknown, error.
    ``objective``: incumbent (primal) value or None; ``dual_bound``: the solver's lower bound (up to
    its tolerances; status "cutoff": no point below the cutoff, and ``dual_bound`` is the cutoff);
    ``x``: incumbent columns (under a cutoff possibly a point above it)."""
    status: str
    objective: float | None
    dual_bound: float
    x: np.ndarray | None
    nodes: int
    gap: float
    time_s: float
    message: str = ""


@dataclass
class CaseResult:
    """``verified``: ``margin_lower > 0`` is sound.  ``candidate``: the solver claims an input
    (``x_candidate``) with margin ``margin_upper <= 0``, to be replayed.  ``unknown`` / ``timeout``:
    neither, with the best bounds known.  ``margin_lower`` is always sound (``-inf`` if nothing is
    known); ``margin_upper`` is the solver's claim, not a proof."""
    status: str
    margin_lower: float
    margin_upper: float | None
    x_candidate: np.ndarray | None
    stats: dict = field(default_factory=dict)
