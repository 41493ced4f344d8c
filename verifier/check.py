"""Re-checking a saved certificate against a model (``verify --check CERT MODEL``).

A counterexample is replayed in onnxruntime; a ``verified`` answer is re-derived from the bounds
when they suffice, otherwise reported as not re-checked (or re-run with the method asked for).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .api import load, read_vnnlib, robustness, verify_property
from .certificate import (DISTORTION_METHODS, METHODS, CertificateError, file_sha256,
                          read_certificate)
from .config import Options, check_domain
from .onnx_loader import ModelError
from .spec import check_norm, distance, input_vector, robustness_property


@dataclass
class CheckResult:
    """Outcome of ``check_certificate``: ``passed`` (everything the certificate claims was
    re-checked and holds, exit 0), ``failed`` (the certificate does not hold, exit 1),
    ``inconclusive`` (a requested re-run decided nothing, exit 3) or ``incomplete`` (what was
    re-checked holds, but part of the claim -- listed in ``not_checked`` -- was taken on trust,
    exit 4: re-run with ``--method`` to re-check it).  ``checked`` says what was re-checked."""
    outcome: str
    headline: str
    checked: list = field(default_factory=list)
    not_checked: list = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"passed": 0, "failed": 1, "inconclusive": 3, "incomplete": 4}[self.outcome]

    def summary_line(self) -> str:
        return f"CHECK {self.outcome.upper()}  {self.headline}"

    def to_dict(self) -> dict:
        return {"check": self.outcome, "headline": self.headline, "checked": self.checked,
                "not_checked": self.not_checked}


def _describe_property(p: dict) -> str:
    dom = f"domain [{p['domain'][0]:g}, {p['domain'][1]:g}]" if "domain" in p else ""
    tgt = "" if p.get("target") is None else f", target {p['target']}"
    if p["kind"] == "linf_ball":
        return f"L∞ ball of radius {p['eps']:g} around the recorded input, label {p['label']}" \
               f"{tgt}, {dom}"
    if p["kind"] == "vnnlib":
        return f"VNN-LIB file {p['path']}"
    return f"minimal L{'∞' if p['norm'] == 'inf' else p['norm']} distortion around the recorded " \
           f"input, label {p['label']}{tgt}, {dom}"


def _vnnlib_file(p: dict, override) -> Path:
    cands = [Path(override)] if override else [Path(p["path"]), Path(p.get("resolved", p["path"]))]
    for c in cands:
        if c.is_file():
            if file_sha256(c) != p["sha256"]:
                raise CertificateError(f"the VNN-LIB file {c} does not match the certificate "
                                       f"(sha256 differs from the recorded one)")
            return c
    raise CertificateError(f"the certificate's VNN-LIB file {cands[0]} was not found "
                           f"(give its new place with --vnnlib)")


def check_certificate(cert_path, model_path, *, vnnlib=None, method: str | None = None,
                      timeout: float | None = None) -> CheckResult:
    """Re-check a certificate file against ``model_path``.

    Always: the file is a well-formed, unmodified certificate (``CertificateError`` otherwise), and
    the model's SHA-256 and the property (rebuilt from the record; a VNN-LIB file must match its
    recorded SHA-256) are the ones it was made for (``CertificateError`` otherwise).
    ``falsified``: the counterexample is replayed in onnxruntime against the rebuilt property.
    ``verified``: the bounds (CROWN and optimised slopes) are recomputed; if they alone prove the margin > 0 the answer is
    confirmed; otherwise, with ``method``, the pipeline re-runs (``timeout``) and must verify again;
    without, a short attack looks for a counterexample and the proof itself is reported as not
    re-checked.  Minimal distortion: the counterexample is replayed at the recorded distance, and
    (L∞) a short attack inside the lower bound's ball must find nothing."""
    record = read_certificate(cert_path)
    mp = Path(model_path)
    if not mp.is_file():
        raise ModelError(f"model file not found: {mp}" if not mp.exists()
                         else f"model path is a directory, not an ONNX file: {mp}")
    digest = file_sha256(mp)
    if digest != record["model"]["sha256"]:
        raise CertificateError(f"{mp.name} is not the model of this certificate (sha256 "
                               f"{digest[:12]}… but the certificate was made for "
                               f"{record['model']['sha256'][:12]}…, {record['model'].get('path')})")
    net = load(mp)
    p, cert = record["property"], record["certificate"]
    known = DISTORTION_METHODS if p["kind"] == "min_distortion" else METHODS
    if cert.get("method") not in known:
        raise CertificateError(f"the certificate's method {cert.get('method')!r} is not one this "
                               f"verifier produces ({', '.join(known)}): nothing to re-check it "
                               f"against")
    checked = [f"model {mp}: SHA-256 matches", f"property: {_describe_property(p)}"]
    if p["kind"] == "min_distortion":
        return _check_distortion(net, mp, p, cert, checked)
    if p["kind"] == "vnnlib":
        vpath = _vnnlib_file(p, vnnlib)
        prop = read_vnnlib(net, vpath)
        checked[1] = f"property: VNN-LIB file {vpath}: SHA-256 matches"
    else:
        prop = robustness(net, p["x"], p["label"], p["eps"], domain=p["domain"],
                          target=p.get("target"))
    status = cert["status"]
    if status == "falsified":
        return _check_counterexample(mp, prop, cert, checked)
    if status == "verified":
        # certificates from before float32 proofs record no arithmetic: theirs was real
        arithmetic = (record.get("options") or {}).get("arithmetic") or \
            (cert.get("stats") or {}).get("arithmetic") or "real"
        return _check_verified(net, prop, cert, checked, method, timeout, arithmetic)
    return CheckResult("passed", f"{status}: the certificate claims no answer; model and property "
                                 f"match", checked)


