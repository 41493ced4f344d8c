"""Bound propagation: soundness by sampling, level ordering, hand-computed values, dual LP bounds.

Ground truth is the float64 network (``Graph.forward_all``) on points of the box (uniform samples
and corners): every level's bounds must contain every node's value, for every node.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from verifier.bounds import LEVELS, compute_bounds
from verifier.encode import Model
from verifier.graph import Graph, Input, Linear, MaxPool, Relu
from verifier.solvers import DualBound
from verifier.solvers.highs import Session

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "benchmarks" / "vnncomp2022" / "mnist_fc"
TOL = 1e-9          # slack for comparing levels (outward rounding is ~1e-13 relative)


# ------------------------------------------------------------------------------------------------
# tiny random nets built directly in the IR
# ------------------------------------------------------------------------------------------------
def _lin(rng, inputs, sizes, out, sparse=False, scale=1.0):
    mats = []
    for s in sizes:
        A = rng.normal(size=(out, s)) * scale / np.sqrt(s)
        if sparse:
            A[rng.random(A.shape) < 0.5] = 0.0
            A = sp.csr_array(A)
        mats.append(A)
    return Linear(tuple(inputs), (out,), mats=tuple(mats), bias=rng.normal(size=out) * 0.3)


def dense_net(rng, sparse=False):
    n0, h1, h2, out = 4, 7, 6, 3
    return Graph([Input((), (1, n0)),
                  _lin(rng, [0], [n0], h1, sparse), Relu((1,), (h1,)),
                  _lin(rng, [2], [h1], h2, sparse), Relu((3,), (h2,)),
                  _lin(rng, [4], [h2], out)])


def residual_net(rng):
    """Node 5 adds two branches (a 2-input Linear); node 2 feeds two consumers."""
    n0, h = 3, 6
    return Graph([Input((), (1, n0)),
                  _lin(rng, [0], [n0], h), Relu((1,), (h,)),                    # 1, 2
                  _lin(rng, [2], [h], h, sparse=True), Relu((3,), (h,)),        # 3, 4
                  _lin(rng, [4, 2], [h, h], h), Relu((5,), (h,)),               # 5 = A a4 + B a2
                  _lin(rng, [6, 0], [h, n0], 2)])                               # skip from input


def maxpool_net(rng):
    """A MaxPool over ReLU outputs (overlapping windows, padding) and one over a raw Linear."""
    n0, h = 4, 8
    w1 = np.array([[0, 1, 2], [2, 3, -1], [4, 5, 6], [6, 7, 0]])
    w2 = np.array([[0, 1], [1, 2], [3, -1]])
    return Graph([Input((), (1, n0)),
                  _lin(rng, [0], [n0], h), Relu((1,), (h,)),                    # 1, 2
                  MaxPool((2,), (4,), windows=w1),                               # 3
                  _lin(rng, [3], [4], 4), MaxPool((4,), (3,), windows=w2),       # 4, 5
                  Relu((5,), (3,)),                                              # 6
                  _lin(rng, [6, 3], [3, 4], 3)])                                 # 7


def dup_input_net(rng):
    """A Linear that reads the same node twice (inputs (2, 2))."""
    return Graph([Input((), (1, 3)),
                  _lin(rng, [0], [3], 5), Relu((1,), (5,)),
                  _lin(rng, [2, 2], [5, 5], 4), Relu((3,), (4,)),
                  _lin(rng, [4], [4], 2)])


NETS = {"dense": dense_net, "dense_sparse": lambda r: dense_net(r, sparse=True),
        "residual": residual_net, "maxpool": maxpool_net, "dup_input": dup_input_net}


def _box(rng, n, width=1.0):
    c = rng.normal(size=n)
    r = rng.random(n) * width
    return c - r, c + r


def _samples(rng, lo, hi, n=400):
    """Uniform points, random corners, and the box's own two extreme corners."""
    u = lo + (hi - lo) * rng.random((n, lo.size))
    corners = np.where(rng.random((n, lo.size)) < 0.5, lo, hi)
    return np.vstack([u, corners, lo, hi])


