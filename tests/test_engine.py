"""The bound engine: batches of domains (boxes, ReLU phases, slopes) against ground truth.

Ground truth is the float64 network on points of each domain (uniform samples, corners, attack
points), kept only where the point satisfies the domain's phases.  Every bound must contain every
node value, with CROWN slopes, optimised slopes and random slopes; a batch must give what each
domain gives alone; the slope gradient must match finite differences; and on the shared benchmark
instances the engine must be no looser than the code it replaced (recorded in
``data/reference_bounds.json`` by the pre-engine ``bounds/symbolic.py`` and ``crown_batch.py``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_bounds import NETS, _box, _samples
from verifier.attack import attack
from verifier.bounds import alpha as alpha_opt
from verifier.bounds.engine import Engine, domains
from verifier.graph import Graph, Input, Linear, Relu
from verifier.spec import Box, Case, Conjunction, Property

ROOT = Path(__file__).resolve().parents[1]
REF = Path(__file__).resolve().parent / "data" / "reference_bounds.json"


def _batch(rng, g, B, width=1.0):
    """B boxes: the first a parent box, the rest random sub-boxes of it."""
    lo, hi = _box(rng, g.n_inputs, width)
    a = rng.random((B - 1, lo.size))
    w = rng.random((B - 1, lo.size)) * 0.6
    slo = lo + (hi - lo) * a * (1 - w)
    shi = slo + (hi - lo) * w
    return np.vstack([lo, slo]), np.vstack([hi, shi])


def _random_phases(rng, g, eng, dom, frac=0.3):
    """Fix a random share of the unstable entries of every ReLU to a random phase."""
    phase = {}
    for i, n in enumerate(g.nodes):
        if isinstance(n, Relu):
            j = n.inputs[0]
            unstable = (dom.lower[j] < 0) & (dom.upper[j] > 0)
            pick = unstable & (rng.random(unstable.shape) < frac)
            phase[i] = np.where(pick, rng.choice([-1, 1], size=unstable.shape), 0).astype(np.int8)
    return phase


def _points(rng, g, lo, hi, n=300):
    return _samples(rng, lo, hi, n)


def _holds(g, phase, vals):
    """Mask of sample points that satisfy every fixed phase."""
    ok = np.ones(vals[0].shape[0], bool)
    for i, ph in phase.items():
        z = vals[g.nodes[i].inputs[0]]
        ok &= np.all(np.where(ph > 0, z >= 0, True) & np.where(ph < 0, z <= 0, True), axis=1)
    return ok


def _check(g, dom, b, X, C=None, d=None, margin=None, phase=None):
    vals = g.forward_all(X)
    keep = _holds(g, {i: p[b] for i, p in (phase or {}).items()}, vals)
    for i, v in enumerate(vals):
        v = v[keep]
        assert np.all(v >= dom.lower[i][b]), (i, float((dom.lower[i][b] - v).max()))
        assert np.all(v <= dom.upper[i][b]), (i, float((v - dom.upper[i][b]).max()))
    if margin is not None:
        m = vals[g.output][keep] @ C.T - d
        assert np.all(m >= margin[b]), float((margin[b] - m).max())


@pytest.mark.parametrize("kind", sorted(NETS))
@pytest.mark.parametrize("seed", range(4))
def test_batches_sound_with_fixed_optimised_and_random_slopes(kind, seed):
    rng = np.random.default_rng(7000 + 31 * seed + len(kind))
    g = NETS[kind](rng)
    eng = Engine(g)
    lo, hi = _batch(rng, g, 4)
    dom = eng.bound(domains(g, lo, hi))
    C, d = rng.normal(size=(3, g.n_outputs)), rng.normal(size=3)
    crown = eng.margins(dom, C, d)
    opt = alpha_opt.optimise(eng, dom, C, d, steps=15)
    assert np.all(opt.lower >= crown)
    rand = {i: rng.random(v.shape) for i, v in opt.alpha.items()}
    rnd = eng.margins(dom, C, d, alpha=rand)
    for b in range(dom.B):
        X = _points(rng, g, lo[b], hi[b])
        for m in (crown, opt.lower, rnd):
            _check(g, dom, b, X, C, d, m)


@pytest.mark.parametrize("kind", ["dense", "residual", "maxpool"])
@pytest.mark.parametrize("seed", range(4))
def test_fixed_phases_sound_and_batch_equals_alone(kind, seed):
    rng = np.random.default_rng(9100 + seed)
    g = NETS[kind](rng)
    eng = Engine(g)
    lo, hi = _batch(rng, g, 5)
    phase = _random_phases(rng, g, eng, eng.bound(domains(g, lo, hi)))
    dom = eng.bound(domains(g, lo, hi, phase))
    C, d = rng.normal(size=(2, g.n_outputs)), rng.normal(size=2)
    m = eng.margins(dom, C, d)
    opt = alpha_opt.optimise(eng, dom, C, d, steps=5).lower
    bad = dom.infeasible()
    for b in range(dom.B):
        X = _points(rng, g, lo[b], hi[b], n=2000)
        vals = g.forward_all(X)
        ok = _holds(g, {i: p[b] for i, p in phase.items()}, vals)
        if bad[b]:
            assert not ok.any() and m[b].min() == np.inf   # an empty domain holds no point
            continue
        _check(g, dom, b, X, C, d, m, phase)
        # alone, the domain is sound too (its bounds may differ: a batch bounds more rows);
        # with the batch's bounds, its margins and optimised slopes are the batch's
        ph = {i: p[b:b + 1] for i, p in phase.items()}
        one = Engine(g).bound(domains(g, lo[b], hi[b], ph))
        _check(g, one, 0, X, phase=ph)
        same = dom.take([b])
        assert np.allclose(Engine(g).margins(same, C, d)[0], m[b], rtol=1e-12, atol=1e-12)
        opt_b = alpha_opt.optimise(Engine(g), same, C, d, steps=5).lower[0]
        assert np.allclose(opt_b, opt[b], rtol=1e-12, atol=1e-12)


def test_all_phases_fixed_is_exact_up_to_float_slack():
    """With every ReLU phase fixed the network is affine on the domain: the bound of a margin row
    is its exact minimum over the box restricted to the phases (here checked against a dense
    sample of points satisfying them, within float slack)."""
    rng = np.random.default_rng(5)
    g = NETS["dense"](rng)
    eng = Engine(g)
    x0 = rng.normal(size=g.n_inputs)
    vals = g.forward_all(x0)
    phase = {i: np.where(vals[n.inputs[0]] >= 0, 1, -1).astype(np.int8)
             for i, n in enumerate(g.nodes) if isinstance(n, Relu)}
    lo, hi = x0 - 1e-3, x0 + 1e-3
    dom = eng.bound(domains(g, lo, hi, phase))
    C, d = rng.normal(size=(1, g.n_outputs)), np.zeros(1)
    m = eng.margins(dom, C, d)[0, 0]
    X = _points(rng, g, lo, hi, n=5000)
    v = g.forward_all(X)
    ok = _holds(g, phase, v)
    sampled = float((v[g.output][ok] @ C.T).min())
    assert m <= sampled and sampled - m < 2e-3 * np.abs(C).sum()


def test_attack_points_lie_inside_the_bounds():
    rng = np.random.default_rng(3)
    for kind in ("dense", "maxpool"):
        g = NETS[kind](rng)
        lo, hi = _box(rng, g.n_inputs)
        eng = Engine(g)
        dom = eng.bound(domains(g, lo, hi))
        C = np.zeros((1, g.n_outputs))
        C[0, 0], C[0, -1] = 1.0, -1.0
        prop = Property((Case(Box(lo, hi), (Conjunction(C, np.full(1, -5.0)),)),),
                        g.n_inputs, g.n_outputs)
        res = attack(g, prop, time_budget=2.0, seed=0)
        X = np.vstack([res.x_best[None, :], res.candidates]) if res.candidates.size else \
            res.x_best[None, :]
        _check(g, dom, 0, X, C, np.zeros(1), eng.margins(dom, C, np.zeros(1)))


@pytest.mark.parametrize("kind", ["dense", "residual", "maxpool", "dup_input"])
def test_slope_gradient_matches_finite_differences(kind):
    rng = np.random.default_rng(11)
    g = NETS[kind](rng)
    eng = Engine(g)
    lo, hi = _batch(rng, g, 2, width=1.5)
    dom = eng.bound(domains(g, lo, hi))
    C, d = rng.normal(size=(2, g.n_outputs)), np.zeros(2)
    alpha = {i: rng.uniform(0.2, 0.8, size=v.shape)
             for i, v in alpha_opt.initial(eng, dom, 2).items()}
    if not alpha:
        pytest.skip("no unstable ReLU")
    base, _, grads, point = eng.objective(dom, g.output, C, -d, alpha=alpha, grad=True)
    h = 1e-6
    checked = 0
    for i, a in alpha.items():
        free = eng.relaxation(dom, i).free
        for b, r, e in zip(*np.nonzero(np.broadcast_to(free[:, None, :], a.shape))):
            ap = {j: v.copy() for j, v in alpha.items()}
            ap[i][b, r, e] += h
            up, _ = eng.objective(dom, g.output, C, -d, alpha=ap)
            fd = (up[b, r] - base[b, r]) / h
            assert abs(fd - grads[i][b, r, e]) <= 1e-4 * (1 + abs(fd)), (i, b, r, e)
            checked += 1
    assert checked > 0


def test_memory_cap_smaller_than_a_block_gives_the_same_bounds():
    rng = np.random.default_rng(2)
    g = NETS["residual"](rng)
    lo, hi = _batch(rng, g, 6)
    C, d = rng.normal(size=(3, g.n_outputs)), rng.normal(size=3)
    big = Engine(g)
    small = Engine(g, chunk_entries=7)        # one row of one domain per block
    a, b = big.bound(domains(g, lo, hi)), small.bound(domains(g, lo, hi))
    for i in range(len(g.nodes)):
        assert np.allclose(a.lower[i], b.lower[i], rtol=1e-12, atol=1e-12)
    assert np.allclose(big.margins(a, C, d), small.margins(b, C, d), rtol=1e-12, atol=1e-12)
    assert small.stats["max_block_bytes"] < big.stats["max_block_bytes"]


def test_never_looser_than_the_replaced_code_on_shared_instances():
    """Margin lower bounds on mnist_fc, acasxu (one box and 17 sub-boxes) and LP_d-CNN: at least
    the old ones, up to rounding noise (the same relaxation, but blocks of other shapes are summed
    in other orders by BLAS and the charges differ by a few ulps: measured at most 2e-11
    relative)."""
    import verifier
    from verifier.vnnlib import parse_vnnlib
    for r in json.loads(REF.read_text()):
        net = verifier.load(ROOT / "benchmarks" / r["onnx"])
        case = parse_vnnlib(ROOT / "benchmarks" / r["vnnlib"], net.n_inputs, net.n_outputs).cases[0]
        C, d, _ = case.stacked()
        eng = Engine(net, arithmetic="real")         # the old code proved real arithmetic
        m = eng.margins(eng.bound(domains(net, case.box.lower, case.box.upper)), C, d)[0]
        old = np.array(r["margin_lower"])
        assert np.all(m >= old - 1e-10 * (1 + np.abs(old))), (r["onnx"], r["vnnlib"])
        if "boxes_lower" in r:
            lo, hi = np.array(r["boxes_lower"]), np.array(r["boxes_upper"])
            mb = eng.margins(eng.bound(domains(net, lo, hi)), C, d)
            old = np.array(r["batch_rows_lower"])
            assert np.all(mb >= old - 1e-10 * (1 + np.abs(old))), r["onnx"]
        # optimised slopes: never worse, and strictly better somewhere on the hard ones
        if m.min() < 0 and net.n_inputs > 32:
            opt = alpha_opt.optimise(eng, eng.bound(domains(net, case.box.lower,
                                                            case.box.upper)), C, d, steps=10)
            assert np.all(opt.lower[0] >= m) and np.any(opt.lower[0] > m + 1e-6)


def _split_domains(rng, g, B=4, frac=0.5):
    eng = Engine(g)
    lo, hi = _batch(rng, g, B)
    phase = _random_phases(rng, g, eng, eng.bound(domains(g, lo, hi)), frac)
    return eng, lo, hi, phase, eng.bound(domains(g, lo, hi, phase))


@pytest.mark.parametrize("kind", ["dense", "residual", "maxpool"])
def test_settled_domains_leave_the_optimisation_and_the_rest_is_unchanged(kind):
    """``optimise(settled=...)``: a domain marked settled keeps the best slopes it had and leaves
    the remaining steps; every other domain's optimisation is its own (per-domain Adam), so its
    bound is the one it gets without the option; all bounds stay sound."""
    rng = np.random.default_rng(77 + len(kind))
    g = NETS[kind](rng)
    eng, lo, hi, phase, dom = _split_domains(rng, g, B=8, frac=0.3)
    C, d = rng.normal(size=(2, g.n_outputs)), rng.normal(size=2)
    full = alpha_opt.optimise(eng, dom, C, d, steps=12, beta=True)
    cut = np.median(eng.margins(dom, C, d).min(axis=1))       # about half the domains settle
    seen = []

    def settled(lb):
        seen.append(lb.shape[0])
        return lb.min(axis=1) > cut

    part = alpha_opt.optimise(eng, dom, C, d, steps=12, beta=True, settled=settled)
    assert min(seen) < dom.B                                 # the batch did shrink
    off = part.lower.min(axis=1) > cut
    assert np.allclose(part.lower[~off], full.lower[~off], rtol=1e-9, atol=1e-9)
    assert np.all(part.lower[off].min(axis=1) > cut)
    assert np.all(part.lower <= full.lower + 1e-9)
    alpha = {i: v for i, v in part.alpha.items() if not isinstance(i, tuple)}
    beta = {i[1]: v for i, v in part.alpha.items() if isinstance(i, tuple)} or None
    again, _ = eng.objective(dom, g.output, C, -d, alpha=alpha, beta=beta)
    assert np.allclose(again, part.lower, rtol=1e-9, atol=1e-9)   # the kept slopes give them
    for b in range(dom.B):
        _check(g, dom, b, _points(rng, g, lo[b], hi[b], n=1000), C, d, part.lower, phase)


@pytest.mark.parametrize("kind", ["dense", "residual", "dup_input"])
def test_split_multipliers_sound_for_any_beta(kind):
    """beta-CROWN: any multipliers >= 0 (random, huge, optimised) give bounds that hold on every
    sampled point satisfying the domain's phases."""
    rng = np.random.default_rng(321)
    g = NETS[kind](rng)
    eng, lo, hi, phase, dom = _split_domains(rng, g)
    C, d = rng.normal(size=(2, g.n_outputs)), rng.normal(size=2)
    shape = lambda i: (dom.B, 2, g.nodes[i].size)
    opt = alpha_opt.optimise(eng, dom, C, d, steps=15, beta=True)
    plain = eng.margins(dom, C, d)
    assert np.all(opt.lower >= plain)
    for scale in (0.1, 10.0, 1e6):
        beta = {i: rng.random(shape(i)) * scale for i in phase}
        lb, _ = eng.objective(dom, g.output, C, -d, beta=beta)
        for b in range(dom.B):
            X = _points(rng, g, lo[b], hi[b], n=1500)
            _check(g, dom, b, X, C, d, lb, phase)
            _check(g, dom, b, X, C, d, opt.lower, phase)


