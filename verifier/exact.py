"""The exact MILP for one domain, answered in the chosen arithmetic: a proof clears the float32
deviation of the output (in float32 arithmetic), a candidate only counts once replayed.

Used by the pipeline for a whole case and by branch and bound for its small leaves (a domain with
its ReLU phases fixed: their bounds are clamped, so those ReLUs are stable and get no binary).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bounds.engine import Domains, Engine
from .fp import gamma
from .replay import replay
from .encode import encode_network
from .solvers import solve_case
from .solvers.case import unsafe_numbers
from .spec import Case, Property


@dataclass
class Exact:
    status: str                     # verified | falsified | unknown | timeout
    lower: float                    # sound lower bound of the case margin on the domain
    upper: float | None             # the solver's margin claim (or the replayed margin)
    x32: np.ndarray | None = None
    y32: np.ndarray | None = None
    stats: dict | None = None


def output_slack(eng: Engine, dom: Domains, C: np.ndarray) -> float:
    """How much lower any row of ``C y - d`` can be when the model runs in float32 than in real
    arithmetic, over domain 0 of ``dom`` (``Engine.deviation``), rounded up; 0 in real
    arithmetic."""
    if eng.arithmetic != "float32":
        return 0.0
    dev = eng.deviation(dom)[eng.graph.output][0]
    per_row = np.abs(C) @ dev
    return float(np.nextafter(per_row.max(initial=0.0) * (1 + gamma(C.shape[1])), np.inf))


def milp_refusal(eng: Engine, dom: Domains, case: Case) -> str | None:
    """Why the MILP of domain 0 would not be solved at all (its numbers leave the range in which
    HiGHS's answers prove anything, e.g. weights below 1e-10 in oval21's deep and wide nets), or
    None.  The same check ``solve_case`` makes after encoding, made before time is set aside."""
    box = type(case.box)(dom.lower[0][0], dom.upper[0][0])
    net = encode_network(eng.graph, ([v[0] for v in dom.lower], [v[0] for v in dom.upper]), box)
    return unsafe_numbers(net)


def solve_domain(eng: Engine, dom: Domains, case: Case, n_inputs: int, n_outputs: int,
                 time_limit: float, *, start=None, margin_lower=None, threads: int = 1) -> Exact:
    """Decide ``case`` on domain 0 of ``dom`` (its bounds, clamped by its phases, set the big-M
    constants; its box is the domain's) with the MILP.  ``margin_lower``: known sound bounds per
    conjunction (or row), passed to ``solve_case``."""
    graph = eng.graph
    C = case.stacked()[0]
    box = type(case.box)(dom.lower[0][0], dom.upper[0][0])
    sub = Case(box, case.unsafe)
    slack = output_slack(eng, dom, C)
    bounds = ([v[0] for v in dom.lower], [v[0] for v in dom.upper])
    phased = any((p != 0).any() for p in dom.phase.values())
    r = solve_case(graph, bounds, sub, time_limit=max(time_limit, 0.01), start=start,
                   margin_lower=margin_lower, threads=threads, need=slack, guard=not phased)
    stats = dict(r.stats)
    lower = r.margin_lower
    status = r.status
    if slack and np.isfinite(lower):
        stats["float32_slack"] = slack
        lower = float(np.nextafter(lower - slack, -np.inf))
        if status == "verified" and lower <= 0:
            status = "unknown"
    if status == "verified":
        return Exact("verified", lower, r.margin_upper, stats=stats)
    if status == "candidate" and r.x_candidate is not None:
        rep = replay(graph.model_bytes, r.x_candidate, Property((sub,), n_inputs, n_outputs),
                     project=True)
        stats["replay"] = rep.reason or "ok"
        if rep.ok:
            return Exact("falsified", lower, rep.margin, rep.x32, rep.y32, stats)
        return Exact("unknown", lower, r.margin_upper, stats=stats)
    return Exact("timeout" if status == "timeout" else "unknown", lower, r.margin_upper,
                 stats=stats)
