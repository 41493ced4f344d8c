"""HiGHS back end: the only module of the package that imports highspy.

Two ways in: ``solve(model, ...)`` minimises one encoded MILP / LP; ``Session(model)`` holds one
model and re-solves it for many objectives (per-neuron LP/MILP bound tightening: only the objective
changes, so dual simplex starts from the previous basis).  Nothing read back is trusted as a bound
by itself: LP bounds are rebuilt from the row duals (``dual.DualBound``); MIP dual bounds count only
after ``case.tolerance`` is subtracted.

Option choices (all explicit in ``_OPTIONS``; measured on the mnist_fc 256x2/4/6 models):

- ``threads = 1``: HiGHS's thread pool is per process; one process per core scales better.  A
  solve asking for another thread count than the running pool fails in HiGHS; we then restart
  the pool (``resetGlobalScheduler``) and retry once.
- ``presolve_rule_off = 16384`` (Sparsify off): on dense big-M models the Sparsify presolve rule
  ran 4–12 s past a 2 s ``time_limit`` (256x4: 4.4 s of presolve → 0.23 s without it, removing 0 %
  of nonzeros either way).  Presolve itself stays on: it shrinks the 256x2 model from 205 k to
  10 k nonzeros, and without it the root node alone used 20 s.
- ``small_matrix_value = 1e-12`` (its minimum): entries below it are dropped; the default 1e-9
  would silently change the network's weights.
- ``mip_rel_gap`` / ``mip_abs_gap`` only matter when the value (not just the sign) is wanted.
- Time: ``time_limit`` is passed to HiGHS and also enforced by the MIP interrupt callback on the
  wall clock; ``isolate=True`` runs the solve in a child process killed at the limit (+ grace), the
  only hard guarantee when some phase (presolve) does not look at the clock.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import replace
import sys
import time

import numpy as np

from .dual import lp_dual_bound
from .result import SolveResult

PRIMAL_TOL = MIP_TOL = 1e-9       # HiGHS feasibility tolerances (see case.encoding_slack)

_OPTIONS = {
    "output_flag": False,
    "threads": 1,
    "random_seed": 0,
    "presolve_rule_off": 16384,
    "small_matrix_value": 1e-12,
    # tighter than HiGHS's 1e-7 / 1e-6: a binary 1e-6 off 0/1 lets a big-M row move its neuron
    # by 1e-6 M, which ``case.encoding_slack`` must charge to every MILP proof
    "primal_feasibility_tolerance": PRIMAL_TOL,
    "mip_feasibility_tolerance": MIP_TOL,
}


def new_highs():
    """A silent ``highspy.Highs`` object.  highspy 1.16 prints its banner on the C-level stdout when
    the first object of a process is constructed, before any option can be set, which breaks
    ``--json``: the constructor runs with file descriptor 1 pointed at /dev/null (cheap; done for
    every object, so a release that prints on each construction is covered too)."""
    import highspy
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    return h


def _pass(h, model):
    """Hand ``model`` (standard form, see ``verifier.encode``) to ``h`` in one bulk call."""
    import highspy
    A = model.A.tocsc()
    inf = highspy.kHighsInf
    return h.passModel(model.n_cols, model.n_rows, int(A.nnz), 1, 1, float(model.offset),
                       np.ascontiguousarray(model.c, np.float64), model.lb, model.ub,
                       np.clip(model.rl, -inf, inf), np.clip(model.ru, -inf, inf),
                       A.indptr.astype(np.int32), A.indices.astype(np.int32),
                       A.data.astype(np.float64), model.integrality.astype(np.int32))


class Session:
    """One model in one HiGHS object, minimised for many objectives in turn.  Presolve is off, so
    the objective-bound cutoff works and (for LPs) dual simplex starts from the previous basis;
    for MILPs the gaps are 0 (the value, not just its sign, is wanted)."""

    def __init__(self, model, threads: int = 1):
        import highspy
        self.h = h = new_highs()
        self.mip = bool(model.integrality.any())
        for k, v in {"presolve": "off", "threads": int(threads), "random_seed": 0,
                     "small_matrix_value": 1e-12}.items():
            h.setOptionValue(k, v)
        if not self.mip:
            h.setOptionValue("solver", "simplex")
            h.setOptionValue("simplex_strategy", 1)       # dual simplex: the cutoff needs it
        else:
            h.setOptionValue("mip_rel_gap", 0.0)
            h.setOptionValue("mip_abs_gap", 0.0)
        if _pass(h, replace(model, c=np.zeros(model.n_cols), offset=0.0)) \
                == highspy.HighsStatus.kError:
            raise RuntimeError("HiGHS rejected the model")
        self._prev = np.zeros(0, np.int32)

    def minimise(self, idx: np.ndarray, val: np.ndarray, time_limit: float,
                 cutoff: float | None = None):
        """Minimise ``val . x[idx]``; stop early once the dual objective exceeds ``cutoff``.
        Returns ``(status, row duals or None, info)``: the duals are whatever the solver holds
        (a valid input to ``DualBound`` even when not optimal); ``info`` has ``iterations``,
        ``objective`` and ``mip_dual_bound``."""
        import highspy
        h = self.h
        if self._prev.size:
            h.changeColsCost(self._prev.size, self._prev, np.zeros(self._prev.size))
        self._prev = np.asarray(idx, np.int32)
        h.changeColsCost(self._prev.size, self._prev, np.asarray(val, np.float64))
        # HiGHS's time_limit is checked against the object's cumulative run clock, not per run()
        h.setOptionValue("time_limit", h.getRunTime() + max(float(time_limit), 1e-3))
        h.setOptionValue("objective_bound",
                         float(cutoff) if cutoff is not None and not self.mip else highspy.kHighsInf)
        h.run()
        status = _status_table().get(h.getModelStatus(), "error")
        info = h.getInfo()
        sol = h.getSolution()
        y = np.asarray(sol.row_dual) if sol.dual_valid else None
        return status, y, {"iterations": int(info.simplex_iteration_count),
                           "objective": float(info.objective_function_value),
                           "mip_dual_bound": float(getattr(info, "mip_dual_bound", np.nan))}


def _status_table():
    """HiGHS's model statuses by our names (statuses a release lacks are left out: kHighsInterrupt
    came after 1.10)."""
    import highspy
    S = highspy.HighsModelStatus
    names = {
        "kOptimal": "optimal", "kInfeasible": "infeasible", "kTimeLimit": "time_limit",
        "kInterrupt": "interrupted", "kHighsInterrupt": "interrupted", "kObjectiveBound": "cutoff",
        "kObjectiveTarget": "target", "kSolutionLimit": "limit", "kIterationLimit": "limit",
        "kMemoryLimit": "error", "kUnbounded": "unbounded",
        "kUnboundedOrInfeasible": "infeasible_or_unbounded", "kModelEmpty": "optimal",
        "kUnknown": "unknown", "kNotset": "error", "kLoadError": "error", "kModelError": "error",
        "kPresolveError": "error", "kSolveError": "error", "kPostsolveError": "error",
    }
    return {getattr(S, k): v for k, v in names.items() if hasattr(S, k)}


def solve(model, *, time_limit: float | None = None, start: np.ndarray | None = None,
          cutoff: float | None = None, stop_below: float | None = None, mip_rel_gap: float = 1e-4, mip_abs_gap: float = 1e-6,
          threads: int = 1, options: dict | None = None, isolate: bool = False,
          grace: float = 2.0) -> SolveResult:
    """Minimise ``model`` with HiGHS.

    ``cutoff``: search only for objective values below it (HiGHS ``objective_bound``); status
    ``cutoff`` then means "no point below the cutoff" (``dual_bound`` = the cutoff; ``x`` may hold
    a point above it); otherwise ``dual_bound`` is at most the cutoff.
    ``stop_below``: interrupt once an incumbent falls below the value (the sign of a margin is
    decided).  ``start``: full column vector, a MIP start.
    ``dual_bound`` is the solver's claim (a lower bound up to its tolerances), never the incumbent.
    """
    kw = dict(time_limit=time_limit, start=start, cutoff=cutoff, stop_below=stop_below, mip_rel_gap=mip_rel_gap, mip_abs_gap=mip_abs_gap,
              threads=threads, options=options)
    if not isolate:
        return _solve(model, **kw)
    return _solve_isolated(model, kw, grace)


def _solve(model, *, time_limit, start, cutoff, stop_below, mip_rel_gap, mip_abs_gap,
           threads, options) -> SolveResult:
    import highspy
    t0 = time.perf_counter()
    h = new_highs()
    opts = dict(_OPTIONS, threads=int(threads), mip_rel_gap=float(mip_rel_gap),
                mip_abs_gap=float(mip_abs_gap))
    if time_limit is not None:
        opts["time_limit"] = max(float(time_limit), 0.0)
    if cutoff is not None:
        opts["objective_bound"] = float(cutoff)
    opts.update(options or {})
    for k, v in opts.items():
        if h.setOptionValue(k, v) == highspy.HighsStatus.kError:
            raise ValueError(f"HiGHS rejected option {k}={v!r}")
    st = _pass(h, model)
    if st == highspy.HighsStatus.kError:
        return SolveResult("error", None, -np.inf, None, 0, np.inf,
                           time.perf_counter() - t0, "HiGHS rejected the model")
    is_mip = bool(model.integrality.any())
    if start is not None and is_mip:
        sol = highspy.HighsSolution()
        sol.col_value = np.asarray(start, np.float64).tolist()
        sol.value_valid = True
        h.setSolution(sol)

    seen = {"dual": -np.inf, "why": ""}

    def on_interrupt(e):
        d = e.data_out
        if np.isfinite(d.mip_dual_bound):
            seen["dual"] = max(seen["dual"], d.mip_dual_bound)
        if stop_below is not None and d.mip_primal_bound < stop_below:
            seen["why"] = "incumbent below stop"
            e.interrupt()
        elif time_limit is not None and time.perf_counter() - t0 > time_limit:
            seen["why"] = "wall clock"
            e.interrupt()

    if is_mip:
        h.cbMipInterrupt.subscribe(on_interrupt)
    if (h.run() == highspy.HighsStatus.kError
            and h.getModelStatus() == highspy.HighsModelStatus.kNotset):
        # HiGHS refuses to run when its process-wide scheduler was started (by any earlier solve,
        # ours or another module's) with a different thread count: restart it once and retry
        highspy.Highs.resetGlobalScheduler(True)
        h.run()
    status = _status_table().get(h.getModelStatus(), "error")
    if status == "interrupted" and seen["why"] == "wall clock":
        status = "time_limit"
    info = h.getInfo()
    x = None
    if info.primal_solution_status == 2:           # kSolutionStatusFeasible
        x = np.array(h.getSolution().col_value)
    obj = float(info.objective_function_value) if x is not None else None
    if is_mip:
        dual = float(info.mip_dual_bound)
        if not np.isfinite(dual) and np.isfinite(seen["dual"]) and status != "optimal":
            dual = seen["dual"]                     # e.g. a cutoff run reports -inf at the end
        nodes, gap = int(info.mip_node_count), float(info.mip_gap)
    else:
        # an LP objective is not a proof: rebuild a sound bound from the row duals (valid for any
        # duals, so also after dual simplex stopped at the cutoff; no clamping needed)
        sol = h.getSolution()
        dual = lp_dual_bound(model, np.array(sol.row_dual)) if sol.dual_valid else -np.inf
        nodes, gap = 0, (0.0 if status == "optimal" else np.inf)
        if status == "infeasible":
            dual = _farkas(h, model)
    if cutoff is not None and is_mip:
        # Under a cutoff HiGHS reports "Infeasible", or even "Optimal" with an incumbent above the
        # cutoff (measured: optimum 0.78, cutoff 0.73 → "Optimal" at 1.08), when no point lies
        # below it: both mean "objective >= cutoff" and become "cutoff".  Nodes pruned by the
        # cutoff only guarantee that much, so the dual bound never exceeds the cutoff.
        if status in ("optimal", "infeasible", "cutoff") and (obj is None or obj >= cutoff):
            status, dual = "cutoff", float(cutoff)
        else:
            dual = min(dual, float(cutoff))
    elif status == "infeasible" and is_mip:
        dual = np.inf
    msg = h.modelStatusToString(h.getModelStatus()) + (f" ({seen['why']})" if seen["why"] else "")
    h.clear()
    return SolveResult(status, obj, dual, x, nodes, gap, time.perf_counter() - t0, msg)


def _farkas(h, model) -> float:
    """``+inf`` if HiGHS's dual ray proves the LP infeasible (weak duality with a zero objective
    gives a bound > 0: no point exists), else ``-inf`` (the claim is not trusted)."""
    try:
        _, has, ray = h.getDualRay()
    except Exception:                               # older highspy: no rays
        return -np.inf
    if not has:
        return -np.inf
    from .dual import DualBound
    b = DualBound(model).bound(np.asarray(ray, np.float64), c=np.zeros(model.n_cols), offset=0.0)
    return np.inf if b > 0 else -np.inf


def _child(conn, model, kw):
    try:
        conn.send(_solve(model, **kw))
    except Exception as exc:                        # report, never hang the parent
        conn.send(SolveResult("error", None, -np.inf, None, 0, np.inf, 0.0, repr(exc)))
    finally:
        conn.close()


def _solve_isolated(model, kw, grace: float) -> SolveResult:
    """Run ``_solve`` in a spawned child; kill it (only it, by its handle) past the limit."""
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child, model, kw), daemon=True)
    p.start()
    child.close()
    limit = kw["time_limit"]
    wait = None if limit is None else limit + grace + 1.0   # + start-up of the child interpreter
    res, why = None, "killed at the hard time limit"
    if parent.poll(wait):
        try:
            res = parent.recv()
        except EOFError:
            why = "solver process died"
    if res is None:
        p.kill()
    p.join(5)
    if res is None:
        status = "time_limit" if why.startswith("killed") else "error"
        return SolveResult(status, None, -np.inf, None, 0, np.inf, time.perf_counter() - t0, why)
    res.time_s = time.perf_counter() - t0
    return res