def _check_contains(graph, b, X, C=None, d=None):
    vals = graph.forward_all(X)
    for i, v in enumerate(vals):
        assert np.all(v >= b.lower[i]), (b.level, i, float((b.lower[i] - v).max()))
        assert np.all(v <= b.upper[i]), (b.level, i, float((v - b.upper[i]).max()))
    if C is not None:
        m = vals[graph.output] @ C.T - d
        assert np.all(m >= b.margin_lower) and np.all(m <= b.margin_upper), b.level


def _check_nested(inner, outer):
    for i in range(len(inner.lower)):
        assert np.all(inner.lower[i] >= outer.lower[i] - TOL * (1 + np.abs(outer.lower[i]))), i
        assert np.all(inner.upper[i] <= outer.upper[i] + TOL * (1 + np.abs(outer.upper[i]))), i
        assert np.all(inner.lower[i] <= inner.upper[i]), i
    if inner.margin_lower is not None:
        assert np.all(inner.margin_lower >= outer.margin_lower - TOL)
        assert np.all(inner.margin_upper <= outer.margin_upper + TOL)


@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("seed", range(6))
def test_random_nets_sound_and_nested(kind, seed):
    rng = np.random.default_rng(1000 * seed + len(kind))
    g = NETS[kind](rng)
    lo, hi = _box(rng, g.n_inputs)
    C = rng.normal(size=(3, g.n_outputs))
    d = rng.normal(size=3)
    X = _samples(rng, lo, hi)
    levels = ["interval", "symbolic", "alpha", "lp"] + (["milp"] if seed < 2 else [])
    res = [compute_bounds(g, None, lev, C, d, lower=lo, upper=hi, time_budget=20) for lev in levels]
    for b in res:
        _check_contains(g, b, X, C, d)
    for inner, outer in zip(res[1:], res[:-1]):
        _check_nested(inner, outer)


def test_symbolic_tighter_than_interval_somewhere():
    """Guards against a symbolic level that silently falls back to intervals."""
    gains = 0.0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        g = dense_net(rng)
        lo, hi = _box(rng, g.n_inputs)
        bi = compute_bounds(g, (lo, hi), "interval")
        bs = compute_bounds(g, (lo, hi), "symbolic")
        gains += sum(float(np.sum((bi.upper[i] - bi.lower[i]) - (bs.upper[i] - bs.lower[i])))
                     for i in range(len(g.nodes)))
    assert gains > 0.1


def test_point_box_contains_float_forward():
    """A degenerate box (one point) with large, cancelling weights: the bounds are as tight as
    float error allows, so they must still contain the float64 forward pass exactly."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        g = dense_net(rng)
        for n in g.nodes:
            if isinstance(n, Linear):
                n.mats = tuple(A * 1e3 for A in n.mats)
                n.bias = n.bias * 1e3
        x = rng.normal(size=g.n_inputs) * 1e2
        vals = g.forward_all(x)
        for lev in ("interval", "symbolic", "lp"):
            b = compute_bounds(g, (x, x), lev, arithmetic="real")
            for i, v in enumerate(vals):
                assert np.all(v[0] >= b.lower[i]) and np.all(v[0] <= b.upper[i]), (lev, i)
                # and not absurdly loose: float slack only
                assert np.all(b.upper[i] - b.lower[i] <= 1e-8 * (1 + np.abs(v[0]))), (lev, i)


def test_cancellation_exposes_float_error():
    """Layer 1 has weights ~1e8, layer 2 lies in the left null space of layer 1, so the output is
    dominated by the rounding error of the float64 forward pass (~1e-8) rather than by the input.
    Bounds that ignore the forward pass's rounding, or their own, miss the computed values."""
    for seed in range(10):
        rng = np.random.default_rng(seed)
        W1 = rng.normal(size=(6, 3)) * 1e8
        b1 = W1 @ rng.normal(size=3)                    # in the column space: cancels too
        q, _ = np.linalg.qr(W1, mode="complete")
        W2 = q[:, 3:].T                                  # W2 @ W1 = 0 up to rounding
        g = Graph([Input((), (1, 3)),
                   Linear((0,), (6,), mats=(W1,), bias=b1),
                   Linear((1,), (3,), mats=(W2,), bias=np.zeros(3))])
        lo, hi = _box(rng, 3, width=1e-3)
        X = _samples(rng, lo, hi, n=200)
        for lev in ("interval", "symbolic", "lp"):
            _check_contains(g, compute_bounds(g, (lo, hi), lev), X)


