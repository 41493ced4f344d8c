"""The MILP encoding against ground truth by enumeration.

Ground truth: for every ReLU phase pattern (and every max-pool selection), the network is affine on
the set of inputs having that pattern; one LP (scipy linprog) per pattern minimises the margin over
the box ∩ that set, and the minimum over feasible patterns is the exact optimum.  The encoded model
is solved with scipy.optimize.milp (not our back end), so this file tests the encoding alone.

The helpers (tiny nets, interval bounds, enumeration) are reused by test_solvers.py.
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import Bounds as SBounds, LinearConstraint, linprog, milp

from verifier.encode import (conjunction_objective, disjunction_objective, encode_network,
                             linear_objective, prune_conjunctions, start_vector)
from verifier.graph import Graph, Input, Linear, MaxPool, Relu
from verifier.spec import Box, Conjunction


# ---- tiny nets ----------------------------------------------------------------------------------

def mlp(seed, sizes=(3, 5, 4, 3), scale=1.0):
    rng = np.random.default_rng(seed)
    nodes = [Input((), (1, sizes[0]))]
    for k in range(1, len(sizes)):
        W = rng.normal(size=(sizes[k], sizes[k - 1])) * scale
        b = rng.normal(size=sizes[k]) * 0.3
        nodes.append(Linear((len(nodes) - 1,), (sizes[k],), mats=(W,), bias=b))
        if k < len(sizes) - 1:
            nodes.append(Relu((len(nodes) - 1,), (sizes[k],)))
    return Graph(nodes)


def pool_net(seed):
    """Linear 3→6, ReLU, MaxPool over overlapping and padded windows, Linear →3."""
    rng = np.random.default_rng(seed)
    windows = np.array([[0, 1, 2], [2, 3, -1], [4, 5, 1]])
    return Graph([Input((), (1, 3)),
                  Linear((0,), (6,), mats=(rng.normal(size=(6, 3)),), bias=rng.normal(size=6) * .3),
                  Relu((1,), (6,)),
                  MaxPool((2,), (3,), windows=windows),
                  Linear((3,), (3,), mats=(rng.normal(size=(3, 3)),), bias=rng.normal(size=3))])


def residual_net(seed):
    """x → L1 → ReLU → L2 → ReLU; output = L3(relu2) + L4(relu1) + L5(x) (a 3-input Linear),
    one sparse matrix among them."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.normal(size=s)
    return Graph([Input((), (1, 3)),
                  Linear((0,), (4,), mats=(r(4, 3),), bias=r(4) * .3),
                  Relu((1,), (4,)),
                  Linear((2,), (4,), mats=(sp.csr_array(r(4, 4) * (r(4, 4) > 0)),), bias=r(4) * .3),
                  Relu((3,), (4,)),
                  Linear((4, 2, 0), (3,), mats=(r(3, 4), r(3, 4), r(3, 3)), bias=r(3))])


def rand_box(seed, n, radius=1.0):
    c = np.random.default_rng(seed + 1000).normal(size=n) * 0.5
    return Box(c - radius, c + radius)


def interval_bounds(graph, box):
    """Plain interval propagation (sound: exact arithmetic up to float64 rounding, widened)."""
    L, U = [], []
    for n in graph.nodes:
        if isinstance(n, Input):
            lo, hi = np.array(box.lower, float), np.array(box.upper, float)
        elif isinstance(n, Linear):
            lo, hi = n.bias.copy(), n.bias.copy()
            for A, j in zip(n.mats, n.inputs):
                A = A.toarray() if sp.issparse(A) else A
                P, N = np.maximum(A, 0), np.minimum(A, 0)
                lo = lo + P @ L[j] + N @ U[j]
                hi = hi + P @ U[j] + N @ L[j]
            w = 1e-12 * (1 + np.abs(lo) + np.abs(hi))
            lo, hi = lo - w, hi + w
        elif isinstance(n, Relu):
            lo, hi = np.maximum(L[n.inputs[0]], 0), np.maximum(U[n.inputs[0]], 0)
        else:
            lp = np.append(L[n.inputs[0]], -np.inf)
            hp = np.append(U[n.inputs[0]], -np.inf)
            lo, hi = lp[n.windows].max(1), hp[n.windows].max(1)
        L.append(lo)
        U.append(hi)
    return L, U


