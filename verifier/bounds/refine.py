"""MILP-refined intermediate bounds: one small MILP per unstable neuron, layer by layer.

What decides mnist_fc for the branch-and-bound verifiers is not the branching but the bounds it
starts from: a neuron that the relaxation calls unstable is often stable once the ReLUs before it
are exact.  For node ``t`` (the input of a ReLU), the model holds the network up to ``t`` with a
binary for every unstable ReLU before it (``encode.encode_network`` restricted to what ``t`` reads,
the float64 network's slack on every row); entry ``j`` is minimised and maximised as ``A[j] x``.

Only the sign is asked first: HiGHS gets a cutoff (``objective_bound``) just past the value that
would prove the side, and stops at the first incumbent that crosses it (``stop_below``), so a proof
takes a few root LPs (mnist_fc 256x4 at eps 0.05: 0.2 s against 2 s at the root without it) and a
failure stops as soon as a point shows the neuron is unstable.  Either way HiGHS's dual bound is a
bound (``mip_tolerance`` and the encoding's own tolerance slack ``case.encoding_deviation``
subtracted, then rounded outward by ``lp.mip_min`` / ``neuron_upper`` / ``neuron_lower``, the
rules ``lp.tighten_node`` uses too), intersected with what was known.

Neurons are taken closest to a decided sign first; those the margin does not see (zero coefficient
at the ReLU times the intercept of its upper line) last.  With
``workers > 1`` the neurons of a node are shared among worker processes, one HiGHS thread each.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..encode import encode_network, support
from ..fp import absmax, gamma
from ..graph import Relu
from ..solvers import mip_tolerance
from ..solvers.case import encoding_deviation, unsafe_numbers
from .alpha import tighten_node
from .engine import Domains, Engine
from .lp import _Box, _exact_prefix, _objective, _slack, mip_min, neuron_lower, neuron_upper

ROOM = 1e-6          # how far past the proving value the cutoff sits
# stop when, after at least MIN_SOLVES solves, fewer than STOP_RATE of them settled a neuron: on
# mnist_fc 256x4 at eps 0.05 most of the first solves settle one (30 of 31), on ResNet-2B 5 of 38
# did (14 s), time that branch and bound then lacked
MIN_SOLVES, STOP_RATE = 20, 0.25
# primal heuristics only find the points that end a failed proof early, which the first incumbent
# does anyway: without them a proof takes 0.16 s instead of 0.26 s (mnist_fc 256x4, layer 2)
FAST = {"mip_heuristic_effort": 0.0, "mip_heuristic_run_feasibility_jump": False}


def _solve_sides(model, jobs, neuron_time: float, deadline: float) -> list:
    """Minimise each job's objective ``(j, side, idx, val, cutoff)`` over ``model``: HiGHS's dual
    bound (``-inf`` when it says nothing) per job, in order; jobs past ``deadline`` get ``-inf``.
    Runs in a worker process, so it takes plain arrays only."""
    from ..solvers.highs import solve
    out = []
    for j, side, idx, val, cutoff in jobs:
        left = min(neuron_time, deadline - time.perf_counter())
        if left <= 0.01:
            out.append(-np.inf)
            continue
        c = np.zeros(model.n_cols)
        c[idx] = val
        m = replace(model, c=c, offset=0.0)
        try:
            r = solve(m, time_limit=left, cutoff=cutoff, stop_below=cutoff, options=FAST)
        except ValueError:                      # a HiGHS without the feasibility jump option
            r = solve(m, time_limit=left, cutoff=cutoff, stop_below=cutoff,
                      options={"mip_heuristic_effort": 0.0})
        ok = r.status in ("optimal", "cutoff", "time_limit", "interrupted") and \
            np.isfinite(r.dual_bound)
        out.append(float(r.dual_bound) if ok else -np.inf)
    return out


def importance(eng: Engine, dom: Domains, C: np.ndarray, t: int) -> np.ndarray | None:
    """Per entry of node ``t`` (the input of a ReLU): how much its relaxation costs the worst
    margin row (``|coefficient| * u (-l) / (u - l)``), or None if ``t`` feeds no ReLU."""
    relus = [r for r in eng.relu_of.get(t, ()) if isinstance(eng.nodes[r], Relu)]
    if not relus:
        return None
    coef = eng.coefficients(dom, eng.graph.output, C)
    l, u = dom.lower[t][0], dom.upper[t][0]
    with np.errstate(invalid="ignore", divide="ignore"):
        icpt = np.where((l < 0) & (u > 0), u * -l / (u - l), 0.0)
    s = np.zeros(l.size)
    for r in relus:
        if r in coef:
            s = np.maximum(s, np.abs(coef[r][0]).max(axis=0) * icpt)
    return s


def refine_node(eng: Engine, dom: Domains, t: int, deadline: float, neuron_time: float,
                order: np.ndarray | None = None, pool=None, workers: int = 1,
                counters: dict | None = None):
    """MILP bounds for the unstable entries of Linear node ``t`` of domain 0, closest to a sign
    first (entries of zero ``order``, which the margin does not see, last); returns new flat
    ``(lo, hi)``, never looser than before."""
    cnt = counters if counters is not None else {}
    lower = [v[0] for v in dom.lower]
    upper = [v[0] for v in dom.upper]
    lo, hi = lower[t].copy(), upper[t].copy()
    node = eng.nodes[t]
    rows = np.flatnonzero((lo < 0) & (hi > 0))
    if not node.affine or rows.size == 0 or time.perf_counter() >= deadline or \
            _exact_prefix(eng, dom, t):
        return lo, hi
    # the neurons closest to a decided sign first (measured: 9 of the 10 closest on mnist_fc 256x4
    # at eps 0.05 are proved stable, 0.2 s each; the 10 most important none, they are unstable),
    # the ones the margin does not see last
    span = np.maximum(hi[rows] - lo[rows], np.finfo(float).tiny)
    key = np.minimum(-lo[rows], hi[rows]) / span
    if order is not None:
        key = key + (order[rows] <= 0)
    rows = rows[np.argsort(key, kind="stable")]
    keep = support(eng.graph, lower, upper, {j: np.ones(eng.nodes[j].size, bool)
                                             for j in node.inputs})
    model = encode_network(eng.graph, (lower, upper), _Box(lower[0], upper[0]), keep=keep,
                           slack=_slack(eng, dom), binaries=True)
    if model.n_binaries == 0 or unsafe_numbers(model) is not None:
        cnt["refused"] = cnt.get("refused", 0) + 1
        return lo, hi
    enc = encoding_deviation(eng.graph, lower, upper, t)[t]
    colmag = absmax(model.lb, model.ub)
    bias, fwd = node.bias, dom.fwd[t][0]
    # the closer side first: it is the one likeliest proved, and proving it settles the neuron.
    # The cuts: neuron_upper <= 0 needs min(-A x) >= b + f + err, neuron_lower >= 0 needs
    # min(A x) >= f - b + err (err their rounding allowance), each before mip_min's tau
    jobs, meta = [], []
    for j in rows:
        idx, val, const = _objective(node, model, j)
        b, f = float(bias[j]), float(fwd[j])
        err = gamma(3) * (abs(b) + f)
        tau = mip_tolerance(float(np.abs(val) @ colmag[idx]) + abs(const)) + float(enc[j])
        room = ROOM + 1e-9 * (abs(b) + abs(const) + f)
        up_cut = b + f + err + tau + const + room
        lo_cut = f - b + err + tau - const + room
        sides = [("hi", -val, up_cut, -const), ("lo", val, lo_cut, const)]
        if -lo[j] < hi[j]:
            sides.reverse()
        for side, v, cut, k in sides:
            jobs.append((int(j), side, idx, v, cut))
            meta.append((k, tau, b, f))
    duals = _run(model, jobs, neuron_time, deadline, pool, workers)
    for (j, side, *_), (k, tau, b, f), D in zip(jobs, meta, duals):
        if not np.isfinite(D):
            continue
        m = mip_min(D, k, tau)                              # sound min of the side's objective
        if side == "hi":
            hi[j] = min(hi[j], neuron_upper(m, b, f))
        else:
            lo[j] = max(lo[j], neuron_lower(m, b, f))
    solves = int(np.isfinite(duals).sum())
    settled = int(((lo[rows] >= 0) | (hi[rows] <= 0)).sum())
    cnt["solves"] = cnt.get("solves", 0) + solves
    cnt["stabilised"] = cnt.get("stabilised", 0) + settled
    cnt.setdefault("per_node", {})[t] = {"unstable": int(rows.size), "binaries": model.n_binaries,
                                         "solves": solves, "stabilised": settled}
    return lo, hi


def _run(model, jobs, neuron_time, deadline, pool, workers) -> list:
    """``_solve_sides`` over the jobs: in this process, or shared round-robin among ``workers``
    processes of ``pool`` (a neuron's two sides stay together, so a proved first side still
    saves the second)."""
    if pool is None or workers <= 1 or len(jobs) < 4:
        return _skip_settled(model, jobs, neuron_time, deadline)
    pairs = [jobs[i:i + 2] for i in range(0, len(jobs), 2)]
    parts = [sum(pairs[w::workers], []) for w in range(workers)]
    futs = [pool.submit(_skip_settled, model, p, neuron_time, deadline) for p in parts]
    res = [f.result() for f in futs]
    out, pos = [], [0] * workers
    for i in range(len(pairs)):
        w = i % workers
        out.extend(res[w][pos[w]:pos[w] + 2])
        pos[w] += 2
    return out


def _skip_settled(model, jobs, neuron_time, deadline) -> list:
    """``_solve_sides``, skipping a neuron's second side when the first proved its sign."""
    out = []
    i = 0
    while i < len(jobs):
        first = _solve_sides(model, jobs[i:i + 1], neuron_time, deadline)[0]
        out.append(first)
        if first >= jobs[i][4]:                     # cut reached: the sign is proved
            out.append(-np.inf)
        else:
            out.extend(_solve_sides(model, jobs[i + 1:i + 2], neuron_time, deadline))
        i += 2
    return out


