"""Bad and hostile input as a new user meets it (issue 13, item 6): outputs that would overwrite
inputs, decompression and constant-folding bombs, models onnx or onnxruntime cannot run, options
that would be silently ignored, certificates whose method is unknown or whose proof is not
re-checked, ``--version`` and ``python -m verifier``.  Bad input is always exit 2 with one line on
stderr, never an "internal error"."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier import __version__, onnx_loader
from verifier.certificate import _digest
from verifier.cli import main

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "models" / "digits_mlp.onnx"
SAMPLE = ROOT / "models" / "digits_sample0.npy"       # label 1
DATASET = ROOT / "models" / "digits_samples.npz"
ACAS = ROOT / "benchmarks" / "vnncomp2022" / "acasxu"
ACAS_NET = ACAS / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"
ACAS_PROP = ACAS / "vnnlib" / "prop_1.vnnlib"
node = helper.make_node


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "internal error" not in err and "Traceback" not in err, err
    return code, out, err


def bad_input(capsys, *args) -> str:
    """Run; require exit 2, nothing on stdout, one line on stderr; return that line."""
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (code, out, err)
    return err


def model(nodes, inits, in_shape, *, elem=TensorProto.FLOAT, opset=17, outputs=("y",)):
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", elem, in_shape)],
                          [helper.make_tensor_value_info(o, elem, None) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def relu_model(**kw):
    return model([node("Relu", ["x"], ["y"])], {}, [1, 3], **kw)


# --------------------------------------------------------------------------------------------
# outputs that would overwrite inputs
# --------------------------------------------------------------------------------------------
def _copies(tmp_path):
    """Copies of the inputs, so a failed refusal cannot damage the repository's files."""
    files = {}
    for src in (MLP, SAMPLE, DATASET, ACAS_NET, ACAS_PROP):
        dst = tmp_path / src.name
        dst.write_bytes(src.read_bytes())
        files[src.name] = dst
    return files


@pytest.mark.parametrize("flag", ["--certificate", "--results-file", "--export"])
def test_an_output_naming_an_input_is_refused(capsys, tmp_path, flag):
    f = _copies(tmp_path)
    mlp, x, acas, prop = (f[n] for n in ("digits_mlp.onnx", "digits_sample0.npy",
                                         ACAS_NET.name, ACAS_PROP.name))
    before = {p: p.read_bytes() for p in f.values()}
    one = [mlp, "--eps", 0.01, "--input", x, "--label", 1, "--method", "bounds"]
    # an export file must end in .mps/.lp, so it can only collide through a link
    link = tmp_path / "model.mps"
    link.symlink_to(mlp)
    cases = [(one, link)] if flag == "--export" else [
        (one, mlp), (one, x), (one, tmp_path / "." / x.name),
        ([acas, "--vnnlib", prop, "--method", "bounds"], prop),
        ([acas, "--vnnlib", prop, "--method", "bounds"], acas)]
    for args, target in cases:
        err = bad_input(capsys, *args, flag, target)
        assert "same file" in err and flag in err
    assert {p: p.read_bytes() for p in f.values()} == before


def test_outputs_naming_each_other_or_the_min_distortion_input_are_refused(capsys, tmp_path):
    f = _copies(tmp_path)
    mlp, x = f["digits_mlp.onnx"], f["digits_sample0.npy"]
    out = tmp_path / "out.txt"
    err = bad_input(capsys, mlp, "--eps", 0.01, "--input", x, "--label", 1,
                    "--certificate", out, "--results-file", out)
    assert "--certificate" in err and not out.exists()
    err = bad_input(capsys, mlp, "--input", x, "--label", 1, "--min-distortion",
                    "--certificate", x)
    assert "--input" in err
    assert x.read_bytes() == SAMPLE.read_bytes()


# --------------------------------------------------------------------------------------------
# bombs
# --------------------------------------------------------------------------------------------
def test_gzip_bomb_is_capped(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_loader, "MAX_MODEL_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.onnx.gz"
    bomb.write_bytes(gzip.compress(b"\0" * (8 << 20)))     # 8 KB that inflates to 8 MB
    assert bomb.stat().st_size < 64 << 10
    err = bad_input(capsys, bomb)
    assert "decompresses to more than" in err and "bomb.onnx.gz" in err
    # a real gzipped model under the limit still loads
    ok = tmp_path / "ok.onnx.gz"
    ok.write_bytes(gzip.compress(relu_model().SerializeToString()))
    assert run(capsys, ok)[0] == 0


def test_constant_folding_bomb_is_refused_before_it_allocates(capsys, tmp_path):
    """A 500-byte model whose ConstantOfShape would fold to 2.5e8 values (2 GB)."""
    m = model([node("ConstantOfShape", ["shape"], ["big"],
                    value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
               node("Slice", ["big", "s0", "s1"], ["part"]),
               node("Add", ["x", "part"], ["y"])],
              {"shape": np.array([250_000_000], np.int64), "s0": np.array([0], np.int64),
               "s1": np.array([3], np.int64)}, [1, 3])
    path = tmp_path / "fold.onnx"
    onnx.save(m, path)
    assert path.stat().st_size < 1000
    err = bad_input(capsys, path)
    assert "ConstantOfShape" in err and "250000000" in err
    # the same model with a small constant loads (the limit is not in the way of real folding)
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([3], np.int64), "shape"))
    onnx.save(m, path)
    assert run(capsys, path)[0] == 0


