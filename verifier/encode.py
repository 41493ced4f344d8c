"""Graph + sound bounds + input box → exact MILP (or its LP relaxation) as arrays.

The model is in the standard form HiGHS and ``scipy.optimize.milp`` use::

    minimise  c @ x + offset   subject to   rl <= A @ x <= ru,   lb <= x <= ub,
              x[j] integer where integrality[j] == 1   (all integer columns are binaries)

Encoding (Tjeng, Xiao & Tedrake 2019), built block by block with numpy / scipy.sparse:

- Input: one column per input value, column bounds = the box (intersected with the node bounds).
- Linear ``y = sum_k A_k x_k + b``: one column per output with bounds ``[lower, upper]`` and the
  equality rows ``y - sum_k A_k x_k = b``.
- Relu: stable-inactive (``u <= 0``) neurons are the constant 0 (no column), stable-active
  (``l >= 0``) neurons reuse their input's column; each unstable neuron (``l < 0 < u``) gets a
  column ``y`` and a binary ``a`` with ``y >= x, y >= 0, y <= u a, y <= x - l (1 - a)``.
- MaxPool: in each window, inputs whose upper bound is at most the largest lower bound are dropped
  (they can never exceed the input holding that lower bound); one survivor → ``y`` is that input;
  otherwise ``y >= x_j``, ``y <= x_j + (U - l_j)(1 - a_j)``, ``sum_j a_j = 1``.
- Sigmoid, Tanh: a column bounded by the node's bounds and linear rows that hold the function
  (``ops.sshape``), no binaries: an outer approximation (``Node.outer``).  With such nodes the
  guarantee below holds with "contains" for "is exactly": the MILP optimum is a lower bound.

Guarantee: if the bounds are sound for every input in the box (``lower[i] <= value <= upper[i]``
for every node), the feasible set projected onto the node columns is exactly the set of network
evaluations on the box, so the MILP optimum is the exact optimum of the objective over the box, and
the LP relaxation (binaries relaxed to [0, 1]; for ReLU this is the triangle relaxation) bounds it
from below.  An error of size δ in a bound moves the optimum by at most O(δ·‖W‖), no more.

A node's values in the model are described by a ``NodeVars``: per entry, a column index or -1
with a constant (inactive ReLUs), so aliasing (active ReLUs, single-survivor pooling windows) costs
nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from .fp import affine_interval
from .graph import Graph

INF = np.inf


@dataclass(frozen=True)
class NodeVars:
    """Value of node entry ``i`` = ``x[cols[i]]`` if ``cols[i] >= 0`` else ``const[i]``."""
    cols: np.ndarray     # int64 (size,)
    const: np.ndarray    # float64 (size,), 0 where cols >= 0

    def value(self, x: np.ndarray) -> np.ndarray:
        """The node's value in a column vector ``x``."""
        out = self.const.copy()
        m = self.cols >= 0
        out[m] = x[self.cols[m]]
        return out


@dataclass(frozen=True)
class Model:
    """A MILP in standard form (always *minimise*), plus the maps needed to read solutions and to
    build MIP starts.  See the module docstring for what is guaranteed."""
    c: np.ndarray
    offset: float
    A: sp.csr_array
    rl: np.ndarray
    ru: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integrality: np.ndarray                       # int32, 1 = binary, 0 = continuous
    vars: tuple                                   # NodeVars | None per graph node
    relu_bins: tuple = ()                         # (node, neuron indices, binary cols) per Relu
    pool_bins: tuple = ()                         # (node, window idx, input idx, binary cols)
    objective: tuple = ()                         # how aux objective columns are built, see below
    scale: float = 1.0                            # magnitude of the objective's terms (tolerances)
    extra: dict = field(default_factory=dict)     # named columns added by objectives (e.g. "eps")

    @property
    def n_cols(self) -> int:
        return int(self.c.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.A.shape[0])

    @property
    def n_binaries(self) -> int:
        return int(np.count_nonzero(self.integrality))

    def stats(self) -> dict:
        return {"rows": self.n_rows, "cols": self.n_cols, "binaries": self.n_binaries,
                "nnz": int(self.A.nnz)}

    def relaxed(self) -> "Model":
        """The LP relaxation: same rows and bounds, binaries relaxed to [0, 1]."""
        return replace(self, integrality=np.zeros_like(self.integrality))

    def objective_value(self, x: np.ndarray) -> float:
        return float(self.c @ x + self.offset)

    def input_of(self, x: np.ndarray) -> np.ndarray:
        """The input values (flat) held by a column vector, e.g. a solver solution."""
        return self.vars[0].value(np.asarray(x, dtype=np.float64))


