"""Input splitting (the branch-and-bound driver's input rule): sound on sampled points, exact
answers on small nets (the engine it uses is tested in test_engine.py)."""
import time
from pathlib import Path

import numpy as np
import pytest

from verifier.bab import BabResult, branch_and_bound
from verifier.bounds import Ladder
from verifier.graph import Graph, Input, Linear, Relu
from verifier.onnx_export import graph_to_onnx
from verifier.spec import Box, Case, Conjunction, Property
from verifier.vnnlib import parse_vnnlib

ACAS = Path(__file__).resolve().parent.parent / "benchmarks" / "vnncomp2022" / "acasxu"


def symbolic_ladder(graph, case):
    """A ladder run to CROWN bounds of ``case``'s box (the root input splitting starts from)."""
    C, d, _ = case.stacked()
    lad = Ladder(graph, case.box.lower, case.box.upper, C, d)
    lad.run("symbolic")
    return lad


def split_case(graph, prop, k, deadline, top=1):
    lad = symbolic_ladder(graph, prop.cases[k])
    return branch_and_bound(graph, prop, k, lad.dom, lad.eng, deadline, rule="input", top=top)


def random_net(seed, n_in=3, widths=(8, 8), n_out=3, residual=False):
    rng = np.random.default_rng(seed)
    nodes = [Input((), (1, n_in))]
    prev = 0
    for w in widths:
        W = rng.normal(size=(w, nodes[prev].size))
        nodes.append(Linear((prev,), (w,), mats=(W,), bias=rng.normal(size=w)))
        nodes.append(Relu((len(nodes) - 1,), (w,)))
        prev = len(nodes) - 1
    if residual:    # a DAG: the output also reads the first hidden layer
        first = 2
        mats = (rng.normal(size=(n_out, nodes[prev].size)), rng.normal(size=(n_out, widths[0])))
        nodes.append(Linear((prev, first), (n_out,), mats=mats, bias=rng.normal(size=n_out)))
    else:
        nodes.append(Linear((prev,), (n_out,), mats=(rng.normal(size=(n_out, nodes[prev].size)),),
                            bias=rng.normal(size=n_out)))
    g = Graph(nodes)
    g.model_bytes = graph_to_onnx(g).SerializeToString()
    return g


