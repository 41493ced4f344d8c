"""The bound ladder as an object that can be advanced a level at a time.

    interval  →  symbolic (CROWN)  →  alpha (optimised slopes)  →  lp  →  milp

Levels are cumulative (each starts from the previous one's bounds and only ever tightens them), so
a caller can stop as soon as one decides: ``Ladder.run(level)`` runs the levels not yet run up to
``level`` and returns the ``Bounds`` so far.  Margin bounds (of ``C @ y - d``) are intersected over
all levels run.
"""
from __future__ import annotations

import time

import numpy as np

from ..config import Tuning
from ..graph import Graph
from . import alpha as alpha_opt
from .engine import Engine, domains, output_interval
from .lp import lp_bounds, lp_margin_bounds
from .refine import refine_bounds
from .report import Bounds, BoundsReport, LevelStats, relu_stats

LEVELS = ("interval", "symbolic", "alpha", "lp", "milp")
ALPHA_STEPS = 20     # per objective; most of the gain comes in the first 20 (bench_bounds.py)


class Ladder:
    """Bounds of one box, and of the rows of ``C @ y - d`` when ``C`` is given."""

    def __init__(self, graph: Graph, lower, upper, C=None, d=None, *,
                 alpha_steps: int = ALPHA_STEPS, margin_lp: bool = True,
                 arithmetic: str = "float32", memory_gb: float | None = Tuning().memory_gb):
        self.graph = graph
        self.eng = Engine(graph, arithmetic=arithmetic,
                          memory_bytes=None if memory_gb is None else memory_gb * 2**30)
        self.dom = domains(graph, lower, upper)
        self.C, self.d = _check_property(graph, C, d)
        self.alpha_steps = alpha_steps
        self.margin_lp = margin_lp and self.C is not None
        self.report = BoundsReport()
        self.margins = [None, None]
        self.done = -1                        # index in LEVELS of the last level run
        self.slopes = None                    # the margin slopes found so far (warm start)

    # -- bookkeeping --------------------------------------------------------------------------
    def _record(self, name, t0, margin=None, extra=None):
        """Close a level: its margins (intersected with earlier ones), counts, time."""
        m = self.margins
        if margin is not None:
            if m[0] is not None:
                margin = (np.maximum(m[0], margin[0]), np.minimum(m[1], margin[1]))
            m[:] = margin
        lo, hi = self._flat()
        st = LevelStats(name, time.perf_counter() - t0, relu_stats(self.graph, lo, hi),
                        extra or {})
        if m[0] is not None:
            st.margin_lower, st.margin_upper = m[0].copy(), m[1].copy()
        self.report.levels.append(st)

    def _flat(self):
        return [v[0] for v in self.dom.lower], [v[0] for v in self.dom.upper]

    def _crown_margins(self):
        lo, hi = self.eng.margins(self.dom, self.C, self.d, upper=True)
        return lo[0], hi[0]

    def proved(self) -> bool:
        m = self.margins[0]
        return m is not None and m.size > 0 and bool(m.min() > 0)

    def bounds(self) -> Bounds:
        if self.C is not None:
            self.report.margin_lower, self.report.margin_upper = self.margins
        lo, hi = self._flat()
        return Bounds(lo, hi, LEVELS[max(self.done, 0)], self.report, self.margins[0],
                      self.margins[1])

    # -- the levels ---------------------------------------------------------------------------
    def run(self, level: str, budget: float | None = None, alpha_budget: float | None = None,
            neuron_time: float | None = None) -> Bounds:
        """Run the levels after the last one run, up to ``level``.  ``budget``: seconds for each
        of the lp and milp levels (margin LPs included; neurons not reached keep their bounds);
        ``alpha_budget``: seconds for the alpha level; ``neuron_time``: cap per LP/MILP solve
        (default: none for LPs, 10 s for MILPs)."""
        if level not in LEVELS:
            raise ValueError(f"unknown bound level {level!r}; expected one of {LEVELS}")
        for k in range(self.done + 1, LEVELS.index(level) + 1):
            name = LEVELS[k]
            t0 = time.perf_counter()
            if name == "interval":
                self.eng.interval(self.dom)
                out = self.graph.output
                self._record(name, t0, None if self.C is None else tuple(
                    v[0] for v in output_interval(self.dom.lower[out], self.dom.upper[out],
                                                  self.C, self.d)))
            elif name == "symbolic":
                self.eng.bound(self.dom)
                self._record(name, t0, None if self.C is None else self._crown_margins())
            elif name == "alpha":
                end = None if alpha_budget is None else t0 + float(alpha_budget)
                extra: dict = {}
                self._record(name, t0, self._optimised(extra, end), extra)
            else:
                self._solver_level(name, t0, budget, neuron_time)
            self.done = k
        return self.bounds()

    def refine(self, budget: float, neuron_time: float, workers: int = 1) -> Bounds:
        """MILP-refined intermediate bounds (``refine.refine_bounds``) for ``budget`` seconds, then
        the margins again: CROWN, and optimised slopes in a third of the time used (recorded as
        levels ``milp-refine`` and ``milp-refine+alpha``)."""
        t0 = time.perf_counter()
        cnt = refine_bounds(self.eng, self.dom, self.C, t0 + budget, neuron_time, workers,
                            self.alpha_steps)
        self._record("milp-refine", t0, None if self.C is None else self._crown_margins(), cnt)
        if self.C is not None and not self.proved():
            t1 = time.perf_counter()
            extra: dict = {}
            self._record("milp-refine+alpha", t1,
                         self._optimised(extra, t1 + max(budget / 3, 1.0)), extra)
        return self.bounds()

    def _optimised(self, extra: dict, end: float | None):
        """Slopes for the margins; if that does not prove them and time is left, slopes for the
        intermediate bounds too (node by node), then for the margins again."""
        if self.C is None or self.C.shape[0] == 0 or self.alpha_steps <= 0 or self.proved():
            return None
        eng, dom, C, d, steps = self.eng, self.dom, self.C, self.d, self.alpha_steps
        proved = lambda lb: lb.min(axis=1) > 0
        r = alpha_opt.optimise(eng, dom, C, d, steps=steps, settled=proved, deadline=end,
                               start=self.slopes, estimate=True)
        its, lower = r.iterations, r.lower[0]
        if lower.min() <= 0 and (end is None or time.perf_counter() < end):
            extra["alpha_rows"] = alpha_opt.tighten_intermediate(eng, dom, steps=steps,
                                                                 deadline=end)
            r = alpha_opt.optimise(eng, dom, C, d, steps=steps, settled=proved, deadline=end,
                                   start=r.alpha, estimate=True)
            its += r.iterations
            lower = np.maximum(lower, r.lower[0])
        self.slopes = r.alpha
        extra["alpha_iterations"] = its
        return lower, np.full(C.shape[0], np.inf)

    def _solver_level(self, name: str, t0: float, budget, neuron_time) -> None:
        end = None if budget is None else t0 + float(budget)
        is_milp = name == "milp"
        nt = (10.0 if neuron_time is None else neuron_time) if is_milp else neuron_time
        cnt = lp_bounds(self.eng, self.dom, end, milp=is_milp, neuron_time=nt,
                        extra_slots=int(self.margin_lp))
        if self.C is None:
            self._record(name, t0, None, cnt)
            return
        margin = self._crown_margins()          # earlier layers are tighter now
        if self.margin_lp:
            lo, hi = lp_margin_bounds(self.eng, self.dom, self.C, self.d, end, upper_too=False)
            margin = (np.maximum(margin[0], lo), np.minimum(margin[1], hi))
        self._record(name, t0, margin, cnt)
        if self.done >= LEVELS.index("alpha") and not self.proved():
            t1 = time.perf_counter()
            extra: dict = {}
            self._record(f"{name}+alpha", t1, self._optimised(extra, end), extra)


def _check_property(graph: Graph, C, d):
    if C is None:
        return None, None
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    d = np.zeros(C.shape[0]) if d is None else np.asarray(d, dtype=np.float64).ravel()
    if C.shape[1] != graph.n_outputs or d.shape != (C.shape[0],):
        raise ValueError(f"C must be (k, {graph.n_outputs}) and d (k,); got {C.shape}, {d.shape}")
    return C, d
