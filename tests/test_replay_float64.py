"""Counterexamples in boxes without a float32 point (issue 13, item 3): VNN-LIB files that pin
inputs to decimals float32 cannot hold (VNN-COMP collins_rul_cnn: lower = upper = 0.1) are
replayed on a float64 copy of the model in onnxruntime.

The copy is checked against the loader's float64 graph on every op the loader reads (the loader
tests' model zoo, plus the shipped and benchmark models); then whole runs through
``verify_vnnlib`` with every method, the VNN-COMP results file, certificates and ``--check``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from test_onnx_loader import CASES            # one tiny model per op the loader reads
from verifier import api, onnx_float64
from verifier.certificate import _digest
from verifier.cli import main
from verifier.onnx_float64 import Float64Unsupported, float64_copy
from verifier.onnx_loader import convert, read_model_bytes
from verifier.replay import ort_session, replay, run_model

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("auto", "bounds", "lp", "milp", "attack")
node = helper.make_node


def _double_run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    sess = onnx_float64._session(float64_copy(model_bytes))
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    return np.asarray(sess.run(None, {inp.name: x.reshape(shape)})[0], np.float64).reshape(-1)


def _agrees_with_the_graph(model: onnx.ModelProto, lo=0.0, hi=1.0, box=None, n=3, **_):
    g = convert(model)
    rng = np.random.default_rng(0)
    for _ in range(n):
        x = rng.uniform(lo, hi, g.n_inputs) if box is None else rng.uniform(box[0], box[1])
        ref = api.model_output(g, g.forward(x))
        got = _double_run(model.SerializeToString(), x)
        # both are float64 executions of the same weights: they differ by double rounding only
        assert np.abs(got - ref).max() <= 1e-12 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("name", list(CASES))
def test_float64_copy_of_every_loader_op(name):
    made = CASES[name]()
    model, kw = made if isinstance(made, tuple) else (made, {})
    _agrees_with_the_graph(model, **kw)


@pytest.mark.parametrize("path", ["benchmarks/mipverify_wk17a/onnx/wk17a_lpd_cnn.onnx",
                                  "benchmarks/vnncomp2022/oval21/onnx/cifar_base_kw.onnx",
                                  "benchmarks/vnncomp2022/acasxu/onnx/"
                                  "ACASXU_run2a_1_1_batch_2000.onnx",
                                  "models/digits_cnn_maxpool.onnx", "models/digits_mlp_norm.onnx"])
def test_float64_copy_of_real_models(path):
    model = onnx.load_from_string(read_model_bytes(ROOT / path))
    _agrees_with_the_graph(model, n=2)


def test_inexact_basis_responses_and_oversized_rewrites_are_refused(monkeypatch):
    model = CASES["Conv stride"]()
    real = onnx_float64._responses

    def perturbed(*a):
        rows, cols, vals, n_out = real(*a)
        return rows, cols, vals * (1 + 2.0**-30), n_out      # no longer the weights themselves
    monkeypatch.setattr(onnx_float64, "_responses", perturbed)
    with pytest.raises(Float64Unsupported, match="not its weights"):
        float64_copy(model.SerializeToString())
    monkeypatch.setattr(onnx_float64, "_responses", real)
    monkeypatch.setattr(onnx_float64, "MAX_ENTRIES", 10)
    with pytest.raises(Float64Unsupported, match="too large"):
        float64_copy(model.SerializeToString())


# --------------------------------------------------------------------------------------------
# a collins_rul_cnn-like model: most inputs pinned to 0.1
# --------------------------------------------------------------------------------------------
def _cnn(path: Path) -> Path:
    """(1, 1, 4, 4) -> Conv 2x2 (2 channels, pads) -> Relu -> AveragePool 2 -> Gemm -> 2."""
    rng = np.random.default_rng(5)
    g = helper.make_graph(
        [node("Conv", ["x", "K", "B"], ["c"], pads=[1, 1, 0, 0]), node("Relu", ["c"], ["r"]),
         node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         node("Flatten", ["p"], ["f"]), node("Gemm", ["f", "W", "b"], ["y"])], "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
            ("K", rng.normal(size=(2, 1, 2, 2))), ("B", rng.normal(size=2)),
            ("W", rng.normal(size=(8, 2)) * 4), ("b", np.array([0.0, 0.0])))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _pinned_vnnlib(path: Path, n_in: int, free: dict, unsafe: str, n_out: int = 2) -> Path:
    """Every input pinned to 0.1 (``(>= X_i 0.1) (<= X_i 0.1)``) except ``free`` {i: (lo, hi)}."""
    text = "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in))
    text += "".join(f"(declare-const Y_{j} Real)\n" for j in range(n_out))
    for i in range(n_in):
        lo, hi = free.get(i, ("0.1", "0.1"))
        text += f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n"
    path.write_text(text + f"(assert {unsafe})\n")
    return path


@pytest.fixture(scope="module")
def pinned(tmp_path_factory):
    d = tmp_path_factory.mktemp("pinned")
    net = _cnn(d / "cnn.onnx")
    g = api.load(net)
    # which output wins at the centre of the free coordinates, in float64: its opposite is safe
    x = np.full(16, 0.1)
    x[14:] = 0.5
    y = g.forward(x)
    worse, better = (0, 1) if y[0] < y[1] else (1, 0)
    free = {14: ("0", "1"), 15: ("0", "1")}
    sat = _pinned_vnnlib(d / "sat.vnnlib", 16, free, f"(>= Y_{better} Y_{worse})")
    return net, g, sat, d


@pytest.mark.parametrize("method", METHODS)
def test_pinned_inputs_are_falsified_on_the_float64_copy(pinned, method):
    net, g, sat, _ = pinned
    prop = api.read_vnnlib(g, sat)
    assert all(b.lower[i] == b.upper[i] == 0.1 for c in prop.cases for b in [c.box]
               for i in range(14))
    cert = api.verify_vnnlib(g, sat, method=method, timeout=20)
    assert cert.status in (("falsified", "unknown") if method in ("bounds", "lp")
                           else ("falsified",)), cert.summary_line()
    if cert.status != "falsified":
        return
    assert cert.stats["replay_precision"] == "float64"
    assert "float64 copy" in cert.summary_line()
    x = np.array(cert.counterexample)
    assert np.all(x[:14] == 0.1) and np.all((0 <= x[14:]) & (x[14:] <= 1))    # inside, exactly
    y = run_model(net, x, "float64")
    assert y.tolist() == cert.output                                  # the recorded output
    assert prop.cases[0].margin(y) <= 0


def test_results_file_certificate_and_check_keep_the_float64_point(pinned, capsys):
    net, _, sat, d = pinned
    res, cert = d / "res.txt", d / "cert.json"
    code = main([str(net), "--vnnlib", str(sat), "--results-file", str(res),
                 "--certificate", str(cert), "--json"])
    obj = json.loads(capsys.readouterr().out)
    assert code == 1 and obj["stats"]["replay_precision"] == "float64"
    lines = res.read_text().splitlines()
    assert lines[0] == "sat" and lines[1] == "((X_0 0.1)"
    xs = [float(line.split()[1].rstrip(")")) for line in lines[1:] if "X_" in line]
    assert xs == obj["counterexample"]                                 # full precision
    code = main(["--check", str(cert), str(net)])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("CHECK PASSED") and "float64" in out
    assert "no float32 input" in out

    def doctored(edit):
        rec = json.loads(cert.read_text())
        edit(rec["certificate"])
        rec["digest"] = _digest(rec)
        f = d / "doctored.json"
        f.write_text(json.dumps(rec))
        return main(["--check", str(f), str(net)]), capsys.readouterr()

    # recorded as a float32 replay: the point is not a float32 input
    code, (out, _) = doctored(lambda c: c["stats"].update(replay_precision="float32"))
    assert code == 1 and "not a float32 input" in out
    # a pinned coordinate one ulp off: outside the box
    code, (out, _) = doctored(lambda c: c["counterexample"].__setitem__(
        0, float(np.nextafter(0.1, 1))))
    assert code == 1 and "does not replay" in out
    code, (_, err) = doctored(lambda c: c["stats"].update(replay_precision="float16"))
    assert code == 2 and "replay precision" in err


def test_a_float64_point_where_float32_points_exist_does_not_check(pinned, capsys, tmp_path):
    """The same counterexample under a property whose box is not pinned: replay rounds it to a
    float32 input, so a certificate recording a float64 replay there does not hold."""
    net, g, sat, d = pinned
    cert = d / "cert.json"
    assert main([str(net), "--vnnlib", str(sat), "--certificate", str(cert)]) == 1
    capsys.readouterr()
    rec = json.loads(cert.read_text())
    wide = _pinned_vnnlib(tmp_path / "wide.vnnlib", 16, {i: ("0", "1") for i in range(16)},
                          sat.read_text().strip().splitlines()[-1][len("(assert "):-1])
    from verifier.certificate import file_entry
    rec["property"].update(file_entry(wide))
    rec["digest"] = _digest(rec)
    f = tmp_path / "c.json"
    f.write_text(json.dumps(rec))
    code = main(["--check", str(f), str(net)])
    out = capsys.readouterr().out
    assert code == 1 and "replays in float32" in out


@pytest.mark.parametrize("method", METHODS)
def test_never_falsified_where_only_float32_rounding_would_violate(tmp_path, method):
    """y0 = x0 - float32(0.1), y1 = 0, with x0 pinned to 0.1: in float64 y0 = -1.49e-9 < 0, so
    "Y_0 >= Y_1" is never met; rounding the pinned input to float32 (outside the box) would make
    y0 = 0, a tie that counts as a violation."""
    g = helper.make_graph(
        [node("Gemm", ["x", "W", "b"], ["y"])], "tie",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.array([[1, 0], [0, 0]], np.float32), "W"),
         numpy_helper.from_array(np.array([-0.1, 0], np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    net = tmp_path / "tie.onnx"
    onnx.save(m, net)
    prop = _pinned_vnnlib(tmp_path / "p.vnnlib", 2, {1: ("0", "1")}, "(>= Y_0 Y_1)")
    assert run_model(net, np.float32([0.1, 0.5]))[0] == 0.0              # the float32 tie
    assert run_model(net, np.array([0.1, 0.5]), "float64")[0] < 0        # safe in float64
    cert = api.verify_vnnlib(net, prop, method=method, timeout=10)
    assert cert.status != "falsified", cert.summary_line()


def test_a_model_without_a_float64_copy_stays_unknown(pinned, monkeypatch):
    net, g, sat, _ = pinned
    monkeypatch.setattr(onnx_float64, "MAX_ENTRIES", 1)
    from verifier import replay as replay_module
    monkeypatch.setattr(replay_module, "_cache", type(replay_module._cache)())
    prop = api.read_vnnlib(g, sat)
    x = np.full(16, 0.1)
    x[14:] = 0.5
    r = replay(net, x, prop)
    assert not r.ok and "float64 copy of the model failed" in r.reason and "too large" in r.reason
    with pytest.raises(Float64Unsupported):
        ort_session(net, "float64")
    cert = api.verify_vnnlib(g, sat, method="attack", timeout=5)
    assert cert.status == "unknown"
