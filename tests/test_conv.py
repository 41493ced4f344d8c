"""Convolutions as kernels (``ops.conv.ConvMatrix``): the same matrix as the CSR form.

Random conv layers (padding, stride, dilation, groups, 1-D) multiply coefficient blocks exactly as
their expanded matrix does, within the rounding the engine charges for the product; the loader and
the merge pass attach kernels that reproduce their CSR matrices (BatchNorm folded, residual adds);
bounds of a residual conv net with kernels equal those with CSR and hold on sampled points.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from test_onnx_loader import CONV, W, _conv_model, make_model
from verifier.bounds.engine import Engine, domains
from verifier.fp import gamma
from verifier.onnx_loader import convert
from verifier.ops.conv import ConvMatrix, compose


def _random_conv(rng):
    g = int(rng.choice([1, 1, 2, 3]))
    Cg, Mg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    ph, pw = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    H, Wd = int(rng.integers(dh * (kh - 1) + 1, 9)), int(rng.integers(dw * (kw - 1) + 1, 9))
    ph1, pw1 = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    Ho = (H + ph + ph1 - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wd + pw + pw1 - dw * (kw - 1) - 1) // sw + 1
    w = rng.normal(size=(g * Mg, Cg, kh, kw))
    w[rng.random(w.shape) < 0.1] = 0.0                  # zero weights: left out of the CSR
    return ConvMatrix(w, (g * Cg, H, Wd), (Ho, Wo), (sh, sw), (dh, dw), (ph, pw), g)


@pytest.mark.parametrize("seed", range(40))
def test_kernel_products_equal_the_csr_products_within_the_charged_error(seed):
    rng = np.random.default_rng(seed)
    cm = _random_conv(rng)
    A = cm.csr()
    assert cm.matches(A)
    rows, cols = A.shape
    L = rng.normal(size=(2, 3, rows))
    ref = (A.T @ L.reshape(-1, rows).T).T.reshape(2, 3, cols)
    # the engine charges gamma(rows) |L| |A| m for L @ A (here m = 1 per column)
    charge = gamma(rows) * (abs(A).T @ np.abs(L).reshape(-1, rows).T).T.reshape(2, 3, cols)
    assert np.all(np.abs(cm.rows_times(L) - ref) <= 2 * charge + 1e-300)
    x = rng.normal(size=(5, cols))
    assert np.allclose(cm.times(x), (A @ x.T).T, rtol=1e-12, atol=1e-12)
    # a matrix that differs in one entry is not matched
    B = A.tolil()
    r, c = np.argwhere(A.toarray() != 0)[0]
    B[r, c] = B[r, c] * 1.5
    assert not cm.matches(B.tocsr())


@pytest.mark.parametrize("seed", range(10))
def test_folded_scalings_keep_the_kernel(seed):
    rng = np.random.default_rng(100 + seed)
    cm = _random_conv(rng)
    A = cm.csr()
    M, (C, H, Wd) = cm.weight.shape[0], cm.in_shape
    P = cm.out_hw[0] * cm.out_hw[1]
    d_out = np.repeat(rng.normal(size=M), P)              # per output channel (BatchNorm)
    d_in = np.repeat(rng.normal(size=C), H * Wd)           # per input channel (normalisation)
    import scipy.sparse as sp
    Dout, Din = sp.diags_array(d_out).tocsr(), sp.diags_array(d_in).tocsr()
    assert compose(Dout, None, A, cm).matches(Dout @ A)
    assert compose(A, cm, Din, None).matches(A @ Din)
    if P > 1:                                              # varies within a channel: no kernel
        assert compose(sp.diags_array(rng.normal(size=M * P)).tocsr(), None, A, cm) is None


@pytest.mark.parametrize("name", sorted(CONV))
def test_loader_attaches_a_kernel_equal_to_its_csr(name):
    x, k, a = CONV[name]
    g = convert(_conv_model(x, k, **a))
    lin = [n for n in g.nodes if n.affine]
    if name == "3-D":
        assert all(n.convs is None for n in lin)
        return
    (n,) = lin
    assert n.convs is not None and n.convs[0] is not None
    assert (abs(n.convs[0].csr() - n.mats[0]) > 0).nnz == 0


def _resnet_block():
    """Conv+BN -> relu -> conv + 1x1 strided shortcut conv -> relu -> conv + identity -> relu ->
    Gemm: the merged nodes are Conv+BatchNormalization, Conv+Conv+Add and Conv+Add."""
    node = helper.make_node
    nodes = [node("Conv", ["x", "K1"], ["c1"], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n1"]),
             node("Relu", ["n1"], ["r1"]),
             node("Conv", ["r1", "K0"], ["c0"], pads=[1, 1, 1, 1]),
             node("Relu", ["c0"], ["r0"]),
             node("Conv", ["r0", "K2", "B2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             node("Conv", ["r1", "K3"], ["c3"], strides=[2, 2]),
             node("Add", ["c2", "c3"], ["s1"]),
             node("Relu", ["s1"], ["r2"]),
             node("Conv", ["r2", "K5"], ["c5"], pads=[2, 2, 2, 2], dilations=[2, 2]),
             node("Relu", ["c5"], ["r5"]),
             node("Conv", ["r5", "K4", "B4"], ["c4"], pads=[1, 1, 1, 1]),
             node("Add", ["c4", "r2"], ["s2"]),
             node("Relu", ["s2"], ["r3"]),
             node("Flatten", ["r3"], ["f"]),
             node("Gemm", ["f", "G", "gb"], ["y"], transB=1)]
    inits = {"K1": W(4, 2, 3, 3), "g": W(4, seed=2), "b": W(4, seed=3), "m": W(4, seed=4),
             "v": np.abs(W(4, seed=5)) + 0.5, "K2": W(6, 4, 3, 3, seed=6), "B2": W(6, seed=7),
             "K3": W(6, 4, 1, 1, seed=8), "K4": W(6, 6, 3, 3, seed=9), "B4": W(6, seed=10),
             "G": W(3, 6 * 5 * 5, seed=11), "gb": W(3, seed=12), "K0": W(4, 4, 3, 3, seed=13),
             "K5": W(6, 6, 3, 3, seed=14)}
    return make_model(nodes, inits, [1, 2, 10, 10])


def test_residual_conv_net_bounds_equal_with_kernels_and_hold_on_samples():
    g = convert(_resnet_block())                    # merged by the loader's pass
    merged = [n for n in g.nodes if n.affine and n.convs is not None]
    assert {n.origin for n in merged} >= {"Conv+BatchNormalization", "Conv+Conv+Add", "Conv+Add"}
    assert all(c is not None for n in merged if n.origin == "Conv+Conv+Add" for c in n.convs)
    rng = np.random.default_rng(3)
    c = rng.random(g.n_inputs)
    lo, hi = c - 0.05, c + 0.05
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    doms = {}
    for s in ("always", "never"):
        eng = Engine(g, structured=s)
        dom = eng.bound(domains(g, lo, hi))
        doms[s] = (dom, eng.margins(dom, C, np.zeros(2), upper=True))
    (a, ma), (b, mb) = doms["always"], doms["never"]
    for i in range(len(g.nodes)):
        assert np.allclose(a.lower[i], b.lower[i], rtol=1e-9, atol=1e-9)
        assert np.allclose(a.upper[i], b.upper[i], rtol=1e-9, atol=1e-9)
    X = lo + (hi - lo) * rng.random((500, lo.size))
    X = np.vstack([X, np.where(rng.random((100, lo.size)) < 0.5, lo, hi)])
    for i, v in enumerate(g.forward_all(X)):
        assert np.all(v >= a.lower[i][0]) and np.all(v <= a.upper[i][0]), i
    y = g.forward_all(X)[g.output] @ C.T
    assert np.all(y >= ma[0][0]) and np.all(y <= ma[1][0])


def test_a_milp_that_would_be_refused_leaves_its_time_to_branch_and_bound():
    """Weights below 1e-10 (as in oval21's deep and wide nets) make the MILP unusable: the
    pipeline knows before branch and bound and skips it, with the reason in stats."""
    from verifier import Options, verify
    from verifier.bounds import Ladder
    from verifier.exact import milp_refusal
    model = _resnet_block()
    g_ok = convert(model)
    for t in model.graph.initializer:
        if t.name == "G":
            from onnx import numpy_helper
            G = numpy_helper.to_array(t).copy()
            G[0, 0] = 1e-13
            t.CopyFrom(numpy_helper.from_array(G, "G"))
    g = convert(model)
    x = np.full(g.n_inputs, 0.5)
    label = int(np.argmax(g.forward(x)))
    from verifier.api import robustness
    case = robustness(g, x, label, 0.05).cases[0]
    C, d, _ = case.stacked()
    reasons = []
    for net in (g_ok, g):
        lad = Ladder(net, case.box.lower, case.box.upper, C, d)
        lad.run("symbolic")
        reasons.append(milp_refusal(lad.eng, lad.dom, case))
    assert reasons[0] is None and "below 1e-10" in reasons[1]
    from verifier.config import Tuning
    cert = verify(g, x, label=label, eps=0.05,
                  options=Options(timeout=6, tuning=Tuning(milp_relus=10_000)))
    entry = cert.stats["per_case"][0]
    assert cert.status == "timeout" and "bab" in entry and "milp" not in entry
    assert "below 1e-10" in entry["milp_skipped"]


def test_a_milp_over_the_size_rule_leaves_its_time_to_branch_and_bound():
    """More unstable ReLUs after the bounds than ``Tuning.milp_relus``: auto gives the final
    MILP no time (cifar10_resnet: such MILPs never finish), says why, and branch and bound runs."""
    from verifier import Options, verify
    from verifier.config import Tuning
    g = convert(_resnet_block())
    x = np.full(g.n_inputs, 0.5)
    label = int(np.argmax(g.forward(x)))
    for relus, skipped in ((0, True), (10_000, False)):
        cert = verify(g, x, label=label, eps=0.05,
                      options=Options(timeout=6, tuning=Tuning(milp_relus=relus)))
        entry = cert.stats["per_case"][0]
        assert "bab" in entry
        if skipped:
            assert "unstable ReLUs" in entry["milp_skipped"] and "milp" not in entry
        else:
            assert "milp_skipped" not in entry
