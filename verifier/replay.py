"""Counterexample replay in onnxruntime: the only gate through which a ``falsified`` answer may pass.

``replay(model, x, prop)`` turns a candidate input into a float32 point ``x32`` that lies inside a
case's box, runs the ONNX model in onnxruntime on it, and accepts only if the float32 output ``y32``
lies in that case's unsafe region.

A box in which some coordinate's interval holds no float32 value at all (VNN-LIB files that pin an
input to a decimal such as 0.1) cannot be replayed on the float32 model.  For such a case the
candidate, clipped into the box in float64, is run on a float64 copy of the model
(``onnx_float64``) instead, and ``precision`` says "float64"; the point and the output are then
float64 arrays (still called ``x32`` / ``y32``).

Guaranteed when ``ok`` is True:
  * ``precision == "float32"``: ``x32`` is a float32 vector; ``"float64"``: ``x32`` is a float64
    vector and the box of its case holds no float32 point;
  * ``case.box.lower <= x32 <= case.box.upper`` holds exactly (compared in float64, where float32
    values are exact) for ``case = prop.cases[case_index]``;
  * ``y32`` is exactly what onnxruntime returned for ``x32`` (first output, flattened), all finite,
    from the model itself (float32) or from its float64 copy (float64);
  * ``C_i y32 - d_i <= 0`` for every row of one conjunction of that case, decided exactly: margins
    computed in float64 are trusted only when far from 0 compared with their rounding error, and
    re-decided in rational arithmetic otherwise (``margin`` holds the float64 case margin).
Nothing else is claimed; callers must report ``x32`` / ``y32`` (not the float64 candidate).
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ReplayResult", "replay", "ort_session", "run_model", "to_float32_in_box",
           "case_margins", "PRECISIONS"]

PRECISIONS = ("float32", "float64")


@dataclass(frozen=True, eq=False)
class ReplayResult:
    ok: bool
    x32: np.ndarray | None           # flat input that was run (None if none could be made):
                                     # float32, or float64 when precision is "float64"
    y32: np.ndarray | None           # flat output of onnxruntime on x32 (float32; float64 for a
                                     # model with double outputs or the float64 copy, never rounded)
    case_index: int | None           # the case whose box holds x32 and whose unsafe region holds y32
    reason: str                      # "" when ok, else why the candidate was rejected
    margin: float | None = None      # that case's margin on y32 (float64; <= 0 when ok)
    precision: str = "float32"       # the model run: as it is ("float32") or its float64 copy


# --------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------
_CACHE_SIZE = 8
_cache: "OrderedDict[str, object]" = OrderedDict()
_lock = threading.Lock()


def _model_bytes_and_key(model) -> tuple[str, object]:
    """A cache key plus a zero-arg loader for the model's serialized bytes."""
    if isinstance(model, (str, os.PathLike)):
        p = Path(model).resolve()
        st = p.stat()   # key on path + size + mtime so an edited file is not served stale

        def load() -> bytes:
            from .onnx_loader import read_model_bytes    # gunzips, within the size limit
            return read_model_bytes(p)
        return f"path:{p}:{st.st_size}:{st.st_mtime_ns}", load
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        raise TypeError(f"model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")
    return "sha256:" + hashlib.sha256(data).hexdigest(), (lambda: data)


def ort_session(model, precision: str = "float32"):
    """A cached onnxruntime ``InferenceSession`` (CPU, one intra-op and one inter-op thread) of
    the model, or with ``precision="float64"`` of its float64 copy (``Float64Unsupported`` if it
    has none)."""
    import onnxruntime as ort   # imported lazily: importing the attack must not need onnxruntime

    key, load = _model_bytes_and_key(model)
    if precision == "float64":
        from .onnx_float64 import float64_copy
        key, raw = "float64:" + key, load

        def load() -> bytes:
            return float64_copy(raw())
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(load(), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        if precision != "float64":
            raise
        from .onnx_float64 import Float64Unsupported
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Float64Unsupported(f"onnxruntime cannot run it: {msg}") from None
    with _lock:
        _cache[key] = sess
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return sess


def _input_spec(sess) -> tuple[str, tuple[int, ...], type]:
    inp = sess.get_inputs()[0]
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in inp.shape)  # symbolic -> 1
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64}.get(inp.type)
    if dtype is None:
        raise ValueError(f"model input {inp.name!r} has type {inp.type}; only float inputs are supported")
    return inp.name, shape, dtype


def run_model(model, x32: np.ndarray, precision: str = "float32") -> np.ndarray:
    """Run the model on one float32 flat input, or its float64 copy on a float64 one
    (``precision="float64"``); returns the first output, flattened (its own dtype)."""
    sess = ort_session(model, precision)
    name, shape, dtype = _input_spec(sess)
    x = np.asarray(x32, dtype=np.float32 if precision == "float32" else np.float64).reshape(-1)
    if x.size != int(np.prod(shape)):
        raise ValueError(f"input has {x.size} values but the model's input {shape} needs "
                         f"{int(np.prod(shape))}")
    if precision == "float64" and dtype != np.float64:
        raise ValueError("the float64 copy of the model does not take double inputs")
    out = sess.run(None, {name: x.reshape(shape).astype(dtype)})[0]  # float32 -> double is exact
    return np.asarray(out).reshape(-1)


