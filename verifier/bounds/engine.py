"""The bound engine: linear bounds by back-substitution (CROWN / DeepPoly) for a batch of domains.

A *domain* is a subproblem of one graph: an input box, a phase per ReLU entry (+1 active, -1
inactive, 0 free; a fixed phase restricts the domain to the inputs where it holds) and sound bounds
on every node.  ``Domains`` holds B of them as ``(B, size)`` arrays; a single box is a batch of one.

To lower-bound ``L v_t + c`` (rows of ``L`` are independent objectives over node ``t``), the
coefficients are pushed backwards through the DAG in reverse topological order until only the
input remains, where the box gives the bound in closed form.  The walk is written once, here, with
two kinds of step (see ``verifier.ops``):

- affine node ``z = sum_k A_k x_k + b``: coefficients ``L A_k`` are *added* to whatever input
  ``x_k`` already holds (multi-input nodes, nodes with several consumers); ``L b`` goes to the
  constant;
- relaxed node ``y = f(x)`` with ``Relaxation`` lines ``lo(x) <= y <= up(x)``: a positive
  coefficient takes the lower line, a negative one the upper line, entry by entry and row by row
  (so upper bounds, rows of ``-L``, get the mirrored choice automatically).

Intermediate bounds are computed in topological order, only where they matter: for the inputs of
relaxed nodes (entries not already stable by interval arithmetic, in some domain of the batch; every
entry for max-pool inputs) and for the output.  Coefficient blocks are ``(B, k, n)`` arrays, cut
into chunks of at most ``chunk_entries`` floats.

Floating point — the proof, written once (error model in ``_fp``).  The invariant carried is, for
every reachable state (the exact network, and ``Graph.forward`` in float64), ``objective >= sum_n
L_n . v_n + const - slack`` *in exact arithmetic on the float arrays* ``L_n``, ``const``, ``slack``:

1. each product a step forms (``L A_k``, ``L b``, ``L*slope``, ``L . offset``, sums of coefficients
   arriving at one node) differs from the exact one by at most ``gamma(terms)`` times its magnitude;
   times ``|v| <= m`` (magnitudes from sound bounds) that is a nonnegative scalar added to ``slack``;
2. the network as it runs deviates from the exact affine map at a Linear node by ``|e| <= fwd``
   (any summation order): charged as ``|L| . fwd``.  ``fwd`` covers ``Graph.forward`` in float64
   and, in ``float32`` arithmetic (the default), the model's ops run in float32 by onnxruntime
   (``Linear.chain_absimg``: the rounding of each op of a folded chain);
3. the final evaluation with the box is rounded down with an explicit error bound.

Any slope in [0, 1] for an unstable ReLU gives valid lines, so optimised slopes (``alpha``) need no
further argument: the charge is the same as for fixed slopes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..graph import Graph, MaxPool, Relu
from ..ops.linear import times
from ..fp import ARITHMETICS, TINY, TINY32, U32, absmax, affine_interval, down, gamma, up

CHUNK_ENTRIES = 1 << 18          # floats per coefficient block (2 MB: the blocks of one step
                                 # stay in the caches; 5 slope steps on 128 branch-and-bound
                                 # domains: oval21 deep / wide, ResNet-2B 0.70 / 0.89 / 0.71 s
                                 # with 64 MB blocks, 0.48 / 0.67 / 0.53 s with these; the
                                 # ResNet-4B root bounds 59 -> 50 s; ACAS Xu and mnist_fc alike)
BLOCK_COPIES = 8                 # blocks alive at once in one step (coefficients held at up to
                                 # three nodes of a residual net, L+, L-, the product and its
                                 # magnitude, a convolution's padded map): a memory cap divided by
                                 # this bounds the block


class MemoryCapError(RuntimeError):
    """An objective whose smallest coefficient block (one row of one domain) does not fit the
    memory cap; the message says which node and how many bytes."""


def bdot(L: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``sum_s L[b, k, s] v[b, s]``: ``(B, k)``."""
    return np.matmul(L, v[:, :, None])[:, :, 0]