# ------------------------------------------------------------------------------------------------
# hand-computed nets
# ------------------------------------------------------------------------------------------------
def test_two_neuron_net_known_values():
    """x in [-1,1]^2, z = (x1 + x2, x1 - x2), a = relu(z), y = a1 + a2.
    interval: z in [-2,2]^2, y in [0, 4].  CROWN upper: a_i <= z_i/2 + 1, so y <= x1 + 2 <= 3;
    CROWN lower (alpha = 1 since u >= -l): y >= z1 + z2 = 2 x1 >= -2, intersected with [0, 4]."""
    g = Graph([Input((), (1, 2)),
               Linear((0,), (2,), mats=(np.array([[1.0, 1.0], [1.0, -1.0]]),), bias=np.zeros(2)),
               Relu((1,), (2,)),
               Linear((2,), (1,), mats=(np.array([[1.0, 1.0]]),), bias=np.zeros(1))])
    box = (-np.ones(2), np.ones(2))
    C, d = np.array([[1.0]]), np.array([0.0])
    bi = compute_bounds(g, box, "interval", C, d, arithmetic="real")
    bs = compute_bounds(g, box, "symbolic", C, d, arithmetic="real")
    bl = compute_bounds(g, box, "lp", C, d, arithmetic="real")
    close = lambda a, v: np.allclose(a, v, rtol=0, atol=1e-12)
    for b in (bi, bs, bl):
        assert close(b.lower[1], [-2, -2]) and close(b.upper[1], [2, 2])
        assert close(b.lower[2], [0, 0]) and close(b.upper[2], [2, 2])
    assert close(bi.lower[3], [0]) and close(bi.upper[3], [4])
    assert close(bs.lower[3], [0]) and close(bs.upper[3], [3])
    assert close(bs.margin_lower, [0]) and close(bs.margin_upper, [3])
    assert close(bl.upper[3], [3]) and close(bl.margin_upper, [3])   # the triangle LP agrees
    # every bound is rounded outward: never inside the exact value
    assert bs.upper[3][0] >= 3.0 and bi.lower[1][0] <= -2.0
    rep = bs.report.to_dict()
    assert [lv["level"] for lv in rep["levels"]] == ["interval", "symbolic"]
    assert [lv["level"] for lv in bl.report.to_dict()["levels"]][:4] == \
        ["interval", "symbolic", "alpha", "lp"]
    assert rep["levels"][1]["relu"]["2"] == {"active": 0, "inactive": 0, "unstable": 2}


def test_multi_input_net_where_lp_beats_crown():
    """z = x in [-1, 3], y = relu(z) - z/2 (a 2-input Linear reading the ReLU and its input).
    interval [-1.5, 3.5]; CROWN lower uses a >= z (u >= -l): y >= z/2 >= -0.5, upper uses
    a <= 3/4 (z + 1): y <= z/4 + 3/4 <= 1.5; the triangle LP's minimum is the true one, 0."""
    g = Graph([Input((), (1, 1)),
               Linear((0,), (1,), mats=(np.eye(1),), bias=np.zeros(1)),
               Relu((1,), (1,)),
               Linear((2, 1), (1,), mats=(np.eye(1), -0.5 * np.eye(1)), bias=np.zeros(1))])
    box = (np.array([-1.0]), np.array([3.0]))
    expect = {"interval": (-1.5, 3.5), "symbolic": (-0.5, 1.5), "lp": (0.0, 1.5)}
    for lev, (l, u) in expect.items():
        b = compute_bounds(g, box, lev, arithmetic="real")
        assert abs(b.lower[3][0] - l) < 1e-9 and b.lower[3][0] <= l, (lev, b.lower[3])
        assert abs(b.upper[3][0] - u) < 1e-9 and b.upper[3][0] >= u, (lev, b.upper[3])


