"""The instances file (VNN-COMP ``onnx,vnnlib,timeout`` rows) and the expected answers beside it.

An ``expected.csv`` beside the instances (header ``onnx,vnnlib,expected``; sat/unsat/...) gives the
known answers: ``sat`` means a counterexample exists (correct answer: falsified), ``unsat`` that
none does (verified).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BatchError

# the answer a correct verifier gives for each word an expected.csv may use
_EXPECTED_ANSWER = {"sat": "falsified", "violated": "falsified", "falsified": "falsified",
                    "unsat": "verified", "holds": "verified", "verified": "verified"}


@dataclass(frozen=True)
class Instance:
    onnx: str                   # as written in the instances file (the key in the results file)
    vnnlib: str
    timeout: float
    onnx_path: str              # absolute, resolved against the instances file's folder
    vnnlib_path: str
    expected: str | None = None  # "sat" / "unsat" / "unknown" / ... from expected.csv

    @property
    def key(self) -> tuple[str, str]:
        return (self.onnx, self.vnnlib)

    def task(self, method: str, timeout: float | None = None,
             arithmetic: str | None = None, threads: int | None = None) -> dict:
        """What a worker runs (see ``worker``): ``runner(onnx_path, vnnlib_path, timeout=,
        method=[, arithmetic=][, threads=])`` with a hard limit of ``timeout`` plus the grace."""
        t = float(timeout or self.timeout)
        kwargs = {"timeout": t, "method": method}
        if arithmetic is not None:
            kwargs["arithmetic"] = arithmetic
        if threads is not None:
            kwargs["threads"] = threads
        return {"args": [self.onnx_path, self.vnnlib_path], "kwargs": kwargs,
                "timeout": t, "group": self.onnx_path}


def read_csv_rows(path) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of a UTF-8 CSV file; undecodable bytes or a malformed line
    (a NUL byte, a field over the csv module's 131 072-character limit) are ``BatchError``."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BatchError(f"{path}: not UTF-8 text (byte {e.start} cannot be decoded)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            if any("\x00" in c for c in row):     # no file name holds one; os calls refuse it
                raise BatchError(f"{path}: line {reader.line_num}: contains a NUL byte")
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise BatchError(f"{path}: line {reader.line_num}: not a CSV line ({e})") from None
    return rows


def _norm(p: str) -> str:
    p = os.path.normpath(p.strip())
    return p[:-3] if p.endswith(".gz") else p


def _local_path(folder: Path, rel: str) -> str:
    p = Path(rel) if os.path.isabs(rel) else folder / rel
    if not p.exists() and Path(str(p) + ".gz").exists():     # VNN-COMP repos ship files gzipped
        p = Path(str(p) + ".gz")
    return os.path.abspath(p)


def read_expected(path) -> dict[tuple[str, str], str]:
    """``expected.csv`` -> {(onnx, vnnlib) normalised: answer word in lower case}."""
    out = {}
    rows = [(n, r) for n, r in read_csv_rows(path) if r and any(c.strip() for c in r)]
    if not rows:
        return out
    header = [c.strip().lower() for c in rows[0][1]]
    try:
        io_, iv, ie = header.index("onnx"), header.index("vnnlib"), header.index("expected")
    except ValueError:
        raise BatchError(f"{path}: needs a header with columns onnx,vnnlib,expected") from None
    for n, r in rows[1:]:
        if len(r) <= max(io_, iv, ie):
            raise BatchError(f"{path}: line {n} has {len(r)} fields, expected {len(header)}")
        out[(_norm(r[io_]), _norm(r[iv]))] = r[ie].strip().lower()
    return out


def read_instances(instances_csv) -> list[Instance]:
    """Rows ``onnx,vnnlib,timeout`` (no header; blank and ``#`` lines skipped; a repeated
    (onnx, vnnlib) pair keeps its first row). Paths are relative to the file's folder."""
    path = Path(instances_csv)
    if not path.is_file():
        raise BatchError(f"instances file not found: {path}")
    folder = path.resolve().parent
    exp_path = folder / "expected.csv"
    expected = read_expected(exp_path) if exp_path.is_file() else {}
    out, seen = [], set()
    for n, row in read_csv_rows(path):
        row = [c.strip() for c in row]
        if not any(row) or row[0].startswith("#"):
            continue
        if len(row) != 3:
            raise BatchError(f"{path}: line {n}: expected onnx,vnnlib,timeout, got "
                             f"{len(row)} fields")
        onnx, vnnlib, t = row
        try:
            timeout = float(t)
        except ValueError:
            if n == 1 and t.lower() == "timeout":       # tolerate a header row
                continue
            raise BatchError(f"{path}: line {n}: timeout {t!r} is not a number") from None
        if not (math.isfinite(timeout) and timeout > 0):
            raise BatchError(f"{path}: line {n}: timeout must be > 0 seconds, got {t}")
        if (onnx, vnnlib) in seen:
            continue
        seen.add((onnx, vnnlib))
        out.append(Instance(onnx, vnnlib, timeout, _local_path(folder, onnx),
                            _local_path(folder, vnnlib),
                            expected.get((_norm(onnx), _norm(vnnlib)))))
    if not out:
        raise BatchError(f"{path}: no instances")
    return out


def judge(status: str, expected: str | None) -> str | None:
    """``correct`` / ``wrong`` / ``undecided`` against a known answer; None if none is known.
    Wrong = verified where a counterexample exists (sat), or falsified where none does (unsat)."""
    answer = _EXPECTED_ANSWER.get((expected or "").strip().lower())
    if answer is None:
        return None
    if status not in ("verified", "falsified"):
        return "undecided"
    return "correct" if status == answer else "wrong"