# ------------------------------------------------------------------------------------------------
# domains
# ------------------------------------------------------------------------------------------------
@dataclass
class Domains:
    """B domains of one graph (see the module docstring).  ``lower[i]``/``upper[i]`` are ``(B,
    size)`` sound bounds of node ``i`` (None until computed); ``phase`` maps a Relu node to its
    ``(B, size)`` int8 phases; ``fwd``/``absimg`` are the float slack of each Linear node."""
    lower: list
    upper: list
    phase: dict = field(default_factory=dict)
    fwd: list = field(default_factory=list)
    absimg: list = field(default_factory=list)
    relax: dict = field(default_factory=dict)       # cached default relaxation per relaxed node
                                                    # and magnitude per node (``Engine.mag``)

    @property
    def B(self) -> int:
        return self.lower[0].shape[0]

    @property
    def box(self):
        return self.lower[0], self.upper[0]

    def infeasible(self) -> np.ndarray:
        """``(B,)``: domains whose bounds cross somewhere (an impossible phase combination);
        cached with the relaxations (``Engine._set`` drops it)."""
        bad = self.relax.get("infeasible")
        if bad is None:
            bad = np.zeros(self.B, bool)
            for lo, hi in zip(self.lower, self.upper):
                if lo is not None:
                    bad |= (lo > hi).any(axis=1)
            self.relax["infeasible"] = bad
        return bad

    def take(self, idx, slack: bool = True, nodes=None, relax: bool = False) -> "Domains":
        """The domains ``idx`` (an index array or mask), copied (by the indexing itself);
        ``slack=False`` leaves out the float slack (``fwd``, ``absimg``), which only charged
        passes read, and ``nodes`` (a set) keeps the bounds of those nodes only (e.g.
        ``Engine.estimate_nodes``): enough for estimates (``Engine.objective(estimate=True)``).
        ``relax``: the cached relaxations and magnitudes are copied too (indexing them is about
        ten times cheaper than recomputing a ReLU's): only for a copy whose bounds then change
        through ``Engine.fix_phases`` (which updates them) or ``Engine._set`` (which drops them),
        or not at all."""
        idx = np.asarray(idx)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.intp, copy=False)
        sub = lambda v: None if v is None else v.take(idx, axis=0)
        part = sub if slack else (lambda v: None)
        kept = lambda vs: [sub(v) if nodes is None or i in nodes else None
                           for i, v in enumerate(vs)]
        out = Domains(kept(self.lower), kept(self.upper),
                      {i: p.take(idx, axis=0) for i, p in self.phase.items()},
                      [part(v) for v in self.fwd], [part(v) for v in self.absimg])
        if relax:
            out.relax = {key: sub(v) if isinstance(v, np.ndarray) else
                         replace(v, **{f: sub(getattr(v, f)) for f in RELAX_FIELDS})
                         for key, v in self.relax.items()}
        return out


RELAX_FIELDS = ("lo_slope", "up_slope", "lo_off", "up_off", "select", "free")


