"""Result objects and certificate files: JSON, human text, the certificate file format, its re-check
(model hash, digest, replay, bounds) against doctored certificates, and the minimal distortion API
against hand-computed answers."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from verifier import api
from verifier.check import check_certificate
from verifier.certificate import (Certificate, CertificateError, MinDistortionResult, _digest,
                                  describe_stats, read_certificate, vnncomp_result)
from verifier.cli import main
from verifier.graph import Graph, Input, Linear, Relu
from verifier.onnx_export import graph_to_onnx
from verifier.replay import run_model

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "models" / "digits_mlp.onnx"
SAMPLE = ROOT / "models" / "digits_sample0.npy"     # label 1; eps 0.01 verifies, 0.05 falsifies
ACAS = ROOT / "benchmarks" / "vnncomp2022" / "acasxu"
DESIGN_KEYS = {"status", "time_s", "margin_lower", "margin_upper", "counterexample", "output",
               "method", "stats"}


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (what strict parsers such as jq do)."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


# --------------------------------------------------------------------------------------------
# Certificate as JSON and text
# --------------------------------------------------------------------------------------------
def test_to_json_has_exactly_the_design_keys_and_is_strict_json():
    c = Certificate("unknown", 1.5, -np.inf, np.float64(0.25), None, None, "milp",
                    {"a": np.float32(1.5), "b": (1, np.inf), "c": np.arange(3), "d": {2: np.nan}})
    d = strict_json(c.to_json())
    assert set(d) == DESIGN_KEYS
    assert d["margin_lower"] is None and d["margin_upper"] == 0.25
    assert d["stats"] == {"a": 1.5, "b": [1, None], "c": [0, 1, 2], "d": {"2": None}}


def test_summary_line_rounds_bounds_outward():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        lo, hi = sorted(rng.normal(size=2) * 10.0 ** rng.integers(-9, 4, size=2))
        v = Certificate("verified", margin_lower=abs(lo)).summary_line()
        assert float(v.split(">=")[1].split()[0]) <= abs(lo)
        u = Certificate("unknown", margin_lower=lo, margin_upper=hi).summary_line()
        a, b = re.search(r"\[(\S+), (\S+)\]", u).groups()
        assert float(a) <= lo and float(b) >= hi


def test_describe_stats_reads_every_phase():
    stats = {"relus": 512, "cases": 2,
             "attack": {"time_s": 0.12, "evaluations": 1060, "best_margin": 0.97, "replayed": 0},
             "per_case": [
                 {"case": 0, "bounds": {"levels": [
                     {"level": "interval", "time_s": 0.01, "unstable": 64},
                     {"level": "symbolic", "time_s": 0.01, "unstable": 56},
                     {"level": "lp", "time_s": 0.3, "unstable": 54}],
                     "margin_lower": [0.5, -0.25], "margin_upper": [1.0, 2.0]},
                  "milp": {"conjunctions": 9, "solved_conjunctions": 2, "binaries": 56,
                           "rows": 687, "cols": 1417, "nodes": 3, "gap": 0.0,
                           "time_solve": 5.4, "solver_status": ["cutoff"]}},
                 {"case": 1, "split": {"domains": 261, "rounds": 6, "max_depth": 9,
                                       "time_s": 0.5}}]}
    text = "\n".join(describe_stats(stats))
    assert "512 ReLUs" in text and "2 input boxes" in text
    assert "1060 evaluations" in text and "0.97" in text
    assert "interval 64 -> symbolic 56 -> lp 54" in text and "margin >= -0.25" in text
    assert "56 binaries" in text and "687 rows" in text and "3 nodes" in text and "cutoff" in text
    assert "2 of 9" in text and "261 boxes in 6 rounds" in text
    assert describe_stats({}) == []


def test_vnncomp_result_values_are_exact():
    x = np.float32([0.1, 1 / 3, 2.0 ** -20])
    y = np.float32([-0.7, 3.5])
    text = vnncomp_result(Certificate("falsified", counterexample=[float(v) for v in x],
                                      output=[float(v) for v in y]))
    assert text.splitlines()[0] == "sat"
    xs = {int(i): float(v) for i, v in re.findall(r"\(X_(\d+) ([^\s()]+)\)", text)}
    ys = {int(i): float(v) for i, v in re.findall(r"\(Y_(\d+) ([^\s()]+)\)", text)}
    assert [xs[i] for i in range(3)] == [float(v) for v in x]
    assert [ys[j] for j in range(2)] == [float(v) for v in y]
    assert vnncomp_result(Certificate("verified")) == "unsat\n"


# --------------------------------------------------------------------------------------------
# certificate files
# --------------------------------------------------------------------------------------------
def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """One falsified and one verified certificate of the shipped MLP, one VNN-LIB one."""
    d = tmp_path_factory.mktemp("certs")
    vnn = d / "prop.vnnlib"
    shutil.copy(ACAS / "vnnlib" / "prop_2.vnnlib", vnn)
    runs = {"falsified": [MLP, "--eps", 0.05, "--input", SAMPLE, "--label", 1],
            "verified": [MLP, "--eps", 0.01, "--input", SAMPLE, "--label", 1],
            "vnnlib": [ACAS / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx", "--vnnlib", vnn,
                       "--method", "bounds", "--timeout", 5]}
    out = {}
    for name, args in runs.items():
        path = d / f"{name}.json"
        assert main([str(a) for a in args] + ["--certificate", str(path)]) in (0, 1, 3)
        out[name] = path
    out["vnnlib_file"] = vnn
    return out


def _doctor(src: Path, dst: Path, edit) -> Path:
    """A modified copy with a *recomputed* digest: only the re-check itself can catch it."""
    rec = json.loads(src.read_text())
    edit(rec)
    rec["digest"] = _digest(rec)
    dst.write_text(json.dumps(rec))
    return dst


def test_certificate_file_records_model_property_versions(certs):
    rec = strict_json(certs["falsified"].read_text())
    assert rec["format"] == "verifier-certificate" and rec["answer"] == "falsified"
    assert rec["vnncomp"] == "sat"
    assert set(rec["certificate"]) == DESIGN_KEYS
    assert rec["model"]["sha256"] == hashlib.sha256(MLP.read_bytes()).hexdigest()
    assert rec["model"]["path"] == str(MLP)
    p = rec["property"]
    assert p["kind"] == "linf_ball" and p["label"] == 1 and p["eps"] == 0.05
    assert p["domain"] == [0.0, 1.0] and p["target"] is None
    assert p["x"] == np.load(SAMPLE).astype(np.float64).ravel().tolist()
    assert set(rec["versions"]) == {"verifier", "python", "numpy", "scipy", "onnx", "onnxruntime",
                                    "highspy", "pulp"}
    assert all(rec["versions"].values())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["date"])
    assert Certificate.from_json(certs["falsified"].read_text()).status == "falsified"
    v = strict_json(certs["vnnlib"].read_text())["property"]
    assert v["kind"] == "vnnlib"
    assert v["sha256"] == hashlib.sha256(certs["vnnlib_file"].read_bytes()).hexdigest()


def test_digest_catches_edits_but_not_reformatting(certs, tmp_path):
    rec = json.loads(certs["verified"].read_text())
    (tmp_path / "pretty.json").write_text(json.dumps(rec, indent=4, sort_keys=True))
    assert read_certificate(tmp_path / "pretty.json")["answer"] == "verified"
    for edit in (lambda r: r["certificate"].update(status="falsified"),
                 lambda r: r["property"].update(eps=0.02),
                 lambda r: r["model"].update(sha256="0" * 64),
                 lambda r: r["property"]["x"].__setitem__(3, 0.5)):
        bad = json.loads(certs["verified"].read_text())
        edit(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(CertificateError, match="modified"):
            read_certificate(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text(certs["verified"].read_text()[:500])
    with pytest.raises(CertificateError, match="not valid JSON"):
        read_certificate(tmp_path / "cut.json")
    (tmp_path / "other.json").write_text('{"status": "verified"}')
    with pytest.raises(CertificateError, match="not a verifier certificate"):
        read_certificate(tmp_path / "other.json")


def test_check_passes_on_genuine_certificates(certs):
    r = check_certificate(certs["falsified"], MLP)
    assert r.outcome == "passed" and "replayed" in r.headline
    r = check_certificate(certs["verified"], MLP)
    assert r.outcome == "passed" and "confirmed by bounds" in r.headline
    net = ACAS / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"
    r = check_certificate(certs["vnnlib"], net)
    assert r.outcome == "passed" and any("SHA-256 matches" in c for c in r.checked)


def test_check_fails_doctored_certificates(certs, tmp_path):
    x0 = np.load(SAMPLE).astype(np.float32).astype(np.float64).ravel().tolist()

    def put_x0(r):                       # the sample itself is classified correctly
        r["certificate"]["counterexample"] = x0

    def shrink_eps(r):                   # the counterexample now lies outside the box
        r["property"]["eps"] = 0.001

    def claim_verified(r):               # a falsifiable property claimed verified
        r["certificate"].update(status="verified", margin_lower=0.1, method="milp",
                                counterexample=None, output=None)

    for edit, needle in ((put_x0, "does not replay"), (shrink_eps, "does not replay"),
                         (claim_verified, "counterexample was found")):
        path = _doctor(certs["falsified"], tmp_path / "d.json", edit)
        r = check_certificate(path, MLP)
        assert r.outcome == "failed" and r.exit_code == 1 and needle in r.headline, r.headline


def test_check_refuses_other_model_and_changed_property_file(certs, tmp_path):
    with pytest.raises(CertificateError, match="not the model of this certificate"):
        check_certificate(certs["falsified"], ROOT / "models" / "digits_cnn.onnx")
    net = ACAS / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"
    changed = tmp_path / "prop.vnnlib"
    changed.write_text(certs["vnnlib_file"].read_text().replace("(assert", "; edited\n(assert", 1))
    with pytest.raises(CertificateError, match="does not match"):
        check_certificate(certs["vnnlib"], net, vnnlib=changed)
    moved = _doctor(certs["vnnlib"], tmp_path / "m.json",
                    lambda r: r["property"].update(path="gone.vnnlib", resolved="/gone.vnnlib"))
    with pytest.raises(CertificateError, match="not found"):
        check_certificate(moved, net)
    assert check_certificate(moved, net, vnnlib=certs["vnnlib_file"]).outcome == "passed"


# --------------------------------------------------------------------------------------------
# minimal distortion, against hand-computed answers
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """y0 = relu(3 x0 + x1 + x2), y1 = 1.25; at x = (0.5, 0.5, 0.5) label 0 has margin 1.25.
    Smallest L∞ change: all three down by 0.25.  Smallest L1 change: x0 down by 1.25 / 3."""
    W = np.array([[3.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    g = Graph([Input((), (1, 3)), Linear((0,), (2,), mats=(W,), bias=np.array([0.0, 1.25])),
               Relu((1,), (2,))])
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(graph_to_onnx(g), path)
    return path


def _replays(path, r: MinDistortionResult, x, norm):
    cx = np.asarray(r.counterexample, np.float64)
    assert np.array_equal(cx.astype(np.float32), cx) and cx.min() >= 0 and cx.max() <= 1
    y = run_model(path, cx.astype(np.float32))
    assert y[0] <= y[1]                                        # label 0 lost (ties count)
    d = np.abs(cx - x)
    assert (d.max() if norm == "inf" else d.sum()) <= r.distortion_upper
    assert r.output == [float(v) for v in y]


@pytest.mark.parametrize("norm, truth", [("inf", 0.25), ("1", 1.25 / 3)])
def test_min_distortion_matches_hand_computed(tiny, norm, truth):
    x = np.full(3, 0.5)
    r = api.min_distortion(tiny, x, 0, norm=norm, timeout=20)
    assert r.status == "found" and r.exit_code == 0
    assert r.distortion_lower <= truth * (1 + 1e-6)
    assert r.distortion_upper >= truth * (1 - 1e-6)            # float32 rounding of the point
    assert r.distortion_upper - r.distortion_lower <= 1e-3 * r.distortion_upper
    _replays(tiny, r, x, norm)
    assert strict_json(r.to_json())["distortion_lower"] == r.distortion_lower


def test_min_distortion_lower_bound_is_capped_at_the_search_radius(tiny):
    # within L∞ 0.3 the closest unsafe input is at L1 0.65, but the true minimum (0.4167) lies
    # outside that box: a lower bound above 0.4167 would be wrong
    r = api.min_distortion(tiny, np.full(3, 0.5), 0, norm="1", max_eps=0.3, timeout=20)
    assert r.distortion_lower <= 0.3 and r.distortion_upper >= 0.6
    assert r.status == "unknown" and r.exit_code == 3 and "capped" in r.stats["note"]
    r = api.min_distortion(tiny, np.full(3, 0.5), 0, norm="inf", max_eps=0.2, timeout=20)
    assert r.status == "robust" and r.distortion_lower == 0.2 and r.counterexample is None


def test_min_distortion_of_a_misclassified_input_is_zero(tiny):
    r = api.min_distortion(tiny, np.full(3, 0.5), 1)            # y0 = 2.5 > y1 = 1.25
    assert r.status == "found" and r.distortion_lower == r.distortion_upper == 0.0
    assert r.counterexample == [0.5, 0.5, 0.5]


def test_min_distortion_on_shipped_model_brackets_the_eps_answers():
    x = np.load(SAMPLE)
    r = api.min_distortion(MLP, x, 1, timeout=30)
    assert r.status == "found"
    assert r.distortion_upper - r.distortion_lower <= 1e-3 * r.distortion_upper
    _replays_mlp(r, x)
    # consistent with the verifier's answers on either side (a different code path: pipeline)
    assert api.verify(MLP, x, 1, r.distortion_lower * 0.99, timeout=30).status == "verified"
    assert api.verify(MLP, x, 1, r.distortion_upper * 1.01, timeout=30).status == "falsified"


def _replays_mlp(r, x):
    cx = np.asarray(r.counterexample, np.float32)
    y = run_model(MLP, cx)
    assert np.argmax(y) != 1 or np.sum(y == y[1]) > 1
    assert np.abs(cx.astype(np.float64) - x.ravel()).max() <= r.distortion_upper


def test_min_distortion_bad_arguments():
    x = np.load(SAMPLE)
    with pytest.raises(api.OptionsError, match="quadratic"):
        api.min_distortion(MLP, x, 1, norm="2")
    with pytest.raises(api.SpecError, match="label"):
        api.min_distortion(MLP, x, 10)
    with pytest.raises(api.OptionsError, match="timeout"):
        api.min_distortion(MLP, x, 1, timeout=0)
    with pytest.raises(api.OptionsError, match="eps"):
        api.min_distortion(MLP, x, 1, max_eps=-1)


def test_distortion_certificate_check(tmp_path, capsys):
    cert = tmp_path / "d.json"
    code, out, _ = _cli(capsys, MLP, "--input", SAMPLE, "--label", 1, "--min-distortion",
                        "--certificate", cert)
    assert code == 0 and out.startswith("MIN DISTORTION")
    r = check_certificate(cert, MLP)      # the counterexample replays; the lower bound's
    assert r.outcome == "incomplete" and r.exit_code == 4    # proof is not re-done
    assert r.not_checked and "not re-proved" in r.headline
    lower = json.loads(cert.read_text())["certificate"]["distortion_upper"]
    bad = _doctor(cert, tmp_path / "bad.json",       # a lower bound above a known unsafe input
                  lambda r: r["certificate"].update(distortion_lower=3 * lower))
    r = check_certificate(bad, MLP)
    assert r.outcome == "failed" and "closer than the lower bound" in r.headline
    far = _doctor(cert, tmp_path / "far.json",       # an upper bound below the point's distance
                  lambda r: r["certificate"].update(distortion_upper=lower / 2))
    assert check_certificate(far, MLP).outcome == "failed"