def test_beta_gradient_matches_finite_differences():
    rng = np.random.default_rng(12)
    g = NETS["dense"](rng)
    eng, lo, hi, phase, dom = _split_domains(rng, g, B=2, frac=0.6)
    C, d = rng.normal(size=(2, g.n_outputs)), np.zeros(2)
    beta = {i: rng.uniform(0.1, 1.0, size=(dom.B, 2, g.nodes[i].size)) for i in phase}
    base, _, grads, _ = eng.objective(dom, g.output, C, -d, beta=beta, grad=True)
    h, checked = 1e-6, 0
    for i, ph in phase.items():
        for b, r, e in zip(*np.nonzero(np.broadcast_to(ph[:, None, :] != 0, beta[i].shape))):
            bp = {j: v.copy() for j, v in beta.items()}
            bp[i][b, r, e] += h
            up, _ = eng.objective(dom, g.output, C, -d, beta=bp)
            fd = (up[b, r] - base[b, r]) / h
            assert abs(fd - grads[("beta", i)][b, r, e]) <= 1e-4 * (1 + abs(fd)), (i, b, r, e)
            checked += 1
    assert checked > 0


def test_beta_recovers_what_the_split_constraint_excludes():
    """x in [-1, 1], z = x, a = relu(z), y = x (the ReLU feeds nothing): with z's phase fixed
    active the domain is x >= 0 and min y = 0, but without the split constraint the bound sees
    only the box and gives -1; beta-CROWN brings the constraint in."""
    g = Graph([Input((), (1, 1)),
               Linear((0,), (1,), mats=(np.eye(1),), bias=np.zeros(1)),      # z = x
               Relu((1,), (1,)),                                              # a = relu(z)
               Linear((2, 0), (1,), mats=(np.zeros((1, 1)), np.eye(1)), bias=np.zeros(1))])
    eng = Engine(g, arithmetic="real")
    phase = {2: np.array([[1]], np.int8)}
    dom = eng.bound(domains(g, -np.ones(1), np.ones(1), phase))
    C, d = np.eye(1), np.zeros(1)
    assert eng.margins(dom, C, d)[0, 0] <= -1 + 1e-9          # the split is invisible to y = x
    opt = alpha_opt.optimise(eng, dom, C, d, steps=60, lr=0.5, beta=True)
    assert opt.lower[0, 0] > -1e-2                            # beta brings in x >= 0