# --------------------------------------------------------------------------------------------
# float32 rounding that stays in the box
# --------------------------------------------------------------------------------------------
def to_float32_in_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray | None:
    """Round ``x`` (float64, assumed inside [lower, upper]) to float32 and pull every coordinate that
    rounding pushed outside back to the nearest float32 inside the box.  ``None`` if some coordinate
    has no float32 value in [lower, upper] at all."""
    x = np.asarray(x, dtype=np.float64)
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    x32 = x.astype(np.float32)
    # smallest float32 >= lo and largest float32 <= hi (float32 -> float64 comparisons are exact)
    lo32 = lo.astype(np.float32)
    lo32 = np.where(lo32.astype(np.float64) < lo, np.nextafter(lo32, np.float32(np.inf)), lo32)
    hi32 = hi.astype(np.float32)
    hi32 = np.where(hi32.astype(np.float64) > hi, np.nextafter(hi32, np.float32(-np.inf)), hi32)
    x32 = np.where(x32.astype(np.float64) < lo, lo32, x32)
    x32 = np.where(x32.astype(np.float64) > hi, hi32, x32)
    x64 = x32.astype(np.float64)
    if not (np.all(x64 >= lo) and np.all(x64 <= hi)):
        return None
    return x32.astype(np.float32)


def case_margins(case, y: np.ndarray) -> np.ndarray:
    """Margin of each conjunction of ``case`` at ``y`` (float64); -inf for an empty conjunction."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    out = np.empty(len(case.unsafe))
    for k, conj in enumerate(case.unsafe):
        out[k] = np.max(conj.C @ y - conj.d) if conj.d.size else -np.inf
    return out


def _violates(case, y: np.ndarray, margins: np.ndarray) -> bool:
    """Is ``y`` in the unsafe region of ``case``, decided exactly?

    Float64 margins far from 0 are trusted (their rounding error is far below the slack); a margin
    within a safe multiple of the rounding error of ``C @ y - d`` is re-decided in exact rational
    arithmetic, so a rounding error can never turn a safe output into a "violation".
    """
    y = np.asarray(y, dtype=np.float64)
    for conj, m in zip(case.unsafe, margins):
        if conj.d.size == 0:
            return True
        scale = float(np.max(np.abs(conj.C) @ np.abs(y) + np.abs(conj.d)))
        slack = 1e-9 * scale   # >> n * 2^-53 * scale, the worst float64 error of the dot product
        if m < -slack:
            return True
        if m <= slack and _exact_nonpositive(conj.C, conj.d, y):
            return True
    return False


def _exact_nonpositive(C: np.ndarray, d: np.ndarray, y: np.ndarray) -> bool:
    """All rows ``C_i y - d_i <= 0`` in exact rational arithmetic (floats are exact rationals)."""
    from fractions import Fraction
    yq = [Fraction(float(v)) for v in y]
    for Ci, di in zip(C, d):
        nz = np.flatnonzero(Ci)
        if sum(Fraction(float(Ci[j])) * yq[j] for j in nz) - Fraction(float(di)) > 0:
            return False
    return True


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------
def replay(model, x, prop, *, project: bool = False) -> ReplayResult:
    """Check a candidate counterexample ``x`` (flat, any float dtype) for ``prop`` in onnxruntime.

    The candidate is tried against every case whose box contains ``x`` exactly (float64).  With
    ``project=True`` a point outside every box is first clipped into each box (for candidates from a
    solver that may leave its bounds by a tolerance); what is reported is always the replayed ``x32``.
    See the module docstring for what ``ok=True`` guarantees.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != prop.n_inputs:
        return ReplayResult(False, None, None, None,
                            f"candidate has {x.size} values, property has {prop.n_inputs} inputs")
    if not np.all(np.isfinite(x)):
        return ReplayResult(False, None, None, None, "candidate contains NaN or inf")
    inside = [k for k, c in enumerate(prop.cases) if c.box.contains(x)]
    if not inside:
        if not project:
            return ReplayResult(False, None, None, None, "candidate lies outside every input box")
        inside = list(range(len(prop.cases)))
    last = ReplayResult(False, None, None, None, "no case could be replayed")
    outputs: dict[bytes, np.ndarray] = {}    # several cases may round to the same x32
    for k in inside:
        case = prop.cases[k]
        xk = np.clip(x, case.box.lower, case.box.upper)     # exact: stays inside in float64
        x32 = to_float32_in_box(xk, case.box.lower, case.box.upper)
        precision = "float32"
        if x32 is None:              # no float32 input in this box: the float64 copy decides
            x32, precision = xk, "float64"
        key = precision.encode() + x32.tobytes()
        if key not in outputs:
            try:
                outputs[key] = run_model(model, x32, precision)
            except Exception as e:   # any onnxruntime failure: not a counterexample
                why = "box holds no float32 point, and the float64 copy of the model failed: " \
                    if precision == "float64" else "onnxruntime run failed: "
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                return ReplayResult(False, x32, None, k, f"case {k}: {why}{first}",
                                    precision=precision)
        y = outputs[key]
        if y.size != prop.n_outputs:
            return ReplayResult(False, x32, y.astype(np.float32), k,
                                f"model returned {y.size} outputs, property has {prop.n_outputs}",
                                precision=precision)
        # float models return float32; a double output is kept as it is (never rounded)
        y32 = y if y.dtype == np.float64 else y.astype(np.float32)
        if not np.all(np.isfinite(y32)):
            last = ReplayResult(False, x32, y32, k, "model output contains NaN or inf",
                                precision=precision)
            continue
        m = case_margins(case, y32)
        margin = float(np.min(m))
        if _violates(case, y32, m):
            return ReplayResult(True, x32, y32, k, "", margin, precision)
        last = ReplayResult(False, x32, y32, k, f"case {k}: {precision} output is safe (margin "
                                                f"{margin:.6g} > 0)", margin, precision)
    return last
