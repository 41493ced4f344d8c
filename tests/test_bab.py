"""ReLU branch and bound (``verifier.bab``): against exact enumeration of ReLU phases on tiny nets,
and against the MILP: the sign of the worst-case margin agrees on hundreds of random properties;
planted counterexamples are found (replayed), never certified away; multipliers stay >= 0."""
from __future__ import annotations

import time

import numpy as np
import pytest

from test_encode import enumerate_min, mlp, rand_box, residual_net, robust_conjs
from verifier.bab import branch_and_bound
from verifier.bounds import Ladder
from verifier.bounds import alpha as alpha_opt
from verifier.config import Options
from verifier.onnx_export import graph_to_onnx
from verifier.pipeline import run
from verifier.spec import Case, Conjunction, Property, conjunction_max


def _with_onnx(g):
    g.model_bytes = graph_to_onnx(g).SerializeToString()
    return g


def _bab(g, case, seconds=10.0, **kw):
    prop = Property((case,), g.n_inputs, g.n_outputs)
    C, d, _ = case.stacked()
    lad = Ladder(g, case.box.lower, case.box.upper, C, d, arithmetic="real")
    b = lad.run("alpha")
    return branch_and_bound(g, prop, 0, lad.dom, lad.eng, time.perf_counter() + seconds,
                            start=lad.slopes, root_lower=b.margin_lower[None, :], **kw)


def _thresholds(g, box, rng, n=5):
    """Properties ``y0 - y1 > t`` with ``t`` on both sides of the exact minimum of ``y0 - y1`` (by
    enumeration of ReLU phases), close enough that deciding them needs splitting: ``(case, exact
    minimum margin)`` pairs."""
    C = np.array([[1.0, -1.0] + [0.0] * (g.n_outputs - 2)])
    truth, _ = enumerate_min(g, box, (Conjunction(C, np.zeros(1)),))
    out = []
    for _ in range(n):
        t = truth + rng.choice([-1, 1]) * rng.uniform(0.01, 0.3) * (1 + abs(truth))
        out.append((Case(box, (Conjunction(C, np.array([t])),)), truth - t))   # unsafe: C y <= t
    return out


@pytest.mark.parametrize("make", [lambda s: mlp(s, (3, 5, 4, 3)), lambda s: mlp(s, (2, 4, 4, 3, 3)),
                                  residual_net])
@pytest.mark.parametrize("seed", range(8))
def test_bab_agrees_with_enumeration(make, seed):
    """Tiny nets (<= 12 ReLUs), five properties each around the exact minimum: verified iff the
    exact minimum margin is > 0; falsified points are replayed counterexamples; nothing is
    certified away."""
    rng = np.random.default_rng(500 + seed)
    g = _with_onnx(make(seed))
    box = rand_box(seed, g.n_inputs)
    for case, true_margin in _thresholds(g, box, rng):
        r = _bab(g, case, fsb=3 if seed % 2 else 0)
        if true_margin > 1e-9:
            assert r.status == "verified", (r.status, true_margin, r.stats)
            assert r.margin_lower <= true_margin + 1e-9
        elif true_margin < -1e-9:
            assert r.status == "falsified", (r.status, true_margin, r.stats)
            assert case.box.contains(r.x32.astype(np.float64))
            assert case.margin(r.y32.astype(np.float64)) <= 0


def test_bab_agrees_with_the_milp_on_random_robustness_properties():
    """Many random labels and boxes on one net: the pipeline's bab and milp methods never
    contradict each other (each decided pair agrees)."""
    decided = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        g = _with_onnx(mlp(seed % 5, (4, 8, 8, 3)))
        box = rand_box(seed, g.n_inputs, radius=rng.uniform(0.2, 1.2))
        label = int(np.argmax(g.forward((box.lower + box.upper) / 2)))
        case = Case(box, robust_conjs(3, label))
        prop = Property((case,), g.n_inputs, g.n_outputs)
        a = run(g, prop, Options(method="bab", timeout=10, arithmetic="real"))
        b = run(g, prop, Options(method="milp", timeout=10, arithmetic="real"))
        if a.status in ("verified", "falsified") and b.status in ("verified", "falsified"):
            assert a.status == b.status, (seed, a.status, b.status)
            decided += 1
    assert decided >= 25


