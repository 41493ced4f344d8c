"""Sigmoid and Tanh (``verifier.ops.sshape``): onnxruntime's float32 error against the charged
bound, the relaxation against the real function (in long double) and onnxruntime, hand-known lines,
bounds of random nets against onnxruntime's float32 values of every node, the loader, and a
generator feeding a ReLU classifier (as VNN-COMP's dist_shift and cgan) through every method.

Ground truth is the real function (``np.longdouble``, 64-bit mantissa) and onnxruntime on float32
points; a ``falsified`` answer must replay in a session of the test's own.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import verifier
from test_onnx_loader import check, kinds, make_model, node
from verifier import exact
from verifier.bounds import Ladder, compute_bounds
from verifier.bounds.engine import Engine, domains
from verifier.cli import main
from verifier.gradients import backward
from verifier.graph import Graph, Input, Linear, Relu, Sigmoid, Tanh
from verifier.onnx_export import graph_to_onnx
from verifier.ops import sshape
from verifier.ops.sshape import ORT_ERROR
from verifier.replay import ReplayResult
from verifier.solvers import solve_case

KINDS = {"sigmoid": Sigmoid, "tanh": Tanh}


def _sigmoid_long(x):
    with np.errstate(over="ignore"):                  # exp(-x) = inf: the value is 0
        return 1 / (1 + np.exp(-x))


LONG = {"sigmoid": _sigmoid_long, "tanh": np.tanh}


def _session(model: onnx.ModelProto):
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _op_session(op: str):
    return _session(make_model([node(op, ["x"], ["y"])], {}, [None]))


# ------------------------------------------------------------------------------------------------
# the function alone
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_onnxruntime_error_stays_well_within_the_charged_bound(kind):
    """ORT_ERROR was measured over every float32 in 2^-20 <= |x| < 128 (benchmarks/
    sshape_error.py); the installed onnxruntime must still keep a factor 2 below it on a sample
    (random bit patterns over the whole float32 range, the busy range, the measured worst spots)."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 2**20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([bits[np.isfinite(bits)], rng.uniform(-40, 40, 2**20).astype(np.float32),
                        np.float32([15.934788, -15.934788, 8.47554, -8.47554, 0.0, -0.0])])
    y = _op_session(kind.capitalize()).run(None, {"x": x})[0].astype(np.longdouble)
    err = float(np.max(np.abs(y - LONG[kind](x.astype(np.longdouble)))))
    assert 1e-8 < err <= ORT_ERROR / 2, f"onnxruntime's {kind} is off by {err:.3g}: re-measure"