@pytest.mark.parametrize("seed", range(4))
def test_fixing_phases_in_place_equals_setting_whole_bounds(seed):
    """``Engine.fix_phases`` (branch and bound's splits) writes only the split entries; the
    bounds must be those ``_set`` gives on the whole arrays, and the phases the same."""
    from test_input_split import random_net
    rng = np.random.default_rng(seed)
    g = random_net(seed, n_in=3, widths=(10, 10))
    eng = Engine(g, arithmetic="real")
    B = 6
    lo = rng.uniform(-1, 0, size=(B, 3))
    dom = domains(g, lo, lo + rng.uniform(0.5, 2, size=(B, 3)))
    eng.bound(dom)
    relus = [i for i, n in enumerate(g.nodes) if isinstance(n, Relu)]
    for r in relus:
        j = g.nodes[r].inputs[0]
        rows = np.arange(B)
        entries = rng.integers(0, g.nodes[r].size, size=B)
        signs = rng.choice(np.array([1, -1], np.int8), size=B)
        a, b = dom.take(np.arange(B)), dom.take(np.arange(B))
        eng.fix_phases(a, r, rows, entries, signs)
        b.phase.setdefault(r, np.zeros((B, g.nodes[r].size), np.int8))[rows, entries] = signs
        eng._set(b, j, b.lower[j], b.upper[j])
        eng._set(b, r, *eng.interval_node(b, r))
        for i in range(len(g.nodes)):
            if a.lower[i] is not None:
                np.testing.assert_array_equal(a.lower[i], b.lower[i])
                np.testing.assert_array_equal(a.upper[i], b.upper[i])
        np.testing.assert_array_equal(a.phase[r], b.phase[r])
        dom = a