def test_planted_counterexample_is_found_not_certified_away():
    """A narrow pocket: y0 - y1 dips below 0 only near one point of the box."""
    from verifier.graph import Graph, Input, Linear, Relu
    c = np.array([0.3, -0.2, 0.5])
    r = 0.05
    # h_i = relu(x_i - c_i) + relu(c_i - x_i) ~ |x_i - c_i|; y0 - y1 = sum h - r/2
    W1 = np.vstack([np.eye(3), -np.eye(3)])
    b1 = np.concatenate([-c, c])
    g = Graph([Input((), (1, 3)),
               Linear((0,), (6,), mats=(W1,), bias=b1), Relu((1,), (6,)),
               Linear((2,), (2,), mats=(np.vstack([np.ones((1, 6)), np.zeros((1, 6))]),),
                      bias=np.array([-r / 2, 0.0]))])
    g = _with_onnx(g)
    box = rand_box(0, 3)
    box = type(box)(np.full(3, -1.0), np.full(3, 1.0))
    case = Case(box, (Conjunction(np.array([[1.0, -1.0]]), np.zeros(1)),))
    res = _bab(g, case)
    assert res.status == "falsified"
    assert np.abs(res.x32 - c).sum() <= r / 2 + 1e-6


def test_multipliers_and_slopes_stay_in_range():
    g = mlp(3, (3, 6, 5, 3))
    box = rand_box(3, g.n_inputs)
    case = Case(box, robust_conjs(3, 0))
    C, d, _ = case.stacked()
    lad = Ladder(g, box.lower, box.upper, C, d, arithmetic="real")
    lad.run("symbolic")
    dom = lad.dom
    rng = np.random.default_rng(0)
    from verifier.graph import Relu
    for i, n in enumerate(g.nodes):
        if isinstance(n, Relu):
            j = n.inputs[0]
            unstable = (dom.lower[j] < 0) & (dom.upper[j] > 0)
            dom.phase[i] = np.where(unstable & (rng.random(unstable.shape) < 0.5), 1, 0).astype(np.int8)
    lad.eng.bound(dom)
    r = alpha_opt.optimise(lad.eng, dom, C, d, steps=30, lr=2.0, beta=True)
    for key, v in r.alpha.items():
        if isinstance(key, tuple):
            assert np.all(v >= 0)
        else:
            assert np.all((v >= 0) & (v <= 1))


def test_resumed_search_after_refined_bounds_agrees_with_enumeration():
    """A search stopped early, the root's intermediate bounds then refined by per-neuron MILPs,
    and the search resumed from its open domains (what auto does on mnist_fc): the same answers
    as enumeration, and the reported bound covers the leaves closed before the pause too."""
    from verifier.bounds.refine import refine_bounds
    resumed = 0
    for seed in range(6):
        rng = np.random.default_rng(900 + seed)
        g = _with_onnx(mlp(seed, (3, 5, 4, 3)))
        box = rand_box(seed, g.n_inputs)
        for case, true_margin in _thresholds(g, box, rng, n=3):
            prop = Property((case,), g.n_inputs, g.n_outputs)
            C, d, _ = case.stacked()
            lad = Ladder(g, case.box.lower, case.box.upper, C, d, arithmetic="real")
            b = lad.run("alpha")
            first = branch_and_bound(g, prop, 0, lad.dom, lad.eng, time.perf_counter() - 1.0,
                                     start=lad.slopes, root_lower=b.margin_lower[None, :])
            if first.status in ("verified", "falsified"):
                continue
            resumed += 1
            assert first.status == "timeout" and first.pool is not None
            refine_bounds(lad.eng, lad.dom, C, time.perf_counter() + 10, 2.0)
            r = branch_and_bound(g, prop, 0, lad.dom, lad.eng, time.perf_counter() + 10,
                                 resume=first)
            if true_margin > 1e-9:
                assert r.status == "verified", (r.status, true_margin, r.stats)
                assert r.margin_lower <= true_margin + 1e-9
                assert r.margin_lower <= first.proven
            elif true_margin < -1e-9:
                assert r.status == "falsified", (r.status, true_margin, r.stats)
                assert case.margin(r.y32.astype(np.float64)) <= 0
    assert resumed >= 3