def _intervals(rng):
    """Intervals at every scale, straddling or not, point intervals, and ones that reach far."""
    out = []
    for scale in (1e-3, 1.0, 5.0, 50.0, 1e3):
        a = rng.normal(size=3000) * scale
        w = np.abs(rng.normal(size=a.size)) * scale * rng.choice([0.0, 1e-9, 0.1, 1.0, 4.0], a.size)
        out.append((a, a + w))
    lo = np.array([-1e300, -np.inf, -50.0, 0.0, -0.0, -1e-300, 30.0])
    hi = np.array([1e300, 2.0, 50.0, 0.0, 1e-300, 0.0, np.inf])
    out.append((lo, hi))
    return np.concatenate([a for a, _ in out]), np.concatenate([b for _, b in out])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_relaxation_and_interval_hold_the_real_function_and_onnxruntime(kind):
    rng = np.random.default_rng(1)
    n = KINDS[kind]((0,), (1,))
    l, u = _intervals(rng)
    R = n.relax(l[None], u[None])
    lo, hi = n.interval(l[None], u[None])
    sl, su = R.lo_slope[0].astype(np.longdouble), R.up_slope[0].astype(np.longdouble)
    tl, tu = R.lo_off[0].astype(np.longdouble), R.up_off[0].astype(np.longdouble)
    sess = _op_session(kind.capitalize())
    fl, fu = np.clip(l, -3e38, 3e38), np.clip(u, -3e38, 3e38)      # the finite part, for samples
    for t in np.concatenate([[0.0, 1.0], rng.random(30)]):
        x = np.clip(fl + (fu - fl) * t, l, u)
        x32 = x.astype(np.float32)
        on = (x32 >= l) & (x32 <= u)                                  # float32 points inside
        for xs, ys in ((x.astype(np.longdouble), LONG[kind](x.astype(np.longdouble))),
                       (x32[on].astype(np.longdouble),
                        sess.run(None, {"x": x32[on]})[0].astype(np.longdouble))):
            m = slice(None) if ys.size == x.size else on
            assert np.all(sl[m] * xs + tl[m] <= ys) and np.all(ys <= su[m] * xs + tu[m])
            assert np.all(lo[0][m] <= ys) and np.all(ys <= hi[0][m])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lines_hold_the_real_function_without_the_onnxruntime_widening(kind, monkeypatch):
    """The lifted lines alone (ORT_ERROR = 0) already hold the real function in long double: the
    rounding of their own construction is accounted for, not hidden in the 1e-6."""
    monkeypatch.setattr(sshape, "ORT_ERROR", 0.0)
    rng = np.random.default_rng(2)
    n = KINDS[kind]((0,), (1,))
    l, u = _intervals(rng)
    ok = np.isfinite(l) & np.isfinite(u) & (np.abs(l) < 1e300) & (np.abs(u) < 1e300)
    l, u = l[ok], u[ok]
    R = n.relax(l[None], u[None])
    sl, su = R.lo_slope[0].astype(np.longdouble), R.up_slope[0].astype(np.longdouble)
    tl, tu = R.lo_off[0].astype(np.longdouble), R.up_off[0].astype(np.longdouble)
    for t in np.concatenate([[0.0, 1.0], rng.random(30)]):
        x = np.clip(l + (u - l) * t, l, u).astype(np.longdouble)
        y = LONG[kind](x)
        assert np.all(sl * x + tl <= y) and np.all(y <= su * x + tu)


def test_lines_are_the_hand_known_tangents_and_chords():
    """sigmoid on [2, 4] (concave): tangent at 3 above, chord below; tanh on [-3, -1] (convex):
    chord above, tangent at -2 below; each moved by ORT_ERROR only (and 2e-12 for the float64
    values' charged error)."""
    s = Sigmoid((0,), (1,))
    R = s.relax(np.array([[2.0]]), np.array([[4.0]]))
    sig = lambda x: 1 / (1 + np.exp(-x))
    d3 = sig(3) * (1 - sig(3))
    assert R.up_slope[0, 0] == pytest.approx(d3, rel=1e-12)
    assert R.up_off[0, 0] - (sig(3) - 3 * d3) == pytest.approx(ORT_ERROR, abs=1e-11)
    chord = (sig(4) - sig(2)) / 2
    assert R.lo_slope[0, 0] == pytest.approx(chord, rel=1e-12)
    assert (sig(2) - 2 * chord) - R.lo_off[0, 0] == pytest.approx(ORT_ERROR, abs=1e-11)
    t = Tanh((0,), (1,))
    R = t.relax(np.array([[-3.0]]), np.array([[-1.0]]))
    chord = (np.tanh(-1) - np.tanh(-3)) / 2
    assert R.up_slope[0, 0] == pytest.approx(chord, rel=1e-12)
    assert R.up_off[0, 0] - (np.tanh(-1) + chord) == pytest.approx(ORT_ERROR, abs=1e-11)
    d2 = 1 - np.tanh(-2) ** 2
    assert R.lo_slope[0, 0] == pytest.approx(d2, rel=1e-12)
    assert (np.tanh(-2) + 2 * d2) - R.lo_off[0, 0] == pytest.approx(ORT_ERROR, abs=1e-11)
    # a point interval: the two lines enclose the value within 2 ORT_ERROR (and rounding)
    R = s.relax(np.array([[0.7]]), np.array([[0.7]]))
    gap = (R.up_slope - R.lo_slope) * 0.7 + R.up_off - R.lo_off
    assert 2 * ORT_ERROR <= gap[0, 0] <= 2 * ORT_ERROR + 1e-11


