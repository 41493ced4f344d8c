"""A model ending in Softmax is verified on its logits: only properties comparing two outputs of
one softmax are accepted (they mean the same on both); everything else is refused with exit 2.
Answers are checked against the model itself in onnxruntime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier import api
from verifier.cli import main
from verifier.replay import run_model
from verifier.spec import Box, Case, Conjunction, Property, SpecError, check_order_only

node = helper.make_node


def _vnnlib(path: Path, n_in: int, n_out: int, box, *asserts) -> Path:
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
    text += "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))
    text += "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n"
                    for i, (lo, hi) in enumerate(box))
    path.write_text(text + "".join(f"(assert {a})\n" for a in asserts))
    return path


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """3 inputs -> 8 ReLUs -> 3 logits -> Softmax."""
    rng = np.random.default_rng(9)      # label 1 at the centre, 0 and 2 elsewhere
    W1, b1 = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    W2 = rng.normal(size=(8, 3)).astype(np.float32)
    g = helper.make_graph(
        [node("Gemm", ["x", "W1", "b1"], ["h"]), node("Relu", ["h"], ["r"]),
         node("Gemm", ["r", "W2"], ["l"]), node("Softmax", ["l"], ["y"], name="prob")], "sm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (b1, "b1"), (W2, "W2"))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path_factory.mktemp("sm") / "softmax.onnx"
    onnx.save(m, path)
    return path


def _prop(C, d, groups_n=3) -> Property:
    return Property((Case(Box(np.zeros(3), np.ones(3)),
                          (Conjunction(np.atleast_2d(C), np.atleast_1d(d)),)),), 3, groups_n)


def test_check_order_only_accepts_exactly_the_pairwise_comparisons():
    one, two = np.zeros(3), np.array([0, 0, 1])
    for C, d in (([1, -1, 0], 0), ([0, -2.5, 2.5], 0), ([0, 0, 0], 1), ([0, 0, 0], -1),
                 ([[1, -1, 0], [1, 0, -1]], [0, 0])):
        check_order_only(_prop(C, d), one, "the Softmax")
    for C, d, why in (([1, -1, 0], 0.1, "threshold on a difference"),
                      ([1, 0, 0], 0.5, "threshold"), ([1, -2, 0], 0, "unequal weights"),
                      ([1, 1, -2], 0, "three outputs"), ([1, -1, 0], -1e-300, "tiny threshold")):
        with pytest.raises(SpecError, match="compare"):
            check_order_only(_prop(C, d), one, "the Softmax")
    check_order_only(_prop([1, -1, 0], 0), two, "the Softmax")           # same group
    with pytest.raises(SpecError, match="Y_1"):
        check_order_only(_prop([0, 1, -1], 0), two, "the Softmax")       # across groups


def test_robustness_is_answered_on_the_logits_and_replayed_on_the_model(net):
    g = api.load(net)
    assert g.output_groups is not None
    x = np.full(3, 0.5)
    logits = g.forward(x)
    label = int(np.argmax(logits))
    assert int(np.argmax(run_model(net, x.astype(np.float32)))) == label
    small = api.verify(g, x, label, 1e-4, timeout=20)
    assert small.status == "verified"
    # every output of the model keeps label on top at the ball's corners
    for corner in np.array(np.meshgrid(*[[-1e-4, 1e-4]] * 3)).reshape(3, -1).T:
        y = run_model(net, (x + corner).astype(np.float32))
        assert np.argmax(y) == label
    big = api.verify(g, x, label, 0.5, timeout=20)        # a third of the box has label 0
    assert big.status == "falsified"
    y = run_model(net, np.array(big.counterexample, np.float32))
    assert y[label] <= np.max(np.delete(y, label))
    assert np.allclose(big.output, y) and np.isclose(sum(big.output), 1)   # softmax values


def test_a_threshold_property_on_a_softmax_model_is_refused(capsys, net, tmp_path):
    box = [(0, 1)] * 3
    ok = _vnnlib(tmp_path / "ok.vnnlib", 3, 3, box, "(or (>= Y_1 Y_0) (>= Y_2 Y_0))")
    assert main([str(net), "--vnnlib", str(ok), "--timeout", "10"]) in (0, 1, 3)
    capsys.readouterr()
    for bad in ("(>= Y_0 0.5)", "(<= Y_0 0.9)", "(or (>= Y_1 Y_0) (>= Y_2 0.1))"):
        p = _vnnlib(tmp_path / "bad.vnnlib", 3, 3, box, bad)
        assert main([str(net), "--vnnlib", str(p)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and "Softmax" in err, err
    with pytest.raises(SpecError, match="Softmax"):
        api.verify_vnnlib(net, p)
