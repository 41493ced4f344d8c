"""α-CROWN: the lower slopes of unstable ReLUs, optimised per domain and per objective row.

CROWN fixes each unstable ReLU's lower line ``y >= alpha x`` at ``alpha`` in {0, 1}; every
``alpha`` in [0, 1] is valid, and the best choice depends on the objective (Xu et al. 2021,
"Fast and complete", α-CROWN).  Here each row of ``C y - d`` of each domain gets its own slopes,
moved by projected gradient ascent (Adam, clipped to [0, 1]) on that row's lower bound.  The
gradient comes from the engine's reverse pass through the back-substitution (``Engine.objective``
with ``grad=True``), in numpy.  Every iterate's bound is sound, so the best one per row is kept:
optimisation can only tighten, never break, a bound.  With ``estimate`` the iterates are float32
estimates that only choose the slopes; the bound kept is one charged float64 pass of the chosen
ones (from CROWN's slopes, never below CROWN's bound).  ``optimise`` leaves intermediate bounds as
they are; ``tighten_intermediate`` optimises slopes for them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..graph import Relu
from .engine import Domains, Engine


@dataclass
class AlphaResult:
    lower: np.ndarray          # (B, k) best sound lower bounds of the rows of C y - d
    alpha: dict                # Relu node -> (B, k, size) slopes that gave ``lower``
    iterations: int
    time_s: float
    coef: np.ndarray | None = None   # with ``coef=True``: input coefficients of each best bound


def initial(eng: Engine, dom: Domains, k: int) -> dict:
    """CROWN's slopes, one copy per row: ``(B, k, size)`` for every Relu node with an unstable
    entry in some domain."""
    out = {}
    for i, n in enumerate(eng.nodes):
        if isinstance(n, Relu):
            R = eng.relaxation(dom, i)
            if R.free is not None and R.free.any():
                out[i] = np.repeat(R.lo_slope[:, None, :], k, axis=1)
    return out


def optimise(eng: Engine, dom: Domains, C: np.ndarray, d: np.ndarray, steps: int = 20,
             lr: float = 0.25, deadline: float | None = None, start: dict | None = None,
             settled=None, node: int | None = None, beta: bool = False,
             coef: bool = False, estimate: bool = False) -> AlphaResult:
    """Optimise the slopes for lower bounds of ``C @ y - d`` (``y`` the output) on every domain of
    ``dom`` (whose intermediate bounds must be computed, e.g. by ``Engine.bound``).  ``start``:
    initial slopes (and multipliers), e.g. a parent domain's; default CROWN's.  ``settled(lower)
    -> (B,) bool``, asked before each step, drops the domains it marks (e.g. proved ones) from
    the remaining steps, so the steps go to the domains still open (their best slopes are kept as
    found); once every domain is settled the optimisation stops.  Stops after ``steps`` iterations or at
    ``deadline`` (``time.perf_counter()`` time).  ``node``: bound ``C @ v_node - d`` of that node
    instead of the output (intermediate bounds).  ``beta``: also optimise a multiplier >= 0 per
    fixed ReLU phase of each domain (beta-CROWN, Wang et al. 2021: the split constraints enter the
    bound; any multiplier >= 0 is valid).  The result's ``alpha`` holds both, multipliers under
    ``("beta", node)``; with ``coef`` it also holds the input coefficients ``(B, k, n_in)`` of the
    linear bound that gave each row's best value (for points to try).

    ``estimate``: the steps run on float32 estimates (``Engine.objective(estimate=True)``, about
    twice as fast), which pick each row's best slopes; one charged float64 pass of those slopes
    then gives the bounds returned (so they are as sound as ever, ``settled`` is asked about
    estimates)."""
    t0 = time.perf_counter()
    C = np.atleast_2d(np.asarray(C, np.float64))
    d = np.asarray(d, np.float64).ravel()
    k = C.shape[0]
    t = eng.graph.output if node is None else node
    params = initial(eng, dom, k)
    if beta:
        for i, ph in dom.phase.items():
            if i < t and (ph != 0).any():
                params[("beta", i)] = np.zeros((dom.B, k, ph.shape[1]))
    if start is not None:
        params.update({i: v.copy() for i, v in start.items() if i in params
                       and v.shape == params[i].shape})
    # estimates step in float32 throughout (slopes, multipliers, Adam's moments)
    ft = np.float32 if estimate else np.float64
    params = {i: v.astype(ft, copy=False) for i, v in params.items() if _node(i) < t}
    best_params = {i: v.copy() for i, v in params.items()}
    # from given slopes the first step evaluates their bound anyway: CROWN's slopes are not
    # evaluated first (a pass of each branch-and-bound round saved)
    lazy = start is not None and bool(params) and steps > 0
    if lazy:
        best = np.full((dom.B, k), -np.inf)
        best_coef = np.zeros((dom.B, k, eng.graph.n_inputs)) if coef else None
    else:
        best, best_coef = (eng.margins(dom, C, d, coef=True) if node is None
                           else eng.objective(dom, t, C, -d))
        best_coef = best_coef if coef else None
    if not params:
        return AlphaResult(best, best_params, 0, time.perf_counter() - t0, best_coef)
    # only the entries a step can move (free ReLUs for slopes, fixed phases for multipliers; a
    # few percent of a layer) are stepped: Adam's moments live on those columns alone, in
    # float64 (float32 gradients of nets with huge weights square to inf)
    cols = {i: _movable(eng, dom, i) for i in params}
    m1 = {i: np.zeros(v.shape[:2] + cols[i].shape) for i, v in params.items()}
    m2 = {i: v.copy() for i, v in m1.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8

    act = np.arange(dom.B)            # the domains still optimised (positions in ``best``)
    full = dom
    # what the steps compare: the bounds themselves, or (estimate) float32 estimates of them
    guess = best.copy() if estimate else best

    def evaluate(grad: bool, ps=None, on=None, est=estimate):
        ps = params if ps is None else ps
        alpha = {i: v for i, v in ps.items() if not isinstance(i, tuple)}
        betas = {i[1]: v for i, v in ps.items() if isinstance(i, tuple)} or None
        return eng.objective(dom if on is None else on, t, C, -d, alpha=alpha, beta=betas,
                             grad=grad, estimate=est)

    def keep_best(lb, lcoef):
        cur = guess[act]
        better = lb > cur
        if better.any():
            guess[act] = np.maximum(cur, lb)
            bb, rr = np.nonzero(better)
            for i in params:
                best_params[i][act[bb], rr] = params[i][bb, rr]
            if coef and not estimate:
                best_coef[act[bb], rr] = lcoef[bb, rr]

    it = 0
    while it < steps:
        if settled is not None:
            off = np.asarray(settled(guess[act]), bool)
            if off.all():
                act = act[:0]
                break
            # a domain copy costs about a fifth of a step: shrink once a tenth is settled
            if off.sum() >= max(1, act.size // 10):
                keep = np.flatnonzero(~off)
                act, dom = act[keep], dom.take(keep, relax=True)
                for store in (params, m1, m2):
                    for i in store:
                        store[i] = store[i][keep]
        if deadline is not None and time.perf_counter() > deadline:
            break
        it += 1
        lb, lcoef, grads, _ = evaluate(True)
        keep_best(lb, lcoef)
        step = lr * (0.98 ** it)
        for i, g in grads.items():
            if i not in params:
                continue
            c = cols[i]
            g = g[..., c].astype(np.float64)
            m1[i] = b1 * m1[i] + (1 - b1) * g
            m2[i] = b2 * m2[i] + (1 - b2) * g * g
            mh, vh = m1[i] / (1 - b1 ** it), m2[i] / (1 - b2 ** it)
            old = params[i][..., c]
            with np.errstate(invalid="ignore"):
                v = np.where(np.isfinite(mh) & np.isfinite(vh), old + step * mh / (np.sqrt(vh) + eps),
                             old)                    # an overflowed gradient moves nothing
            params[i][..., c] = np.maximum(v, 0.0) if isinstance(i, tuple) else np.clip(v, 0.0, 1.0)
    # from given slopes with no step taken (the deadline had passed), their bound is still due
    late = deadline is not None and time.perf_counter() > deadline
    if estimate:
        if it and act.size and not late:
            keep_best(*evaluate(False))
        # the bounds: one charged pass of the slopes the estimates chose, on every domain
        lb, lcoef = evaluate(False, best_params, full, est=False)
        better = lb > best
        best = np.maximum(best, lb)
        if coef:
            best_coef = np.where(better[:, :, None], lcoef, best_coef)
    elif (it and act.size and not late) or (lazy and not it):
        keep_best(*evaluate(False))
    return AlphaResult(best, best_params, it, time.perf_counter() - t0, best_coef)


def _node(key) -> int:
    return key[1] if isinstance(key, tuple) else key


def _movable(eng: Engine, dom: Domains, key) -> np.ndarray:
    """The entries a step may change, in some domain of the batch: a slope's where the ReLU is
    free (elsewhere the relaxation ignores it and its gradient is 0), a multiplier's where the
    phase is fixed (its gradient ``-s x`` is 0 elsewhere)."""
    if isinstance(key, tuple):
        return np.flatnonzero((dom.phase[key[1]] != 0).any(axis=0))
    free = eng.relaxation(dom, key).free
    return np.flatnonzero(free.any(axis=0)) if free is not None else np.zeros(0, np.intp)


def tighten_intermediate(eng: Engine, dom: Domains, steps: int = 20, lr: float = 0.25,
                         deadline: float | None = None, max_rows: int = 2048) -> int:
    """Optimised slopes for the intermediate bounds too: node by node in topological order
    (``tighten_node``); the tightened bounds then feed the relaxations after them.  In place on
    ``dom`` (whose CROWN bounds must be computed).  Returns the number of rows optimised."""
    done = 0
    for t in eng.needed:
        if deadline is not None and time.perf_counter() > deadline:
            break
        done += tighten_node(eng, dom, t, steps, lr, deadline, max_rows)
    return done


def tighten_node(eng: Engine, dom: Domains, t: int, steps: int = 20, lr: float = 0.25,
                 deadline: float | None = None, max_rows: int = 2048) -> int:
    """Optimised slopes for the bounds of node ``t`` (the input of a ReLU): the lower and upper
    bound rows of every undecided entry get their own slopes, optimised as in ``optimise``; the
    intervals of the nodes after ``t`` are redone from the tighter bounds.  In place on ``dom``.
    Returns the number of rows optimised (0 for a node that feeds no ReLU, or that the memory
    cap leaves at its interval bounds)."""
    if t == eng.graph.output or t not in eng.relu_of or not eng.fits(t, 2):
        return 0
    lo, hi = dom.lower[t], dom.upper[t]
    rows = np.flatnonzero(((lo < 0) & (hi > 0)).any(axis=0))[:max_rows]
    if rows.size == 0 or not initial(eng, dom, 1).keys() & set(range(t)):
        return 0
    m = rows.size
    E = np.zeros((2 * m, lo.shape[1]))
    E[np.arange(m), rows] = 1.0
    E[m + np.arange(m), rows] = -1.0
    r = optimise(eng, dom, E, np.zeros(2 * m), steps=steps, lr=lr, deadline=deadline,
                 node=t, estimate=True)
    nlo, nhi = lo.copy(), hi.copy()
    nlo[:, rows] = np.maximum(lo[:, rows], r.lower[:, :m])
    nhi[:, rows] = np.minimum(hi[:, rows], -r.lower[:, m:])
    eng._set(dom, t, nlo, nhi)
    for j in range(t + 1, len(eng.nodes)):        # later intervals see the tighter bounds
        eng._set(dom, j, *eng.interval_node(dom, j))
    return 2 * m
