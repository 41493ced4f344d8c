"""The `verify` command as a user meets it: answers, exit codes, JSON, and bad input."""
import json
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