@pytest.mark.parametrize("kind", sorted(NETS))
def test_estimates_read_only_the_estimate_nodes(kind):
    """Strong branching's trial domains keep only ``Engine.estimate_nodes``' bounds: the
    estimates (with split phases, slopes and multipliers) are those of full copies."""
    rng = np.random.default_rng(11)
    g = NETS[kind](rng)
    eng = Engine(g, arithmetic="real")
    lo, hi = _box(rng, g.n_inputs)
    dom = domains(g, np.repeat(lo[None], 3, axis=0), np.repeat(hi[None], 3, axis=0))
    eng.bound(dom)
    relus = [i for i, n in enumerate(g.nodes) if isinstance(n, Relu)]
    C = rng.normal(size=(2, g.n_outputs))
    for r in relus:
        j = g.nodes[r].inputs[0]
        free = np.flatnonzero((dom.lower[j][0] < 0) & (dom.upper[j][0] > 0))
        if free.size:
            eng.fix_phases(dom, r, np.array([1, 2]), free[:1].repeat(2), np.array([1, -1], np.int8))
    beta = {r: rng.random((3, 2, g.nodes[r].size)) for r in dom.phase}
    idx = np.array([0, 1, 2, 2, 1])
    full = dom.take(idx, slack=False)
    part = dom.take(idx, slack=False, nodes=eng.estimate_nodes)
    assert sum(v is not None for v in part.lower) < sum(v is not None for v in full.lower)
    b = {r: v[idx] for r, v in beta.items()}
    a, _ = eng.objective(full, g.output, C, beta=b, estimate=True)
    e, _ = eng.objective(part, g.output, C, beta=b, estimate=True)
    np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("kind", sorted(NETS))