def robust_conjs(n_out, label, targets=None):
    out = []
    for j in (targets if targets is not None else range(n_out)):
        if j != label:
            C = np.zeros((1, n_out))
            C[0, label], C[0, j] = 1.0, -1.0
            out.append(Conjunction(C, np.zeros(1)))
    return tuple(out)


# ---- enumeration ground truth -------------------------------------------------------------------

def _choices(graph, box):
    """Per ReLU the phases it can take, per pooling window the inputs that can be its maximum
    (from this file's own interval bounds; keeping only possible choices loses no input)."""
    L, U = interval_bounds(graph, box)
    ch = []
    for i, n in enumerate(graph.nodes):
        l, u = L[n.inputs[0]] if n.inputs else None, U[n.inputs[0]] if n.inputs else None
        if isinstance(n, Relu):
            ch += [(i, k, (1,) if l[k] >= 0 else (0,) if u[k] <= 0 else (0, 1))
                   for k in range(n.size)]
        elif isinstance(n, MaxPool):
            for k in range(n.size):
                w = [int(j) for j in n.windows[k] if j >= 0]
                best_lo = max(l[j] for j in w)
                ch.append((i, k, tuple(j for j in w if u[j] >= best_lo)))
    return ch


def _affine(graph, pick):
    """Affine maps M_i x + m_i of every node under a fixed pattern, and the pattern's inequalities
    G x <= h."""
    n0 = graph.n_inputs
    M, m, G, h = [], [], [], []
    for i, n in enumerate(graph.nodes):
        if isinstance(n, Input):
            M.append(np.eye(n0)); m.append(np.zeros(n0))
        elif isinstance(n, Linear):
            Mi, mi = np.zeros((n.size, n0)), n.bias.copy()
            for A, j in zip(n.mats, n.inputs):
                A = A.toarray() if sp.issparse(A) else A
                Mi += A @ M[j]; mi += A @ m[j]
            M.append(Mi); m.append(mi)
        elif isinstance(n, Relu):
            Mx, mx = M[n.inputs[0]], m[n.inputs[0]]
            ph = np.array([pick[(i, k)] for k in range(n.size)])
            # active: -(Mx x + mx) <= 0 ; inactive: Mx x + mx <= 0
            s = np.where(ph == 1, -1.0, 1.0)
            G.append(s[:, None] * Mx); h.append(-s * mx)
            M.append(Mx * ph[:, None]); m.append(mx * ph)
        else:
            Mx, mx = M[n.inputs[0]], m[n.inputs[0]]
            sel = np.array([pick[(i, k)] for k in range(n.size)])
            for k in range(n.size):
                for j in n.windows[k]:
                    if j >= 0 and j != sel[k]:
                        G.append((Mx[j] - Mx[sel[k]])[None])
                        h.append(np.array([mx[sel[k]] - mx[j]]))
            M.append(Mx[sel]); m.append(mx[sel])
    G = np.vstack(G) if G else np.zeros((0, n0))
    h = np.concatenate(h) if h else np.zeros(0)
    return M, m, G, h


def enumerate_min(graph, box, conjs):
    """Exact ``min_{x in box} min_j max_i (C_ji y - d_ji)`` and an argmin, by enumeration."""
    ch = _choices(graph, box)
    best, arg = np.inf, None
    n0 = graph.n_inputs
    for combo in itertools.product(*[c[2] for c in ch]):
        pick = {(c[0], c[1]): v for c, v in zip(ch, combo)}
        M, m, G, h = _affine(graph, pick)
        My, my = M[graph.output], m[graph.output]
        for cj in conjs:
            k = cj.C.shape[0]
            # variables (x, t): min t  s.t.  C(My x + my) - d <= t,  G x <= h
            A = np.vstack([np.hstack([cj.C @ My, -np.ones((k, 1))]),
                           np.hstack([G, np.zeros((G.shape[0], 1))])])
            b = np.concatenate([cj.d - cj.C @ my, h])
            res = linprog(np.r_[np.zeros(n0), 1.0], A_ub=A, b_ub=b,
                          bounds=list(zip(box.lower, box.upper)) + [(None, None)], method="highs")
            if res.status == 0 and res.fun < best:
                best, arg = res.fun, res.x[:n0]
    return best, arg


