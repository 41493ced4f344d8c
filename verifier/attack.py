"""Falsification first: FGSM and PGD on the float64 layer graph, aimed at a ``Property``.

For a case (input box, OR of unsafe conjunctions ``C y <= d``) the attack minimises a conjunction's
margin ``max_i (C_i y - d_i)`` over the box with L-inf steps (sign of the gradient, scaled per
coordinate by the box width) and projection onto the box.  The subgradient of the max follows the
active row.  Restarts are spread over the conjunctions of every case: a restart either targets one
conjunction or the case margin itself (the min over conjunctions, whose subgradient follows the
conjunction closest to being satisfied).  All restarts of all cases run as one numpy batch (one
forward and one backward pass per step), cut into chunks of ``max_batch`` rows.

Guaranteed: every returned point (``x_best`` and every row of ``candidates``) is float64, flat, and
satisfies ``prop.cases[case].box.contains(x)`` exactly (it is produced by ``np.clip`` onto the box);
its margin is the float64 graph's case margin at that point.  ``found`` only means that margin is
<= 0 in float64: it is NOT a counterexample until ``replay`` accepts it -- use ``falsify``, which
replays the best candidates in onnxruntime and returns only a replayed float32 point.
The search is deterministic for a given ``seed`` unless ``time_budget`` cuts it short.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .gradients import backward
from .graph import Graph

__all__ = ["AttackResult", "FalsifyResult", "attack", "fgsm", "falsify", "replay_candidates"]


@dataclass(frozen=True, eq=False)
class AttackResult:
    x_best: np.ndarray | None          # flat float64, inside prop.cases[case_best].box (None: nothing run)
    margin_best: float                 # float64 case margin at x_best (+inf if nothing was evaluated)
    found: bool                        # margin_best <= 0 in float64 -- still needs replay
    evaluations: int                   # network evaluations (samples forwarded)
    time_s: float
    case_best: int | None = None
    candidates: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (k, n_in), best first
    candidate_margins: np.ndarray = field(default_factory=lambda: np.zeros(0))
    candidate_cases: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


# --------------------------------------------------------------------------------------------
# the loss: conjunction margins of a batch of outputs
# --------------------------------------------------------------------------------------------
class _CaseLoss:
    """Padded conjunctions of one case: ``C`` (K, R, n_out), ``d`` (K, R); padding rows give -inf."""

    def __init__(self, case, n_out: int):
        K = len(case.unsafe)
        R = max(1, max(c.d.size for c in case.unsafe))
        self.C = np.zeros((K, R, n_out))
        self.d = np.full((K, R), np.inf)       # 0 * y - inf = -inf: padding never is the max
        for k, conj in enumerate(case.unsafe):
            r = conj.d.size
            self.C[k, :r] = conj.C
            self.d[k, :r] = conj.d
        self.K = K

    def __call__(self, y: np.ndarray, target: np.ndarray):
        """Case margins (n,) and the cotangent (n, n_out) of each row's targeted margin.

        ``target[r] = k`` aims row r at conjunction k; ``-1`` at the min over conjunctions."""
        vals = np.einsum("no,kro->nkr", y, self.C) - self.d      # (n, K, R)
        vals = np.where(np.isnan(vals), np.inf, vals)             # NaN output: never "unsafe"
        conj_m = vals.max(axis=2)                                 # (n, K)
        case_m = conj_m.min(axis=1)
        k_sel = np.where(target < 0, conj_m.argmin(axis=1), target)
        rows = np.arange(y.shape[0])
        r_sel = vals[rows, k_sel].argmax(axis=1)                  # the active row of that conjunction
        return case_m, self.C[k_sel, r_sel]


class _Batch:
    """Rows of one chunk: per-row box, target and case; rows of a case are contiguous."""

    def __init__(self, lo, hi, target, case_idx, groups, leak):
        self.lo, self.hi, self.target, self.case_idx = lo, hi, target, case_idx
        self.leak = leak              # per-row ReLU surrogate slope (0 = exact gradient)
        self.groups = groups          # list of (case index, row slice)

    def loss(self, losses, y):
        case_m = np.empty(y.shape[0])
        cot = np.empty_like(y)
        for c, sl in self.groups:
            case_m[sl], cot[sl] = losses[c](y[sl], self.target[sl])
        return case_m, cot


def _targets_for(K: int, n_rows: int) -> np.ndarray:
    """Spread rows over the targets: -1 (case margin) first, then each conjunction in turn."""
    if K <= 1:
        return np.full(n_rows, -1)
    return (np.arange(n_rows) % (K + 1)) - 1


def _plan(prop, rows_per_case: int, max_batch: int):
    """Split (case, restart) rows into chunks of at most ``max_batch`` rows."""
    jobs = []   # (case, n rows)
    for c, case in enumerate(prop.cases):
        n = max(rows_per_case, len(case.unsafe) + 1 if len(case.unsafe) > 1 else 1)
        while n > 0:
            take = min(n, max_batch)
            jobs.append((c, take))
            n -= take
    chunks, cur, size = [], [], 0
    for c, n in jobs:
        if size + n > max_batch and cur:
            chunks.append(cur)
            cur, size = [], 0
        cur.append((c, n))
        size += n
    if cur:
        chunks.append(cur)
    return chunks


def _make_batch(prop, chunk, rng=None, leak_range=None) -> _Batch:
    """Rows of a case take the targets in turn.  The first pass over the targets uses the exact
    gradient; later rows draw a ReLU leak log-uniformly from ``leak_range`` (when given)."""
    lo, hi, tgt, cidx, groups, lk, start = [], [], [], [], [], [], 0
    for c, n in chunk:
        n_targets = len(prop.cases[c].unsafe) + 1 if len(prop.cases[c].unsafe) > 1 else 1
        leak = np.zeros(n)
        if leak_range is not None and n > n_targets:
            a, b = np.log(leak_range[0]), np.log(leak_range[1])
            leak[n_targets:] = np.exp(a + (b - a) * rng.random(n - n_targets))
        lk.append(leak)
        box = prop.cases[c].box
        lo.append(np.broadcast_to(box.lower, (n, box.size)))
        hi.append(np.broadcast_to(box.upper, (n, box.size)))
        tgt.append(_targets_for(len(prop.cases[c].unsafe), n))
        cidx.append(np.full(n, c))
        groups.append((c, slice(start, start + n)))
        start += n
    return _Batch(np.concatenate(lo), np.concatenate(hi), np.concatenate(tgt),
                  np.concatenate(cidx), groups, np.concatenate(lk))


class _Pool:
    """The ``keep`` best distinct points seen so far."""

    def __init__(self, keep: int):
        self.keep = keep
        self.items: dict[bytes, tuple[float, int, np.ndarray]] = {}

    def add(self, xs, margins, cases):
        order = np.argsort(margins, kind="stable")[: self.keep]
        for i in order:
            if not margins[i] < math.inf:   # never evaluated, or NaN
                continue
            key = xs[i].tobytes()
            if key not in self.items or self.items[key][0] > margins[i]:
                self.items[key] = (float(margins[i]), int(cases[i]), xs[i].copy())
        best = sorted(self.items.items(), key=lambda kv: kv[1][0])[: self.keep]
        self.items = dict(best)

    def best_margin(self) -> float:
        return min((v[0] for v in self.items.values()), default=math.inf)

    def result(self, n_in, evaluations, t0) -> AttackResult:
        vals = sorted(self.items.values(), key=lambda v: v[0])
        if not vals:
            return AttackResult(None, math.inf, False, evaluations, time.perf_counter() - t0)
        xs = np.stack([v[2] for v in vals])
        ms = np.array([v[0] for v in vals])
        cs = np.array([v[1] for v in vals], dtype=np.int64)
        return AttackResult(xs[0].copy(), float(ms[0]), bool(ms[0] <= 0.0), evaluations,
                            time.perf_counter() - t0, int(cs[0]), xs, ms, cs)


def _check(graph: Graph, prop) -> None:
    if prop.n_inputs != graph.n_inputs or prop.n_outputs != graph.n_outputs:
        raise ValueError(f"property is over {prop.n_inputs} inputs / {prop.n_outputs} outputs, the "
                         f"network has {graph.n_inputs} / {graph.n_outputs}")


# --------------------------------------------------------------------------------------------
# FGSM
# --------------------------------------------------------------------------------------------
def _fgsm_batch(graph, prop, losses, pool, max_batch: int, deadline: float) -> int:
    """One gradient at each box centre per target, then a jump to the box corner it points to."""
    n_eval = 0
    for chunk in _plan(prop, 1, max_batch):   # one row per target and case
        if time.perf_counter() >= deadline:
            break
        b = _make_batch(prop, chunk)
        x0 = np.clip(0.5 * (b.lo + b.hi), b.lo, b.hi)
        values = graph.forward_all(x0)
        m0, cot = b.loss(losses, values[graph.output])
        g = backward(graph, values, cot)
        x1 = np.where(g > 0, b.lo, np.where(g < 0, b.hi, x0))
        m1, _ = b.loss(losses, graph.forward(x1).reshape(x1.shape[0], -1))
        pool.add(np.concatenate([x0, x1]), np.concatenate([m0, m1]),
                 np.concatenate([b.case_idx] * 2))
        n_eval += 2 * x0.shape[0]
    return n_eval


def fgsm(graph: Graph, prop, *, keep: int = 5, max_batch: int = 512,
         time_budget: float | None = None) -> AttackResult:
    """Fast gradient sign method from each box centre, once per target (see the module docstring)."""
    _check(graph, prop)
    t0 = time.perf_counter()
    deadline = math.inf if time_budget is None else t0 + time_budget
    losses = [_CaseLoss(case, prop.n_outputs) for case in prop.cases]
    pool = _Pool(keep)
    n = _fgsm_batch(graph, prop, losses, pool, max_batch, deadline)
    return pool.result(prop.n_inputs, n, t0)


# --------------------------------------------------------------------------------------------
# PGD
# --------------------------------------------------------------------------------------------
def _starts(graph, prop, b: _Batch, losses, rng, oversample: int, max_batch: int, pool,
            first_round: bool):
    """Start points for the rows of ``b`` (see ``attack``); returns them and the evaluations spent."""
    width = b.hi - b.lo
    x = b.lo + rng.random(b.lo.shape) * width
    n_eval = 0
    for c, sl in b.groups:
        if first_round:   # the centre is the natural first start (the clean image of an eps-ball)
            x[sl.start] = 0.5 * (b.lo[sl.start] + b.hi[sl.start])
        n = sl.stop - sl.start
        n_best = n // 2
        if oversample <= 1 or n_best == 0:
            continue
        box = prop.cases[c].box
        S = box.lower + rng.random((n * oversample, box.size)) * (box.upper - box.lower)
        S = np.clip(S, box.lower, box.upper)
        m = np.empty(S.shape[0])
        tgt = np.full(max_batch, -1)
        for i in range(0, S.shape[0], max_batch):   # forward in chunks: bounded memory
            part = S[i:i + max_batch]
            m[i:i + max_batch], _ = losses[c](graph.forward(part).reshape(len(part), -1),
                                               tgt[:len(part)])
        n_eval += S.shape[0]
        order = np.argsort(m, kind="stable")[:n_best]
        x[sl.stop - n_best:sl.stop] = S[order]
        pool.add(S[order], m[order], np.full(n_best, c))
    return np.clip(x, b.lo, b.hi), n_eval


def _step_sizes(steps: int, first: float, last: float) -> np.ndarray:
    """Cosine decay from ``first`` to ``last`` (fractions of the box width per coordinate)."""
    t = np.arange(steps) / max(steps - 1, 1)
    return last + (first - last) * 0.5 * (1.0 + np.cos(np.pi * t))


def attack(graph: Graph, prop, *, restarts: int = 16, steps: int = 60, rounds: int = 1,
           time_budget: float | None = None, seed: int = 0, step_first: float = 0.25,
           step_last: float = 0.005, stop_margin: float = 0.0, max_batch: int = 512,
           keep: int = 5, use_fgsm: bool = True, oversample: int | None = None,
           leak_range: tuple[float, float] | None = (0.003, 0.3)) -> AttackResult:
    """PGD (L-inf, sign steps, cosine step schedule) over every case and conjunction of ``prop``.

    ``restarts`` rows per case and round (at least one per conjunction plus one on the case margin);
    row 0 of each case starts at the box centre (first round), the first half of the rows uniformly
    at random in the box, the second half at the best of ``oversample`` times as many random samples
    (forward passes only; on low-dimensional boxes sampling finds what plateaus hide from PGD;
    ``None``: 64 for at most 64 inputs, else 4).
    A row whose (surrogate) gradient is exactly zero takes a random L-inf step instead.
    ``rounds`` repeats with fresh random starts.  Stops early once a point with float64 margin
    ``<= stop_margin`` is found, or when ``time_budget`` seconds have passed (checked every step).
    Step sizes are fractions of the box width, decaying from ``step_first`` to ``step_last``.
    ``leak_range``: after a first pass over a case's targets with exact gradients, the other rows
    step along a surrogate gradient whose inactive ReLUs pass ``leak`` times the cotangent (see
    ``gradients.backward``), ``leak`` log-uniform in ``leak_range`` per row (None: exact only).  Exact
    gradients stall when most ReLUs in the box are off (their gradient is 0); the surrogate still
    sees which neurons to switch on.  Margins are always those of the exact float64 network.
    Returns the best point even if its margin stays > 0 (a MIP start), plus the ``keep`` best
    distinct points (for replay).  See the module docstring for what is guaranteed.
    """
    _check(graph, prop)
    t0 = time.perf_counter()
    deadline = math.inf if time_budget is None else t0 + time_budget
    rng = np.random.default_rng(seed)
    losses = [_CaseLoss(case, prop.n_outputs) for case in prop.cases]
    pool = _Pool(keep)
    evaluations = 0
    if use_fgsm:
        evaluations += _fgsm_batch(graph, prop, losses, pool, max_batch, deadline)
    if oversample is None:
        oversample = 64 if prop.n_inputs <= 64 else 4
    alphas = _step_sizes(steps, step_first, step_last)
    chunks = _plan(prop, restarts, max_batch)

    for rnd in range(rounds):
        for chunk in chunks:
            if pool.best_margin() <= stop_margin or time.perf_counter() >= deadline:
                return pool.result(prop.n_inputs, evaluations, t0)
            b = _make_batch(prop, chunk, rng, leak_range)
            width = b.hi - b.lo
            x, n_eval = _starts(graph, prop, b, losses, rng, oversample, max_batch, pool, rnd == 0)
            evaluations += n_eval
            best_m = np.full(x.shape[0], np.inf)
            best_x = x.copy()
            for t in range(steps + 1):
                values = graph.forward_all(x)
                m, cot = b.loss(losses, values[graph.output])
                evaluations += x.shape[0]
                better = m < best_m
                best_m[better] = m[better]
                best_x[better] = x[better]
                if t == steps or best_m.min() <= stop_margin or time.perf_counter() >= deadline:
                    break
                g = np.sign(backward(graph, values, cot, leak=b.leak))
                flat = ~np.any(g != 0, axis=1)    # on a plateau (all ReLUs that matter are off):
                if flat.any():                    # a random L-inf step instead of standing still
                    g[flat] = rng.choice([-1.0, 1.0], size=(int(flat.sum()), g.shape[1]))
                x = np.clip(x - alphas[t] * width * g, b.lo, b.hi)
            pool.add(best_x, best_m, b.case_idx)
    return pool.result(prop.n_inputs, evaluations, t0)


# --------------------------------------------------------------------------------------------
# attack + replay
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FalsifyResult:
    found: bool                         # True only with a replayed counterexample
    x32: np.ndarray | None              # the replayed float32 input (inside the case box)
    y32: np.ndarray | None              # onnxruntime's output on x32 (in the unsafe region)
    case_index: int | None
    attack: AttackResult                # the float64 search (best point = MIP start when not found)
    replays: tuple = ()                 # every ReplayResult tried, in order


def replay_candidates(model, prop, result: AttackResult, *, top: int = 5):
    """Replay the best ``top`` candidates with float64 margin <= 0, best first, until one passes."""
    from .replay import replay
    tried = []
    for x, m in zip(result.candidates[:top], result.candidate_margins[:top]):
        if m > 0:
            break
        r = replay(model, x, prop)
        tried.append(r)
        if r.ok:
            return r, tuple(tried)
    return None, tuple(tried)


def falsify(graph: Graph, model, prop, *, top: int = 5, **attack_kw) -> FalsifyResult:
    """``attack`` then ``replay`` of its best candidates in onnxruntime: the only way this module
    reports a counterexample.  ``model`` is the ONNX path / ModelProto / bytes ``graph`` came from.

    The attack stops at its first float64 violation (``stop_margin``, default 0).  If no candidate
    survives float32 replay, the same search (same seed) runs again asking for a margin 4x deeper,
    up to 4 passes, all within ``time_budget``.  ``found`` is True only with a replayed point."""
    t0 = time.perf_counter()
    budget = attack_kw.pop("time_budget", None)
    stop = attack_kw.pop("stop_margin", 0.0)
    attack_kw["keep"] = max(attack_kw.get("keep", top), top)
    tried: tuple = ()
    res = None
    for _ in range(4):
        left = None if budget is None else budget - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            break
        res = attack(graph, prop, time_budget=left, stop_margin=stop, **attack_kw)
        ok, more = replay_candidates(model, prop, res, top=top)
        tried += more
        if ok is not None:
            return FalsifyResult(True, ok.x32, ok.y32, ok.case_index, res, tried)
        if not res.found:
            break   # no float64 violation at all: a deeper stop cannot help
        stop = 4.0 * min(res.margin_best, stop, -1e-9)
    if res is None:
        res = AttackResult(None, math.inf, False, 0, time.perf_counter() - t0)
    return FalsifyResult(False, None, None, None, res, tried)
