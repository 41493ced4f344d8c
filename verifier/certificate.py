"""Result objects: what a verification run answers, as Python, JSON, human text, VNN-COMP result
files and certificate files.

Two results: ``Certificate`` (verified / falsified / unknown / timeout for one property) and
``MinDistortionResult`` (the minimal adversarial distortion around one input).  Their
``to_dict()`` is plain JSON (no NaN or infinity: non-finite numbers become ``null``), and
``to_json()`` is the ``--json`` object of the CLI.

Certificate files (``verify ... --certificate FILE.json``) wrap that object with what is needed to
re-check it later (``verify --check FILE.json MODEL.onnx``)::

    {"format": "verifier-certificate", "format_version": 1,
     "answer": "falsified", "vnncomp": "sat",      # --min-distortion: "min_distortion:found", null
     "certificate": {<the --json object: status, time_s, margins, counterexample, output, method,
                      stats>},                  # for --min-distortion: the MinDistortionResult's dict
     "model":    {"path": <as given>, "resolved": <absolute>, "sha256": <of the file's bytes>},
     "property": {"kind": "linf_ball", "x": [flat floats], "label": L, "eps": E,
                  "domain": [LO, HI], "target": T|null, "input": {"path", "resolved", "sha256"}}
               | {"kind": "vnnlib", "path", "resolved", "sha256"}
               | {"kind": "min_distortion", "x", "label", "norm", "max_eps", "domain", "target",
                  "input"},
     "options":  {"method": ..., "timeout": ...},
     "versions": {"verifier", "python", "numpy", "scipy", "onnx", "onnxruntime", "highspy", "pulp"},
     "date": "2025-01-31T12:00:00Z",
     "digest": <sha256 of the canonical JSON of everything above>}

The ``digest`` detects edits and truncation; it is not a signature (anyone can recompute it).
What makes a certificate trustworthy is the re-check, which replays counterexamples and recomputes
bounds (see ``verifier.check.check_certificate``).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

STATUSES = ("verified", "falsified", "unknown", "timeout")
EXIT_CODES = {"verified": 0, "falsified": 1, "unknown": 3, "timeout": 3}
VNNCOMP_WORDS = {"verified": "unsat", "falsified": "sat", "unknown": "unknown", "timeout": "timeout"}
# the ``method`` names an answer can carry (how it was reached: the pipeline's methods and the
# bound levels of verifier.bounds.ladder.LEVELS); ``--check`` refuses any other, since it would
# not know how to re-check it.  A new pipeline method must be added here.
METHODS = ("attack", "bounds", "split", "bab", "interval", "symbolic", "alpha", "lp", "milp")
DISTORTION_METHODS = ("bisect", "milp", "replay")
FORMAT = "verifier-certificate"
FORMAT_VERSION = 1


class CertificateError(ValueError):
    """A certificate file is unreadable, malformed or was modified; one line for the user."""


# --------------------------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------------------------
def jsonable(v):
    """``v`` as plain JSON data: numpy arrays and scalars become lists and numbers, tuples become
    lists, dict keys strings, and NaN / infinities ``None`` (strict JSON has no such numbers)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [jsonable(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)


def _dumps(obj, **kw) -> str:
    return json.dumps(jsonable(obj), allow_nan=False, **kw)


def _down(v: float) -> str:
    """``v`` with 6 significant digits, never above ``v`` (a lower bound must stay one)."""
    s = f"{v:.6g}"
    if float(s) > v:
        s = f"{v - 0.5 * 10 ** (math.floor(math.log10(abs(v))) - 5):.6g}" if v else s
    return s


def _up(v: float) -> str:
    """``v`` with 6 significant digits, never below ``v``."""
    return _neg(_down(-v))


def _neg(s: str) -> str:
    return s[1:] if s.startswith("-") else ("0" if s == "0" else "-" + s)


# --------------------------------------------------------------------------------------------
# verification results
# --------------------------------------------------------------------------------------------
@dataclass
class Certificate:
    """The answer for one property.

    ``verified``: ``margin_lower`` > 0 is a bound on the worst-case margin that is sound in floating
    point (``method`` says how it was proved).  ``falsified``: ``counterexample`` (flat input) lies in
    the input region and its onnxruntime float32 ``output`` violates the property;
    ``stats["replay_precision"]`` is "float32", or "float64" when the input box holds no float32
    point and the counterexample (a float64 point) was replayed on a float64 copy of the model.
    ``unknown`` / ``timeout``: the best bounds found, either of which may be ``None``.
    """
    status: str
    time_s: float = 0.0
    margin_lower: float | None = None
    margin_upper: float | None = None
    counterexample: list[float] | None = None
    output: list[float] | None = None
    method: str = ""
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")
        if self.status == "falsified" and self.counterexample is not None and \
                "replay_precision" not in (self.stats or {}):
            self.stats = {**(self.stats or {}),
                          "replay_precision": replay_precision(self.counterexample)}

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict:
        """Exactly the DESIGN's ``--json`` keys, as plain JSON data."""
        return jsonable(asdict(self))

    def to_json(self, **kw) -> str:
        return _dumps(self.to_dict(), **kw)

    @classmethod
    def from_json(cls, text: str) -> "Certificate":
        """From a ``--json`` object or a certificate file's text."""
        d = json.loads(text)
        if isinstance(d, dict) and isinstance(d.get("certificate"), dict):
            d = d["certificate"]
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def summary_line(self) -> str:
        """The one line a person reads first (bounds rounded outward, never overstated)."""
        t = f"{self.time_s:.2f} s"
        if self.status == "verified":
            return f"VERIFIED  margin >= {_down(self.margin_lower)}  ({self.method}, {t})"
        if self.status == "falsified":
            m = "" if self.margin_upper is None else f"margin {self.margin_upper:.4g}  "
            f64 = " (float64 copy: the box holds no float32 input)" \
                if (self.stats or {}).get("replay_precision") == "float64" else ""
            return f"FALSIFIED  {m}counterexample replayed in onnxruntime{f64}  " \
                   f"({self.method}, {t})"
        lo = "-inf" if self.margin_lower is None or not math.isfinite(self.margin_lower) \
            else _down(self.margin_lower)
        hi = "+inf" if self.margin_upper is None or not math.isfinite(self.margin_upper) \
            else _up(self.margin_upper)
        return f"{self.status.upper()}  margin in [{lo}, {hi}]  ({self.method}, {t})"

    def details(self, max_cases: int = 4) -> list[str]:
        """A few indented lines saying what was done (from ``stats``), for the human output."""
        return describe_stats(self.stats, max_cases)


def replay_precision(x) -> str:
    """How a replayed counterexample ``x`` was run: "float32" (the model itself) when every value
    is a float32, else "float64" (its float64 copy).  Replay uses the float64 copy only for boxes
    without a float32 point, whose replayed points therefore always hold a non-float32 value, so
    the point alone tells (``verifier.replay``)."""
    a = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return "float32" if np.array_equal(a.astype(np.float32).astype(np.float64), a) \
            else "float64"


def describe_stats(stats: dict, max_cases: int = 4) -> list[str]:
    """Human lines for the pipeline's ``stats``: attack, bounds per level, split, MILP."""
    lines = []
    s = stats or {}
    head = []
    if "relus" in s:
        head.append(f"{s['relus']} ReLUs")
    if "cases" in s:
        head.append(f"{s['cases']} input box{'es' if s['cases'] != 1 else ''}")
    if head:
        lines.append("  problem  " + ", ".join(head))
    a = s.get("attack")
    if isinstance(a, dict):
        best = a.get("best_margin")
        best = "none" if best is None else f"{best:.4g}"
        lines.append(f"  attack   {a.get('time_s', 0):.2f} s, {a.get('evaluations', 0)} evaluations, "
                     f"best margin {best}, {a.get('replayed', 0)} replayed in onnxruntime")
    cases = s.get("per_case") or []
    for entry in cases[:max_cases]:
        lines.extend(_describe_case(entry, len(cases) > 1))
    if len(cases) > max_cases:
        lines.append(f"  ... and {len(cases) - max_cases} more input boxes (see --json)")
    if s.get("unknown_reason"):
        lines.append(f"  unknown  {s['unknown_reason']}")
    return lines


def _describe_case(entry: dict, many: bool) -> list[str]:
    tag = f"box {entry.get('case', '?')}: " if many else ""
    out = []
    b = entry.get("bounds")
    if isinstance(b, dict) and b.get("levels"):
        ladder = " -> ".join(f"{lv.get('level')} {lv.get('unstable')}" for lv in b["levels"])
        t = sum(lv.get("time_s", 0.0) for lv in b["levels"])
        m = b.get("margin_lower")
        mtxt = ""
        if m:
            vals = [v for v in m if v is not None]
            mtxt = f"; margin >= {_down(min(vals))}" if len(vals) == len(m) else "; margin >= -inf"
        out.append(f"  bounds   {tag}unstable ReLUs {ladder}{mtxt}  ({t:.2f} s)")
    e = entry.get("engine")
    if isinstance(e, dict) and e.get("rows_bounded") is not None:
        rows = sum(int(v) for v in e["rows_bounded"].values())
        capped = e.get("interval_only") or []
        cap = f"; interval bounds only (memory cap) at nodes {capped}" if capped else ""
        out.append(f"  engine   {tag}largest coefficient block {e.get('max_block_bytes', 0) / 2**20:.1f}"
                   f" MiB, {rows} neuron bounds back-substituted{cap}")
    sp = entry.get("split")
    if isinstance(sp, dict):
        leaf = f", {sp['leaf_milps']} leaf MILPs" if sp.get("leaf_milps") else ""
        out.append(f"  split    {tag}{sp.get('domains', 0)} boxes in {sp.get('rounds', 0)} rounds, "
                   f"depth {sp.get('max_depth', 0)}{leaf}, {sp.get('time_s', 0.0):.2f} s")
    bb = entry.get("bab")
    if isinstance(bb, dict):
        leaf = f", {bb['leaf_milps']} leaf MILPs" if bb.get("leaf_milps") else ""
        out.append(f"  bab      {tag}{bb.get('domains', 0)} domains in {bb.get('rounds', 0)} "
                   f"rounds, depth {bb.get('max_depth', 0)}{leaf}, "
                   f"{bb.get('time_s', 0.0):.2f} s")
        if bb.get("message"):
            out.append(f"           {bb['message']}")
    mi = entry.get("milp")
    if isinstance(mi, dict):
        gap = mi.get("gap")
        gap = "-" if gap is None else f"{gap:.3g}"
        st = ",".join(mi.get("solver_status") or []) or "-"
        out.append(f"  milp     {tag}{mi.get('binaries', 0)} binaries, {mi.get('rows', 0)} rows, "
                   f"{mi.get('cols', 0)} columns, {mi.get('nodes', 0)} nodes, gap {gap}, "
                   f"{mi.get('time_solve', 0.0):.2f} s ({st}); "
                   f"{mi.get('solved_conjunctions', '?')} of {mi.get('conjunctions', '?')} "
                   f"output constraints solved")
        if mi.get("message"):
            out.append(f"           {mi['message']}")
    if entry.get("milp_replay") not in (None, "ok"):
        out.append(f"           solver candidate rejected by replay: {entry['milp_replay']}")
    return out


def vnncomp_result(cert: Certificate) -> str:
    """The VNN-COMP result file: ``sat|unsat|unknown|timeout``, then after ``sat`` every input and
    output value at full precision."""
    lines = [VNNCOMP_WORDS[cert.status]]
    if cert.status == "falsified":
        body = [f"(X_{i} {repr(float(v))})" for i, v in enumerate(cert.counterexample)]
        body += [f"(Y_{j} {repr(float(v))})" for j, v in enumerate(cert.output)]
        lines.append("(" + "\n".join(body) + ")")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# minimal distortion
# --------------------------------------------------------------------------------------------
DISTORTION_STATUSES = ("found", "robust", "timeout", "unknown")
NORM_NAMES = {"inf": "L∞", "1": "L1"}


@dataclass
class MinDistortionResult:
    """The smallest distortion (``norm`` "inf" or "1") that changes the answer around one input.

    ``distortion_lower`` is sound: no input closer than it (inside the domain) is in the unsafe
    region.  ``distortion_upper`` is the exact distance of ``counterexample``, a float32 input inside
    the domain whose onnxruntime ``output`` is in the unsafe region (replayed); both are ``None``
    when no such input was replayed (``replay`` says why).  ``status``: ``found`` (counterexample
    replayed and ``upper - lower <= gap * upper``), ``robust`` (nothing unsafe within ``max_eps``:
    ``distortion_lower`` = the search radius), ``timeout`` / ``unknown`` (time ran out, or no
    replayed counterexample).
    """
    status: str
    norm: str
    distortion_lower: float | None
    distortion_upper: float | None
    counterexample: list[float] | None = None
    output: list[float] | None = None
    replay: str = ""
    method: str = ""
    time_s: float = 0.0
    gap: float = 1e-3
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in DISTORTION_STATUSES:
            raise ValueError(f"unknown status {self.status!r}")

    @property
    def exit_code(self) -> int:
        """0 when answered (bracketed to the gap with a replayed counterexample, or robust),
        else 3."""
        return 0 if self.status in ("found", "robust") else 3

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    def to_json(self, **kw) -> str:
        return _dumps(self.to_dict(), **kw)

    def summary_line(self) -> str:
        n = NORM_NAMES.get(self.norm, self.norm)
        t = f"({self.method}, {self.time_s:.2f} s)"
        lo = "0" if self.distortion_lower is None else _down(self.distortion_lower)
        if self.status == "robust":
            return f"MIN DISTORTION  {n} > {lo}: nothing unsafe within the search radius  {t}"
        hi = "+inf" if self.distortion_upper is None else _up(self.distortion_upper)
        cx = "counterexample replayed" if self.counterexample is not None else \
            f"no replayed counterexample ({self.replay})" if self.replay else "no counterexample"
        tag = "" if self.status == "found" else f"  {self.status.upper()} (gap above {self.gap:g})"
        return f"MIN DISTORTION  {n} in [{lo}, {hi}]  {cx}{tag}  {t}"

    def details(self) -> list[str]:
        s = self.stats or {}
        lines = []
        if "radius" in s:
            lines.append(f"  search   radius {s['radius']:.6g} around the input, gap target "
                         f"{self.gap:g} (relative)")
        if "steps" in s:
            n = len(s["steps"])
            lines.append(f"  bisect   {n} radi{'us' if n == 1 else 'i'} tried, bounds "
                         f"{s.get('time_bounds', 0):.2f} s, solves {s.get('time_solve', 0):.2f} s")
        elif "binaries" in s:
            lines.append(f"  milp     {s.get('binaries', 0)} binaries, {s.get('rows', 0)} rows, "
                         f"{s.get('nodes', 0)} nodes, {s.get('time_solve', 0):.2f} s")
        if self.counterexample is not None and self.output is not None:
            lines.append(f"  replay   float32 counterexample at distance {self.distortion_upper!r}, "
                         f"margin {s.get('replay_margin', float('nan')):.4g}")
        if s.get("note"):
            lines.append(f"  note     {s['note']}")
        return lines


# --------------------------------------------------------------------------------------------
# certificate files
# --------------------------------------------------------------------------------------------
def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    """Versions of the verifier, Python and the packages an answer depends on."""
    import platform
    from importlib import metadata

    from . import __version__
    out = {"verifier": __version__, "python": platform.python_version()}
    for name in ("numpy", "scipy", "onnx", "onnxruntime", "highspy", "pulp"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_entry(path) -> dict:
    """``{"path", "resolved", "sha256"}`` of a file as the user named it."""
    p = Path(path)
    return {"path": str(path), "resolved": str(p.resolve()), "sha256": file_sha256(p)}


def _digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def certificate_record(result, *, model_path, prop: dict, options: dict) -> dict:
    """The certificate file's content for ``result`` (a Certificate or MinDistortionResult)."""
    import datetime
    if isinstance(result, MinDistortionResult):
        answer, word = f"min_distortion:{result.status}", None
    else:
        answer, word = result.status, VNNCOMP_WORDS[result.status]
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "answer": answer,
              "vnncomp": word, "certificate": result.to_dict(), "model": file_entry(model_path),
              "property": jsonable(prop), "options": jsonable(options), "versions": versions(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    record = jsonable(record)
    record["digest"] = _digest(record)
    return record


def write_certificate(path, record: dict) -> None:
    Path(path).write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")


_KINDS = {"linf_ball": ("x", "label", "eps", "domain"), "vnnlib": ("path", "sha256"),
          "min_distortion": ("x", "label", "norm", "domain")}


def read_certificate(path) -> dict:
    """Read and validate a certificate file; ``CertificateError`` (one line) if it is not one,
    is malformed, or was modified after it was written (digest mismatch)."""
    p = Path(path)
    if p.is_dir():
        raise CertificateError(f"certificate {p} is a directory, not a file")
    if not p.is_file():
        raise CertificateError(f"certificate file not found: {p}")
    try:
        record = json.loads(p.read_bytes().decode("utf-8"),
                            parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CertificateError(f"{p.name} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CertificateError(f"{p.name} is not a verifier certificate file (no "
                               f"\"format\": \"{FORMAT}\"; write one with --certificate)")
    if record.get("format_version") != FORMAT_VERSION:
        raise CertificateError(f"{p.name}: unsupported certificate format version "
                               f"{record.get('format_version')!r} (this verifier reads "
                               f"{FORMAT_VERSION})")
    if record.get("digest") != _digest(record):
        raise CertificateError(f"{p.name} was modified after it was written (digest mismatch)")
    _validate(record, p.name)
    return record


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(record: dict, name: str) -> None:
    """Types of every field the re-check reads (the digest proves integrity, not sense)."""
    def need(cond, what):
        if not cond:
            raise CertificateError(f"{name}: malformed certificate ({what})")

    cert, model, prop = record.get("certificate"), record.get("model"), record.get("property")
    need(isinstance(cert, dict) and isinstance(model, dict) and isinstance(prop, dict),
         "certificate, model and property must be objects")
    need(isinstance(model.get("sha256"), str), "model.sha256")
    kind = prop.get("kind")
    need(isinstance(kind, str) and kind in _KINDS, f"unknown property kind {kind!r}")
    need(all(k in prop for k in _KINDS[kind]), f"property needs {', '.join(_KINDS[kind])}")
    if kind == "vnnlib":
        need(isinstance(prop["path"], str) and isinstance(prop["sha256"], str)
             and isinstance(prop.get("resolved", ""), str), "property.path / sha256")
    else:
        x = prop["x"]
        need(isinstance(x, list) and x and all(_is_num(v) for v in x), "property.x")
        need(_is_int(prop["label"]), "property.label")
        need(prop.get("target") is None or _is_int(prop["target"]), "property.target")
        dom = prop["domain"]
        need(isinstance(dom, list) and len(dom) == 2 and all(_is_num(v) for v in dom),
             "property.domain")
    if kind == "linf_ball":
        need(_is_num(prop["eps"]), "property.eps")
    if kind == "min_distortion":
        need(isinstance(prop["norm"], str), "property.norm")
        need(prop.get("max_eps") is None or _is_num(prop["max_eps"]), "property.max_eps")
    cx, out = cert.get("counterexample"), cert.get("output")
    for v, what in ((cx, "counterexample"), (out, "output")):
        need(v is None or (isinstance(v, list) and all(_is_num(u) for u in v)),
             f"certificate.{what}")
    need(isinstance(cert.get("method", ""), str), "certificate.method")
    need(_is_num(cert.get("time_s", 0.0)), "certificate.time_s")
    if kind == "min_distortion":
        need(cert.get("status") in DISTORTION_STATUSES, "certificate.status")
        for k in ("distortion_lower", "distortion_upper"):
            need(cert.get(k) is None or _is_num(cert[k]), f"certificate.{k}")
    else:
        status = cert.get("status")
        need(status in STATUSES, "certificate.status")
        for k in ("margin_lower", "margin_upper"):
            need(cert.get(k) is None or _is_num(cert[k]), f"certificate.{k}")
        need(status != "falsified" or isinstance(cx, list),
             "a falsified certificate needs its counterexample")
        need(status != "verified" or (_is_num(cert.get("margin_lower")) and
                                      cert["margin_lower"] > 0 and cx is None),
             "a verified certificate needs margin_lower > 0 and no counterexample")
