"""The `verify` command as a user meets it: answers, exit codes, JSON, and bad input."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from verifier.certificate import Certificate
from verifier.cli import main
from verifier.replay import run_model

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "digits_mlp.onnx")
SAMPLE = str(ROOT / "models" / "digits_sample0.npy")     # label 1
ACAS = ROOT / "benchmarks" / "vnncomp2022" / "acasxu"


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_lists_layers_and_agrees_with_onnxruntime(capsys):
    code, out, err = run(capsys, MLP)
    assert code == 0 and err == ""
    assert "64 ReLUs" in out and "forward check" in out
    worst = float(out.split("max relative difference ")[1].split()[0])
    assert worst < 1e-5


def test_verified_small_eps(capsys):
    code, out, _ = run(capsys, MLP, "--eps", 0.005, "--input", SAMPLE, "--label", 1)
    assert code == 0 and out.startswith("VERIFIED")


def test_falsified_large_eps_json_and_files(capsys, tmp_path):
    cert_file, res_file = tmp_path / "c.json", tmp_path / "r.txt"
    code, out, _ = run(capsys, MLP, "--eps", 0.05, "--input", SAMPLE, "--label", 1, "--json",
                       "--certificate", cert_file, "--results-file", res_file)
    assert code == 1
    obj = json.loads(out)
    assert obj["status"] == "falsified" and set(obj) >= {
        "status", "time_s", "margin_lower", "margin_upper", "counterexample", "output", "method",
        "stats"}
    x = np.array(obj["counterexample"], np.float32)
    x0 = np.load(SAMPLE).reshape(-1)
    assert np.all(np.abs(x - x0) <= 0.05 + 1e-7) and x.min() >= 0 and x.max() <= 1
    y = run_model(MLP, x)
    assert np.argmax(y) != 1 or y.max() == y[1] and np.sum(y == y.max()) > 1
    assert Certificate.from_json(cert_file.read_text()).status == "falsified"
    lines = res_file.read_text().splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ")


def test_vnnlib_acasxu_agrees_with_expected(capsys, tmp_path):
    res = tmp_path / "r.txt"
    code, out, _ = run(capsys, ACAS / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx", "--vnnlib",
                       ACAS / "vnnlib" / "prop_1.vnnlib", "--timeout", 60, "--results-file", res)
    assert code == 0, out                         # expected.csv: unsat
    assert res.read_text().strip() == "unsat"


def test_dataset_table_and_certified_accuracy(capsys):
    code, out, _ = run(capsys, MLP, "--eps", 0.005, "--dataset",
                       ROOT / "models" / "digits_samples.npz", "--timeout", 10)
    assert code == 0
    assert "certified robust accuracy" in out.splitlines()[-1]
    assert len([ln for ln in out.splitlines() if "VERIFIED" in ln or "FALSIFIED" in ln
                or "UNKNOWN" in ln]) == 20


@pytest.mark.parametrize("args, needle", [
    (["missing.onnx"], "not found"),
    ([str(ROOT / "models")], "directory"),
    ([MLP, "--eps", "-0.1", "--input", SAMPLE, "--label", "1"], "eps"),
    ([MLP, "--eps", "nan", "--input", SAMPLE, "--label", "1"], "eps"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "12"], "label"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE], "--label"),
    ([MLP, "--eps", "0.1", "--input", "nope.npy", "--label", "1"], "not found"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--method", "magic"], "method"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--timeout", "0"], "timeout"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--domain", "1", "0"], "domain"),
    ([MLP, "--vnnlib", str(ACAS / "vnnlib" / "prop_1.vnnlib")], "inputs"),
    ([MLP, "--frobnicate"], "unrecognized"),
])
def test_bad_input_is_one_line_exit_2(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_wrong_input_shape_and_dtype(capsys, tmp_path):
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros(10))
    code, _, err = run(capsys, MLP, "--eps", 0.1, "--input", bad, "--label", 1)
    assert code == 2 and "64" in err
    np.save(bad, np.array(["a"] * 64))
    code, _, err = run(capsys, MLP, "--eps", 0.1, "--input", bad, "--label", 1)
    assert code == 2 and "numeric" in err
    bad.write_bytes(b"not a numpy file")
    code, _, err = run(capsys, MLP, "--eps", 0.1, "--input", bad, "--label", 1)
    assert code == 2 and len(err.splitlines()) == 1


def test_corrupt_model_exit_2(capsys, tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(Path(MLP).read_bytes()[:300])
    code, _, err = run(capsys, bad)
    assert code == 2 and len(err.splitlines()) == 1 and "m.onnx" in err


# --------------------------------------------------------------------------------------------
# human output
# --------------------------------------------------------------------------------------------
def test_human_output_summarises_each_phase(capsys):
    code, out, _ = run(capsys, MLP, "--eps", 0.0119, "--input", SAMPLE, "--label", 1,
                       "--method", "milp", "--arithmetic", "real")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("VERIFIED") and "(milp," in lines[0]
    assert any(ln.startswith("  bounds") and "interval" in ln and "symbolic" in ln for ln in lines)
    milp = [ln for ln in lines if ln.startswith("  milp")]
    assert milp and "binaries" in milp[0] and "nodes" in milp[0] and "rows" in milp[0]
    assert "{" not in out                                       # no dict dumps
    code, out, _ = run(capsys, MLP, "--eps", 0.01, "--input", SAMPLE, "--label", 1)
    assert code == 0 and any(ln.startswith("  attack") for ln in out.splitlines())


# --------------------------------------------------------------------------------------------
# --min-distortion
# --------------------------------------------------------------------------------------------
def test_min_distortion_json_counterexample_replays(capsys):
    code, out, err = run(capsys, MLP, "--input", SAMPLE, "--label", 1, "--min-distortion",
                         "--json", "--timeout", 30)
    assert code == 0, err
    obj = json.loads(out)
    lo, hi = obj["distortion_lower"], obj["distortion_upper"]
    assert obj["status"] == "found" and obj["norm"] == "inf" and 0 < lo <= hi
    assert hi - lo <= 1e-3
    x = np.array(obj["counterexample"], np.float32)
    x0 = np.load(SAMPLE).astype(np.float64).reshape(-1)
    assert x.min() >= 0 and x.max() <= 1
    assert np.abs(x.astype(np.float64) - x0).max() <= hi
    y = run_model(MLP, x)
    assert np.argmax(y) != 1 or np.sum(y == y[1]) > 1            # label 1 lost (ties count)
    assert obj["output"] == [float(v) for v in y]
    # the --eps answers on either side agree with the bracket
    assert main([MLP, "--eps", str(lo * 0.99), "--input", SAMPLE, "--label", "1"]) == 0
    assert main([MLP, "--eps", str(hi * 1.01), "--input", SAMPLE, "--label", "1"]) == 1
    capsys.readouterr()


def test_min_distortion_human_line_and_norms(capsys):
    code, out, _ = run(capsys, MLP, "--input", SAMPLE, "--label", 1, "--min-distortion")
    assert code == 0
    assert re.match(r"MIN DISTORTION  L∞ in \[\S+, \S+\]  counterexample replayed  \(\w+, \S+ s\)$",
                    out.splitlines()[0])
    code, out, _ = run(capsys, MLP, "--input", SAMPLE, "--label", 1, "--min-distortion",
                       "--norm", "1", "--eps", 0.15, "--json", "--timeout", 120)
    obj = json.loads(out)
    assert code == 0 and obj["norm"] == "1" and obj["status"] == "found"
    x = np.array(obj["counterexample"], np.float64)
    assert np.abs(x - np.load(SAMPLE).reshape(-1)).sum() <= obj["distortion_upper"]
    code, out, err = run(capsys, MLP, "--input", SAMPLE, "--label", 1, "--min-distortion",
                         "--norm", "2")
    assert code == 2 and out == "" and "quadratic" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------------
# --export: the written MILP, solved by HiGHS from the file, has the sign of the true answer
# --------------------------------------------------------------------------------------------
def _solve_file(path) -> float:
    import highspy
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    assert h.readModel(str(path)) == highspy.HighsStatus.kOk
    h.setOptionValue("mip_rel_gap", 0.0)
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return h.getInfo().objective_function_value


@pytest.mark.parametrize("eps, answer", [(0.0118, 0), (0.012, 1)])   # min distortion ~0.01191
@pytest.mark.parametrize("suffix", [".mps", ".lp"])
def test_export_milp_optimum_agrees_with_the_answer(capsys, tmp_path, eps, answer, suffix):
    path = tmp_path / f"m{suffix}"
    code, out, _ = run(capsys, MLP, "--eps", eps, "--input", SAMPLE, "--label", 1,
                       "--export", path)
    assert code == answer and path.stat().st_size > 0
    assert any(ln.startswith("  export") for ln in out.splitlines())
    opt = _solve_file(path)
    assert (opt > 0) if answer == 0 else (opt <= 0)


# --------------------------------------------------------------------------------------------
# certificates: --certificate and --check
# --------------------------------------------------------------------------------------------
def test_certificate_check_exit_codes(capsys, tmp_path):
    cert = tmp_path / "c.json"
    assert run(capsys, MLP, "--eps", 0.05, "--input", SAMPLE, "--label", 1,
               "--certificate", cert)[0] == 1
    code, out, _ = run(capsys, "--check", cert, MLP)
    assert code == 0 and out.startswith("CHECK PASSED")
    code, out, _ = run(capsys, "--check", cert, MLP, "--json")
    assert code == 0 and json.loads(out)["check"] == "passed"
    # tampered (status changed, digest not updated): bad input
    rec = json.loads(cert.read_text())
    rec["certificate"]["status"] = "verified"
    (tmp_path / "t.json").write_text(json.dumps(rec))
    code, out, err = run(capsys, "--check", tmp_path / "t.json", MLP)
    assert code == 2 and out == "" and "modified" in err and len(err.splitlines()) == 1
    # a consistent certificate whose counterexample does not hold: the check fails
    from verifier.certificate import _digest
    rec = json.loads(cert.read_text())
    rec["certificate"]["counterexample"] = np.load(SAMPLE).astype(np.float64).ravel().tolist()
    rec["digest"] = _digest(rec)
    (tmp_path / "f.json").write_text(json.dumps(rec))
    code, out, _ = run(capsys, "--check", tmp_path / "f.json", MLP)
    assert code == 1 and out.startswith("CHECK FAILED")
    # another model, a truncated file, no model
    for args, needle in (([cert, ROOT / "models" / "digits_cnn.onnx"], "not the model"),
                         ([tmp_path / "missing.json", MLP], "not found"),
                         ([cert], "needs the model")):
        code, out, err = run(capsys, "--check", *args)
        assert code == 2 and needle in err and len(err.splitlines()) == 1
    (tmp_path / "cut.json").write_text(cert.read_text()[:-40])
    code, _, err = run(capsys, "--check", tmp_path / "cut.json", MLP)
    assert code == 2 and "JSON" in err


# --------------------------------------------------------------------------------------------
# VNN-COMP results file, re-read independently and replayed
# --------------------------------------------------------------------------------------------
def test_results_file_sat_replays_in_onnxruntime(capsys, tmp_path):
    from verifier.vnnlib import parse_vnnlib
    mnist = ROOT / "benchmarks" / "vnncomp2022" / "mnist_fc"
    net, prop_file = mnist / "onnx" / "mnist-net_256x2.onnx", mnist / "vnnlib" / "prop_1_0.03.vnnlib"
    res = tmp_path / "out.txt"
    code, _, _ = run(capsys, net, "--vnnlib", prop_file, "--results-file", res, "--timeout", 60)
    assert code == 1                                           # expected.csv: sat
    text = res.read_text()
    assert text.splitlines()[0] == "sat"
    num = r"([-+0-9.eE]+|[-+]?inf|nan)"
    xs = dict(re.findall(r"\(X_(\d+)\s+" + num + r"\)", text))
    ys = dict(re.findall(r"\(Y_(\d+)\s+" + num + r"\)", text))
    assert sorted(map(int, xs)) == list(range(784)) and sorted(map(int, ys)) == list(range(10))
    x = np.array([float(xs[str(i)]) for i in range(784)])
    y_file = np.array([float(ys[str(j)]) for j in range(10)])
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)   # float32 values, exact
    y = run_model(net, x.astype(np.float32))
    assert np.array_equal(y.astype(np.float64), y_file)
    prop = parse_vnnlib(prop_file)
    assert prop.violated_by(x, y)                             # inside the box, output unsafe


# --------------------------------------------------------------------------------------------
# bad input, as a new user meets it
# --------------------------------------------------------------------------------------------
MNIST_PROP = ROOT / "benchmarks" / "vnncomp2022" / "mnist_fc" / "vnnlib" / "prop_1_0.03.vnnlib"


@pytest.mark.parametrize("args, needle", [
    ([MLP, "--eps", "0.1", "--input", str(ROOT / "models"), "--label", "1"], "directory"),
    ([MLP, "--vnnlib", str(ROOT / "models")], "directory"),
    ([MLP, "--vnnlib", "nope.vnnlib"], "not found"),
    ([MLP, "--eps", "0.1", "--dataset", str(ROOT / "models")], "directory"),
    ([MLP, "--eps", "0.1", "--dataset", "nope.npz"], "not found"),
    ([MLP, "--vnnlib", str(MNIST_PROP)], "784 inputs"),
    ([MLP, "--eps", "inf", "--input", SAMPLE, "--label", "1"], "eps"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "-1"], "label"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1.5"], "--label"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--target", "1"], "target"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--domain", "0", "nan"], "domain"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--timeout", "nan"], "timeout"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--threads", "0"], "threads"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--certificate",
      "/nonexistent/c.json"], "does not exist"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--certificate",
      str(ROOT / "models")], "directory"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--export", "m.txt"], ".mps"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--norm", "1"], "--min-distortion"),
    ([MLP, "--eps", "0.1", "--input", SAMPLE, "--label", "1", "--jobs", "2"], "--instances"),
    ([MLP, "--eps", "0.1"], "property"),
    ([MLP, "--input", SAMPLE, "--label", "1"], "--eps"),
    ([MLP, "--input", SAMPLE, "--min-distortion"], "--label"),
    ([MLP, "--vnnlib", str(MNIST_PROP), "--min-distortion"], "--input"),
    ([MLP, "--vnnlib", str(MNIST_PROP), "--eps", "0.1"], "does not apply"),
    ([MLP, "--eps", "0.1", "--dataset", str(ROOT / "models" / "digits_samples.npz"),
      "--certificate", "c.json"], "single property"),
    ([SAMPLE], "not a valid ONNX"),
    ([], "model file is required"),
    (["--check", str(SAMPLE), MLP], "JSON"),
])
def test_more_bad_input_is_one_line_exit_2(capsys, args, needle):
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "", (out, err)
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("make, needle", [
    (lambda: np.array([object()] * 64, dtype=object), "Python objects"),
    (lambda: np.array(["0.5"] * 64), "numeric"),
    (lambda: np.zeros(64, complex), "numeric"),
    (lambda: np.zeros(64, bool), "booleans"),
    (lambda: np.zeros((8, 9)), "72 values"),
    (lambda: np.zeros(0), "empty"),
    (lambda: np.full(64, np.nan), "NaN"),
    (lambda: np.full(64, 255, np.uint8), "outside the domain"),
])
def test_bad_npy_inputs(capsys, tmp_path, make, needle):
    path = tmp_path / "x.npy"
    np.save(path, make(), allow_pickle=True)
    code, out, err = run(capsys, MLP, "--eps", 0.1, "--input", path, "--label", 1)
    assert code == 2 and out == "" and needle in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("arrays, needle", [
    ({"x": np.zeros((5, 64)), "y": np.zeros(4, int)}, "5 samples but y has 4"),
    ({"x": np.zeros((5, 10)), "y": np.zeros(5, int)}, "10 values"),
    ({"x": np.zeros((5, 64)), "y": np.array([0, 1, 2.5, 3, 4])}, "integer labels"),
    ({"x": np.zeros((5, 64)), "y": np.array([0, 1, 2, 3, 10])}, "0..9"),
    ({"a": np.zeros((5, 64)), "y": np.zeros(5, int)}, "needs x and y"),
    ({"x": np.full((2, 64), 3.0), "y": np.zeros(2, int)}, "outside the domain"),
])
def test_bad_datasets(capsys, tmp_path, arrays, needle):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    code, out, err = run(capsys, MLP, "--eps", 0.1, "--dataset", path)
    assert code == 2 and out == "" and needle in err and len(err.splitlines()) == 1, err


def test_hostile_files(capsys, tmp_path):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data
    # external data that points outside the model's folder
    m = onnx.load(MLP)
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="w.bin",
                                   size_threshold=0)
    (tmp_path / "sub").mkdir()
    onnx.save_model(m, tmp_path / "sub" / "ok.onnx")
    (tmp_path / "w.bin").write_bytes((tmp_path / "sub" / "w.bin").read_bytes())
    evil = onnx.load(tmp_path / "sub" / "ok.onnx", load_external_data=False)
    for t in evil.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../w.bin"
    onnx.save_model(evil, tmp_path / "sub" / "evil.onnx")
    assert run(capsys, tmp_path / "sub" / "ok.onnx", "--eps", 0.01, "--input", SAMPLE,
               "--label", 1)[0] == 0                            # the honest copy works
    code, out, err = run(capsys, tmp_path / "sub" / "evil.onnx", "--eps", 0.01, "--input",
                         SAMPLE, "--label", 1)
    assert code == 2 and out == "" and "outside" in err and len(err.splitlines()) == 1
    # VNN-LIB nested 100,000 levels deep, and one declaring 10^8 variables
    deep = tmp_path / "deep.vnnlib"
    deep.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert "
                    + "(and " * 100_000 + "(<= X_0 1.0)" + ")" * 100_000 + ")\n")
    many = tmp_path / "many.vnnlib"
    many.write_text("(declare-const X_99999999 Real)\n(declare-const Y_0 Real)\n"
                    "(assert (<= X_99999999 1.0))\n")
    for f in (deep, many):
        code, out, err = run(capsys, MLP, "--vnnlib", f)
        assert code == 2 and out == "" and len(err.splitlines()) == 1, err
        assert "Traceback" not in err and "internal error" not in err