def milp_scipy(model, relax=False):
    res = milp(model.c, constraints=LinearConstraint(model.A, model.rl, model.ru),
               integrality=None if relax else model.integrality,
               bounds=SBounds(model.lb, model.ub),
               options={"mip_rel_gap": 1e-9})
    assert res.status == 0, res.message
    return res.fun + model.offset, res.x


NETS = [("mlp", lambda s: mlp(s)), ("mlp_deep", lambda s: mlp(s, (2, 4, 3, 3, 3))),
        ("pool", pool_net), ("residual", residual_net)]


@pytest.mark.parametrize("name,make", NETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_milp_optimum_equals_enumeration(name, make, seed):
    g = make(seed)
    box = rand_box(seed, g.n_inputs, radius=0.6 if name == "pool" else 1.0)
    L, U = interval_bounds(g, box)
    conjs = robust_conjs(g.n_outputs, label=seed % g.n_outputs)
    truth, _ = enumerate_min(g, box, conjs)
    net = encode_network(g, (L, U), box)
    model = disjunction_objective(net, conjs, L[-1], U[-1])
    assert model.n_binaries >= 5
    val, x = milp_scipy(model)
    assert val == pytest.approx(truth, abs=1e-6)
    # the solution's input gives (up to tolerance) that margin in the real network
    y = g.forward(model.input_of(x))
    assert min(c.margin(y) for c in conjs) == pytest.approx(truth, abs=1e-5)
    # LP relaxation (triangle) is a lower bound
    assert milp_scipy(model, relax=True)[0] <= val + 1e-7


@pytest.mark.parametrize("seed", [2, 3])
def test_multirow_conjunctions_and_disjunction(seed):
    """Two conjunctions of two rows each: min over them of max over rows."""
    g = mlp(seed, (3, 4, 4, 3))
    box = rand_box(seed, 3)
    L, U = interval_bounds(g, box)
    rng = np.random.default_rng(seed)
    conjs = tuple(Conjunction(rng.normal(size=(2, 3)), rng.normal(size=2)) for _ in range(2))
    truth, _ = enumerate_min(g, box, conjs)
    net = encode_network(g, (L, U), box)
    val, _ = milp_scipy(disjunction_objective(net, conjs, L[-1], U[-1]))
    assert val == pytest.approx(truth, abs=1e-6)
    single, _ = enumerate_min(g, box, conjs[:1])
    val1, _ = milp_scipy(conjunction_objective(net, conjs[0], L[-1], U[-1]))
    assert val1 == pytest.approx(single, abs=1e-6)


def test_linear_objective_any_node():
    g = mlp(4, (3, 5, 4, 3))
    box = rand_box(4, 3)
    L, U = interval_bounds(g, box)
    model = encode_network(g, (L, U), box, upto=3)       # only what node 3 needs
    assert model.vars[4] is None and model.vars[5] is None
    for k in range(4):
        coef = np.eye(4)[k]
        lo, _ = milp_scipy(linear_objective(model, 3, coef))
        hi, _ = milp_scipy(linear_objective(model, 3, -coef))
        xs = np.random.default_rng(0).uniform(box.lower, box.upper, size=(4000, 3))
        v = g.forward_all(xs)[3][:, k]
        assert lo <= v.min() + 1e-9 and -hi >= v.max() - 1e-9
        assert L[3][k] - 1e-9 <= lo and -hi <= U[3][k] + 1e-9      # never looser than interval


def test_stable_neurons_get_no_binary_and_no_column():
    g = mlp(5, (2, 6, 2))
    box = Box(np.array([0.0, 0.0]), np.array([0.1, 0.1]))
    L, U = interval_bounds(g, box)
    l1, u1 = L[1], U[1]
    unstable = int(((l1 < 0) & (u1 > 0)).sum())
    m = encode_network(g, (L, U), box)
    assert m.n_binaries == unstable
    # columns: inputs + Linear(6) + unstable relu outputs + binaries + Linear(2)
    assert m.n_cols == 2 + 6 + 2 * unstable + 2
    V = m.vars[2]
    assert (V.cols[u1 <= 0] == -1).all() and (V.const[u1 <= 0] == 0).all()
    assert (V.cols[l1 >= 0] == m.vars[1].cols[l1 >= 0]).all()


@pytest.mark.parametrize("seed", range(6))
def test_maxpool_on_overlapping_boxes(seed):
    """Pooling straight on the inputs, boxes that partly dominate each other: the dropping rule
    and the selection binaries against enumeration, in both objective directions."""
    rng = np.random.default_rng(seed)
    W = np.array([[0, 1, 2], [2, 3, 4], [1, 4, -1]])
    g = Graph([Input((), (1, 5)), MaxPool((0,), (3,), windows=W),
               Linear((1,), (2,), mats=(rng.normal(size=(2, 3)),), bias=np.zeros(2))])
    c = rng.uniform(0, 1, 5)
    box = Box(c, c + rng.uniform(0.05, 0.4, 5))
    L, U = interval_bounds(g, box)
    net = encode_network(g, (L, U), box)
    for sign in (1.0, -1.0):
        conjs = (Conjunction(sign * np.eye(2)[:1], np.zeros(1)),)
        truth, _ = enumerate_min(g, box, conjs)
        val, _ = milp_scipy(disjunction_objective(net, conjs, L[-1], U[-1]))
        assert val == pytest.approx(truth, abs=1e-7)


def test_maxpool_drops_dominated_inputs():
    g = Graph([Input((), (1, 3)), MaxPool((0,), (2,), windows=np.array([[0, 1, 2], [1, 2, -1]]))])
    box = Box(np.array([5.0, 0.0, 1.0]), np.array([6.0, 2.0, 4.0]))
    L, U = interval_bounds(g, box)
    m = encode_network(g, (L, U), box)
    # window 0: x0 >= 5 beats x1 <= 2 and x2 <= 4 → aliased, no binary; window 1: 2 binaries
    assert m.vars[1].cols[0] == m.vars[0].cols[0]
    assert m.n_binaries == 2


def test_start_vector_is_feasible():
    for make, seed in [(mlp, 6), (pool_net, 7), (residual_net, 8)]:
        g = make(seed)
        box = rand_box(seed, g.n_inputs)
        L, U = interval_bounds(g, box)
        conjs = robust_conjs(g.n_outputs, 0) + (Conjunction(np.ones((2, 3)), np.zeros(2)),)
        m = disjunction_objective(encode_network(g, (L, U), box), conjs, L[-1], U[-1])
        for x in np.random.default_rng(seed).uniform(box.lower, box.upper, size=(20, g.n_inputs)):
            z = start_vector(m, g, x)
            r = m.A @ z
            assert (r >= m.rl - 1e-9).all() and (r <= m.ru + 1e-9).all()
            assert (z >= m.lb - 1e-9).all() and (z <= m.ub + 1e-9).all()
            assert np.array_equal(z[m.integrality == 1], np.round(z[m.integrality == 1]))
            # objective at the start = the case margin of the forward pass
            y = g.forward(x)
            assert m.objective_value(z) == pytest.approx(min(c.margin(y) for c in conjs), abs=1e-9)


def test_prune_conjunctions():
    lo, up = np.array([1.0, -1.0, 0.0]), np.array([2.0, 0.5, 3.0])
    conjs = robust_conjs(3, 0)        # y0 - y1 in [0.5, 3] → dropped ; y0 - y2 in [-2, 2] → kept
    kept, lower = prune_conjunctions(conjs, lo, up)
    assert kept == [1]
    assert 0.5 - 1e-12 <= lower[0] <= 0.5 and lower[1] <= -2.0
    kept, lower = prune_conjunctions(conjs, lo, up, margin_lower=[-1.0, 0.1])
    assert kept == [] and lower[1] == 0.1


def test_dense_model_encodes_fast():
    """784-256-256-10 with random dense weights (the mnist_fc shape): bulk encoding only."""
    g = mlp(9, (784, 256, 256, 10), scale=0.05)
    x = np.random.default_rng(9).uniform(0, 1, 784)
    box = Box(np.clip(x - 0.03, 0, 1), np.clip(x + 0.03, 0, 1))
    L, U = interval_bounds(g, box)
    encode_network(g, (L, U), box)                       # warm-up
    t = time.perf_counter()
    m = encode_network(g, (L, U), box)
    m = disjunction_objective(m, robust_conjs(10, 3), L[-1], U[-1])
    assert time.perf_counter() - t < 1.0
    assert m.A.nnz >= 784 * 256
