"""The VNN-COMP tool scripts (vnncomp/*.sh) as the competition harness calls them: install into
(here: check) an environment, prepare, run; result files in the official format, counterexamples
that replay in onnxruntime, exit codes, and the timeout kept including start-up.

They use the environment running these tests (VERIFIER_VENV=sys.prefix) instead of installing a
new one, which install_tool.sh does on a fresh machine."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from verifier.replay import replay, run_model
from verifier.vnnlib import parse_vnnlib

pytestmark = pytest.mark.vnncomp
ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "vnncomp"
BENCH = ROOT / "benchmarks" / "vnncomp2022"
ENV = {**os.environ, "VERIFIER_VENV": sys.prefix}


@pytest.fixture(autouse=True)
def own_tmpdir(tmp_path, monkeypatch):
    """The scripts' record of a running verify lives in $TMPDIR: one per test, so tests running
    in parallel (and other users of the machine) never see each other's runs."""
    monkeypatch.setitem(ENV, "TMPDIR", str(tmp_path))


def script(name, *args, env=None, timeout=120):
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(SCRIPTS / name), *map(str, args)], capture_output=True,
                       text=True, env=env or ENV, timeout=timeout)
    return r, time.monotonic() - t0


def parse_result(text: str):
    """The first line, and after ``sat`` the X and Y values in index order."""
    lines = text.strip().splitlines()
    values = {"X": {}, "Y": {}}
    for ln in lines[1:]:
        name, value = ln.strip().strip("()").split()
        kind, index = name.split("_")
        values[kind][int(index)] = float(value)
    xs = [values["X"][i] for i in range(len(values["X"]))]
    ys = [values["Y"][j] for j in range(len(values["Y"]))]
    return lines[0], np.array(xs), np.array(ys)


def test_install_checks_the_given_environment():
    r, _ = script("install_tool.sh", "v1")
    assert r.returncode == 0, r.stderr
    assert "ready in " + sys.prefix in r.stdout
    r, _ = script("install_tool.sh", "v2")
    assert r.returncode == 1 and "v1" in r.stderr
    r, _ = script("install_tool.sh", "v1", env={**ENV, "VERIFIER_VENV": "/nonexistent"})
    assert r.returncode == 1 and "no installed verifier" in r.stderr


@pytest.mark.parametrize("category, onnx, vnnlib, expected", [
    ("acasxu", "ACASXU_run2a_1_1_batch_2000.onnx", "prop_1.vnnlib", "unsat"),
    ("acasxu", "ACASXU_run2a_1_2_batch_2000.onnx", "prop_2.vnnlib", "sat"),
    ("mnist_fc", "mnist-net_256x2.onnx", "prop_0_0.03.vnnlib", "unsat"),
    ("mnist_fc", "mnist-net_256x2.onnx", "prop_1_0.03.vnnlib", "sat"),
])
def test_prepare_and_run_shipped_instances(tmp_path, category, onnx, vnnlib, expected):
    onnx, vnnlib = BENCH / category / "onnx" / onnx, BENCH / category / "vnnlib" / vnnlib
    r, _ = script("prepare_instance.sh", "v1", category, onnx, vnnlib)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    result = tmp_path / "out.txt"
    timeout = 60
    r, wall = script("run_instance.sh", "v1", category, onnx, vnnlib, result, timeout)
    assert r.returncode == 0, r.stderr
    assert wall < timeout
    answer, x, y = parse_result(result.read_text())
    assert answer == expected                      # the expected.csv of the benchmark
    if answer == "unsat":
        assert result.read_text() == "unsat\n"
        return
    prop = parse_vnnlib(vnnlib)
    assert x.size == prop.n_inputs and y.size == prop.n_outputs
    # the counterexample as the organisers check it: run the model on X, compare with Y
    y_ort = run_model(onnx, x.astype(np.float32))
    assert np.array_equal(y_ort.astype(np.float64), y)
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)   # X is float32 exactly
    assert replay(onnx, x, prop).ok                # inside the box, output violates the property


HARD = (BENCH / "mnist_fc" / "onnx" / "mnist-net_256x6.onnx",
        BENCH / "mnist_fc" / "vnnlib" / "prop_0_0.05.vnnlib")     # undecided in 120 s


def test_run_keeps_the_timeout_including_start_up(tmp_path):
    result = tmp_path / "out.txt"
    r, wall = script("run_instance.sh", "v1", "mnist_fc", *HARD, result, 5)
    assert r.returncode == 0, r.stderr
    assert wall < 5.0
    assert result.read_text().strip() in ("timeout", "unknown")


def test_hard_kill_writes_timeout(tmp_path):
    """A verifier that would overrun (its own deadline set past the kill) is killed with its
    whole process group just before the timeout; the result says timeout."""
    result = tmp_path / "out.txt"
    result.write_text("stale")
    env = {**ENV, "VERIFIER_STARTUP": "-20"}
    r, wall = script("run_instance.sh", "v1", "mnist_fc", *HARD, result, 4, env=env)
    assert r.returncode == 0, r.stderr
    assert result.read_text() == "timeout\n"
    assert 2.5 < wall < 4.0
    assert not (Path(ENV["TMPDIR"]) / f"verifier-vnncomp-{os.getuid()}.pgid").exists()


def test_prepare_stops_only_a_leftover_run(tmp_path):
    """A verify whose run_instance.sh was killed is stopped by the next prepare; one whose script
    still runs (a parallel run) is not."""
    pidfile = Path(ENV["TMPDIR"]) / f"verifier-vnncomp-{os.getuid()}.pgid"
    args = [sys.prefix + "/bin/verify", str(HARD[0]), "--vnnlib", str(HARD[1]), "--timeout", "60"]
    left = subprocess.Popen(["timeout", "--signal=KILL", "90", *args], stdout=subprocess.DEVNULL,
                            start_new_session=True)
    alive_script = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(f"{alive_script.pid} {left.pid}\n")
        r, _ = script("prepare_instance.sh", "v1", "mnist_fc", *HARD)
        assert r.returncode == 0 and left.poll() is None      # its script lives: not touched
        dead = subprocess.Popen(["true"])
        dead.wait()
        pidfile.write_text(f"{dead.pid} {left.pid}\n")
        r, _ = script("prepare_instance.sh", "v1", "mnist_fc", *HARD)
        assert r.returncode == 0 and left.wait(10) == -9 and not pidfile.exists()
    finally:
        for p in (left, alive_script):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_bad_input_is_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    vnnlib = BENCH / "acasxu" / "vnnlib" / "prop_1.vnnlib"
    r, _ = script("prepare_instance.sh", "v1", "acasxu", tmp_path / "missing.onnx", vnnlib)
    assert r.returncode == 1 and "not found" in r.stderr
    result = tmp_path / "out.txt"
    r, _ = script("run_instance.sh", "v1", "acasxu", bad, vnnlib, result, 30)
    assert r.returncode == 1 and result.read_text() == "error\n"
    assert "bad.onnx" in r.stderr                  # verify's one-line reason
    r, _ = script("run_instance.sh", "v1", "acasxu", bad, vnnlib, result, "soon")
    assert r.returncode == 1 and "TIMEOUT" in r.stderr
    r, _ = script("run_instance.sh", "v2", "acasxu", bad, vnnlib, result, 30)
    assert r.returncode == 1 and "v1" in r.stderr
