"""Gradients (vs finite differences), FGSM/PGD (vs constructed ground truth) and falsify (+ replay)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from verifier.attack import attack, falsify, fgsm
from verifier.gradients import backward
from verifier.graph import Graph, Input, Linear, MaxPool, Relu
from verifier.spec import Box, Case, Conjunction, Property, robustness_property

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# random graphs
# --------------------------------------------------------------------------------------------
def residual_pool_graph(rng, n_in=5, h=8, n_out=4) -> Graph:
    """Input -> Linear(sparse) -> Relu -> Linear -> Relu -> Linear(2 inputs: residual) -> Relu
    -> MaxPool (windows with padding) -> Linear.  Covers every node kind and both matrix kinds."""
    W1 = sp.csr_array(rng.normal(size=(h, n_in)) * (rng.random((h, n_in)) < 0.7))
    W2 = rng.normal(size=(h, h)) / np.sqrt(h)
    W3a, W3b = rng.normal(size=(h, h)) / np.sqrt(h), rng.normal(size=(h, h)) / np.sqrt(h)
    win = np.array([[0, 1, 2], [2, 3, -1], [4, 5, 6], [6, 7, -1], [1, 5, 7]])
    W5 = rng.normal(size=(n_out, win.shape[0]))
    return Graph([
        Input((), (1, n_in)),
        Linear((0,), (h,), mats=(W1,), bias=rng.normal(size=h) * 0.3),
        Relu((1,), (h,)),
        Linear((2,), (h,), mats=(W2,), bias=rng.normal(size=h) * 0.3),
        Relu((3,), (h,)),
        Linear((4, 2), (h,), mats=(W3a, W3b), bias=rng.normal(size=h) * 0.3),
        Relu((5,), (h,)),
        MaxPool((6,), (win.shape[0],), windows=win),
        Linear((7,), (n_out,), mats=(W5,), bias=rng.normal(size=n_out)),
    ])


def mlp(rng, sizes, scale=1.0) -> Graph:
    nodes = [Input((), (1, sizes[0]))]
    for k in range(1, len(sizes)):
        W = rng.normal(size=(sizes[k], sizes[k - 1])) * scale / np.sqrt(sizes[k - 1])
        nodes.append(Linear((len(nodes) - 1,), (sizes[k],), mats=(W,), bias=rng.normal(size=sizes[k]) * 0.2))
        if k < len(sizes) - 1:
            nodes.append(Relu((len(nodes) - 1,), (sizes[k],)))
    return Graph(nodes)


def away_from_kinks(graph: Graph, x: np.ndarray, gap: float) -> bool:
    """No ReLU input within ``gap`` of 0 and no max-pool window whose top two are within ``gap``."""
    vals = graph.forward_all(x[None])
    for n in graph.nodes:
        if isinstance(n, Relu) and np.min(np.abs(vals[n.inputs[0]])) < gap:
            return False
        if isinstance(n, MaxPool):
            v = np.concatenate([vals[n.inputs[0]], [[-np.inf]]], axis=1)[0][n.windows]
            top2 = -np.sort(-v, axis=1)[:, :2]
            if np.min(top2[:, 0] - top2[:, 1]) < gap:
                return False
    return True


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_gradient_matches_finite_differences(seed):
    rng = np.random.default_rng(seed)
    g = residual_pool_graph(rng)
    xs = []
    while len(xs) < 6:   # points where the network is smooth in a ball much larger than h
        x = rng.normal(size=g.n_inputs)
        if away_from_kinks(g, x, 1e-3):
            xs.append(x)
    X = np.array(xs)
    cot = rng.normal(size=(len(X), g.n_outputs))
    G = backward(g, g.forward_all(X), cot)
    assert G.shape == X.shape
    h = 1e-6
    for i in range(g.n_inputs):
        e = np.zeros(g.n_inputs)
        e[i] = h
        fd = ((g.forward(X + e) - g.forward(X - e)) * cot).sum(axis=1) / (2 * h)
        np.testing.assert_allclose(G[:, i], fd, rtol=1e-6, atol=1e-7)
    assert np.abs(G).max() > 0     # the check is not vacuous


def test_gradient_leak_one_is_the_linear_network():
    """With leak = 1 every ReLU passes its cotangent: the result is the product of the weights."""
    rng = np.random.default_rng(7)
    g = mlp(rng, [4, 6, 5, 3])
    X = rng.normal(size=(3, 4))
    cot = rng.normal(size=(3, 3))
    J = g.nodes[5].mats[0] @ g.nodes[3].mats[0] @ g.nodes[1].mats[0]
    np.testing.assert_allclose(backward(g, g.forward_all(X), cot, leak=1.0), cot @ J, rtol=1e-12)
    # per-sample leak: row 0 exact, the others linear
    G = backward(g, g.forward_all(X), cot, leak=np.array([0.0, 1.0, 1.0]))
    np.testing.assert_allclose(G[1:], (cot @ J)[1:], rtol=1e-12)
    np.testing.assert_allclose(G[0], backward(g, g.forward_all(X[:1]), cot[:1])[0], rtol=1e-12)


def test_gradient_of_node_before_the_end():
    """graph.output need not be the last node: later nodes get no cotangent."""
    rng = np.random.default_rng(3)
    g0 = mlp(rng, [3, 4, 2])
    g = Graph(g0.nodes + [Relu((3,), (2,))], output=3)
    X = rng.normal(size=(2, 3))
    cot = rng.normal(size=(2, 2))
    np.testing.assert_allclose(backward(g, g.forward_all(X), cot),
                               backward(g0, g0.forward_all(X), cot))


# --------------------------------------------------------------------------------------------
# attack: ground truth by construction
# --------------------------------------------------------------------------------------------
def positive_margin_graph(rng, n_in=6, h=10) -> Graph:
    """y0 = 1 + a . relu(...) and y1 = -b . relu(...) with a, b >= 0, so y0 - y1 >= 1 everywhere;
    y2 is an arbitrary linear function of the hidden layer."""
    W1 = rng.normal(size=(h, n_in))
    W2 = np.vstack([np.abs(rng.normal(size=h)), -np.abs(rng.normal(size=h)), rng.normal(size=h)])
    return Graph([Input((), (1, n_in)),
                  Linear((0,), (h,), mats=(W1,), bias=rng.normal(size=h)),
                  Relu((1,), (h,)),
                  Linear((2,), (3,), mats=(W2,), bias=np.array([1.0, 0.0, 0.0]))])


def row(n, pos, neg):
    r = np.zeros((1, n))
    r[0, pos], r[0, neg] = 1.0, -1.0
    return r


@pytest.mark.parametrize("seed", range(5))
def test_true_property_never_found(seed):
    rng = np.random.default_rng(seed)
    g = positive_margin_graph(rng)
    lo = rng.uniform(-2, 0, size=6)
    box = Box(lo, lo + rng.uniform(0, 3, size=6))
    # unsafe: y0 - y1 <= 0 (impossible) or y0 - y1 <= 0.5 together with y2 <= 10 (impossible)
    C2 = np.vstack([row(3, 0, 1)[0], [0, 0, 1.0]])
    prop = Property((Case(box, (Conjunction(row(3, 0, 1), np.zeros(1)),
                                Conjunction(C2, np.array([0.5, 10.0])))),), 6, 3)
    for res in (attack(g, prop, restarts=8, steps=30, seed=seed), fgsm(g, prop)):
        assert not res.found
        assert res.margin_best >= 0.5 - 1e-12
        assert res.x_best is not None and box.contains(res.x_best)   # best point still returned


def planted_property(rng, g: Graph, n_cases=2, slack=0.05):
    """Boxes around random centres; case 1 gets a conjunction that holds at a planted point x*
    with ``slack`` to spare (so a violation exists), case 0 only an impossible one."""
    n_in, n_out = g.n_inputs, g.n_outputs
    cases = []
    for k in range(n_cases):
        lo = rng.uniform(-1, 0, size=n_in)
        box = Box(lo, lo + rng.uniform(0.2, 1.0, size=n_in))
        impossible = Conjunction(np.zeros((1, n_out)), -np.ones(1))      # 0 <= -1
        if k == n_cases - 1:
            x_star = box.lower + rng.random(n_in) * (box.upper - box.lower)
            C = rng.normal(size=(2, n_out))
            d = C @ g.forward(x_star) + slack
            cases.append(Case(box, (impossible, Conjunction(C, d))))
        else:
            cases.append(Case(box, (impossible,)))
    return Property(tuple(cases), n_in, n_out)


@pytest.mark.parametrize("seed", range(6))
def test_planted_violation_is_found_and_inside_the_box(seed):
    rng = np.random.default_rng(100 + seed)
    g = residual_pool_graph(rng) if seed % 2 else mlp(rng, [5, 12, 12, 4])
    prop = planted_property(rng, g)
    res = attack(g, prop, restarts=8, steps=40, seed=seed)
    assert res.found and res.margin_best <= 0
    assert res.case_best == len(prop.cases) - 1
    # the reported margin is the float64 network's, and every point lies in its case's box exactly
    assert prop.cases[res.case_best].margin(g.forward(res.x_best)) == pytest.approx(res.margin_best)
    assert len(res.candidates) >= 1
    for x, m, c in zip(res.candidates, res.candidate_margins, res.candidate_cases):
        assert prop.cases[c].box.contains(x)
        assert prop.cases[c].margin(g.forward(x)) == pytest.approx(m, abs=1e-12)
    assert np.all(np.diff(res.candidate_margins) >= 0)


def test_attack_targets_the_only_reachable_conjunction():
    """Nine conjunctions, only class 2 can beat class 0: restarts spread over conjunctions find it."""
    rng = np.random.default_rng(11)
    g = mlp(rng, [4, 16, 10])
    x0 = rng.random(4)
    y0 = g.forward(x0)
    label = int(np.argmax(y0))
    prop = robustness_property(x0, label, 0.3, domain=(-10, 10), n_outputs=10)
    res = attack(g, prop, restarts=20, steps=60, seed=0)
    # ground truth by dense sampling: the best sampled margin upper-bounds the true minimum
    box = prop.cases[0].box
    S = box.lower + rng.random((20000, 4)) * (box.upper - box.lower)
    Y = g.forward(S)
    sampled = np.min(Y[:, label] - np.max(np.delete(Y, label, axis=1), axis=1))
    assert res.margin_best <= sampled + 1e-9
    assert res.found == (res.margin_best <= 0)


def test_seed_determinism_and_time_budget():
    rng = np.random.default_rng(5)
    g = mlp(rng, [6, 20, 20, 5])
    prop = robustness_property(rng.random(6), 0, 0.05, n_outputs=5)
    a = attack(g, prop, restarts=8, steps=20, seed=3, stop_margin=-np.inf)
    b = attack(g, prop, restarts=8, steps=20, seed=3, stop_margin=-np.inf)
    assert a.margin_best == b.margin_best and np.array_equal(a.x_best, b.x_best)
    t0 = time.perf_counter()
    c = attack(g, prop, restarts=64, steps=10**6, rounds=10**6, time_budget=0.2,
               stop_margin=-np.inf)
    assert time.perf_counter() - t0 < 2.0
    assert c.x_best is not None and prop.cases[0].box.contains(c.x_best)


def test_mismatched_property_is_rejected():
    g = mlp(np.random.default_rng(0), [3, 4, 2])
    with pytest.raises(ValueError):
        attack(g, robustness_property(np.zeros(4), 0, 0.1, n_outputs=2))


# --------------------------------------------------------------------------------------------
# falsify = attack + replay in onnxruntime
# --------------------------------------------------------------------------------------------
def test_falsify_replays_a_planted_violation():
    from verifier.onnx_export import graph_to_onnx
    rng = np.random.default_rng(21)
    g = residual_pool_graph(rng)
    prop = planted_property(rng, g, slack=0.1)
    model = graph_to_onnx(g)
    r = falsify(g, model, prop, restarts=8, steps=40, seed=0)
    assert r.found and r.x32.dtype == np.float32
    case = prop.cases[r.case_index]
    assert case.box.contains(r.x32.astype(np.float64))
    # independent check of the float32 output: the float64 graph at x32 agrees to float32 accuracy
    assert np.allclose(r.y32, g.forward(r.x32.astype(np.float64)), atol=1e-4)
    assert case.margin(r.y32.astype(np.float64)) <= 0


def test_falsify_does_not_report_a_true_property():
    from verifier.onnx_export import graph_to_onnx
    rng = np.random.default_rng(2)
    g = positive_margin_graph(rng)
    box = Box(-np.ones(6), np.ones(6))
    prop = Property((Case(box, (Conjunction(row(3, 0, 1), np.zeros(1)),)),), 6, 3)
    r = falsify(g, graph_to_onnx(g), prop, restarts=4, steps=10)
    assert not r.found and r.x32 is None and r.attack.x_best is not None


# --------------------------------------------------------------------------------------------
# a real VNN-COMP instance (skipped until the loader and the VNN-LIB parser are importable)
# --------------------------------------------------------------------------------------------
def test_mnist_fc_sat_instance_is_falsified_quickly():
    load = pytest.importorskip("verifier.onnx_loader").load
    parse_vnnlib = pytest.importorskip("verifier.vnnlib").parse_vnnlib
    d = ROOT / "benchmarks" / "vnncomp2022" / "mnist_fc"
    onnx_path, vnn = d / "onnx" / "mnist-net_256x2.onnx", d / "vnnlib" / "prop_1_0.03.vnnlib"
    if not onnx_path.exists() or not vnn.exists():
        pytest.skip("benchmark files not present")
    g, prop = load(str(onnx_path)), parse_vnnlib(str(vnn))
    t0 = time.perf_counter()
    r = falsify(g, str(onnx_path), prop, time_budget=5.0, rounds=100, seed=0)
    assert r.found, r.attack
    assert time.perf_counter() - t0 < 5.0
    case = prop.cases[r.case_index]
    assert case.box.contains(r.x32.astype(np.float64))
    assert case.margin(r.y32.astype(np.float64)) <= 0


def test_float64_violation_that_no_float32_point_has_is_not_reported():
    """y0 = x0 - x1 on boxes of width 1e-7 around 0.1: the float64 network reaches y0 = -1e-7, but
    the float32 points of the boxes reach at most lo32 - hi32 > -0.99e-7 (exact in float32)."""
    from verifier.onnx_export import graph_to_onnx
    g = Graph([Input((), (1, 2)),
               Linear((0,), (1,), mats=(np.array([[1.0, -1.0]]),), bias=np.zeros(1))])
    lo, hi = np.full(2, 0.1), np.full(2, 0.1 + 1e-7)
    lo32 = np.float32(0.1) if float(np.float32(0.1)) >= 0.1 else np.nextafter(np.float32(0.1), np.float32(1))
    hi32 = np.float32(hi[0]) if float(np.float32(hi[0])) <= hi[0] else np.nextafter(np.float32(hi[0]), np.float32(0))
    d = -0.99e-7
    assert float(lo32) - float(hi32) > d            # ground truth: no float32 counterexample
    prop = Property((Case(Box(lo, hi), (Conjunction(np.ones((1, 1)), np.array([d])),)),), 2, 1)
    res = attack(g, prop, restarts=4, steps=10)
    assert res.found                                # the float64 search does find a "violation"
    r = falsify(g, graph_to_onnx(g), prop, restarts=4, steps=10)
    assert not r.found and r.x32 is None
    assert len(r.replays) >= 1 and not any(t.ok for t in r.replays)


def test_many_cases_in_small_chunks():
    """Cases split across chunks (max_batch smaller than the rows): still found, still in the box."""
    rng = np.random.default_rng(33)
    g = mlp(rng, [4, 10, 3])
    prop = planted_property(rng, g, n_cases=7)
    res = attack(g, prop, restarts=4, steps=30, max_batch=5, seed=1)
    assert res.found and res.case_best == 6
    assert prop.cases[6].box.contains(res.x_best)
    f = fgsm(g, prop, max_batch=2)
    for x, c in zip(f.candidates, f.candidate_cases):
        assert prop.cases[c].box.contains(x)