def test_maxpool_dominated_window_is_exact():
    """y = max(x1, x2) with x1 in [2, 3], x2 in [0, 1]: x1 dominates, so y = x1 exactly and
    y - x1 has symbolic bounds [0, 0]."""
    g = Graph([Input((), (1, 2)),
               Linear((0,), (2,), mats=(np.eye(2),), bias=np.zeros(2)),
               MaxPool((1,), (1,), windows=np.array([[0, 1]])),
               Linear((2, 1), (1,), mats=(np.eye(1), np.array([[-1.0, 0.0]])), bias=np.zeros(1))])
    b = compute_bounds(g, (np.array([2.0, 0.0]), np.array([3.0, 1.0])), "symbolic",
                       arithmetic="real")
    assert abs(b.lower[3][0]) < 1e-12 and abs(b.upper[3][0]) < 1e-12


# ------------------------------------------------------------------------------------------------
# dual-based LP bounds
# ------------------------------------------------------------------------------------------------
def _random_lp(rng, m, n):
    A = sp.random(m, n, density=0.4, random_state=rng, data_rvs=rng.standard_normal, format="csr")
    x0 = rng.normal(size=n)                      # a feasible point, so the LP is feasible
    ax = A @ x0
    row_lo = ax - rng.random(m) * 2
    row_hi = ax + rng.random(m) * 2
    row_lo[rng.random(m) < 0.3] = -np.inf
    row_hi[rng.random(m) < 0.3] = np.inf
    col_lo = x0 - rng.random(n) * 3
    col_hi = x0 + rng.random(n) * 3
    return _model(A, row_lo, row_hi, col_lo, col_hi)


def _model(A, rl, ru, lb, ub):
    n = A.shape[1]
    return Model(np.zeros(n), 0.0, sp.csr_array(A), rl, ru, lb, ub, np.zeros(n, np.int32), ())


def _solve_lp(lp, c):
    sess = Session(lp)
    status, y, info = sess.minimise(np.arange(lp.n_cols), c, 10.0)
    return sess, status, y, info


def test_dual_bound_is_valid_and_tight_on_random_lps():
    for seed in range(25):
        rng = np.random.default_rng(seed)
        m, n = int(rng.integers(3, 30)), int(rng.integers(3, 30))
        lp = _random_lp(rng, m, n)
        c = rng.normal(size=n)
        sess, status, y, info = _solve_lp(lp, c)
        assert status == "optimal"
        x = np.asarray(sess.h.getSolution().col_value)
        db = DualBound(lp)
        bound = db.bound(y, c)
        opt = info["objective"]
        assert bound <= c @ x + 1e-9 and bound <= opt + 1e-9
        assert bound >= opt - 1e-6
        # any multiplier vector gives a valid bound: perturbed duals stay below the optimum
        for _ in range(5):
            yp = y + rng.normal(size=m) * 0.5
            assert db.bound(yp, c) <= opt + 1e-9


