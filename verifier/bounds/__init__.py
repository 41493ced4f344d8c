"""Sound bounds on every node of a layer graph over an input box: the bound ladder.

    interval  →  symbolic (CROWN back-substitution)  →  alpha (optimised slopes)  →  lp  →  milp

Levels are cumulative (each starts from the previous one's bounds and only ever tightens them).
All of them run on the one engine (``engine``: batched back-substitution over domains, the
float-error proof written once); ``alpha`` optimises the ReLU lower slopes for the margin rows
(``alpha``); ``lp``/``milp`` tighten intermediate bounds with per-neuron LPs/MILPs built by the one
model builder (``lp``).  Every bound holds for the exact real-arithmetic network and for
``Graph.forward`` in float64; LP bounds are rebuilt from the solver's duals by weak duality.  The
``milp`` level is the exception: it trusts HiGHS's MIP dual bound minus ``solvers.mip_tolerance``.

Where things go: a new node kind is a file in ``verifier/ops``; a new relaxation of an existing
kind is its ``relax`` method; a new bound level is a function here (or a module beside ``lp``) that
takes and tightens a ``Domains`` through the engine, and a name in ``LEVELS``.

    b = compute_bounds(graph, box, level="symbolic", C=C, d=d)
    b.lower[i], b.upper[i]            # node i, flat arrays
    b.margin_lower, b.margin_upper    # bounds on C @ y - d (if C given)
    b.report.to_dict()                # per-level stable/unstable ReLU counts and times
"""
from __future__ import annotations

import time

import numpy as np

from ..graph import Graph
from . import alpha as alpha_opt
from .engine import Domains, Engine, domains, output_interval
from .lp import lp_bounds, lp_margin_bounds
from .report import Bounds, BoundsReport, LevelStats, relu_stats

LEVELS = ("interval", "symbolic", "alpha", "lp", "milp")
ALPHA_STEPS = 20          # optimisation steps of the alpha level (see bench_bounds.py)

__all__ = ["compute_bounds", "Bounds", "BoundsReport", "LevelStats", "LEVELS", "Engine",
           "Domains", "domains"]


def _box_arrays(box, lower, upper):
    if box is not None:
        if hasattr(box, "lower"):
            return box.lower, box.upper
        return box
    return lower, upper


def compute_bounds(graph: Graph, box=None, level: str = "symbolic", C=None, d=None,
                   time_budget: float | None = None, *, lower=None, upper=None,
                   neuron_time: float | None = None, margin_lp: bool = True,
                   alpha_steps: int = ALPHA_STEPS) -> Bounds:
    """Sound bounds for every node of ``graph`` over the input ``box``.

    ``box``: a ``spec.Box`` (or any object with ``lower``/``upper``, or a ``(lower, upper)`` pair);
    alternatively pass ``lower=``/``upper=`` arrays.  ``level``: one of ``LEVELS``.  ``C`` (k x
    n_outputs) and ``d`` (k,): also bound the property margins ``C @ y - d`` row by row, by
    back-substitution from ``C`` (optimised slopes from the alpha level on; at the lp/milp levels
    also one LP per row).  ``time_budget``: seconds for each of the lp and milp levels, margin LPs
    included (shared out per layer as it goes; neurons not reached keep their earlier bounds).
    ``neuron_time``: cap per solve (default: none for LPs, 10 s for MILPs).  ``margin_lp``: at the
    lp/milp levels, also bound each margin row by an LP over the whole network.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown bound level {level!r}; expected one of {LEVELS}")
    blo, bhi = _box_arrays(box, lower, upper)
    blo = np.asarray(blo, dtype=np.float64).ravel()
    bhi = np.asarray(bhi, dtype=np.float64).ravel()
    eng = Engine(graph)
    dom = domains(graph, blo, bhi)
    report = BoundsReport()
    C, d = _check_property(graph, C, d)
    margins = [None, None]
    upto = LEVELS.index(level)

    def record(name, t0, margin=None, extra=None):
        """Close a level: margins of this level (intersected with earlier ones), counts, time."""
        if margin is not None:
            if margins[0] is not None:
                margin = (np.maximum(margins[0], margin[0]), np.minimum(margins[1], margin[1]))
            margins[:] = margin
        flat_lo, flat_hi = [v[0] for v in dom.lower], [v[0] for v in dom.upper]
        st = LevelStats(name, time.perf_counter() - t0, relu_stats(graph, flat_lo, flat_hi),
                        extra or {})
        if margins[0] is not None:
            st.margin_lower, st.margin_upper = margins[0].copy(), margins[1].copy()
        report.levels.append(st)

    def crown_margins():
        lo, hi = eng.margins(dom, C, d, upper=True)
        return lo[0], hi[0]

    t0 = time.perf_counter()
    eng.interval(dom)
    out = graph.output
    record("interval", t0, None if C is None else
           tuple(v[0] for v in output_interval(dom.lower[out], dom.upper[out], C, d)))
    if upto >= 1:
        t0 = time.perf_counter()
        eng.bound(dom)
        record("symbolic", t0, None if C is None else crown_margins())
    use_alpha = upto >= 2 and C is not None and alpha_steps > 0

    def optimised(extra: dict):
        if not use_alpha or margins[0].min() > 0:
            return None
        r = alpha_opt.optimise(eng, dom, C, d, steps=alpha_steps,
                               done=lambda lb: bool(lb.min() > 0))
        extra["alpha_iterations"] = extra.get("alpha_iterations", 0) + r.iterations
        return r.lower[0], np.full(C.shape[0], np.inf)

    if upto >= 2:
        t0 = time.perf_counter()
        extra: dict = {}
        record("alpha", t0, optimised(extra), extra)
    do_margin_lp = C is not None and margin_lp
    for name in ("lp", "milp")[: max(0, upto - 2)]:
        t0 = time.perf_counter()
        end = None if time_budget is None else t0 + float(time_budget)
        is_milp = name == "milp"
        nt = (10.0 if neuron_time is None else neuron_time) if is_milp else neuron_time
        cnt = lp_bounds(eng, dom, end, milp=is_milp, neuron_time=nt,
                        extra_slots=int(do_margin_lp))
        margin = None
        if C is not None:      # CROWN margins again (earlier layers are tighter now), then LP
            margin = crown_margins()
            if do_margin_lp:
                lo, hi = lp_margin_bounds(eng, dom, C, d, end, upper_too=False)
                margin = (np.maximum(margin[0], lo), np.minimum(margin[1], hi))
            record(name, t0, margin, cnt)
            if use_alpha and margins[0].min() <= 0:
                t0 = time.perf_counter()
                extra = {}
                record(f"{name}+alpha", t0, optimised(extra), extra)
        else:
            record(name, t0, None, cnt)

    if C is not None:
        report.margin_lower, report.margin_upper = margins
    return Bounds([v[0] for v in dom.lower], [v[0] for v in dom.upper], level, report,
                  margins[0], margins[1])


def _check_property(graph: Graph, C, d):
    if C is None:
        return None, None
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    d = np.zeros(C.shape[0]) if d is None else np.asarray(d, dtype=np.float64).ravel()
    if C.shape[1] != graph.n_outputs or d.shape != (C.shape[0],):
        raise ValueError(f"C must be (k, {graph.n_outputs}) and d (k,); got {C.shape}, {d.shape}")
    return C, d
