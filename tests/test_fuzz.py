"""Fuzzing the `verify` command with corrupted files: ONNX models, VNN-LIB properties, .npy inputs.

Each corrupted file goes through ``verifier.cli.main`` in-process.  Required every time:
- no uncaught exception and no "internal error" line (an internal error is a bug, not bad input);
- an exit code in {0, 1, 2, 3} (4 too for `--check`: a proof that was not re-checked);
- a file that does not load on its own (the loader / the VNN-LIB parser / numpy + the input checks,
  called directly here) gives exit 2: never an answer on a file that does not parse; and a valid
  VNN-LIB or input file gives an answer (0, 1 or 3), not an error.
Seeded, so a failure reproduces; a few hundred runs in well under a minute.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from verifier.cli import main
from verifier.onnx_loader import load
from verifier.vnnlib import parse_vnnlib

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "models" / "digits_mlp.onnx"
SAMPLE = ROOT / "models" / "digits_sample0.npy"
ACAS = ROOT / "benchmarks" / "vnncomp2022" / "acasxu"
ACAS_NET = ACAS / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx"
FAST = ["--method", "bounds", "--timeout", "2"]


# --------------------------------------------------------------------------------------------
# mutations
# --------------------------------------------------------------------------------------------
def _bytes_mutation(data: bytes, rng) -> bytes:
    """Truncate, flip bytes, delete or duplicate a chunk, or overwrite a chunk with noise."""
    b = bytearray(data)
    kind = rng.integers(5)
    n = len(b)
    if kind == 0:
        return bytes(b[: rng.integers(0, n)])
    if kind == 1:
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(n)
            b[i] ^= 1 << int(rng.integers(8))
        return bytes(b)
    i = int(rng.integers(n))
    k = int(rng.integers(1, 64))
    if kind == 2:
        del b[i:i + k]
    elif kind == 3:
        b[i:i] = b[i:i + k]
    else:
        b[i:i + k] = rng.integers(0, 256, size=len(b[i:i + k]), dtype=np.uint8).tobytes()
    return bytes(b)


_NUM = re.compile(r"[+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?")
_PIECE = re.compile(r"\s+|;[^\n]*|\(|\)|[^\s();]+")


def _text_mutation(text: str, rng) -> str:
    """Token-level edits (swap, delete, duplicate, replace by a hostile token, cut) that keep the
    file's line structure (comments stay comments), or byte edits."""
    pieces = _PIECE.findall(text)
    toks = [k for k, p in enumerate(pieces) if not p.isspace() and not p.startswith(";")]
    nums = [k for k in toks if _NUM.fullmatch(pieces[k])]
    kind = rng.integers(8)
    if kind == 5:
        return _bytes_mutation(text.encode(), rng).decode("latin-1")
    if kind >= 6 and nums:          # still parses, usually: a new constant, or two swapped
        i, j = (nums[int(v)] for v in rng.integers(len(nums), size=2))
        if kind == 6:
            pieces[i] = repr(float(rng.normal() * 10.0 ** rng.integers(-3, 4)))
        else:
            pieces[i], pieces[j] = pieces[j], pieces[i]
        return "".join(pieces)
    i, j = (toks[int(v)] for v in rng.integers(len(toks), size=2))
    if kind == 0:
        pieces[i], pieces[j] = pieces[j], pieces[i]
    elif kind == 1:
        pieces[i] = ""
    elif kind == 2:
        pieces[i] = pieces[j] + " " + pieces[i]
    elif kind == 3:
        pieces[i] = str(rng.choice(["nan", "inf", "-inf", "1e999", "X_99999999", "Y_7", "X_-1",
                                    "(", ")", "or", "and", "assert", "declare-const", "<=", "",
                                    "0x1p3", "1..2", "--1", "X_0", "Y_0", "1e-400", "-0"]))
    else:
        pieces = pieces[: i]                                 # cut mid-formula
    return "".join(pieces)


# --------------------------------------------------------------------------------------------
# standalone oracles: does the file load on its own?
# --------------------------------------------------------------------------------------------
def _loads_onnx(path) -> bool:
    try:
        load(path)
        return True
    except Exception:
        return False


def _parses_vnnlib(path) -> bool:
    try:
        parse_vnnlib(path, n_inputs=5, n_outputs=5)
        return True
    except Exception:
        return False