def test_dual_bound_against_enumerated_vertices():
    """Tiny LPs in 2 variables: the exact optimum is found by enumerating vertices."""
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        A = rng.normal(size=(3, 2))
        lp = _model(A, np.full(3, -np.inf), rng.random(3) + 0.5, -np.ones(2), np.ones(2))
        c = rng.normal(size=2)
        # vertices: intersections of any two of the 3 rows and 4 box sides
        lines = [(A[i], lp.ru[i]) for i in range(3)] + \
                [(np.array(v), s) for v, s in (([1, 0], 1), ([1, 0], -1), ([0, 1], 1), ([0, 1], -1))]
        best = np.inf
        for i in range(len(lines)):
            for j in range(i + 1, len(lines)):
                M = np.array([lines[i][0], lines[j][0]], float)
                if abs(np.linalg.det(M)) < 1e-12:
                    continue
                v = np.linalg.solve(M, [lines[i][1], lines[j][1]])
                if np.all(np.abs(v) <= 1 + 1e-12) and np.all(A @ v <= lp.ru + 1e-12):
                    best = min(best, c @ v)
        if not np.isfinite(best):
            continue                              # infeasible draw (0 is feasible, so rare)
        _, _, y, _ = _solve_lp(lp, c)
        b = DualBound(lp).bound(y, c)
        assert b <= best + 1e-12 and b >= best - 1e-6


# ------------------------------------------------------------------------------------------------
# a real model
# ------------------------------------------------------------------------------------------------
def _load_mnist(name):
    path = MNIST / "onnx" / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    from verifier.onnx_loader import load
    return load(path)


def test_mnist_fc_all_levels_sound_and_nested():
    """mnist_fc 256x2 on VNN-COMP's prop_0 box (eps 0.03): all levels contain sampled values, nest,
    and each level decides more ReLUs than the one before."""
    g = _load_mnist("mnist-net_256x2.onnx")
    from verifier.vnnlib import parse_vnnlib
    prop = parse_vnnlib(MNIST / "vnnlib" / "prop_0_0.03.vnnlib")
    case = prop.cases[0]
    lo, hi = case.box.lower, case.box.upper
    C = np.vstack([c.C for c in case.unsafe])
    d = np.concatenate([c.d for c in case.unsafe])
    res = [compute_bounds(g, case.box, lev, C, d, time_budget=30)
           for lev in ("interval", "symbolic", "alpha", "lp")]
    rng = np.random.default_rng(0)
    X = _samples(rng, lo, hi, n=300)
    for b in res:
        _check_contains(g, b, X, C, d)
    for inner, outer in zip(res[1:], res[:-1]):
        _check_nested(inner, outer)
    ui, us, ua, ul = (b.report.levels[-1].unstable for b in res)
    assert ul < us < ui and ua == us          # the alpha level tightens margins only
    assert res[1].report.levels[1].time_s < 1.0
    assert np.min(res[2].margin_lower) >= np.min(res[1].margin_lower)   # proved: alpha not run
    assert np.min(res[3].margin_lower) > np.min(res[1].margin_lower)


def test_lp_time_budget_exhausted_keeps_earlier_bounds():
    """With no time for LPs, the lp level falls back to the symbolic bounds (still sound)."""
    rng = np.random.default_rng(7)
    g = dense_net(rng)
    lo, hi = _box(rng, g.n_inputs)
    bs = compute_bounds(g, (lo, hi), "symbolic")
    bl = compute_bounds(g, (lo, hi), "lp", time_budget=0.0)
    for i in range(len(g.nodes)):
        assert np.allclose(bl.lower[i], bs.lower[i], rtol=0, atol=1e-12)
        assert np.allclose(bl.upper[i], bs.upper[i], rtol=0, atol=1e-12)
    _check_contains(g, bl, _samples(rng, lo, hi))


def test_bad_arguments():
    rng = np.random.default_rng(0)
    g = dense_net(rng)
    lo, hi = _box(rng, g.n_inputs)
    with pytest.raises(ValueError):
        compute_bounds(g, (lo, hi), "exact")
    with pytest.raises(ValueError):
        compute_bounds(g, (lo, hi), "symbolic", C=np.ones((2, g.n_outputs + 1)))
    with pytest.raises(ValueError):
        compute_bounds(g, (lo, np.full_like(hi, np.inf)), "interval")
    with pytest.raises(ValueError):
        compute_bounds(g, (lo[:-1], hi[:-1]), "interval")
    assert LEVELS == ("interval", "symbolic", "alpha", "lp", "milp")