# ------------------------------------------------------------------------------------------------
# random nets
# ------------------------------------------------------------------------------------------------
def _net(rng, scale):
    """input 3 -> 6 sigmoid -> 5 tanh -> 5 relu -> 3; ``scale`` sets how far the pre-activations
    reach (|x| up to about 50 at scale 20)."""
    def lin(inp, n_in, n_out, s=1.0):
        return Linear((inp,), (n_out,), mats=(rng.normal(size=(n_out, n_in)) * s / np.sqrt(n_in),),
                      bias=rng.normal(size=n_out) * s * 0.3)
    g = Graph([Input((), (1, 3)), lin(0, 3, 6, scale), Sigmoid((1,), (6,)), lin(2, 6, 5, scale),
               Tanh((3,), (5,)), lin(4, 5, 5), Relu((5,), (5,)), lin(6, 5, 3)])
    m = graph_to_onnx(g)
    m.graph.output.extend(helper.make_tensor_value_info(f"n{i}", TensorProto.FLOAT, None)
                          for i in range(1, len(g.nodes)))
    return g, _session(m)


@pytest.mark.parametrize("scale", [1.0, 20.0])
@pytest.mark.parametrize("seed", range(2))
def test_random_net_bounds_contain_every_onnxruntime_value(seed, scale):
    """float32 bounds (CROWN, alpha, and the float32 deviation) contain onnxruntime's float32
    value of every node at float32 points of the box; real bounds contain the float64 forward."""
    rng = np.random.default_rng(100 * seed + int(scale))
    g, sess = _net(rng, scale)
    C, d = rng.normal(size=(2, 3)), rng.normal(size=2)
    for width in (0.0, 0.02, 0.5, 3.0):
        c = rng.uniform(-2, 2, 3).astype(np.float32).astype(np.float64)
        lo, hi = c - width, c + width
        X = np.vstack([rng.uniform(lo, hi, (200, 3)), lo, hi]).astype(np.float32)
        X = X[np.all((X >= lo) & (X <= hi), axis=1)]
        ort_vals = [X.astype(np.float64)] + [np.asarray(v, np.float64).reshape(X.shape[0], -1)
                                            for v in zip(*(sess.run(None, {"input": x[None]})[1:]
                                                           for x in X))]
        fwd = g.forward_all(X.astype(np.float64))
        for arith, truth in (("float32", ort_vals), ("real", fwd)):
            b = compute_bounds(g, (lo, hi), "alpha", C=C, d=d, arithmetic=arith)
            for i, v in enumerate(truth):
                assert np.all(v >= b.lower[i]) and np.all(v <= b.upper[i]), (arith, width, i)
            assert np.all(truth[-1] @ C.T - d >= b.margin_lower), (arith, width)
        eng = Engine(g)
        dev = eng.deviation(eng.interval(domains(g, lo, hi)))
        for i in range(1, len(g.nodes)):
            assert np.all(np.abs(ort_vals[i] - fwd[i]) <= dev[i][0]), i


def test_lp_level_is_sound_and_uses_every_sigmoid_input():
    """CROWN and the LPs bound every entry of a sigmoid / tanh input, not only the ones whose
    sign is open (as for ReLU inputs)."""
    rng = np.random.default_rng(7)
    g, _ = _net(rng, 3.0)
    lo, hi = np.full(3, -0.4), np.full(3, 0.6)
    box = compute_bounds(g, (lo, hi), "interval", arithmetic="real")
    sym = compute_bounds(g, (lo, hi), "symbolic", arithmetic="real")
    signed = (box.lower[3] > 0) | (box.upper[3] < 0)
    assert signed.any() and np.any((sym.upper[3] - sym.lower[3] < box.upper[3] - box.lower[3])
                                   [signed])
    lp = compute_bounds(g, (lo, hi), "lp", arithmetic="real")
    X = np.vstack([rng.uniform(lo, hi, (400, 3)), lo, hi])
    for i, v in enumerate(g.forward_all(X)):
        assert np.all(v >= lp.lower[i]) and np.all(v <= lp.upper[i]), i
        assert np.all(lp.lower[i] >= sym.lower[i]) and np.all(lp.upper[i] <= sym.upper[i])
    assert np.any(lp.upper[3] - lp.lower[3] < sym.upper[3] - sym.lower[3] - 1e-6)   # tanh input


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    g, _ = _net(rng, 2.0)
    x = rng.uniform(-1, 1, (2, 3))
    cot = rng.normal(size=(2, 3))
    grad = backward(g, g.forward_all(x), cot)
    h = 1e-6
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        fd = ((g.forward(x + e) - g.forward(x - e)) * cot).sum(axis=1) / (2 * h)
        assert np.allclose(grad[:, k], fd, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# the loader
# ------------------------------------------------------------------------------------------------
def test_loader_reads_sigmoid_tanh_hardsigmoid_like_onnxruntime():
    Wt = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32) * 3
    m = make_model([node("MatMul", ["x", "W"], ["h"]), node("Sigmoid", ["h"], ["a"]),
                    node("Tanh", ["h"], ["b"]), node("Sub", ["a", "b"], ["y"])], {"W": Wt}, [1, 4])
    g = check(m, lo=-4, hi=4, n=8)
    assert kinds(g) == ["input", "linear", "sigmoid", "tanh", "linear"]
    assert any("Sigmoid (1 node, 5 values) and Tanh (1 node, 5 values) relaxed" in n
               for n in g.notes)
    for attrs in ({}, {"alpha": 0.7, "beta": -0.1}):
        m = make_model([node("MatMul", ["x", "W"], ["h"]), node("HardSigmoid", ["h"], ["y"],
                                                               **attrs)], {"W": Wt}, [1, 4])
        g = check(m, lo=-4, hi=4, n=8)
        assert g.relu_count == 10 and not g.notes          # exact: two ReLUs per value