# ------------------------------------------------------------------------------------------------
class _Builder:
    """Collects columns and row blocks (COO triplets) and assembles them once."""

    def __init__(self, n_cols: int = 0):
        self.lb, self.ub, self.integ = [], [], []
        self.n_cols = n_cols
        self.r, self.cidx, self.v, self.rl, self.ru = [], [], [], [], []
        self.n_rows = 0

    def cols(self, lb, ub, binary: bool = False) -> np.ndarray:
        lb = np.asarray(lb, np.float64).ravel()
        ub = np.broadcast_to(np.asarray(ub, np.float64), lb.shape).ravel()
        idx = np.arange(self.n_cols, self.n_cols + lb.size, dtype=np.int64)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integ.append(np.full(lb.size, int(binary), np.int32))
        self.n_cols += lb.size
        return idx

    def rows(self, m: int, terms, rl, ru) -> None:
        """Add ``m`` rows ``rl <= sum(terms) <= ru``.  Each term is ``(row, cols, const, coef)``
        (arrays of equal length, ``row`` local in ``[0, m)``) and contributes ``coef * x[cols]``, or
        ``coef * const`` moved to the bounds where ``cols == -1``."""
        shift = np.zeros(m)
        for row, cols, const, coef in terms:
            row = np.asarray(row, np.int64)
            cols = np.broadcast_to(np.asarray(cols, np.int64), row.shape)
            coef = np.broadcast_to(np.asarray(coef, np.float64), row.shape)
            var = cols >= 0
            if not var.all():
                const = np.broadcast_to(np.asarray(const, np.float64), row.shape)
                np.add.at(shift, row[~var], coef[~var] * const[~var])
            keep = var & (coef != 0)
            self.r.append(row[keep] + self.n_rows)
            self.cidx.append(cols[keep])
            self.v.append(coef[keep])
        self.rl.append(np.broadcast_to(np.asarray(rl, np.float64), (m,)) - shift)
        self.ru.append(np.broadcast_to(np.asarray(ru, np.float64), (m,)) - shift)
        self.n_rows += m

    def assemble(self):
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
        ij = (cat(self.r, np.int64), cat(self.cidx, np.int64))
        A = sp.csr_array((cat(self.v, np.float64), ij), shape=(self.n_rows, self.n_cols))
        A.sum_duplicates()
        return (A, cat(self.rl, np.float64), cat(self.ru, np.float64), cat(self.lb, np.float64),
                cat(self.ub, np.float64), cat(self.integ, np.int32))


def _as_bounds(bounds):
    """Accept a ``Bounds`` (``.lower``/``.upper``) or a ``(lower, upper)`` pair of node lists."""
    if hasattr(bounds, "lower"):
        lo, up = bounds.lower, bounds.upper
    else:
        lo, up = bounds
    return ([np.asarray(v, np.float64).ravel() for v in lo],
            [np.asarray(v, np.float64).ravel() for v in up])


def support(graph: Graph, lower: list, upper: list, targets: dict) -> dict:
    """The entries a model for ``targets`` (node -> mask of wanted entries) must hold: everything
    they depend on through nonzero coefficients, minus what the bounds fix (inactive ReLUs are the
    constant 0, dropped max-pool entries never win).  Dropping entries nothing kept depends on
    loses no constraint on the kept ones."""
    nodes = graph.nodes
    keep = {i: np.asarray(m, bool).copy() for i, m in targets.items()}
    for i in range(max(keep), 0, -1):
        K = keep.get(i)
        if K is None or not K.any():
            continue
        nd = nodes[i]
        masks = nd.support(K, [lower[j] for j in nd.inputs], [upper[j] for j in nd.inputs])
        for j, m in zip(nd.inputs, masks):
            keep[j] = keep[j] | m if j in keep else m
    return {i: K for i, K in keep.items() if K.any() or i == 0}


