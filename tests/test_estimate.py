"""Float32 estimates (``Engine.objective(estimate=True)``): values and gradients that guide slope
steps and strong branching, never bounds.  They must track the charged float64 pass closely, and
every bound that leaves ``alpha.optimise(estimate=True)`` must be a charged pass's."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from test_bounds import NETS
from test_engine import _check, _points, _split_domains
from verifier.bounds import alpha as alpha_opt
from verifier.bounds.engine import domains
from verifier.graph import Linear, Relu
from verifier.ops.conv import ConvMatrix


def _params(rng, g, dom, k, phase):
    alpha = {i: rng.random((dom.B, k, n.size)) for i, n in enumerate(g.nodes)
             if isinstance(n, Relu)}
    beta = {i: rng.random((dom.B, k, g.nodes[i].size)) for i in phase}
    return alpha, beta


@pytest.mark.parametrize("kind", sorted(NETS))
def test_estimates_track_the_charged_pass_and_its_gradients(kind):
    rng = np.random.default_rng(400 + len(kind))
    g = NETS[kind](rng)
    eng, lo, hi, phase, dom = _split_domains(rng, g, B=6, frac=0.3)
    C, d = rng.normal(size=(3, g.n_outputs)), rng.normal(size=3)
    alpha, beta = _params(rng, g, dom, 3, phase)
    ref, rcoef, rgrad, _ = eng.objective(dom, g.output, C, -d, alpha=alpha, beta=beta, grad=True)
    est, ecoef, egrad, _ = eng.objective(dom, g.output, C, -d, alpha=alpha, beta=beta, grad=True,
                                         estimate=True)
    scale = 1.0 + np.abs(ref)
    assert np.all(np.abs(est - ref) <= 1e-4 * scale)
    assert np.allclose(ecoef, rcoef, rtol=1e-4, atol=1e-5)
    assert rgrad.keys() == egrad.keys()
    for i in rgrad:
        assert egrad[i].dtype == np.float32
        assert np.allclose(egrad[i], rgrad[i], rtol=1e-3, atol=1e-4 * np.abs(rgrad[i]).max())
    # coefficients for branching scores, the same way
    ref_c = eng.coefficients(dom, g.output, C)
    est_c = eng.coefficients(dom, g.output, C, estimate=True)
    for i in ref_c:
        assert np.allclose(est_c[i], ref_c[i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["dense", "residual", "maxpool", "dup_input"])
def test_optimise_on_estimates_returns_charged_bounds(kind):
    """The bounds are a charged pass of the slopes returned (from given slopes: exactly that
    pass; from CROWN's: never below CROWN), they hold on sampled points, and they are as tight
    as stepping on charged passes up to float32 noise."""
    rng = np.random.default_rng(900 + len(kind))
    g = NETS[kind](rng)
    eng, lo, hi, phase, dom = _split_domains(rng, g, B=5, frac=0.3)
    C, d = rng.normal(size=(2, g.n_outputs)), rng.normal(size=2)
    crown = eng.margins(dom, C, d)
    ref = alpha_opt.optimise(eng, dom, C, d, steps=15, beta=True)
    est = alpha_opt.optimise(eng, dom, C, d, steps=15, beta=True, estimate=True, coef=True)
    assert np.all(est.lower >= crown)
    spread = np.abs(ref.lower - crown).max() + 1e-9
    assert np.all(est.lower >= ref.lower - 0.05 * spread)
    again = alpha_opt.optimise(eng, dom, C, d, steps=3, beta=True, estimate=True, coef=True,
                               start=est.alpha)
    alpha = {i: v for i, v in again.alpha.items() if not isinstance(i, tuple)}
    beta = {i[1]: v for i, v in again.alpha.items() if isinstance(i, tuple)}
    lb, coef = eng.objective(dom, g.output, C, -d, alpha=alpha, beta=beta)
    assert np.array_equal(lb, again.lower)
    assert np.array_equal(coef, again.coef)
    for b in range(dom.B):
        X = _points(rng, g, lo[b], hi[b], n=1000)
        _check(g, dom, b, X, C, d, est.lower, phase)
        _check(g, dom, b, X, C, d, again.lower, phase)


def test_float32_products_match_float64():
    rng = np.random.default_rng(5)
    conv = ConvMatrix(rng.normal(size=(4, 3, 3, 3)), (3, 6, 6), (3, 3), stride=(2, 2),
                      pads=(1, 1))
    A = conv.csr()
    dense = rng.normal(size=(7, A.shape[0]))
    for mats, convs in (((A,), (conv,)), ((dense,), None), ((sp.csr_array(dense),), None)):
        M = mats[0]
        node = Linear((0,), (M.shape[0],), mats=mats, bias=rng.normal(size=M.shape[0]))
        if convs:
            node.set_convs(convs)
        L = rng.normal(size=(2, 3, M.shape[0]))
        x = rng.normal(size=(2, 3, M.shape[1]))
        for structured in ("never", "always"):
            r64 = node.rows_times_k(L, 0, structured)
            r32 = node.rows_times_k(L.astype(np.float32), 0, structured)
            f64 = node.times_k(0, x, structured)
            f32 = node.times_k(0, x.astype(np.float32), structured)
            assert r32.dtype == f32.dtype == np.float32
            assert np.allclose(r32, r64, rtol=1e-4, atol=1e-4)
            assert np.allclose(f32, f64, rtol=1e-4, atol=1e-4)


def test_a_copy_without_slack_serves_estimates_only():
    rng = np.random.default_rng(8)
    g = NETS["dense"](rng)
    eng, lo, hi, phase, dom = _split_domains(rng, g, B=3)
    C, d = rng.normal(size=(2, g.n_outputs)), rng.normal(size=2)
    light = dom.take(np.arange(dom.B), slack=False)
    assert all(v is None for v in light.fwd + light.absimg)
    est, _ = eng.objective(light, g.output, C, -d, estimate=True)
    ref, _ = eng.objective(dom, g.output, C, -d)
    assert np.all(np.abs(est - ref) <= 1e-4 * (1 + np.abs(ref)))


@pytest.mark.parametrize("kind", sorted(NETS))
def test_estimated_node_bounds_track_the_charged_ones(kind):
    """``Engine.bound(estimate=True)`` (the input-split look-ahead's bounds of candidate children)
    is CROWN in float32 with no charge: every node's bounds within float32 noise of the charged
    pass's, on domains with split phases."""
    rng = np.random.default_rng(600 + len(kind))
    g = NETS[kind](rng)
    eng, lo, hi, phase, ref = _split_domains(rng, g, B=5, frac=0.3)
    est = eng.bound(domains(g, lo, hi, phase), estimate=True)
    for i in range(1, len(g.nodes)):
        scale = 1.0 + np.maximum(np.abs(ref.lower[i]), np.abs(ref.upper[i]))
        assert np.all(np.abs(est.lower[i] - ref.lower[i]) <= 1e-4 * scale), i
        assert np.all(np.abs(est.upper[i] - ref.upper[i]) <= 1e-4 * scale), i
