"""MILP-refined intermediate bounds (verifier/bounds/refine.py): sound, never looser, and exact
where it has time.

Ground truth: the float64 network on points of the box, and on tiny nets the exact range of each
neuron, from enumerating every phase pattern of the ReLUs before it (one LP per pattern).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linprog

from verifier.bounds import Ladder
from verifier.bounds.refine import refine_bounds
from verifier.graph import Graph, Input, Linear, Relu

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "benchmarks" / "vnncomp2022" / "mnist_fc"


def _net(rng, sizes=(3, 4, 4, 3, 2)):
    nodes = [Input((), (1, sizes[0]))]
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = rng.normal(size=(b, a)) / np.sqrt(a)
        nodes.append(Linear((len(nodes) - 1,), (b,), mats=(W,), bias=rng.normal(size=b) * 0.3))
        if k < len(sizes) - 2:
            nodes.append(Relu((len(nodes) - 1,), (b,)))
    return Graph(nodes)


def _exact_range(g: Graph, lo, hi, t: int, j: int):
    """min and max of entry ``j`` of Linear node ``t`` over the box, by enumerating the phases of
    every ReLU before ``t`` (each pattern a polytope; one LP per pattern and direction)."""
    lins = [i for i in range(1, t + 1) if isinstance(g.nodes[i], Linear)]
    sizes = [g.nodes[i].size for i in lins[:-1]]
    best = [np.inf, -np.inf]
    for pattern in itertools.product(*[itertools.product((0, 1), repeat=s) for s in sizes]):
        # the affine map of the prefix under this pattern, and the rows that make it hold
        M, c = np.eye(lo.size), np.zeros(lo.size)
        A_ub, b_ub = [], []
        for i, ph in zip(lins, list(pattern) + [None]):
            W, b = g.nodes[i].mats[0], g.nodes[i].bias
            M, c = W @ M, W @ c + b
            if ph is None:
                break
            ph = np.array(ph)
            # active: z >= 0 (-z <= 0); inactive: z <= 0
            sgn = np.where(ph == 1, -1.0, 1.0)
            A_ub.append(sgn[:, None] * M)
            b_ub.append(-sgn * c)
            M, c = M * ph[:, None], c * ph
        kw = dict(A_ub=np.vstack(A_ub) if A_ub else None,
                  b_ub=np.concatenate(b_ub) if b_ub else None,
                  bounds=list(zip(lo, hi)), method="highs")
        for s, k in ((1.0, 0), (-1.0, 1)):
            r = linprog(s * M[j], **kw)
            if r.status == 0:
                v = s * r.fun + c[j]
                best[k] = min(best[k], v) if k == 0 else max(best[k], v)
    return best


def _tiny_refined(seed):
    """A tiny net and box of ``seed`` with its alpha-CROWN bounds, and the refinement run on
    them (30 s, 5 s per solve): ``(rng, net, lo, hi, ladder, bounds before, counters)``."""
    import time
    rng = np.random.default_rng(seed)
    g = _net(rng)
    lo, hi = -np.ones(3) + rng.normal(size=3) * 0.2, np.ones(3) + rng.normal(size=3) * 0.2
    C = np.array([[1.0, -1.0]])
    lad = Ladder(g, lo, hi, C, np.zeros(1), arithmetic="real")
    lad.run("alpha", alpha_budget=5)
    before = [(a[0].copy(), b[0].copy()) for a, b in zip(lad.dom.lower, lad.dom.upper)]
    cnt = refine_bounds(lad.eng, lad.dom, C, time.perf_counter() + 30, neuron_time=5.0)
    return rng, g, lo, hi, lad, before, cnt


@pytest.mark.parametrize("seed", range(8))
def test_refined_bounds_sound_nested_and_exact(seed):
    rng, g, lo, hi, lad, before, cnt = _tiny_refined(seed)
    assert cnt["nodes"] >= 1
    X = lo + (hi - lo) * rng.random((3000, 3))
    vals = g.forward_all(X)
    for i, v in enumerate(vals):
        l, u = lad.dom.lower[i][0], lad.dom.upper[i][0]
        assert np.all(v >= l) and np.all(v <= u), i                     # sound
        assert np.all(l >= before[i][0] - 1e-12) and np.all(u <= before[i][1] + 1e-12), i
    # a neuron left unstable really takes both signs; a neuron the MILP settled really is stable
    for t in (3, 5):
        l0, u0 = before[t]
        l, u = lad.dom.lower[t][0], lad.dom.upper[t][0]
        for j in np.flatnonzero((l0 < 0) & (u0 > 0)):
            mn, mx = _exact_range(g, lo, hi, t, j)
            assert l[j] <= mn + 1e-9 and u[j] >= mx - 1e-9
            if mn < -1e-5 and mx > 1e-5:
                assert l[j] < 0 < u[j]
            elif mn > 1e-4 or mx < -1e-4:                 # clear of the solver's tolerances
                assert l[j] >= 0 or u[j] <= 0, (t, j, mn, mx, l[j], u[j])


def test_refine_settles_neurons_on_mnist_and_the_pipeline_uses_it():
    """mnist_fc 256x4 at eps 0.05, prop_0 (unsat): the second hidden layer's neurons closest to a
    sign are proved stable by their MILPs within seconds, and auto records the refinement."""
    import verifier.api as api
    from verifier.config import Options, Tuning
    net = api.load(MNIST / "onnx" / "mnist-net_256x4.onnx")
    prop = api.read_vnnlib(net, MNIST / "vnnlib" / "prop_0_0.05.vnnlib")
    case = prop.cases[0]
    C, d, _ = case.stacked()
    lad = Ladder(net, case.box.lower, case.box.upper, C, d)
    lad.run("alpha", alpha_budget=5)
    u0 = lad.bounds().report.levels[-1].unstable
    b = lad.refine(budget=6.0, neuron_time=1.0)
    names = [lv.level for lv in b.report.levels]
    assert names[-2:] == ["milp-refine", "milp-refine+alpha"]
    assert b.report.levels[-1].unstable < u0
    assert b.report.levels[-2].extra["stabilised"] >= 3
    opts = Options(timeout=12.0, tuning=Tuning(bab_first_share=0.1, refine_share=0.3))
    cert = api.verify_property(net, prop, opts)
    assert cert.status in ("verified", "timeout", "unknown")             # never a wrong sat
    levels = [lv["level"] for lv in cert.stats["per_case"][0]["bounds"]["levels"]]
    assert "milp-refine" in levels
    assert "first_try" in cert.stats["per_case"][0]["bab"]


def test_large_nets_skip_the_refinement_and_branch_with_fewer_steps():
    """Above ``Tuning.large_net_relus`` ReLUs (here: the 1,024 of mnist_fc 256x4 against a
    limit of 512) auto runs one search with ``bab_steps_large`` steps and no MILP refinement."""
    import verifier.api as api
    from verifier.config import Options, Tuning
    net = api.load(MNIST / "onnx" / "mnist-net_256x4.onnx")
    prop = api.read_vnnlib(net, MNIST / "vnnlib" / "prop_0_0.05.vnnlib")
    tune = Tuning(large_net_relus=512, bab_steps_large=3)
    cert = api.verify_property(net, prop, Options(timeout=8.0, tuning=tune))
    assert cert.status in ("verified", "timeout", "unknown")             # never a wrong sat
    entry = cert.stats["per_case"][0]
    assert "milp-refine" not in [lv["level"] for lv in entry["bounds"]["levels"]]
    assert "first_try" not in entry["bab"]
    assert entry["bab"]["steps"] == 3


def test_refine_in_two_worker_processes_matches_one():
    rng = np.random.default_rng(3)
    g = _net(rng, (3, 8, 8, 2))
    lo, hi = -np.ones(3), np.ones(3)
    C = np.array([[1.0, -1.0]])
    import time
    out = []
    for workers in (1, 2):
        lad = Ladder(g, lo, hi, C, np.zeros(1), arithmetic="real")
        lad.run("symbolic")
        refine_bounds(lad.eng, lad.dom, C, time.perf_counter() + 60, 5.0, workers=workers)
        out.append([(a[0], b[0]) for a, b in zip(lad.dom.lower, lad.dom.upper)])
    for (l1, u1), (l2, u2) in zip(*out):
        np.testing.assert_allclose(l1, l2, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(u1, u2, rtol=1e-6, atol=1e-6)


def test_refinement_stops_when_its_solves_rarely_settle_a_neuron(monkeypatch):
    """The early stop (``MIN_SOLVES``, ``STOP_RATE``): with a rate no run can reach, the first
    node with a solve is the last refined, the counters say why, and the bounds stay sound."""
    from verifier.bounds import refine
    monkeypatch.setattr(refine, "MIN_SOLVES", 1)
    monkeypatch.setattr(refine, "STOP_RATE", 2.0)
    for seed in range(8):
        rng, g, lo, hi, lad, _, cnt = _tiny_refined(seed)
        if cnt.get("solves", 0) == 0:
            continue
        assert "settled a neuron" in cnt["stopped"]
        assert sum(1 for v in cnt["per_node"].values() if v["solves"]) == 1
        vals = g.forward_all(lo + (hi - lo) * rng.random((2000, 3)))
        for i, v in enumerate(vals):
            assert np.all(v >= lad.dom.lower[i][0]) and np.all(v <= lad.dom.upper[i][0]), i
        return
    pytest.fail("no net needed a solve")