def encode_network(graph: Graph, bounds, box, *, upto: int | None = None, keep: dict | None = None,
                   slack: list | None = None, binaries: bool = True) -> Model:
    """Encode the nodes ``graph.output`` (or ``upto``) depends on, for inputs in ``box``.

    ``bounds`` must be sound on ``box`` and finite for every Relu/MaxPool input (they set the
    big-M constants).  ``keep`` (node -> mask, see ``support``): encode only those entries (default:
    every entry of every ancestor).  ``slack`` (per node, the float error allowance of each Linear
    node, or None): Linear rows become ``b - slack <= y - A x <= b + slack`` instead of equalities,
    so the model also holds the float64 network.  ``binaries=False``: no integer columns (ReLUs get
    the triangle, max-pool selections continuous weights): an LP relaxation with fewer columns.
    Returns a ``Model`` with a zero objective; add one with ``conjunction_objective`` /
    ``disjunction_objective`` / ``linear_objective``."""
    lower, upper = _as_bounds(bounds)
    nodes = graph.nodes
    if keep is None:
        upto = graph.output if upto is None else upto
        keep = support(graph, lower, upper, {upto: np.ones(nodes[upto].size, bool)})
        keep = {i: np.ones(nodes[i].size, bool) for i in keep}
    b = _Builder()
    V: list[NodeVars | None] = [None] * len(nodes)
    relu_bins, pool_bins = [], []
    for i in sorted(keep):
        node, own = nodes[i], keep[i]
        lo, up = lower[i], upper[i]
        if i == 0:
            cl = np.maximum(np.asarray(box.lower, np.float64).ravel(), lo)
            cu = np.minimum(np.asarray(box.upper, np.float64).ravel(), up)
            if (cl > cu).any():
                raise ValueError("input box and input bounds do not intersect")
            cols = np.full(node.size, -1, np.int64)
            cols[own] = b.cols(cl[own], cu[own])
            V[0] = NodeVars(cols, np.where(own, 0.0, np.nan))
            continue
        xs = [(V[j].cols, V[j].const) for j in node.inputs]
        if node.affine:
            (cols, const), bins = node.encode(b, xs, lo, up, np.flatnonzero(own),
                                              None if slack is None else slack[i])
        else:
            j = node.inputs[0]
            (cols, const), bins = node.encode(b, xs, lo, up, own, lower[j], upper[j],
                                              binaries=binaries)
        V[i] = NodeVars(cols, const)
        if bins is not None and bins[0].size and len(bins[-1]):
            (relu_bins if len(bins) == 2 else pool_bins).append((i,) + tuple(bins))
    A, rl, ru, lb, ub, integ = b.assemble()
    if np.isnan(rl).any() or np.isnan(ru).any():        # a kept entry read one not encoded
        raise AssertionError("the model reads an entry that was not encoded (support bug)")
    return Model(np.zeros(A.shape[1]), 0.0, A, rl, ru, lb, ub, integ, tuple(V),
                 tuple(relu_bins), tuple(pool_bins))


# ------------------------------------------------------------------------------------------------
# Objectives.  Each returns a new Model sharing the network's arrays.

def _extend(model: Model, b: _Builder, c_new: np.ndarray, offset: float, **kw) -> Model:
    """Append the columns/rows collected in ``b`` (whose column numbering continues the model's)."""
    A2, rl2, ru2, lb2, ub2, in2 = b.assemble()
    n = b.n_cols
    A1 = sp.csr_array((model.A.data, model.A.indices, model.A.indptr), shape=(model.n_rows, n))
    A = sp.vstack([A1, A2], format="csr") if A2.shape[0] else A1
    return replace(model, c=c_new, offset=float(offset), A=A,
                   rl=np.concatenate([model.rl, rl2]), ru=np.concatenate([model.ru, ru2]),
                   lb=np.concatenate([model.lb, lb2]), ub=np.concatenate([model.ub, ub2]),
                   integrality=np.concatenate([model.integrality, in2]), **kw)


def prune_conjunctions(conjs, out_lower, out_upper, margin_lower=None):
    """Which conjunctions still need a solver.  Returns ``(kept, lower)``: indices of conjunctions
    whose margin is not proved > 0, and a sound lower bound on every conjunction's margin over the
    box (from the output bounds ``C_i^+ l + C_i^- u - d_i``, maximised over the rows since the
    margin is a max over rows, and from ``margin_lower[j]`` if given).  Dropped = bound > 0."""
    lo = np.asarray(out_lower, np.float64).ravel()
    up = np.asarray(out_upper, np.float64).ravel()
    # an empty conjunction (no rows) is unsafe everywhere: margin -inf
    lower = np.array([affine_interval(C, d, lo, up)[0].max(initial=-np.inf)
                      for C, d in _conj_lists(conjs)])
    if margin_lower is not None:
        lower = np.maximum(lower, np.asarray(margin_lower, np.float64))
    kept = [j for j in range(len(lower)) if not lower[j] > 0]
    return kept, lower