def _valid_input(path) -> bool:
    try:
        x = np.load(path, allow_pickle=False)
    except Exception:
        return False
    if not isinstance(x, np.ndarray) or x.dtype == bool or not (
            np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        return False
    x = x.astype(np.float64)
    return x.size == 64 and bool(np.all(np.isfinite(x))) and x.min() >= -1e-6 \
        and x.max() <= 1 + 1e-6


def _run(capsys, args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "internal error" not in err and "Traceback" not in err, (args, err)
    assert code in (0, 1, 2, 3, 4), (args, code, err)     # 4: --check, proof not re-checked
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err
    return code, out, err


# --------------------------------------------------------------------------------------------
# the fuzz runs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits_mlp", "digits_mlp_dynamo", "digits_cnn_maxpool"])
def test_fuzz_onnx(capsys, tmp_path, name):
    rng = np.random.default_rng(2024)
    data = (ROOT / "models" / f"{name}.onnx").read_bytes()
    loaded = 0
    for k in range(110):
        path = tmp_path / f"m{k}.onnx"
        path.write_bytes(_bytes_mutation(data, rng))
        ok = _loads_onnx(path)
        loaded += ok
        code, _, err = _run(capsys, [path, "--eps", 0.01, "--input", SAMPLE, "--label", 1, *FAST])
        if not ok:
            assert code == 2, (k, code, err)
    assert 0 < loaded < 110          # the mutations hit both sides (weights and structure)


def test_fuzz_vnnlib(capsys, tmp_path):
    rng = np.random.default_rng(7)
    sources = [(ACAS / "vnnlib" / f"prop_{i}.vnnlib").read_text() for i in (1, 2, 3, 4, 6, 7)]
    parsed = 0
    for k in range(200):
        path = tmp_path / f"p{k}.vnnlib"
        path.write_text(_text_mutation(sources[k % len(sources)], rng), encoding="latin-1")
        ok = _parses_vnnlib(path)
        parsed += ok
        code, _, err = _run(capsys, [ACAS_NET, "--vnnlib", path, *FAST])
        assert (code in (0, 1, 3)) if ok else (code == 2), (k, ok, code, err)
    assert 0 < parsed < 200


def test_fuzz_npy(capsys, tmp_path):
    rng = np.random.default_rng(11)
    data = SAMPLE.read_bytes()
    valid = 0
    for k in range(150):
        path = tmp_path / f"x{k}.npy"
        path.write_bytes(_bytes_mutation(data, rng))
        ok = _valid_input(path)
        valid += ok
        code, _, err = _run(capsys, [MLP, "--eps", 0.01, "--input", path, "--label", 1, *FAST])
        assert (code in (0, 1, 3)) if ok else (code == 2), (k, ok, code, err)
    assert 0 < valid < 150


@pytest.mark.parametrize("payload", [
    b"", b"\x00" * 100, b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 70000,
    b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999,), }"
    + b" " * 43 + b"\n",
])
def test_hostile_npy_headers(capsys, tmp_path, payload):
    path = tmp_path / "x.npy"
    path.write_bytes(payload)
    code, _, _ = _run(capsys, [MLP, "--eps", 0.01, "--input", path, "--label", 1, *FAST])
    assert code == 2


def test_fuzz_certificate(capsys, tmp_path):
    """A corrupted certificate is refused (exit 2) unless it still holds the same JSON."""
    cert = tmp_path / "c.json"
    assert main([str(MLP), "--eps", "0.05", "--input", str(SAMPLE), "--label", "1",
                 "--certificate", str(cert)]) == 1
    capsys.readouterr()
    data = cert.read_bytes()
    original = json.loads(data)
    rng = np.random.default_rng(5)
    for k in range(80):
        path = tmp_path / f"c{k}.json"
        path.write_bytes(_bytes_mutation(data, rng))
        try:
            same = json.loads(path.read_bytes()) == original
        except ValueError:
            same = False
        code, _, err = _run(capsys, ["--check", path, MLP])
        assert code == (0 if same else 2), (k, code, err)


def _leaves(obj, path=()):
    """Paths to every field of a JSON object (lists of numbers count as one field)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    if not isinstance(obj, dict):
        yield path


def test_fuzz_certificate_fields(capsys, tmp_path):
    """Doctored certificates whose digest was recomputed (so only the re-check can object): any
    field set to a value of the wrong type or an absurd value gives a clean answer."""
    from verifier.certificate import _digest
    certs = []
    for k, extra in enumerate((["--eps", "0.05"], ["--eps", "0.01"], ["--min-distortion"])):
        c = tmp_path / f"c{k}.json"
        main([str(MLP), "--input", str(SAMPLE), "--label", "1", *extra, "--certificate", str(c)])
        certs.append(json.loads(c.read_text()))
    capsys.readouterr()
    values = ["x", None, -1, 0, 1e308, -1e-300, [], {}, True, [0.5] * 3, "verified", "found"]
    rng = np.random.default_rng(3)
    for k in range(150):
        rec = json.loads(json.dumps(certs[k % 3]))
        paths = [p for p in _leaves(rec) if p and p[0] in ("certificate", "property", "model")
                 and p[:2] != ("certificate", "stats")]
        path = paths[rng.integers(len(paths))]
        node = rec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = values[rng.integers(len(values))]
        rec["digest"] = _digest(rec)
        f = tmp_path / "d.json"
        f.write_text(json.dumps(rec))
        _run(capsys, ["--check", f, MLP])
