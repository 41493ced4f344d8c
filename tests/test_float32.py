"""``verified`` covers the model as onnxruntime runs it (float32) by default, real arithmetic on
request: nets whose real-arithmetic margin is positive but whose float32 execution ties or flips."""
import numpy as np
import pytest

import verifier
from verifier.bounds import compute_bounds
from verifier.bounds.engine import Engine, domains
from verifier.graph import Graph, Input, Linear, Relu
from verifier.onnx_export import graph_to_onnx
from verifier.passes import simplify
from verifier.replay import run_model


def _tie_net():
    """h = relu(1e8 x), y = (h + 1, h): margin y0 - y1 = 1 in real arithmetic, but float32 rounds
    1e8 + 1 to 1e8, a tie, for every input near 1."""
    g = Graph([Input((), (1, 1)),
               Linear((0,), (1,), mats=(np.array([[1e8]]),), bias=np.zeros(1)),
               Relu((1,), (1,)),
               Linear((2,), (2,), mats=(np.array([[1.0], [1.0]]),), bias=np.array([1.0, 0.0]))])
    g.model_bytes = graph_to_onnx(g).SerializeToString()
    return g


def test_float32_tie_is_never_verified_by_default():
    g = _tie_net()
    y = run_model(g.model_bytes, np.array([1.0], np.float32))
    assert y[0] == y[1]                                      # onnxruntime ties
    for method in ("auto", "bounds", "milp", "lp"):
        cert = verifier.verify(g, np.array([1.0]), label=0, eps=0.01, method=method, timeout=20)
        assert cert.status != "verified", method
        assert cert.stats["arithmetic"] == "float32"
    real = verifier.verify(g, np.array([1.0]), label=0, eps=0.01, arithmetic="real", timeout=20)
    assert real.status == "verified" and real.stats["arithmetic"] == "real"


def test_milp_proof_is_corrected_for_float32():
    """The exact MILP is a real-arithmetic proof: in float32 mode its margin is lowered by the
    float32 deviation of the output, so the tie is not verified by the MILP either."""
    g = _tie_net()
    cert = verifier.verify(g, np.array([1.0]), label=0, eps=0.01, method="milp", timeout=20)
    assert cert.status != "verified"


def test_float32_bounds_contain_onnxruntime_outputs():
    """Large weights and long sums: the float32 bounds contain what onnxruntime computes at sampled
    inputs, while the real-arithmetic bounds (tighter) need not."""
    rng = np.random.default_rng(0)
    n = 200
    W1 = rng.normal(size=(50, n)) * 1e3
    W2 = rng.normal(size=(3, 50)) * 1e3
    g = Graph([Input((), (1, n)),
               Linear((0,), (50,), mats=(W1,), bias=rng.normal(size=50)),
               Relu((1,), (50,)),
               Linear((2,), (3,), mats=(W2,), bias=np.zeros(3))])
    g.model_bytes = graph_to_onnx(g).SerializeToString()
    x0 = rng.random(n).astype(np.float32)
    b32 = compute_bounds(g, (x0, x0), "symbolic")
    breal = compute_bounds(g, (x0, x0), "symbolic", arithmetic="real")
    y = run_model(g.model_bytes, x0).astype(np.float64)
    assert np.all(y >= b32.lower[3]) and np.all(y <= b32.upper[3])
    assert np.all(breal.upper[3] - breal.lower[3] <= b32.upper[3] - b32.lower[3])


def test_merged_chain_keeps_its_float32_magnitudes():
    """Two Linear ops whose product cancels (W2 W1 = 0): the merged node's |A| is 0, but
    onnxruntime runs both ops and rounds each: the float32 deviation must stay that of the chain."""
    rng = np.random.default_rng(3)
    W1 = rng.normal(size=(6, 3)) * 1e4
    q, _ = np.linalg.qr(W1, mode="complete")
    W2 = q[:, 3:].T                                        # W2 W1 = 0 up to rounding
    g = Graph([Input((), (1, 3)),
               Linear((0,), (6,), mats=(W1,), bias=np.zeros(6)),
               Linear((1,), (3,), mats=(W2,), bias=np.zeros(3))])
    m = simplify(g)
    assert len(m.nodes) == 2
    x = rng.random(3)
    eng = Engine(m)
    dom = eng.interval(domains(m, x, x))
    e32 = eng.deviation(dom)[1]
    assert np.all(e32 > 1e4 * 2 ** -24)                   # of the order of |W2| |W1 x| u
    g.model_bytes = graph_to_onnx(g).SerializeToString()
    y = run_model(g.model_bytes, x.astype(np.float32)).astype(np.float64)
    b = compute_bounds(m, (x.astype(np.float32), x.astype(np.float32)), "symbolic")
    assert np.all(y >= b.lower[1]) and np.all(y <= b.upper[1])


def test_arithmetic_is_validated():
    with pytest.raises(ValueError):
        Engine(_tie_net(), arithmetic="float16")


def test_float32_charge_uses_tightened_magnitudes():
    """The float32 rounding of a deep layer is charged against its inputs' magnitudes: those of
    the CROWN bounds, not of the first interval pass (which grow by ~width x per layer: a charge
    of about 1 per neuron turned mnist_fc 256x6's margin of +0.95 into -2.7).  On a deep random
    net the float32 margin stays within 2 % of the real one (1.3 %; 6.3 % when charged against the
    interval magnitudes)."""
    rng = np.random.default_rng(3)
    nodes = [Input((), (1, 20))]
    for _ in range(6):
        W = rng.normal(size=(64, nodes[-1].size)) * 0.3
        nodes.append(Linear((len(nodes) - 1,), (64,), mats=(W,), bias=rng.normal(size=64) * .1))
        nodes.append(Relu((len(nodes) - 1,), (64,)))
    nodes.append(Linear((len(nodes) - 1,), (2,), mats=(rng.normal(size=(2, 64)),),
                        bias=np.zeros(2)))
    g = Graph(nodes)
    x = rng.random(20)
    C, d = np.array([[1.0, -1.0]]), np.zeros(1)
    got = {}
    for arith in ("real", "float32"):
        eng = Engine(g, arithmetic=arith)
        dom = eng.bound(domains(g, x - 1e-3, x + 1e-3))
        got[arith] = float(eng.margins(dom, C, d)[0, 0])
    interval_scale = float(np.abs(Engine(g).interval(domains(g, x - 1e-3, x + 1e-3)).upper[-2]).max())
    assert interval_scale > 1e2                  # the first pass's magnitudes are large here
    assert got["real"] - 0.02 * abs(got["real"]) < got["float32"] <= got["real"], got