def _conj_lists(conjs):
    out = []
    for cj in conjs:
        C = np.atleast_2d(np.asarray(cj.C, np.float64))
        out.append((C, np.asarray(cj.d, np.float64).ravel()))
    return out


def linear_objective(model: Model, node: int, coef, const: float = 0.0, lo=None, up=None) -> Model:
    """Minimise ``coef @ value(node) + const`` (to maximise, pass ``-coef`` and negate the result).
    ``lo``/``up`` (the node's bounds) only set the tolerance scale."""
    V = model.vars[node]
    if V is None:
        raise ValueError(f"node {node} is not encoded in this model")
    coef = np.asarray(coef, np.float64).ravel()
    c = np.zeros(model.n_cols)
    m = V.cols >= 0
    np.add.at(c, V.cols[m], coef[m])
    scale = 1.0
    if lo is not None:
        scale = float(np.abs(coef) @ np.maximum(np.abs(lo), np.abs(up)) + abs(const))
    return replace(model, c=c, offset=float(const + coef[~m] @ V.const[~m]),
                   objective=(("linear", node, coef),), scale=max(scale, 1.0))


def disjunction_objective(model: Model, conjs, out_lower, out_upper,
                          node: int | None = None) -> Model:
    """Minimise the case margin ``min_j max_i (C_ji y - d_ji)`` over the given conjunctions of the
    output node ``y`` (``node``, default the last encoded node).  ``out_lower``/``out_upper`` are
    sound bounds on ``y``; they give the big-M constants of the disjunction.

    One single-row conjunction → plain linear objective.  Otherwise a column ``t_j`` per multi-row
    conjunction (``t_j >= C_ji y - d_ji``), and for several conjunctions a column ``s`` with
    binaries ``a_j``: ``s >= t_j - M_j (1 - a_j)``, ``sum a_j = 1``; conjunctions whose margin lower
    bound exceeds another's upper bound can never be the minimum and get no binary.
    Note: the LP relaxation of this disjunction is weak (its bound is about ``min_j`` of the
    conjunctions' lower bounds); it is for the MILP, not for LP-only bounds."""
    node = max(i for i, v in enumerate(model.vars) if v is not None) if node is None else node
    V = model.vars[node]
    lo, up = np.asarray(out_lower, np.float64).ravel(), np.asarray(out_upper, np.float64).ravel()
    cl = _conj_lists(conjs)
    if not cl or any(C.shape[0] == 0 for C, _ in cl):
        raise ValueError("need at least one conjunction, each with at least one row")
    rng = [affine_interval(C, d, lo, up) for C, d in cl]
    tlo = np.array([r[0].max() for r in rng])            # bounds of each conjunction's margin
    tup = np.array([r[1].max() for r in rng])
    scale = max(1.0, max(float(r[2].max()) for r in rng))
    best = int(tup.argmin())
    live = [j for j in range(len(cl)) if tlo[j] <= tup[best] or j == best]
    b = _Builder(model.n_cols)
    yc, yk = V.cols, V.const

    def expr_terms(row0, C, sign):
        r, k = np.nonzero(C)
        return (r + row0, yc[k], yk[k], sign * C[r, k])

    if len(live) == 1 and cl[live[0]][0].shape[0] == 1:
        C, d = cl[live[0]]
        coef = C[0]
        c = np.zeros(b.n_cols)
        m = yc >= 0
        np.add.at(c, yc[m], coef[m])
        return replace(model, c=c, offset=float(coef[~m] @ yk[~m] - d[0]),
                       objective=(("conj", node, tuple(cl[j] for j in live), None, None, None),),
                       scale=scale)
    # t_j for multi-row conjunctions; single-row ones are used directly as expressions
    tcols = {}
    for j in live:
        C, d = cl[j]
        if C.shape[0] > 1 or len(live) == 1:
            t = b.cols([tlo[j]], [tup[j]])[0]
            tcols[j] = t
            m = C.shape[0]
            b.rows(m, [(np.arange(m), t, 0, 1.0), expr_terms(0, C, -1.0)], -d, INF)
    if len(live) == 1:
        t = tcols[live[0]]
        c = np.zeros(b.n_cols)
        c[t] = 1.0
        return _extend(model, b, c, 0.0, scale=scale,
                       objective=(("conj", node, (cl[live[0]],), np.array([t]), None, None),))
    s = b.cols([tlo[live].min()], [tup[live].min()])[0]
    a = b.cols(np.zeros(len(live)), 1.0, binary=True)
    Ls = tlo[live].min()
    terms, rlo = [], []
    for q, j in enumerate(live):
        Mj = tup[j] - Ls
        if j in tcols:       # s - t_j - M a_j >= -M
            terms += [([q], [s], 0, 1.0), ([q], [tcols[j]], 0, -1.0), ([q], [a[q]], 0, -Mj)]
            rlo.append(-Mj)
        else:                # s - C y - M a_j >= -d - M
            C, d = cl[j]
            terms += [([q], [s], 0, 1.0), expr_terms(q, C, -1.0), ([q], [a[q]], 0, -Mj)]
            rlo.append(-d[0] - Mj)
    nl = len(live)
    terms.append((np.full(nl, nl), a, 0, 1.0))
    b.rows(nl + 1, terms, np.append(rlo, 1.0), np.append(np.full(nl, INF), 1.0))
    c = np.zeros(b.n_cols)
    c[s] = 1.0
    tarr = np.array([tcols.get(j, -1) for j in live])
    return _extend(model, b, c, 0.0, scale=scale,
                   objective=(("conj", node, tuple(cl[j] for j in live), tarr, s, a),))