def domains(graph: Graph, lower, upper, phase: dict | None = None) -> Domains:
    """``Domains`` for B input boxes (``(B, n_in)`` or one ``(n_in,)`` box), checked."""
    lo = np.atleast_2d(np.asarray(lower, dtype=np.float64))
    hi = np.atleast_2d(np.asarray(upper, dtype=np.float64))
    n = graph.n_inputs
    if lo.shape != hi.shape or lo.ndim != 2 or lo.shape[1] != n:
        raise ValueError(f"box has {lo.shape[-1]}/{hi.shape[-1]} values, the model takes {n}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("the input box must be bounded (finite lower and upper)")
    if np.any(lo > hi):
        raise ValueError("the input box is empty (some lower > upper)")
    N = len(graph.nodes)
    dom = Domains([None] * N, [None] * N, dict(phase or {}), [None] * N, [None] * N)
    dom.lower[0], dom.upper[0] = lo, hi
    return dom


# ------------------------------------------------------------------------------------------------
# one back-substitution
# ------------------------------------------------------------------------------------------------
class _Sub:
    """The running back-substitution of one chunk: coefficients per node, constant, slack, and the
    magnitude sum of everything added to the constant (for its accumulated rounding error).

    ``charge=False`` makes it an *estimate*: float32 coefficients, no rounding charged, so its
    value is no bound (slope steps and branching scores use it, whose results only choose what a
    charged float64 pass then bounds)."""

    def __init__(self, eng: "Engine", dom: Domains, bs: slice, k: int, charge: bool = True):
        self.eng, self.dom, self.bs, self.charge = eng, dom, bs, charge
        self.dt = np.float64 if charge else np.float32
        B = len(range(*bs.indices(dom.B)))
        self.lam: dict[int, np.ndarray] = {}
        self.const = np.zeros((B, k))
        self.slack = np.zeros((B, k))
        self.cmag = np.zeros((B, k))
        self.steps = 0
        self.tape: dict | None = None     # relaxed node -> (coefficients reaching it, relaxation)
        self.done: list[int] = []         # nodes stepped through, in the order of the walk

    def mag(self, j: int) -> np.ndarray:
        return self.eng.mag(self.dom, j)[self.bs]

    def add_const(self, inc: np.ndarray) -> None:
        self.const += inc
        self.cmag += np.abs(inc)
        self.steps += 1

    def add_coef(self, j: int, P: np.ndarray) -> None:
        old = self.lam.get(j)
        if old is None:
            self.lam[j] = P
        else:
            new = old + P      # |fl(a+b) - (a+b)| <= U |a+b|: charged against |v_j| <= m_j
            if self.charge:
                self.slack += gamma(1) * bdot(np.abs(new), self.mag(j))
            self.lam[j] = new

    def affine(self, i: int, L: np.ndarray) -> None:
        node, dom, bs = self.eng.nodes[i], self.dom, self.bs
        for k, j in enumerate(node.inputs):
            self.add_coef(j, node.rows_times_k(L, k, self.eng.structured))
        self.add_const(L @ node.bias.astype(self.dt, copy=False))
        if not self.charge:
            return
        # rounding of L A_k (sums of size_i terms, times |x_k| <= m_k) and of L b: gamma |L| absimg;
        # the float64 network's deviation |e| <= fwd: |L| fwd
        n = node.size
        self.slack += bdot(np.abs(L), dom.fwd[i][bs] + gamma(n) * dom.absimg[i][bs] + n * TINY)

    def relaxed(self, i: int, L: np.ndarray, alpha: np.ndarray | None,
                beta: np.ndarray | None = None) -> None:
        node = self.eng.nodes[i]
        j = node.inputs[0]
        R = self.eng.relaxation(self.dom, i, alpha, self.bs, self.dt)
        if not self.charge:
            beta = None if beta is None else beta.astype(np.float32)
        # five passes over the block: this step dominates the engine's time
        Lp = np.maximum(L, 0.0)
        Ln = L - Lp                                         # exactly min(L, 0)
        lo_s = R.lo_slope if R.lo_slope.ndim == 3 else R.lo_slope[:, None, :]
        up_s = R.up_slope[:, None, :]
        P = Lp * lo_s
        P += Ln * up_s                                      # one of the two terms is 0: exact
        if R.lo_off is not None:
            self.add_const(bdot(Lp, R.lo_off))
        if R.up_off is not None:
            self.add_const(bdot(Ln, R.up_off))
        m = self.mag(j) if self.charge else None
        if self.charge:
            # dot products with offsets: nonzero only at free entries (relu), else at most n terms
            n = node.size if R.free is None else int(R.free.sum(axis=1).max(initial=0))
            if R.lo_off is not None:
                self.slack += gamma(n + 1) * bdot(Lp, np.abs(R.lo_off))
            if R.up_off is not None:
                self.slack -= gamma(n + 1) * bdot(Ln, np.abs(R.up_off))
        if R.select is None:
            # products with slopes other than exactly 0 or 1 round: the upper slopes of free
            # entries (|Ln up_s| = -Ln up_s, up_s >= 0), and lower slopes strictly inside (0, 1)
            if R.free is not None and self.charge:
                self.slack -= gamma(1) * bdot(Ln, R.up_slope * R.free * m)
                if lo_s.ndim == 3 and alpha is not None:
                    frac = (lo_s > 0) & (lo_s < 1)
                    self.slack += gamma(1) * np.einsum("bkn,bkn->bk", Lp, lo_s * frac * m[:, None, :])
            if beta is not None:
                # beta-CROWN: a split s z >= 0 (s = +1 active, -1 inactive, beta >= 0) adds
                # -beta s z, which is <= 0 on the domain: a lower bound of the objective minus it
                # bounds the objective.  Only the subtraction rounds (beta s is exact).
                sgn = self.dom.phase[i][self.bs]
                P = P - np.maximum(beta, 0.0) * sgn[:, None, :]
                if self.charge:
                    self.slack += gamma(1) * bdot(np.abs(P) * (sgn != 0)[:, None, :], m)
            self.add_coef(j, P)
        else:                       # several entries may select the same input: sums of <= n terms
            if self.charge:
                mx = np.take_along_axis(m, R.select, axis=1)
                self.slack += gamma(node.size + 1) * bdot(np.abs(P), mx)
            self.add_coef(j, _scatter(P, R.select, self.eng.nodes[j].size).astype(self.dt))
        if self.tape is not None:
            self.tape[i] = (L, R)

    def run(self, start: int, alpha: dict | None, beta: dict | None = None) -> None:
        for i in range(start, 0, -1):
            L = self.lam.pop(i, None)
            if L is None:
                continue
            self.done.append(i)
            if self.eng.nodes[i].affine:
                self.affine(i, L)
            else:
                self.relaxed(i, L, None if alpha is None else alpha.get(i),
                             None if beta is None else beta.get(i))

    def finish(self):
        """Sound lower bounds ``(B, k)`` of the objectives, and the input coefficients."""
        lo, hi = self.dom.lower[0][self.bs], self.dom.upper[0][self.bs]
        L = self.lam.pop(0, None)
        if L is None:                                   # objective does not depend on the input
            L = np.zeros(self.const.shape + (lo.shape[1],), self.dt)
        if not self.charge:                             # an estimate: no error bound
            lo, hi = lo.astype(np.float32), hi.astype(np.float32)
            return bdot(np.maximum(L, 0.0), lo) + bdot(np.minimum(L, 0.0), hi) + self.const, L
        conc = bdot(np.maximum(L, 0.0), lo) + bdot(np.minimum(L, 0.0), hi)
        total = conc + self.const - self.slack
        n0 = lo.shape[1]
        err = gamma(n0 + self.steps + 4) * (bdot(np.abs(L), self.mag(0)) + self.cmag + self.slack
                                            + np.abs(conc) + np.abs(self.const)) \
            + (n0 + self.steps) * TINY
        return down(total - err), L


def _scatter(P: np.ndarray, sel: np.ndarray, n: int) -> np.ndarray:
    """``out[b, k, sel[b, i]] += P[b, k, i]``: ``(B, k, n)``."""
    B, k, m = P.shape
    base = (np.arange(B)[:, None, None] * k + np.arange(k)[None, :, None]) * n
    flat = (base + sel[:, None, :]).ravel()
    return np.bincount(flat, weights=P.ravel(), minlength=B * k * n).reshape(B, k, n)


# ------------------------------------------------------------------------------------------------
# the engine
# ------------------------------------------------------------------------------------------------
class Engine:
    """Bounds for batches of domains of one graph (see the module docstring)."""

    def __init__(self, graph: Graph, chunk_entries: int = CHUNK_ENTRIES,
                 arithmetic: str = "float32", structured: str = "auto",
                 memory_bytes: float | None = None):
        if arithmetic not in ARITHMETICS:
            raise ValueError(f"arithmetic must be one of {ARITHMETICS}, not {arithmetic!r}")
        self.arithmetic = arithmetic
        self.graph = graph
        self.nodes = graph.nodes
        # memory cap of a back-substitution: blocks of at most cap / (8 BLOCK_COPIES) floats;
        # a node whose single row would not fit keeps its interval bounds (``bound``)
        self.memory_bytes = memory_bytes
        self.chunk = int(chunk_entries)
        if memory_bytes is not None:
            self.chunk = max(1, min(self.chunk, int(memory_bytes // (8 * BLOCK_COPIES))))
        if structured not in ("auto", "always", "never"):
            raise ValueError(f"structured must be auto, always or never, not {structured!r}")
        self.structured = structured        # convolutions as kernels (ops.conv) or as CSR
        self.users = users = graph.consumers()
        self.relu_of: dict[int, list[int]] = {}         # input node -> Relu nodes reading it
        need = {graph.output}
        for i, n in enumerate(self.nodes):
            if not n.affine and i > 0:
                need.add(n.inputs[0])
                if isinstance(n, Relu):
                    self.relu_of.setdefault(n.inputs[0], []).append(i)
        need.discard(0)
        self.needed = sorted(need)
        # nodes whose bounds are used beyond ReLU phase decisions (inputs of every relaxed kind
        # but Relu: max-pool, sigmoid, tanh): all their entries are bounded
        self.full_rows = {graph.output} | {i for i in self.needed if any(
            not (self.nodes[c].affine or isinstance(self.nodes[c], Relu)) for c in users[i])}
        # what the bounds cost: the largest coefficient block (bytes), the rows back-substituted
        # per node (summed over every call), the nodes left at interval bounds by the memory cap
        self.stats = {"max_block_bytes": 0, "rows_bounded": {}, "interval_only": []}
        self.width = np.maximum.accumulate([n.size for n in self.nodes])   # widest node <= t

    # -- small pieces ---------------------------------------------------------------------------
    def fits(self, t: int, rows: int = 1) -> bool:
        """Whether a block of ``rows`` rows of one domain over nodes up to ``t`` fits the cap."""
        return self.memory_bytes is None or \
            8.0 * BLOCK_COPIES * rows * float(self.width[t]) <= self.memory_bytes

    @property
    def estimate_nodes(self) -> frozenset:
        """The nodes whose bounds an estimate reads (``objective(estimate=True)``: the input box
        and the inputs of relaxed nodes, and a max-pool's own upper bounds), not a ReLU's output
        or an affine node no relaxation reads."""
        keep = {0}
        for i, n in enumerate(self.nodes):
            if not n.affine:
                keep.update(n.inputs)
                if not isinstance(n, Relu):
                    keep.add(i)
        return frozenset(keep)

    def _need_fit(self, t: int) -> None:
        if not self.fits(t):
            need = 8 * BLOCK_COPIES * int(self.width[t])
            raise MemoryCapError(f"one coefficient row of node {t} needs {need / 2**20:.1f} MiB "
                                 f"(width {int(self.width[t])}), over the memory cap of "
                                 f"{self.memory_bytes / 2**20:.1f} MiB")

    def mag(self, dom: Domains, j: int) -> np.ndarray:
        """``max |v_j|`` per domain, cached with the relaxations (every step of every
        back-substitution reads it; ``_set`` drops it when node ``j``'s bounds change)."""
        m = dom.relax.get(("mag", j))
        if m is None:
            m = dom.relax[("mag", j)] = absmax(dom.lower[j], dom.upper[j])
        return m

    def relaxation(self, dom: Domains, i: int, alpha=None, bs: slice = slice(None),
                   dtype=np.float64):
        """Node ``i``'s relaxation on the domains' bounds (CROWN's slopes; cached per batch until
        the bounds change) for the domains ``bs``; ``alpha`` (``(B, size)`` or ``(B, k, size)``)
        replaces the lower slopes of its free entries, the only ones a slope may move (any value
        in [0, 1] is valid there), so slope optimisation recomputes nothing else per step.
        ``dtype`` float32: its lines rounded to float32, for estimates only (no longer valid)."""
        key = i if dtype == np.float64 else ("f32", i)
        R = dom.relax.get(key)
        if R is None:
            node = self.nodes[i]
            l, u = dom.lower[node.inputs[0]], dom.upper[node.inputs[0]]
            if isinstance(node, Relu):
                R = node.relax(l, u, dtype)
            else:
                R = node.relax(l, u, hi_out=dom.upper[i]) if isinstance(node, MaxPool) \
                    else node.relax(l, u)
                if dtype != np.float64:
                    f = lambda v: None if v is None else v.astype(dtype)
                    R = replace(R, lo_slope=f(R.lo_slope), up_slope=f(R.up_slope),
                                lo_off=f(R.lo_off), up_off=f(R.up_off))
            dom.relax[key] = R
        R = _slice_relax(R, bs)
        if alpha is None or R.free is None:
            return R
        free, lo = (R.free, R.lo_slope) if alpha.ndim == 2 else (R.free[:, None, :],
                                                                R.lo_slope[:, None, :])
        return replace(R, lo_slope=np.where(free, np.clip(alpha.astype(dtype, copy=False),
                                                          0.0, 1.0), lo))

    def _set(self, dom: Domains, i: int, lo: np.ndarray, hi: np.ndarray) -> None:
        """Store node ``i``'s bounds, intersected with what is known, clamped by the phases of
        the ReLUs it feeds; cached relaxations of its consumers are dropped."""
        if dom.lower[i] is not None:
            lo, hi = np.maximum(dom.lower[i], lo), np.minimum(dom.upper[i], hi)
        for r in self.relu_of.get(i, ()):
            ph = dom.phase.get(r)
            if ph is not None:
                lo = np.where(ph > 0, np.maximum(lo, 0.0), lo)
                hi = np.where(ph < 0, np.minimum(hi, 0.0), hi)
        dom.lower[i], dom.upper[i] = lo, hi
        if dom.relax:
            for c in self.users[i] + [i]:
                dom.relax.pop(c, None)
                dom.relax.pop(("f32", c), None)
            dom.relax.pop(("mag", i), None)
            dom.relax.pop("infeasible", None)

    def fix_phases(self, dom: Domains, r: int, rows: np.ndarray, entries: np.ndarray,
                   signs: np.ndarray) -> None:
        """Fix ReLU ``r``'s phase of domain ``rows[c]`` at ``entries[c]`` to ``signs[c]`` (+1
        active, -1 inactive) and clamp the bounds there: its input's lower bound to >= 0 (upper
        to <= 0), its output's by the interval rule.  Only those entries change: the same bounds
        as ``_set`` on the whole arrays (whose other clamps hold already), without passes over
        every domain's every entry (on conv nets that cost 6 of 120 s of strong branching).
        ``dom``'s arrays are written in place (a ``take``'s copies); so are its cached ReLU
        relaxations and magnitudes (``take(relax=True)``): the split entries become stable, as
        recomputing them would give."""
        ph = dom.phase.get(r)
        if ph is None:
            ph = dom.phase[r] = np.zeros((dom.B, self.nodes[r].size), np.int8)
        ph[rows, entries] = signs
        j = self.nodes[r].inputs[0]
        lo_j, hi_j, lo_r, hi_r = dom.lower[j], dom.upper[j], dom.lower[r], dom.upper[r]
        if not (lo_j.flags.writeable and (lo_r is None or lo_r.flags.writeable)):
            self._set(dom, j, lo_j, hi_j)
            if lo_r is not None:
                self._set(dom, r, *self.interval_node(dom, r))
        else:
            on = signs > 0
            a, ea, b, eb = rows[on], entries[on], rows[~on], entries[~on]
            lo_j[a, ea] = np.maximum(lo_j[a, ea], 0.0)
            hi_j[b, eb] = np.minimum(hi_j[b, eb], 0.0)
            if lo_r is not None:          # (an estimate's copy may leave the output out)
                at = (rows, entries)
                lo_r[at] = np.maximum(lo_r[at], np.maximum(lo_j[at], 0.0))
                hi_r[at] = np.minimum(hi_r[at], np.maximum(hi_j[at], 0.0))
        self._patch_relax(dom, r, rows, entries)

    def _patch_relax(self, dom: Domains, r: int, rows: np.ndarray, entries: np.ndarray) -> None:
        """The cached relaxations of ``dom`` after ``fix_phases`` clamped ReLU ``r`` at
        ``(rows, entries)``: what recomputing them from the new bounds gives (an entry with
        ``l >= 0`` has slopes 1, else 0, no offset, not free); any other relaxation that reads
        the two changed nodes' bounds (their relaxed consumers, a relaxed input node itself, e.g.
        a max-pool, whose relaxation reads its own bounds) is dropped (recomputed when read)."""
        if not dom.relax:
            return
        j = self.nodes[r].inputs[0]
        at = (rows, entries)
        for key in (r, ("f32", r)):
            R = dom.relax.get(key)
            if R is None:
                continue
            on = dom.lower[j][at] >= 0
            R.lo_slope[at] = on
            R.up_slope[at] = on
            for off in (R.lo_off, R.up_off):
                if off is not None:
                    off[at] = 0.0
            if R.free is not None:
                R.free[at] = False
        bad = dom.relax.get("infeasible")
        for n in (j, r):
            m = dom.relax.get(("mag", n))
            if dom.lower[n] is None:
                dom.relax.pop(("mag", n), None)
                continue
            if m is not None:
                m[at] = absmax(dom.lower[n][at], dom.upper[n][at])
            if bad is not None:
                np.logical_or.at(bad, rows, dom.lower[n][at] > dom.upper[n][at])
        for c in set(self.users[j] + self.users[r] + [j]) - {r}:
            if not self.nodes[c].affine:
                dom.relax.pop(c, None)
                dom.relax.pop(("f32", c), None)

    def interval_node(self, dom: Domains, i: int):
        """Interval bounds of node ``i`` from its inputs' current bounds.  Linear: our evaluation
        of the sums errs by at most ``gamma(n) absimg`` and the float64 network deviates by at most
        ``fwd``: both are added, then one ulp outward."""
        node = self.nodes[i]
        if not node.affine:
            j = node.inputs[0]
            return node.interval(dom.lower[j], dom.upper[j])
        lo = np.broadcast_to(node.bias, (dom.B, node.size)).copy()
        hi = lo.copy()
        for k, j in enumerate(node.inputs):
            P, N = node.pos_mat(k), node.neg_mat(k)
            lo += times(P, dom.lower[j]) + times(N, dom.upper[j])
            hi += times(P, dom.upper[j]) + times(N, dom.lower[j])
        if dom.fwd[i] is None:
            self.float_slack(dom, i)
        delta = dom.fwd[i] + gamma(node.row_terms) * dom.absimg[i]
        return down(lo - delta), up(hi + delta)

    def float_slack(self, dom: Domains, i: int) -> None:
        """``absimg`` and ``fwd`` of Linear node ``i`` from its inputs' current magnitudes.  Any
        sound magnitudes give a valid slack, so the elementwise minimum with what ``dom`` holds is
        kept; ``bound`` recomputes them once the inputs' bounds are tightened: in float32 the
        first (interval) magnitudes of deep layers are 10^5 on mnist_fc 256x6, a charge of about 1
        per neuron that turned a margin of +0.95 into -2.7."""
        node = self.nodes[i]
        mags = [self.mag(dom, j) for j in node.inputs]
        a = node.absimg(mags)
        nt = node.row_terms
        fwd = gamma(nt) * a + nt * TINY                     # Graph.forward in float64
        if self.arithmetic == "float32":                    # onnxruntime, op by op, in float32
            t32 = node.terms32
            fwd = fwd + gamma(t32, U32) * node.chain_absimg(mags) + t32 * TINY32
        if dom.fwd[i] is not None:
            a, fwd = np.minimum(a, dom.absimg[i]), np.minimum(fwd, dom.fwd[i])
        dom.absimg[i], dom.fwd[i] = a, fwd

    def deviation(self, dom: Domains) -> list:
        """Per node ``(B, size)`` bounds on ``|value as the model runs - exact value|`` for every
        input of each domain: ``fwd`` at each Linear node plus its inputs' deviations through
        ``|A|``; relaxed kinds pass deviations on (``error_bound``; 1-Lipschitz kinds unchanged).
        Turns a real-arithmetic bound on ``C y - d`` (the exact MILP's) into one for the model as
        it runs: subtract ``|C| deviation[output]``.  Needs ``interval`` (or ``bound``) first."""
        e = [np.zeros_like(dom.lower[0])]
        for i in range(1, len(self.nodes)):
            node = self.nodes[i]
            if node.affine:
                v = dom.fwd[i].copy()
                for k, j in enumerate(node.inputs):
                    v = v + times(node.abs_mat(k), e[j])
                e.append(up(v * (1.0 + gamma(node.row_terms))))
            else:
                j = node.inputs[0]
                e.append(node.error_bound(e[j], dom.lower[j], dom.upper[j]))
        return e

    # -- bounds of nodes ---------------------------------------------------------------------------
    def interval(self, dom: Domains, upto: int | None = None) -> Domains:
        """Interval bounds of every node up to ``upto`` (default: all), intersected with bounds
        already held."""
        upto = len(self.nodes) - 1 if upto is None else upto
        for i in range(1, upto + 1):
            self._set(dom, i, *self.interval_node(dom, i))
        return dom

    def bound(self, dom: Domains, upto: int | None = None, start: int = 1,
              estimate: bool = False) -> Domains:
        """CROWN bounds: interval bounds first, then node by node in topological order, each needed
        node gets the interval image of its (tightened) inputs and back-substituted bounds for its
        undecided entries.  Never looser than what ``dom`` held.  ``start``: recompute only nodes
        from there on (the earlier ones keep the bounds ``dom`` holds, e.g. a parent's).
        ``estimate``: the back-substitutions in float32 with no rounding charged (``node_rows``),
        about twice as fast: bounds to choose by (a look-ahead's), never to prove with."""
        upto = len(self.nodes) - 1 if upto is None else upto
        if start <= 1:
            self.interval(dom, upto)
        needed = set(self.needed)
        for i in range(max(start, 1), upto + 1):
            if self.nodes[i].affine and dom.fwd[i] is not None:
                self.float_slack(dom, i)            # with the inputs' tightened magnitudes
            self._set(dom, i, *self.interval_node(dom, i))
            if i not in needed:
                continue
            lo, hi = dom.lower[i], dom.upper[i]
            # rows unstable in some domain are bounded in all of them (they come in the same
            # products; bounding each domain's own rows instead was measured slower on ACAS Xu
            # batches): a stable entry's tighter bounds tighten the intervals after it
            rows = np.arange(lo.shape[1]) if i in self.full_rows else \
                np.flatnonzero(((lo < 0) & (hi > 0)).any(axis=0))
            if rows.size and not self.fits(i, 2):
                # even one lower/upper row pair would break the cap: the interval bounds stay
                # (sound, looser); the relaxations after it use them
                if i not in self.stats["interval_only"]:
                    self.stats["interval_only"].append(i)
                continue
            self.stats["rows_bounded"][i] = self.stats["rows_bounded"].get(i, 0) + int(rows.size)
            if rows.size:
                rlo, rhi = self.node_rows(dom, i, rows, estimate)
                lo, hi = lo.copy(), hi.copy()
                lo[:, rows] = np.maximum(lo[:, rows], rlo)
                hi[:, rows] = np.minimum(hi[:, rows], rhi)
                self._set(dom, i, lo, hi)
        return dom

    def node_rows(self, dom: Domains, t: int, rows: np.ndarray, estimate: bool = False):
        """Lower and upper bounds ``(B, m)`` of ``v_t[rows]``: one back-substitution for the rows
        of ``[I; -I]``, whose first step through a Linear ``t`` is an exact row selection.
        ``estimate``: the same in float32 with no rounding charged (see ``objective``)."""
        dt = np.float32 if estimate else np.float64
        node = self.nodes[t]
        width = max(self.nodes[j].size for j in range(t + 1))
        lo = np.empty((dom.B, rows.size))
        hi = np.empty((dom.B, rows.size))
        for bs, rs in self._chunks(dom.B, 2 * rows.size, width, pair=True):
            r = rows[rs]
            m = r.size
            B = len(range(*bs.indices(dom.B)))
            sub = _Sub(self, dom, bs, 2 * m, charge=not estimate)
            if node.affine:
                for k, j in enumerate(node.inputs):
                    M = node.row_block(k, r).astype(dt, copy=False)
                    sub.add_coef(j, np.broadcast_to(np.vstack([M, -M]), (B, 2 * m, M.shape[1])))
                b = node.bias[r]
                sub.add_const(np.broadcast_to(np.concatenate([b, -b]), (B, 2 * m)))
                if not estimate:
                    f = dom.fwd[t][bs][:, r]                # the selection itself is exact
                    sub.slack += np.concatenate([f, f], axis=1)
                sub.run(t - 1, None)
            else:
                E = np.zeros((2 * m, node.size), dt)
                E[np.arange(m), r] = 1.0
                E[m + np.arange(m), r] = -1.0
                sub.lam[t] = np.broadcast_to(E, (B, 2 * m, node.size))
                sub.run(t, None)
            res, _ = sub.finish()
            lo[bs, rs], hi[bs, rs] = res[:, :m], -res[:, m:]
        return lo, hi

    # -- objectives -------------------------------------------------------------------------------
    def objective(self, dom: Domains, t: int, L: np.ndarray, c: np.ndarray | None = None,
                  alpha: dict | None = None, grad: bool = False, beta: dict | None = None,
                  estimate: bool = False):
        """Sound lower bounds ``(B, k)`` of ``L @ v_t + c`` for every domain, given sound bounds on
        the nodes before ``t``; ``L`` is ``(k, size_t)`` or ``(B, k, size_t)``, ``c`` ``(k,)`` or
        ``(B, k)``.  ``alpha``: lower slopes per Relu node (``(B, k, size)``, see ``ops.relu``);
        ``beta``: multipliers >= 0 of the domains' ReLU splits, per Relu node (same shape; used
        only where the node's phase is fixed).  Returns ``(lower, input coefficients (B, k,
        n_in))``, plus, with ``grad``, the gradient of each row's bound with respect to its slopes
        and multipliers (a dict keyed like ``alpha`` and ``("beta", node)``; see ``_slope_grad``)
        and with respect to ``L`` (the relaxation's minimising value of ``v_t``, ``(B, k, size_t)``).
        Infeasible domains get ``+inf``.  ``estimate``: the same in float32 with no rounding
        charged (about twice as fast): values and gradients that guide choices, never bounds."""
        self._need_fit(t)
        L = np.asarray(L, np.float32 if estimate else np.float64)
        B = dom.B
        if L.ndim == 2:
            L = np.broadcast_to(L, (B,) + L.shape)
        k = L.shape[1]
        width = max(self.nodes[j].size for j in range(t + 1))
        out = np.empty((B, k))
        coef = np.empty((B, k, self.graph.n_inputs))
        grads: dict = {}
        point = np.zeros(L.shape) if grad else None
        cc = None if c is None else np.broadcast_to(np.asarray(c, np.float64), (B, k))
        for bs, rs in self._chunks(B, k, width, pair=False):
            sub = _Sub(self, dom, bs, len(range(*rs.indices(k))), charge=not estimate)
            if cc is not None:
                sub.add_const(cc[bs, rs].copy())
            if grad:
                sub.tape = {}
            a = None if alpha is None else {i: v[bs, rs] for i, v in alpha.items()}
            bt = None if beta is None else {i: v[bs, rs] for i, v in beta.items()}
            sub.lam[t] = L[bs, rs]
            sub.run(t, a, bt)
            out[bs, rs], coef[bs, rs] = sub.finish()
            if grad:
                g_alpha, point[bs, rs] = self._slope_grad(dom, sub, t, coef[bs, rs], bs)
                for i, g in g_alpha.items():
                    grads.setdefault(i, np.zeros((B, k, g.shape[-1]), g.dtype))[bs, rs] = g
        bad = dom.infeasible()
        if bad.any():
            out[bad] = np.inf
        return (out, coef, grads, point) if grad else (out, coef)

    def _slope_grad(self, dom: Domains, sub: _Sub, t: int, L0: np.ndarray, bs: slice):
        """d(row bound)/d(lower slope) of every unstable ReLU entry, by a reverse pass through the
        back-substitution (the bound is piecewise linear in the slopes; this is its derivative
        where the signs of the coefficients do not change, the rounding charge ignored).

        The derivative of the bound with respect to the coefficients ``L_n`` at node ``n`` is a
        vector ``xh_n`` per row: at the input, the box corner the bound picked; through an affine
        node ``xh = A xh_in + b``; through a relaxed node, the line the row used, at ``xh_in``.
        The slope of entry ``e`` enters as ``L_e * slope * x_e`` where ``L_e >= 0``, so its
        derivative is ``L_e * xh_in[e]`` there and 0 elsewhere.  Returns the slope gradients and
        ``xh_t``."""
        lo = dom.lower[0][bs].astype(sub.dt, copy=False)
        hi = dom.upper[0][bs].astype(sub.dt, copy=False)
        xh = {0: np.where(L0 >= 0, lo[:, None, :], hi[:, None, :])}
        grads = {}
        for i in reversed(sub.done):
            node = self.nodes[i]
            if node.affine:
                v = node.bias.astype(sub.dt, copy=False)
                for k, j in enumerate(node.inputs):
                    v = v + node.times_k(k, xh[j], self.structured)
                xh[i] = v
                continue
            Li, R = sub.tape[i]
            x = xh[node.inputs[0]]
            if R.select is not None:
                x = np.take_along_axis(x, np.broadcast_to(R.select[:, None, :], Li.shape), axis=2)
            lo_s = R.lo_slope if R.lo_slope.ndim == 3 else R.lo_slope[:, None, :]
            low = lo_s * x + (0.0 if R.lo_off is None else R.lo_off[:, None, :])
            upp = R.up_slope[:, None, :] * x + (0.0 if R.up_off is None else R.up_off[:, None, :])
            pos = Li >= 0
            xh[i] = np.where(pos, low, upp)
            if R.free is not None and isinstance(node, Relu):
                grads[i] = np.where(pos & R.free[:, None, :], Li * x, 0.0)
            sgn = dom.phase.get(i)
            if sgn is not None and R.select is None:         # d/d beta of -beta s z: -s xh_z
                grads[("beta", i)] = -sgn[bs][:, None, :] * x
        return grads, xh[t]

    def coefficients(self, dom: Domains, t: int, L: np.ndarray, alpha: dict | None = None,
                     beta: dict | None = None, estimate: bool = False) -> dict:
        """The coefficients ``(B, k, size)`` that reach each relaxed node in the back-substitution
        of ``L @ v_t`` (e.g. to score where splitting pays): ``{node: coefficients}``;
        ``estimate``: computed in float32 (see ``objective``)."""
        self._need_fit(t)
        L = np.asarray(L, np.float32 if estimate else np.float64)
        if L.ndim == 2:
            L = np.broadcast_to(L, (dom.B,) + L.shape)
        k = L.shape[1]
        out: dict = {}
        width = max(self.nodes[j].size for j in range(t + 1))
        for bs, rs in self._chunks(dom.B, k, width, pair=False):
            sub = _Sub(self, dom, bs, len(range(*rs.indices(k))), charge=not estimate)
            sub.tape = {}
            sub.lam[t] = L[bs, rs]
            sub.run(t, None if alpha is None else {i: v[bs, rs] for i, v in alpha.items()},
                    None if beta is None else {i: v[bs, rs] for i, v in beta.items()})
            for i, (Li, _) in sub.tape.items():
                out.setdefault(i, np.zeros((dom.B, k, Li.shape[2])))[bs, rs] = Li
        return out

    def margins(self, dom: Domains, C: np.ndarray, d: np.ndarray, alpha: dict | None = None,
                upper: bool = False, coef: bool = False, estimate: bool = False):
        """Sound bounds on ``C @ y - d`` for the output ``y`` of every domain: back-substituted
        from ``C`` directly (tighter than bounding ``y`` first), and never looser than the interval
        image of the output bounds.  Returns ``lower (B, k)``; ``(lower, upper)`` if ``upper``;
        ``(lower, input coefficients of each row's linear bound)`` if ``coef``.  ``estimate``:
        the back-substitutions in float32 with no rounding charged (``objective``): values to
        choose by, never bounds."""
        C = np.atleast_2d(np.asarray(C, np.float64))
        d = np.asarray(d, np.float64).ravel()
        t = self.graph.output
        ilo, ihi = output_interval(dom.lower[t], dom.upper[t], C, d)
        lo, L0 = self.objective(dom, t, C, -d, alpha, estimate=estimate)
        lo = np.maximum(lo, ilo)
        if coef:
            return lo, L0
        if not upper:
            return lo
        neg, _ = self.objective(dom, t, -C, d, estimate=estimate)
        return lo, np.minimum(-neg, ihi)

    def _chunks(self, B: int, k: int, width: int, pair: bool):
        """(domain slice, row slice) blocks of at most ``chunk`` coefficients of ``width``; with
        ``pair`` the rows count twice (lower and upper rows of one neuron)."""
        f = 2 if pair else 1
        n = k // f
        b_step = max(1, self.chunk // max(1, f * width))
        for b0 in range(0, B, b_step):
            b1 = min(B, b0 + b_step)
            r_step = max(1, self.chunk // max(1, f * (b1 - b0) * width))
            for r0 in range(0, n, r_step):
                r1 = min(n, r0 + r_step)
                self.stats["max_block_bytes"] = max(self.stats["max_block_bytes"],
                                                    8 * (b1 - b0) * f * (r1 - r0) * width)
                yield slice(b0, b1), slice(r0, r1)


def _slice_relax(R, bs: slice):
    if bs == slice(None):
        return R
    cut = lambda v: None if v is None else v[bs]
    return type(R)(R.lo_slope[bs], R.up_slope[bs], cut(R.lo_off), cut(R.up_off), cut(R.select),
                   cut(R.free))


def output_interval(y_lo: np.ndarray, y_hi: np.ndarray, C: np.ndarray, d: np.ndarray):
    """Interval image ``(B, k)`` of ``C @ y - d`` for ``y`` in ``[y_lo, y_hi]`` (``(B, n)``)."""
    lo, hi, _ = affine_interval(C, d, y_lo, y_hi)
    return lo, hi