def refine_bounds(eng: Engine, dom: Domains, C: np.ndarray, end: float, neuron_time: float,
                  workers: int = 1, alpha_steps: int = 0) -> dict:
    """Tighten domain 0's intermediate bounds node by node (topological order) with per-neuron
    MILPs until ``end`` (``time.perf_counter()``); each node's CROWN bounds are redone first from
    the tightened earlier nodes (and its slopes optimised, ``alpha_steps`` steps).  The time left
    is shared among the nodes still to do.  Stops
    early when the solves rarely settle a neuron (``MIN_SOLVES``, ``STOP_RATE``).  Returns the
    counters (solves, neurons stabilised, time, why it stopped early)."""
    t0 = time.perf_counter()
    targets = [i for i in eng.needed if i != eng.graph.output and eng.relu_of.get(i)]
    counters: dict = {"nodes": 0}
    pool = None
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
    prev = None                                    # the last node refined
    try:
        for n_done, t in enumerate(targets):
            if time.perf_counter() >= end:
                break
            now = time.perf_counter()
            deadline = now + max(0.0, end - now) / (len(targets) - n_done)
            if prev is not None:
                # the nodes after the last one refined see tighter inputs: redo them up to t,
                # t with optimised slopes (a whole layer of mnist_fc costs less than one MILP
                # solve, and a neuron it settles needs none)
                eng.bound(dom, upto=t, start=prev + 1)
                if alpha_steps > 0:
                    counters["alpha_rows"] = counters.get("alpha_rows", 0) + tighten_node(
                        eng, dom, t, steps=alpha_steps, deadline=deadline)
            order = importance(eng, dom, C, t)
            lo, hi = refine_node(eng, dom, t, deadline, neuron_time, order, pool, workers,
                                 counters)
            eng._set(dom, t, lo[None], hi[None])
            counters["nodes"] += 1
            prev = t
            solves = counters.get("solves", 0)
            if solves >= MIN_SOLVES and counters.get("stabilised", 0) < STOP_RATE * solves:
                counters["stopped"] = (f"{counters.get('stabilised', 0)} of {solves} solves "
                                       f"settled a neuron")
                break
        if prev is not None:
            eng.bound(dom, start=prev + 1)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
    counters["time_s"] = round(time.perf_counter() - t0, 3)
    return counters