# ------------------------------------------------------------------------------------------------
# a generator feeding a ReLU classifier, end to end
# ------------------------------------------------------------------------------------------------
def _generator_classifier(path):
    """z (4) -> Gemm, Relu -> Gemm, Tanh -> Gemm, Sigmoid: a 5x5 "image" -> Gemm, Relu -> Gemm:
    3 logits.  Returns a latent point ``z0`` and its label."""
    rng = np.random.default_rng(1)
    nodes, inits, prev = [], [], "z"
    layers = [(4, 16, 2.0, "Relu"), (16, 16, 2.0, "Tanh"), (16, 25, 3.0, "Sigmoid"),
              (25, 20, 2.0, "Relu"), (20, 3, 2.0, None)]
    for k, (n_in, n_out, s, act) in enumerate(layers):
        inits += [numpy_helper.from_array((rng.normal(size=(n_in, n_out)) * s / np.sqrt(n_in))
                                          .astype(np.float32), f"W{k}"),
                  numpy_helper.from_array((rng.normal(size=n_out) * 0.1).astype(np.float32),
                                          f"b{k}")]
        out = "y" if act is None else f"h{k}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{k}", f"b{k}"], [out]))
        if act:
            nodes.append(helper.make_node(act, [out], [f"a{k}"]))
            prev = f"a{k}"
    g = helper.make_graph(nodes, "gen_cls", [helper.make_tensor_value_info("z", TensorProto.FLOAT,
                                                                           [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    z0 = np.float32([0.0473, 1.8019, -1.4234, 1.7946]).astype(np.float64)
    return m, z0, int(np.argmax(_session(m).run(None, {"z": z0[None].astype(np.float32)})[0]))


def _vnnlib(path, z0, eps, label):
    lines = [f"(declare-const X_{i} Real)" for i in range(4)] + \
        [f"(declare-const Y_{j} Real)" for j in range(3)]
    for i, v in enumerate(z0):
        lines += [f"(assert (>= X_{i} {v - eps!r}))", f"(assert (<= X_{i} {v + eps!r}))"]
    others = " ".join(f"(and (>= Y_{o} Y_{label}))" for o in range(3) if o != label)
    path.write_text("\n".join(lines + [f"(assert (or {others}))"]) + "\n")
    return path


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    m, z0, label = _generator_classifier(d / "gen.onnx")
    z0 = [float(v) for v in z0]
    return {"model": d / "gen.onnx", "onnx": m, "z0": np.array(z0), "label": label,
            "safe": _vnnlib(d / "safe.vnnlib", z0, 0.05, label),
            "wide": _vnnlib(d / "wide.vnnlib", z0, 0.5, label),
            "unsafe": _vnnlib(d / "unsafe.vnnlib", z0, 1.5, label)}


def _violates(gen, x, eps):
    """Our own check of a counterexample: inside the box, and the label is not the only top."""
    x = np.asarray(x, np.float32)
    assert np.all(np.abs(x.astype(np.float64) - gen["z0"]) <= eps * (1 + 1e-12))
    y = _session(gen["onnx"]).run(None, {"z": x[None]})[0][0]
    return bool(np.delete(y, gen["label"]).max() >= y[gen["label"]])


def test_generator_classifier_verified_and_falsified_end_to_end(gen):
    for method in ("auto", "bounds", "lp", "milp"):
        c = verifier.verify_vnnlib(gen["model"], gen["safe"], method=method, timeout=20)
        assert c.status == "verified", method
    c = verifier.verify_vnnlib(gen["model"], gen["wide"], timeout=20)     # by input splitting
    assert c.status == "verified" and c.method == "split"
    c = verifier.verify_vnnlib(gen["model"], gen["unsafe"], timeout=20)
    assert c.status == "falsified" and _violates(gen, c.counterexample, 1.5)
    for method in ("bounds", "lp", "milp", "bab"):  # no attack: the MILP's points rarely replay
        c = verifier.verify_vnnlib(gen["model"], gen["unsafe"], method=method, timeout=5)
        assert c.status != "verified", method
        assert c.status != "falsified" or _violates(gen, c.counterexample, 1.5), method


def test_milp_outer_approximation_never_falsifies_without_replay(gen, monkeypatch):
    """The MILP's points on such a net are no network evaluations: its candidate margin is the
    float64 forward margin of its input, and a candidate (here the attack's counterexample, given
    as the MIP start) is falsified only if replay says so."""
    net = verifier.load(gen["model"])
    for name in ("wide", "unsafe"):
        case = verifier.api.read_vnnlib(net, gen[name]).cases[0]
        C, d, _ = case.stacked()
        ladder = Ladder(net, case.box.lower, case.box.upper, C, d)
        b = ladder.run("symbolic")
        r = solve_case(net, b, case, time_limit=10)
        assert r.status != "verified" or name == "wide"
        if r.x_candidate is not None:
            assert r.margin_upper == pytest.approx(case.margin(net.forward(r.x_candidate)))
    x = verifier.verify_vnnlib(net, gen["unsafe"], timeout=20).counterexample
    ex = exact.solve_domain(ladder.eng, ladder.dom, case, 4, 3, 10, start=np.array(x))
    assert ex.status == "falsified" and _violates(gen, ex.x32, 1.5)
    monkeypatch.setattr(exact, "replay", lambda *a, **k: ReplayResult(False, None, None, None,
                                                                     "refused by the test"))
    ex = exact.solve_domain(ladder.eng, ladder.dom, case, 4, 3, 10, start=np.array(x))
    assert ex.status == "unknown" and ex.upper <= 0
    assert verifier.verify_vnnlib(net, gen["unsafe"], method="milp", timeout=5).status != \
        "falsified"


def test_min_distortion_lower_bound_holds_on_samples(gen):
    """The lower bound comes from an outer approximation: sound, maybe loose; no sampled point
    closer than it is unsafe, and a counterexample, if any, replays."""
    net = verifier.load(gen["model"])
    r = verifier.min_distortion(net, gen["z0"], gen["label"], domain=(-3, 3), max_eps=0.6,
                                timeout=2)
    assert 0.1 < r.distortion_lower <= 0.6
    rng = np.random.default_rng(0)
    X = gen["z0"] + rng.uniform(-1, 1, (5000, 4)) * r.distortion_lower
    y = net.forward(X)
    assert np.all(np.delete(y, gen["label"], axis=1).max(axis=1) < y[:, gen["label"]])
    if r.counterexample is not None:
        assert _violates(gen, r.counterexample, 0.6)


def test_certificates_of_such_a_net_check(gen, tmp_path, capsys):
    for prop, code in (("safe", 0), ("unsafe", 1)):
        cert = tmp_path / f"{prop}.json"
        assert main([str(gen["model"]), "--vnnlib", str(gen[prop]), "--certificate",
                     str(cert)]) == code
        assert main(["--check", str(cert), str(gen["model"])]) == 0
        assert "CHECK PASSED" in capsys.readouterr().out