def test_carried_relaxations_equal_recomputed_ones_after_splits(kind):
    """``take(relax=True)`` then ``fix_phases`` (branch and bound's children and strong
    branching's trials) patches the cached relaxations (float64 and float32), magnitudes and
    infeasibility flags: each equals what a copy without the cache recomputes."""
    rng = np.random.default_rng(5)
    g = NETS[kind](rng)
    eng = Engine(g, arithmetic="real")
    lo, hi = _box(rng, g.n_inputs)
    B = 4
    dom = domains(g, np.repeat(lo[None], B, axis=0), np.repeat(hi[None], B, axis=0))
    eng.bound(dom)
    relaxed = [i for i, n in enumerate(g.nodes) if not n.affine and i > 0]
    relus = [i for i in relaxed if isinstance(g.nodes[i], Relu)]
    split = 0
    for r in relus:
        for i in relaxed:                        # fill every cache the engine keeps
            eng.relaxation(dom, i)
            eng.relaxation(dom, i, dtype=np.float32)
            eng.mag(dom, g.nodes[i].inputs[0])
            eng.mag(dom, i)
        dom.infeasible()
        j = g.nodes[r].inputs[0]
        # every entry's phase fixed somewhere: unstable ones, stable ones, the impossible side
        entries = rng.integers(0, g.nodes[r].size, size=2 * B)
        rows = np.repeat(np.arange(B), 2)
        signs = rng.choice(np.array([1, -1], np.int8), size=2 * B)
        idx = rng.integers(0, B, size=B)
        a = dom.take(idx, relax=True)
        eng.fix_phases(a, r, rows, entries, signs)
        b = a.take(np.arange(B))                 # the same bounds, no cache
        for key, R in a.relax.items():
            if key == "infeasible":
                np.testing.assert_array_equal(R, b.infeasible())
            elif isinstance(key, tuple) and key[0] == "mag":
                np.testing.assert_array_equal(R, eng.mag(b, key[1]))
            else:
                i, dt = (key[1], np.float32) if isinstance(key, tuple) else (key, np.float64)
                F = eng.relaxation(b, i, dtype=dt)
                for f in ("lo_slope", "up_slope", "lo_off", "up_off", "select", "free"):
                    x, y = getattr(R, f), getattr(F, f)
                    if x is None or y is None:     # an offset of None is zero
                        assert not np.any(x if y is None else y), (key, f)
                    else:
                        np.testing.assert_array_equal(x, y, err_msg=f"{key} {f}")
        split += int(((a.lower[j] >= 0) != (dom.lower[j][idx] >= 0)).any())
        dom = a
    assert split > 0 or not relus