def brute_min_margin(g, case, n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = case.box.lower, case.box.upper
    pts = lo + rng.random((n, lo.size)) * (hi - lo)
    y = g.forward(pts)
    return min(float(np.min(np.max(y @ c.C.T - c.d, axis=1))) for c in case.unsafe)


def thresholds(g, rel):
    """Cases "y0 - y1 <= t" on [-1, 1]^2 with ``t`` a fraction ``rel`` below and above the
    sampled minimum of ``y0 - y1``: (case, property, the answer it must get)."""
    box = Box(np.full(2, -1.0), np.full(2, 1.0))
    m = brute_min_margin(g, Case(box, (Conjunction(np.array([[1.0, -1.0]]), np.zeros(1)),)))
    for shift, expect in ((-rel * (abs(m) + 1), "verified"), (+rel * (abs(m) + 1), "falsified")):
        case = Case(box, (Conjunction(np.array([[1.0, -1.0]]), np.array([m + shift])),))
        yield case, Property((case,), 2, 2), expect


@pytest.mark.parametrize("seed", range(8))
def test_split_answers_agree_with_dense_sampling(seed):
    """A threshold near the sampled minimum of y0 - y1: splitting must verify above it and
    falsify below it (the sampled point proves the latter)."""
    g = random_net(seed, n_in=2, widths=(6, 6), n_out=2)
    for case, prop, expect in thresholds(g, 0.05):
        r = split_case(g, prop, 0, time.perf_counter() + 30)
        if expect == "verified":
            assert r.status == "verified" and r.margin_lower > 0
        else:
            assert r.status == "falsified"
            assert case.box.contains(r.x32) and case.margin(r.y32) <= 0


def test_acasxu_prop1_verified_and_prop2_falsified():
    from verifier import load
    net = load(ACAS / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx")
    prop = parse_vnnlib(ACAS / "vnnlib" / "prop_1.vnnlib")          # expected unsat
    for top in (1, 2, 5):
        r = split_case(net, prop, 0, time.perf_counter() + 60, top=top)
        assert r.status == "verified" and r.margin_lower > 0
    net = load(ACAS / "onnx" / "ACASXU_run2a_2_1_batch_2000.onnx")
    prop = parse_vnnlib(ACAS / "vnnlib" / "prop_2.vnnlib")          # expected sat
    r = split_case(net, prop, 0, time.perf_counter() + 60)
    assert r.status == "falsified"
    assert prop.cases[0].box.contains(r.x32) and prop.cases[0].margin(r.y32) <= 0


def test_pgd_in_the_worst_boxes_finds_what_splitting_misses():
    """ACAS Xu 1_5 prop_2 (sat): the first attack misses it and splitting's own point tries took
    44 s; PGD inside the worst open boxes finds it within a few rounds.  Its point is replayed:
    inside the box, in the unsafe region.  Deterministic: PGD runs every round (``attack_every``
    0) with a budget no round reaches, so its steps, not the clock, decide what it finds (a 0.1 s
    budget failed this test on a loaded machine)."""
    from verifier import load
    net = load(ACAS / "onnx" / "ACASXU_run2a_1_5_batch_2000.onnx")
    prop = parse_vnnlib(ACAS / "vnnlib" / "prop_2.vnnlib")
    case = prop.cases[0]
    lad = symbolic_ladder(net, case)
    r = branch_and_bound(net, prop, 0, lad.dom, lad.eng, time.perf_counter() + 120, rule="input",
                         attack_every=0.0, attack_time=120.0)
    assert r.status == "falsified" and r.stats.get("found_by") == "attack", r.stats
    assert case.box.contains(r.x32) and case.margin(r.y32) <= 0


def test_auto_falls_back_to_the_milp_where_splitting_stalls(monkeypatch):
    """A net whose worst margin (0.02) sits at a box corner with a long near-flat valley (the
    look-ahead splitting needed ~10^6 boxes; smart branching now proves it, so here splitting is
    made to stall): the MILP proves it in well under a second."""
    from verifier import pipeline
    from verifier.config import Options
    from verifier.pipeline import run
    stalled = lambda net, prop, k, ladder, end, tune: BabResult("timeout", None, None)
    monkeypatch.setattr(pipeline, "_split_portfolio", stalled)
    rng = np.random.default_rng(1)
    W1, b1 = rng.normal(size=(8, 3)), rng.normal(size=8)
    W2, b2 = rng.normal(size=(8, 8)), rng.normal(size=8)
    W3, b3 = rng.normal(size=(2, 8)), rng.normal(size=2)
    g = Graph([Input((), (1, 3)), Linear((0,), (8,), mats=(W1,), bias=b1), Relu((1,), (8,)),
               Linear((2,), (8,), mats=(W2,), bias=b2), Relu((3,), (8,)),
               Linear((4,), (2,), mats=(W3,), bias=b3)])
    grid = np.linspace(-1, 1, 61)
    X = np.stack(np.meshgrid(grid, grid, grid), -1).reshape(-1, 3)
    Y = g.forward(X)
    g.nodes[5].bias[0] -= (Y[:, 0] - Y[:, 1]).min() - 0.02
    g.model_bytes = graph_to_onnx(g).SerializeToString()
    case = Case(Box(-np.ones(3), np.ones(3)), (Conjunction(np.array([[1.0, -1.0]]), np.zeros(1)),))
    cert = run(g, Property((case,), 3, 2), Options(timeout=8.0))
    assert cert.status == "verified" and cert.method == "milp" and cert.margin_lower > 0


def test_lookahead_children_are_halves_and_their_bounds_hold():
    """With a look-ahead each box is halved along one input at its midpoint (the one whose halves'
    worse bound is best), children in order, and their bounds hold on points sampled inside."""
    from verifier.bab import Rows
    from verifier.bounds.engine import domains
    from verifier.branching import InputRule
    g = random_net(3, n_in=3, widths=(8, 8), n_out=3)
    case = Case(Box(-np.ones(3), np.ones(3)),
                (Conjunction(np.array([[1.0, -1.0, 0.0]]), np.zeros(1)),
                 Conjunction(np.array([[1.0, 0.0, -1.0]]), np.zeros(1))))
    C, d, _ = case.stacked()
    lad = symbolic_ladder(g, case)
    rows = Rows(case, sums=True)
    rule = InputRule(lad.eng, rows, case.box.upper - case.box.lower, top=3)
    rng = np.random.default_rng(0)
    lo = rng.uniform(-1, 0, size=(6, 3))
    hi = lo + rng.uniform(0.2, 1.0, size=(6, 3))
    parents = domains(g, lo, hi)
    plb, pcoef, _ = rule.bound(parents, np.inf)
    kids, stuck = rule.branch(parents, plb, pcoef[np.arange(6), rows.deciding(plb)], {})
    assert not stuck.any() and kids.B == 12
    klo, khi = kids.box
    lb, _, _ = rule.bound(kids, np.inf)
    worse = rows.margin(lb).reshape(6, 2).min(axis=1)
    for b in range(6):
        a, z = klo[2 * b:2 * b + 2], khi[2 * b:2 * b + 2]
        axis = np.flatnonzero(z[0] != hi[b])
        assert axis.size == 1 and np.array_equal(a[0], lo[b]) and np.array_equal(z[1], hi[b])
        assert a[1][axis] == z[0][axis] == 0.5 * (lo[b][axis] + hi[b][axis])
        # no other input's halves have a better worse bound (up to the float32 estimates the
        # choice is made on)
        for ax in range(3):
            L2, H2 = np.repeat(lo[b][None], 2, 0), np.repeat(hi[b][None], 2, 0)
            H2[0, ax] = L2[1, ax] = 0.5 * (lo[b][ax] + hi[b][ax])
            alt = rows.margin(rule.bound(domains(g, L2, H2), np.inf)[0]).min()
            assert worse[b] >= alt - 1e-5 * (1 + abs(alt))
    for b in range(12):
        x = klo[b] + rng.random((4000, 3)) * (khi[b] - klo[b])
        vals = g.forward(x) @ C.T - d
        assert np.all(vals.min(axis=0) >= lb[b] - 1e-9)


def test_slope_steps_tighten_open_boxes_and_their_bounds_hold():
    """With slope steps the open boxes' intermediate bounds and rows are optimised: never looser
    than CROWN's, at least once tighter, and they hold on points sampled inside each box; boxes
    CROWN closes keep CROWN's bound."""
    from verifier.bab import Rows
    from verifier.bounds.engine import domains
    from verifier.branching import InputRule
    g = random_net(4, n_in=3, widths=(10, 10, 10), n_out=3)
    rng = np.random.default_rng(3)
    M = np.array([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]])
    # offsets at the rows' median over the box: about half the points are unsafe
    off = np.median(g.forward(rng.uniform(-1, 1, size=(4000, 3))) @ M.T, axis=0)
    case = Case(Box(-np.ones(3), np.ones(3)), (Conjunction(M, off),))
    C, d, _ = case.stacked()
    lad = symbolic_ladder(g, case)
    rows = Rows(case, sums=True)
    width = case.box.upper - case.box.lower
    lo = rng.uniform(-1, 0.5, size=(12, 3))
    hi = lo + rng.uniform(0.1, 0.5, size=(12, 3))
    crown, ccoef, _ = InputRule(lad.eng, rows, width).bound(domains(g, lo, hi), np.inf)
    tight, tcoef, _ = InputRule(lad.eng, rows, width, alpha_steps=8).bound(domains(g, lo, hi),
                                                                           np.inf)
    assert np.all(tight >= crown) and np.any(tight > crown + 1e-6)
    closed = rows.margin(crown) > 0
    assert np.array_equal(tight[closed], crown[closed])
    assert np.array_equal(tcoef[closed], ccoef[closed])
    for b in range(12):
        x = lo[b] + rng.random((4000, 3)) * (hi[b] - lo[b])
        vals = rows.C @ g.forward(x).T - rows.d[:, None]
        assert np.all(vals.min(axis=1) >= tight[b] - 1e-9)


def test_a_timed_out_split_reports_the_worst_open_box_bound(monkeypatch):
    """What input splitting proved (the lowest bound over its open boxes) is the case's margin
    bound at a timeout, not the root's looser one."""
    from verifier import pipeline
    from verifier.config import Options
    from verifier.pipeline import run
    stalled = lambda net, prop, k, ladder, end, tune: BabResult("timeout", -1e-3, None)
    monkeypatch.setattr(pipeline, "_split_portfolio", stalled)
    g = random_net(5, n_in=3, widths=(8, 8), n_out=2)
    box = Box(-np.ones(3), np.ones(3))
    probe = Case(box, (Conjunction(np.array([[1.0, -1.0]]), np.zeros(1)),))
    m = brute_min_margin(g, probe)              # unsafe: y0 - y1 <= m - 5 %: no counterexample
    case = Case(box, (Conjunction(np.array([[1.0, -1.0]]), np.array([m - 0.05 * (abs(m) + 1)])),))
    cert = run(g, Property((case,), 3, 2), Options(timeout=2.0, method="bab"))
    assert cert.status in ("timeout", "unknown") and cert.margin_lower == -1e-3


@pytest.mark.parametrize("tops,steps", [((1,), (0,)), ((2, 1, 5), (0, 0, 5)), ((1,), (3,))])
def test_searches_taking_turns_decide_as_one_search_does(tops, steps, monkeypatch):
    """Input splitting's searches resumed turn after turn (slices of 10 ms here) give the answer
    one uninterrupted search gives, with each search's statistics, with and without slope steps
    for the open boxes."""
    from verifier import pipeline
    from verifier.config import Tuning
    from verifier.pipeline import _split_portfolio
    resumed = []

    def counted(*a, resume=None, **kw):
        resumed.append(resume is not None)
        return branch_and_bound(*a, resume=resume, **kw)
    monkeypatch.setattr(pipeline, "branch_and_bound", counted)
    g = random_net(2, n_in=2, widths=(6, 6), n_out=2)
    for case, prop, expect in thresholds(g, 0.02):
        lad = symbolic_ladder(g, case)
        tune = Tuning(split_tops=tops, split_steps=steps, split_slice=0.01)
        r = _split_portfolio(g, prop, 0, lad, time.perf_counter() + 30, tune)
        assert r.status == expect, r.stats
        assert [t["top"] for t in r.stats["tries"]] == list(tops)
        assert [t["steps"] for t in r.stats["tries"]] == list(steps)
        assert r.stats["domains"] == sum(t["domains"] for t in r.stats["tries"])
        # each search counts its root once (not again per turn) and two children per split
        assert all(t["domains"] % 2 == 1 for t in r.stats["tries"] if t["domains"])
        if expect == "verified":
            assert r.margin_lower > 0
            assert any(resumed)                   # some search went on where it stopped
        else:
            assert case.box.contains(r.x32) and case.margin(r.y32) <= 0


def test_tuning_rejects_bad_split_settings():
    from verifier.config import OptionsError, Tuning
    for bad in (dict(split_tops=()), dict(split_tops=(0,)), dict(split_tops=[2]),
                dict(split_steps=(0, 0)), dict(split_steps=(0, -1, 5)),
                dict(split_tops=(2,), split_steps=(0.5,)),
                dict(split_slice=0.0), dict(split_slice=float("inf"))):
        with pytest.raises(OptionsError):
            Tuning(**bad)


def test_searches_taking_turns_with_no_time_left_report_a_timeout(monkeypatch):
    """Called past its end the input splitting still answers (a timeout with the root's bound),
    and a search that gives up is not resumed."""
    from verifier import pipeline
    from verifier.config import Tuning
    from verifier.pipeline import _split_portfolio
    g = random_net(2, n_in=2, widths=(6, 6), n_out=2)
    case, prop, _ = next(thresholds(g, 0.02))
    lad = symbolic_ladder(g, case)
    r = _split_portfolio(g, prop, 0, lad, time.perf_counter() - 1.0, Tuning())
    assert r.status == "timeout" and r.margin_lower is not None and r.margin_lower <= 0
    # searches whose pools outgrow max_domains answer unknown, and the turns end there
    calls = []

    def capped(*a, **kw):
        calls.append(1)
        return branch_and_bound(*a, max_domains=1, **kw)
    monkeypatch.setattr(pipeline, "branch_and_bound", capped)
    t0 = time.perf_counter()
    r = _split_portfolio(g, prop, 0, lad, t0 + 20.0, Tuning(split_tops=(2, 1), split_steps=(0, 5)))
    assert r.status == "unknown" and len(calls) == 2 and time.perf_counter() - t0 < 10