# --------------------------------------------------------------------------------------------
# models that onnx or onnxruntime cannot run
# --------------------------------------------------------------------------------------------
def test_int64_input_opset_99_and_several_outputs_are_bad_input(capsys, tmp_path):
    prop = tmp_path / "p.vnnlib"
    prop.write_text("".join(f"(declare-const X_{i} Real)" for i in range(3))
                    + "".join(f"(declare-const Y_{i} Real)" for i in range(3))
                    + "".join(f"(assert (>= X_{i} 0))(assert (<= X_{i} 1))" for i in range(3))
                    + "(assert (>= Y_0 Y_1))")
    two = model([node("Relu", ["x"], ["y"]), node("Neg", ["x"], ["z"])], {}, [1, 3],
                outputs=("y", "z"))
    for name, m, needle in (("i64", relu_model(elem=TensorProto.INT64), "INT64"),
                            ("op99", relu_model(opset=99), "opset 99"),
                            ("two", two, "2 outputs (y, z)")):
        path = tmp_path / f"{name}.onnx"
        onnx.save(m, path)
        assert needle in bad_input(capsys, path)
        assert needle in bad_input(capsys, path, "--vnnlib", prop)


def test_a_model_onnxruntime_cannot_run_is_bad_input(capsys, tmp_path):
    """A double-typed Conv loads (the graph is fine) but onnxruntime has no double Conv kernel:
    the summary's forward check says so in one line."""
    m = model([node("Conv", ["x", "K"], ["y"])], {"K": np.ones((1, 1, 2, 2))}, [1, 1, 3, 3],
              elem=TensorProto.DOUBLE)
    path = tmp_path / "conv64.onnx"
    onnx.save(m, path)
    assert "onnxruntime cannot run this model" in bad_input(capsys, path)


# --------------------------------------------------------------------------------------------
# options that would be ignored
# --------------------------------------------------------------------------------------------
def test_domain_is_refused_where_it_would_be_ignored(capsys, tmp_path):
    assert "--vnnlib" in bad_input(capsys, ACAS_NET, "--vnnlib", ACAS_PROP, "--domain", 0, 1)
    assert "--check" in bad_input(capsys, "--check", tmp_path / "c.json", MLP, "--domain", 0, 1)
    assert "needs a property" in bad_input(capsys, MLP, "--domain", 0, 1)
    # where it applies it is used: a domain the input lies outside of is refused
    assert "outside the domain" in bad_input(capsys, MLP, "--eps", 0.01, "--input", SAMPLE,
                                             "--label", 1, "--domain", 0.5, 1)


# --------------------------------------------------------------------------------------------
# --check: unknown methods, proofs that are not re-checked
# --------------------------------------------------------------------------------------------
@pytest.fixture
def milp_certificate(capsys, tmp_path):
    """A certificate whose proof needs the MILP (bounds leave margin >= -0.00027), in real
    arithmetic (in float32 this margin of 1e-5 is not provable)."""
    cert = tmp_path / "c.json"
    code, out, _ = run(capsys, MLP, "--eps", 0.0119, "--input", SAMPLE, "--label", 1,
                       "--method", "milp", "--arithmetic", "real", "--certificate", cert)
    assert code == 0 and out.startswith("VERIFIED") and "(milp," in out, out
    return MLP, cert


def test_a_proof_that_is_not_re_checked_has_its_own_exit_code(capsys, milp_certificate):
    net, cert = milp_certificate
    code, out, _ = run(capsys, "--check", cert, net)
    assert code == 4 and out.startswith("CHECK INCOMPLETE") and "not re-checked" in out
    assert "PASSED" not in out and "not checked  the milp proof" in out
    code, out, _ = run(capsys, "--check", cert, net, "--json")
    assert code == 4 and json.loads(out)["check"] == "incomplete"
    code, out, _ = run(capsys, "--check", cert, net, "--method", "milp")       # re-proved
    assert code == 0 and out.startswith("CHECK PASSED")


@pytest.mark.parametrize("method", ["magic", "", "MILP", "bounds "])
def test_an_unknown_method_is_a_mismatch(capsys, milp_certificate, tmp_path, method):
    net, cert = milp_certificate
    rec = json.loads(cert.read_text())
    rec["certificate"]["method"] = method
    rec["digest"] = _digest(rec)
    doctored = tmp_path / "d.json"
    doctored.write_text(json.dumps(rec))
    err = bad_input(capsys, "--check", doctored, net)
    assert "method" in err and repr(method) in err


# --------------------------------------------------------------------------------------------
# --version, python -m verifier
# --------------------------------------------------------------------------------------------
def test_version_and_python_dash_m(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"verify {__version__}"
    r = subprocess.run([sys.executable, "-m", "verifier", str(MLP)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and "64 ReLUs" in r.stdout and "forward check" in r.stdout
    r = subprocess.run([sys.executable, "-m", "verifier", "--eps"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1


def test_every_method_the_pipeline_can_record_is_known():
    """--check refuses unknown methods, so each name an answer can carry must be in the list:
    the pipeline's methods and every bound level (a timeout reports the level it reached)."""
    from verifier.bounds.ladder import LEVELS
    from verifier.certificate import METHODS
    from verifier.config import METHODS as OPTION_METHODS
    assert set(LEVELS) <= set(METHODS)
    assert set(OPTION_METHODS) - {"auto"} <= set(METHODS)