def _check_counterexample(model_path, prop, cert, checked) -> CheckResult:
    """Replay in the recorded precision: a float32 point on the model itself, or a float64 point
    on its float64 copy -- the latter only inside a box that holds no float32 point."""
    from .replay import PRECISIONS, replay
    precision = (cert.get("stats") or {}).get("replay_precision", "float32")  # older files
    if precision not in PRECISIONS:
        raise CertificateError(f"the certificate's replay precision {precision!r} is not one of "
                               f"{', '.join(PRECISIONS)}")
    cx = np.asarray(cert["counterexample"], np.float64)
    if cx.size != prop.n_inputs:
        return CheckResult("failed", f"the counterexample has {cx.size} values, the property "
                                     f"{prop.n_inputs} inputs", checked)
    is32 = np.array_equal(cx.astype(np.float32).astype(np.float64), cx)
    if precision == "float32" and not is32:
        return CheckResult("failed", "the counterexample is not a float32 input", checked)
    r = replay(model_path, cx, prop)
    if r.ok and (r.precision != precision or not np.array_equal(r.x32.astype(np.float64), cx)):
        return CheckResult("failed", f"the counterexample is recorded as a {precision} replay, "
                                     f"but it replays in {r.precision} (a float64 replay is only "
                                     f"for boxes that hold no float32 input)", checked)
    if not r.ok:
        return CheckResult("failed", f"falsified, but the counterexample does not replay: "
                                     f"{r.reason}", checked)
    run = "onnxruntime output" if precision == "float32" else \
        "its box holds no float32 input; the float64 copy's onnxruntime output"
    checked.append(f"counterexample: {precision}, inside input box {r.case_index}, {run} "
                   f"violates the property (margin {r.margin:.6g})")
    rec = cert.get("output")
    if rec is not None and len(rec) == r.y32.size:
        diff = float(np.max(np.abs(np.asarray(rec, np.float64) - r.y32.astype(np.float64))))
        checked.append("recorded output: identical to this onnxruntime's" if diff == 0 else
                       f"recorded output differs from this onnxruntime's by up to {diff:.3g}")
    return CheckResult("passed", f"falsified: counterexample replayed in onnxruntime "
                                 f"({precision}, margin {r.margin:.4g})", checked)