def _conjunction_cases(g, box, rng, n=4):
    """Cases of three conjunctions (one of two rows) with thresholds on both sides of the exact
    minimum of the case margin: ``(case, exact minimum margin)`` pairs."""
    e = np.eye(g.n_outputs)
    shapes = (np.array([e[0] - e[1]]), np.array([e[0] - e[2], e[1] - e[2]]),
              np.array([e[2] - e[0]]))
    conjs = lambda t: tuple(Conjunction(C, np.full(C.shape[0], t)) for C in shapes)
    truth, _ = enumerate_min(g, box, conjs(0.0))
    out = []
    for _ in range(n):
        t = truth + rng.choice([-1, 1]) * rng.uniform(0.01, 0.3) * (1 + abs(truth))
        out.append((Case(box, conjs(t)), truth - t))
    return out


def test_one_search_per_conjunction_agrees_with_enumeration():
    """``per_conjunction`` (what auto and --method bab run): verified iff the exact minimum of the
    case margin over all conjunctions is > 0, with a bound below it; falsified points are
    replayed counterexamples of the case; a search paused at once and resumed gives the same."""
    from verifier.bab import per_conjunction
    decided = 0
    for seed in range(6):
        rng = np.random.default_rng(700 + seed)
        g = _with_onnx(mlp(seed, (3, 5, 4, 3)))
        box = rand_box(seed, g.n_inputs)
        for case, true_margin in _conjunction_cases(g, box, rng):
            prop = Property((case,), g.n_inputs, g.n_outputs)
            C, d, _ = case.stacked()
            lad = Ladder(g, case.box.lower, case.box.upper, C, d, arithmetic="real")
            b = lad.run("alpha")
            kw = dict(start=lad.slopes, root_lower=b.margin_lower[None, :])
            first = per_conjunction(g, prop, 0, lad.dom, lad.eng, time.perf_counter() - 1.0, **kw)
            assert first.status in ("timeout", "verified", "falsified")
            r = per_conjunction(g, prop, 0, lad.dom, lad.eng, time.perf_counter() + 10,
                                resume=first, **kw)
            if true_margin > 1e-9:
                assert r.status == "verified", (r.status, true_margin, r.stats)
                assert r.margin_lower <= true_margin + 1e-9
                decided += 1
            elif true_margin < -1e-9:
                assert r.status == "falsified", (r.status, true_margin, r.stats)
                assert case.box.contains(r.x32.astype(np.float64))
                assert case.margin(r.y32.astype(np.float64)) <= 0
                decided += 1
            # conjunctions the root proves are not searched
            root = conjunction_max(b.margin_lower, case.stacked()[2], len(case.unsafe))
            assert all(root[c["conjunction"]] <= 0 for c in r.stats["conjunctions"])
    assert decided >= 20


@pytest.mark.parametrize("seed", range(4))
def test_a_search_over_its_memory_cap_gives_the_same_answers(seed):
    """With a pool cap below one domain every round splits the domains closest to closing; the
    answers (against enumeration) are the same as without a cap, and the rounds say so."""
    rng = np.random.default_rng(900 + seed)
    g = _with_onnx(mlp(seed, (3, 6, 5, 3)))
    box = rand_box(seed, g.n_inputs)
    over = 0
    for case, true_margin in _thresholds(g, box, rng, n=4):
        free = _bab(g, case, fsb=3, leaf_relus=0)
        capped = _bab(g, case, fsb=3, leaf_relus=0, pool_bytes=1)
        assert capped.status == free.status, (capped.status, free.status, true_margin)
        if true_margin > 1e-9:
            assert capped.status == "verified"
            assert capped.margin_lower <= true_margin + 1e-9
        elif true_margin < -1e-9:
            assert capped.status == "falsified"
        over += capped.stats.get("rounds_over_memory", 0)
        assert capped.stats.get("rounds_over_memory", 0) == capped.stats["rounds"]
    assert over > 0
