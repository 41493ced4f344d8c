"""Sound bounds on every node of a layer graph over an input box: the bound ladder.

    interval  →  symbolic (CROWN/DeepPoly back-substitution)  →  lp (per-neuron LP)  →  milp

Levels are cumulative (each starts from the previous one's bounds and only ever tightens them).
Every bound holds for the exact real-arithmetic network and for ``Graph.forward`` in float64: float
error is charged explicitly and results are rounded outward (``_fp``); LP bounds are rebuilt from
the solver's duals by weak duality, never taken from its objective value.  The ``milp`` level is the
exception: it trusts HiGHS's MIP dual bound minus a tolerance margin (see ``lp._milp_margin``).

    b = compute_bounds(graph, box, level="symbolic", C=C, d=d)
    b.lower[i], b.upper[i]            # node i, flat arrays
    b.margin_lower, b.margin_upper    # bounds on C @ y - d (if C given)
    b.report.to_dict()                # per-level stable/unstable ReLU counts and times
"""
from __future__ import annotations

import time

import numpy as np

from ..graph import Graph
from .core import Bounds, BoundsReport, Context, LevelStats, intersect, relu_stats
from .interval import interval_bounds, interval_margin_bounds
from .lp import lp_bounds, lp_margin_bounds
from .symbolic import margin_bounds, symbolic_bounds

LEVELS = ("interval", "symbolic", "lp", "milp")

__all__ = ["compute_bounds", "Bounds", "BoundsReport", "LevelStats", "LEVELS"]


def _box_arrays(box, lower, upper):
    if box is not None:
        if hasattr(box, "lower"):
            return box.lower, box.upper
        return box
    return lower, upper


def compute_bounds(graph: Graph, box=None, level: str = "symbolic", C=None, d=None,
                   time_budget: float | None = None, *, lower=None, upper=None,
                   neuron_time: float | None = None, margin_lp: bool = True) -> Bounds:
    """Sound bounds for every node of ``graph`` over the input ``box``.

    ``box``: a ``spec.Box`` (or any object with ``lower``/``upper``, or a ``(lower, upper)`` pair);
    alternatively pass ``lower=``/``upper=`` arrays.  ``level``: one of ``LEVELS``.  ``C`` (k x
    n_outputs) and ``d`` (k,): also bound the property margins ``C @ y - d`` row by row, by
    back-substitution from ``C`` (and, at the lp/milp levels, the lower bounds by one LP per row).
    ``time_budget``: seconds for each of the lp and milp levels, margin LPs included (shared out
    per layer as it goes; neurons not reached keep their earlier bounds).  ``neuron_time``: cap
    per solve (default: none for LPs, 10 s for MILPs).  ``margin_lp``: at the lp/milp levels, also
    bound each margin row by an LP over the whole network.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown bound level {level!r}; expected one of {LEVELS}")
    blo, bhi = _box_arrays(box, lower, upper)
    ctx = Context(graph, blo, bhi)
    report = BoundsReport()

    C, d = _check_property(graph, C, d)
    margins = [None, None]

    def record(name, t0, lo, hi, extra=None, margin=None):
        """Close a level: margins of this level (intersected with earlier ones), counts, time."""
        if margin is not None:
            if margins[0] is not None:
                margin = intersect(margins[0], margins[1], *margin)
            margins[:] = margin
        st = LevelStats(name, time.perf_counter() - t0, relu_stats(graph, lo, hi), extra or {})
        if margins[0] is not None:
            st.margin_lower, st.margin_upper = margins[0].copy(), margins[1].copy()
        report.levels.append(st)

    t0 = time.perf_counter()
    lo, hi = interval_bounds(ctx)
    record("interval", t0, lo, hi, margin=None if C is None else
           interval_margin_bounds(lo[graph.output], hi[graph.output], C, d))
    if level != "interval":
        t0 = time.perf_counter()
        lo, hi = symbolic_bounds(ctx, lo, hi)
        record("symbolic", t0, lo, hi,
               margin=None if C is None else margin_bounds(ctx, lo, hi, C, d))
    do_margin_lp = C is not None and margin_lp
    for name in [n for n in ("lp", "milp") if LEVELS.index(n) <= LEVELS.index(level)]:
        t0 = time.perf_counter()
        end = None if time_budget is None else t0 + float(time_budget)
        is_milp = name == "milp"
        nt = (10.0 if neuron_time is None else neuron_time) if is_milp else neuron_time
        lo, hi, cnt = lp_bounds(ctx, lo, hi, end, milp=is_milp, neuron_time=nt,
                                extra_slots=int(do_margin_lp))
        margin = None
        if C is not None:      # symbolic margins again (earlier layers are tighter now), then LP
            margin = margin_bounds(ctx, lo, hi, C, d)
            if do_margin_lp:
                margin = intersect(*margin, *lp_margin_bounds(ctx, lo, hi, C, d, end,
                                                              upper_too=False))
        record(name, t0, lo, hi, cnt, margin)

    if C is not None:
        report.margin_lower, report.margin_upper = margins
    return Bounds(lo, hi, level, report, margins[0], margins[1])


def _check_property(graph: Graph, C, d):
    if C is None:
        return None, None
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    d = np.zeros(C.shape[0]) if d is None else np.asarray(d, dtype=np.float64).ravel()
    if C.shape[1] != graph.n_outputs or d.shape != (C.shape[0],):
        raise ValueError(f"C must be (k, {graph.n_outputs}) and d (k,); got {C.shape}, {d.shape}")
    return C, d