def _check_verified(net, prop, cert, checked, method, timeout, arithmetic) -> CheckResult:
    from .bounds import compute_bounds
    from .solvers import conjunction_lower
    lows = []
    for case in prop.cases:
        C = np.vstack([np.atleast_2d(c.C) for c in case.unsafe])
        d = np.concatenate([np.ravel(c.d) for c in case.unsafe])
        b = compute_bounds(net, case.box, level="alpha", C=C, d=d, alpha_budget=30.0,
                           arithmetic=arithmetic)
        lows.append(float(conjunction_lower(case.unsafe, b.margin_lower).min()))
    low = min(lows)
    how = cert.get("method") or "?"
    if low > 0:
        checked.append(f"bounds (CROWN, optimised slopes) recomputed in {arithmetic} arithmetic: "
                       f"margin >= {low:.6g} > 0")
        return CheckResult("passed", f"verified: confirmed by bounds (margin >= {low:.4g})", checked)
    checked.append(f"bounds (CROWN, optimised slopes) recomputed: margin >= {low:.6g}, not enough "
                   f"alone")
    if method is not None:
        options = Options().override(method=method, timeout=timeout, arithmetic=arithmetic)
        again = verify_property(net, prop, options)
        checked.append(f"re-run with --method {method}: {again.summary_line()}")
        if again.status == "verified":
            return CheckResult("passed", f"verified: re-proved by {again.method} (margin >= "
                                         f"{again.margin_lower:.4g})", checked)
        if again.status == "falsified":
            return CheckResult("failed", "verified, but the re-run found a counterexample "
                                         "(replayed in onnxruntime)", checked)
        return CheckResult("inconclusive", f"verified by {how}; the re-run with --method "
                                           f"{method} did not decide ({again.status})", checked)
    found = _quick_attack(net, prop)
    if found is not None:
        return CheckResult("failed", f"verified, but a counterexample was found and replayed in "
                                     f"onnxruntime (margin {found:.4g})", checked)
    checked.append("a short attack found no counterexample")
    return CheckResult("incomplete", f"verified by {how}: model and property match, but the "
                                     f"{how} proof was not re-checked (re-run with --method "
                                     f"{_rerun(how)} to re-check it)",
                       checked, [f"the {how} proof"])


def _rerun(how: str) -> str:
    return how if how in ("lp", "milp") else "auto"


def _quick_attack(net, prop, budget: float = 1.0):
    """The margin of a replayed counterexample found within ``budget`` seconds, or None."""
    from .attack import falsify
    if net.model_bytes is None:
        return None
    f = falsify(net, net.model_bytes, prop, time_budget=budget, seed=1)
    return float(prop.cases[f.case_index].margin(f.y32)) if f.found else None


def _check_distortion(net, model_path, p, cert, checked) -> CheckResult:
    from .replay import replay
    norm, status = check_norm(p["norm"]), cert["status"]
    domain = check_domain(p["domain"])
    x = input_vector(p["x"], net.n_inputs, domain, net.input_shape)
    label, target = p["label"], p.get("target")
    not_checked = ["the lower bound's proof (bisection / MILP)"]
    if status == "found":
        cx = np.asarray(cert.get("counterexample") or [], np.float64)
        upper = cert.get("distortion_upper")
        if cx.size != x.size or upper is None:
            return CheckResult("failed", "the certificate's counterexample is missing or has the "
                                         "wrong size", checked)
        dist = distance(cx, x, norm)
        if dist > upper:
            return CheckResult("failed", f"the counterexample lies at distance {dist!r}, beyond the "
                                         f"recorded {upper!r}", checked)
        prop = robustness_property(x, label, float(np.abs(cx - x).max()), domain,
                                   n_outputs=net.n_outputs, target=target)
        r = replay(model_path, cx, prop)
        if not r.ok:
            return CheckResult("failed", f"the counterexample does not replay: {r.reason}", checked)
        checked.append(f"counterexample: float32, in the domain, at distance {dist!r} <= the "
                       f"recorded upper bound, onnxruntime output unsafe (margin {r.margin:.6g})")
    lower = cert.get("distortion_lower")
    if norm == "inf" and lower:
        prop = robustness_property(x, label, float(lower), domain, n_outputs=net.n_outputs,
                                   target=target)
        found = _quick_attack(net, prop)
        if found is not None:
            return CheckResult("failed", f"an input closer than the lower bound {lower:.6g} is "
                                         f"unsafe (replayed, margin {found:.4g})", checked)
        checked.append("a short attack inside the lower bound's ball found nothing")
    if status in ("found", "robust"):
        what = "counterexample replayed; " if status == "found" else ""
        return CheckResult("incomplete", f"minimal distortion ({status}): {what}its lower "
                                         f"bound was not re-proved", checked, not_checked)
    return CheckResult("incomplete", f"minimal distortion ({status}): no answer claimed; model "
                                     f"and input match; its lower bound was not re-proved",
                       checked, not_checked)
