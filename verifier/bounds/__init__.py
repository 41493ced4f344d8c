"""Sound bounds on every node of a layer graph over an input box: the bound ladder.

    interval  →  symbolic (CROWN back-substitution)  →  alpha (optimised slopes)  →  lp  →  milp

Levels are cumulative (each starts from the previous one's bounds and only ever tightens them).
All of them run on the one engine (``engine``: batched back-substitution over domains, the
float-error proof written once); ``alpha`` optimises the ReLU lower slopes for the margin rows
(``alpha``); ``lp``/``milp`` tighten intermediate bounds with per-neuron LPs/MILPs built by the one
model builder (``lp``).  Every bound holds for the exact real-arithmetic network and for
``Graph.forward`` in float64 and, in ``float32`` arithmetic (the default), for the model as
onnxruntime runs it in float32; LP bounds are rebuilt from the solver's duals by weak duality.  The
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

import numpy as np

from ..graph import Graph
from .engine import Domains, Engine, domains
from .ladder import ALPHA_STEPS, LEVELS, Ladder
from .report import Bounds, BoundsReport, LevelStats

__all__ = ["compute_bounds", "Ladder", "Bounds", "BoundsReport", "LevelStats", "LEVELS",
           "Engine", "Domains", "domains"]


def _box_arrays(box, lower, upper):
    if box is not None:
        if hasattr(box, "lower"):
            return box.lower, box.upper
        return box
    return lower, upper


def compute_bounds(graph: Graph, box=None, level: str = "symbolic", C=None, d=None,
                   time_budget: float | None = None, *, lower=None, upper=None,
                   neuron_time: float | None = None, margin_lp: bool = True,
                   alpha_steps: int = ALPHA_STEPS, alpha_budget: float | None = None,
                   arithmetic: str = "float32") -> Bounds:
    """Sound bounds for every node of ``graph`` over the input ``box``: ``Ladder`` run up to
    ``level`` in one go.

    ``box``: a ``spec.Box`` (or any object with ``lower``/``upper``, or a ``(lower, upper)`` pair);
    alternatively pass ``lower=``/``upper=`` arrays.  ``level``: one of ``LEVELS``.  ``C`` (k x
    n_outputs) and ``d`` (k,): also bound the property margins ``C @ y - d`` row by row.
    ``time_budget``: seconds for each of the lp and milp levels; ``alpha_budget``: for the alpha
    level; ``arithmetic``: ``float32`` (the bounds also hold for the model run by onnxruntime in
    float32) or ``real``; the other arguments as ``Ladder.run``.
    """
    blo, bhi = _box_arrays(box, lower, upper)
    ladder = Ladder(graph, np.asarray(blo, np.float64).ravel(), np.asarray(bhi, np.float64).ravel(),
                    C, d, alpha_steps=alpha_steps, margin_lp=margin_lp, arithmetic=arithmetic)
    return ladder.run(level, budget=time_budget, alpha_budget=alpha_budget,
                      neuron_time=neuron_time)
