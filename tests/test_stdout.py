"""Stdout is a contract: every ``--json`` mode, run as a real subprocess with the installed
dependencies, prints nothing but JSON lines (no solver banner, no library warning)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "digits_mlp.onnx")
SAMPLE = str(ROOT / "models" / "digits_sample0.npy")     # label 1; min L-inf distortion ~0.01191
DATASET = str(ROOT / "models" / "digits_samples.npz")
ONE = [MLP, "--input", SAMPLE, "--label", "1"]


def verify(*args):
    cmd = [sys.executable, "-c", "import sys; from verifier.cli import main; sys.exit(main())"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def json_lines(stdout: str) -> list[dict]:
    lines = stdout.splitlines()
    assert lines, "nothing on stdout"
    return [json.loads(line) for line in lines]      # any foreign line fails here


@pytest.mark.parametrize("args, status", [
    (ONE + ["--eps", "0.01", "--method", "bounds"], "verified"),
    (ONE + ["--eps", "0.0119", "--method", "lp"], None),              # reaches the LP solver
    (ONE + ["--eps", "0.0119", "--method", "milp", "--arithmetic", "real"], "verified"),  # MILP
    (ONE + ["--eps", "0.03", "--method", "milp"], "falsified"),
    (ONE + ["--eps", "0.05", "--method", "attack"], "falsified"),
    (ONE + ["--eps", "0.0119", "--arithmetic", "real"], "verified"),  # auto, through the MILP
    (ONE + ["--min-distortion"], "found"),
    (ONE + ["--min-distortion", "--norm", "1", "--eps", "0.15"], "found"),
    ([MLP, "--eps", "0.01", "--dataset", DATASET], "verified"),
    ([MLP, "--eps", "0.005", "0.01", "--dataset", DATASET, "--jobs", "2"], "verified"),  # curve
])
def test_json_modes_print_only_json(args, status):
    r = verify(*args, "--json", "--timeout", 60)
    objs = json_lines(r.stdout)
    assert r.returncode in (0, 1, 3), r.stderr
    if status is not None:
        assert objs[0]["status"] == status
    if "--dataset" in args:
        assert len(objs) == 20 * (args.index("--dataset") - args.index("--eps") - 1)


def test_check_json_prints_only_json(tmp_path):
    cert = tmp_path / "c.json"
    r = verify(*ONE, "--eps", "0.0119", "--method", "milp", "--arithmetic", "real",
               "--certificate", cert)
    assert r.returncode == 0, r.stderr
    r = verify("--check", cert, MLP, "--method", "milp", "--json")
    assert json_lines(r.stdout)[0]["check"] == "passed"
