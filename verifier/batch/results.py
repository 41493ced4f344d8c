"""Results files: one CSV row per finished task, appended, never rewritten; and what a row is.

Guarantees of a results file:
- one row per finished task, appended with a single ``os.write`` of the whole line on an
  ``O_APPEND`` descriptor and fsync'ed, so a ``kill -9`` of the run loses no finished row and can
  at most leave one partial last line, which ``resume`` cuts off before appending;
- one run at a time: the file is locked (``flock``) while a run has it open, so a second run on
  the same file is refused instead of writing every row twice;
- with ``resume``, the rows already there are read back (``rows``, by key) and not run again.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from pathlib import Path

from .errors import BatchError

STATUSES = ("verified", "falsified", "unknown", "timeout", "error")


# ------------------------------------------------------------------------------------------------
# rows, as workers return them (plus the caller's own columns)
# ------------------------------------------------------------------------------------------------
def make_row(status, time_s, method="", note="", margin_lower=None, margin_upper=None, cert=None):
    return {"status": status, "time_s": time_s, "margin_lower": margin_lower,
            "margin_upper": margin_upper, "method": method, "note": note, "cert": cert}


def timeout_row(task: dict, elapsed: float, limit: float) -> dict:
    return make_row("timeout", elapsed, task["kwargs"].get("method", ""),
                    f"killed at the hard limit ({limit:.3g} s)")


def died_row(task: dict, elapsed: float, returncode) -> dict:
    how = f"signal {-returncode}" if isinstance(returncode, int) and returncode < 0 \
        else f"exit code {returncode}"
    return make_row("error", elapsed, task["kwargs"].get("method", ""),
                    f"worker process died ({how})")


def fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)              # full precision: margins are evidence
    return str(v)


def _plain(v):
    return v.tolist() if hasattr(v, "tolist") else str(v)     # numpy values in stats


def json_row(row: dict, keys: dict) -> dict:
    """The ``--json`` object of one finished task: ``keys`` (what identifies it), then the
    DESIGN's fields, then ``expected``/``correct``/``note`` when set."""
    cert = dict(row.get("cert") or {})
    d = {**keys, "status": row["status"],
         "time_s": row.get("time_s"), "margin_lower": row.get("margin_lower"),
         "margin_upper": row.get("margin_upper"), "counterexample": cert.get("counterexample"),
         "output": cert.get("output"), "method": row.get("method", ""),
         "stats": cert.get("stats", {})}
    for k in ("expected", "correct", "note"):
        if row.get(k):
            d[k] = row[k]
    for k in ("margin_lower", "margin_upper", "time_s"):
        if isinstance(d[k], float) and not math.isfinite(d[k]):
            d[k] = None
    return d


def json_line(row: dict, keys: dict) -> str:
    return json.dumps(json_row(row, keys), default=_plain)


# ------------------------------------------------------------------------------------------------
# the file
# ------------------------------------------------------------------------------------------------
class ResultsFile:
    """Append-only results CSV with columns ``fields``; ``rows`` holds the rows already there, by
    the values of the ``key`` columns.  An existing file must have every ``required`` column."""

    def __init__(self, path, fields: tuple[str, ...], resume: bool, *, key: tuple[str, ...],
                 required: tuple[str, ...]):
        self.path = Path(path)
        self.key = key
        self.required = required
        self.rows: dict[tuple, dict] = {}
        if self._size() and not resume:
            raise BatchError(f"results file {self.path} exists: pass --resume to continue it, "
                             f"or choose another --out")
        if self.path.parent and not self.path.parent.exists():
            raise BatchError(f"folder of the results file does not exist: {self.path.parent}")
        if self.path.is_dir():
            raise BatchError(f"results file {self.path} is a directory; give a file name")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BatchError(f"results file {self.path} is in use by another run (it is "
                                 f"locked); wait for that run to end or choose another --out") \
                    from None
            exists = os.fstat(self.fd).st_size > 0
            if exists and not resume:       # appeared since the check above
                raise BatchError(f"results file {self.path} exists: pass --resume to continue "
                                 f"it, or choose another --out")
            self.fields = self._load() if exists else None
            if self.fields is None:
                os.ftruncate(self.fd, 0)
                self.fields = tuple(fields)
                self._write_line(self.fields)
        except BaseException:
            os.close(self.fd)
            raise

    def _size(self) -> int:
        try:
            return self.path.stat().st_size if self.path.is_file() else 0
        except OSError:
            return 0

    def key_of(self, row: dict) -> tuple:
        return tuple(fmt(row.get(c)) for c in self.key)

    def _load(self):
        """Read the existing rows, cutting off a partial last line; the header found is kept."""
        with open(self.path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):         # a line cut short by a kill: drop it
            os.ftruncate(self.fd, end)
            os.fsync(self.fd)
            data = data[:end]
        if not data:
            return None
        not_ours = f"{self.path} is not a results file of this kind"
        try:
            reader = csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"),
                                                newline=""))
            header = tuple(reader.fieldnames or ())
            missing = [c for c in self.required if c not in header]
            if missing:
                raise BatchError(f"{not_ours} (no column {missing[0]!r}); choose another --out")
            for r in reader:
                if r.get("status") in STATUSES:
                    self.rows.setdefault(tuple(r.get(c) or "" for c in self.key), r)
        except csv.Error as e:
            raise BatchError(f"{not_ours} ({e}); choose another --out") from None
        return header

    def _write_line(self, values) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        data = buf.getvalue().encode()
        n = os.write(self.fd, data)  # one write on O_APPEND: the line lands whole or not at all
        while n < len(data):         # regular files don't write short; but never lose the rest
            n += os.write(self.fd, data[n:])
        os.fsync(self.fd)

    def append(self, row: dict) -> None:
        self._write_line([fmt(row.get(c)) for c in self.fields])
        self.rows.setdefault(self.key_of(row), {c: fmt(row.get(c)) for c in self.fields})

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)       # releases the lock
            self.fd = -1