def conjunction_objective(model: Model, conj, out_lower, out_upper,
                          node: int | None = None) -> Model:
    """Minimise the margin ``max_i (C_i y - d_i)`` of one conjunction (see
    disjunction_objective)."""
    return disjunction_objective(model, (conj,), out_lower, out_upper, node)


# ------------------------------------------------------------------------------------------------
def start_vector(model: Model, graph: Graph, x) -> np.ndarray:
    """The full column vector of the model at input ``x`` (clipped to the input columns' bounds):
    every node from the float64 forward pass, ReLU binaries from the sign of the pre-activation,
    pooling binaries at the argmax of each window, objective columns at their optimal values.
    Feasible up to rounding, so usable as a MIP start."""
    x = np.asarray(x, np.float64).ravel()
    ic = model.vars[0].cols
    x = np.clip(x, model.lb[ic], model.ub[ic])
    vals = [v[0] for v in graph.forward_all(x)]
    z = np.zeros(model.n_cols)
    for i, V in enumerate(model.vars):
        if V is not None:
            m = V.cols >= 0
            z[V.cols[m]] = vals[i][m]
    for node, k, a in model.relu_bins:
        z[a] = vals[graph.nodes[node].inputs[0]][k] > 0
    for node, win, src, a in model.pool_bins:
        v = vals[graph.nodes[node].inputs[0]][src]
        order = np.lexsort((-v, win))
        first = np.r_[True, win[order][1:] != win[order][:-1]]
        z[a[order[first]]] = 1.0
    for obj in model.objective:
        if obj[0] != "conj" or obj[3] is None:
            continue
        _, node, cl, tcols, s, a = obj
        y = vals[node]
        t = np.array([(C @ y - d).max() for C, d in cl])
        has = tcols >= 0
        z[tcols[has]] = t[has]
        if s is not None:
            z[s] = t.min()
            z[a[int(t.argmin())]] = 1.0
    return z


def violation(model: Model, z: np.ndarray) -> float:
    """Largest violation of a row or column bound by the column vector ``z``, relative to
    ``1 + |value|``.  A forward-pass point (``start_vector``) violating the model by more than
    rounding means the bounds do not contain that point: they are unsound."""
    r = model.A @ z
    with np.errstate(invalid="ignore"):
        v = np.concatenate([(model.rl - r) / (1 + np.abs(r)), (r - model.ru) / (1 + np.abs(r)),
                            (model.lb - z) / (1 + np.abs(z)), (z - model.ub) / (1 + np.abs(z))])
    return float(np.max(v, initial=0.0))
