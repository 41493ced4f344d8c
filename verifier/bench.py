"""Batch runs: an instances CSV (VNN-COMP format) -> a results CSV, in parallel, resumable.

``run_instances(instances_csv, jobs=..., out=..., resume=...)`` runs every instance in a warm
worker process (``bench_worker``) with a hard limit of its timeout plus ``grace`` seconds, or on a
Dask cluster (``scheduler="tcp://host:port"``, see ``bench_dask``), and returns a ``Summary``.

Guarantees of the results file:
- one row per finished instance, appended with a single ``os.write`` of the whole line on an
  ``O_APPEND`` descriptor and fsync'ed, so a ``kill -9`` of the run loses no finished row and can
  at most leave one partial last line, which ``resume`` cuts off before appending;
- with ``resume``, instances already in the file are not run again, so every instance appears once;
- ``status`` is the runner's answer, ``timeout`` (the pipeline's own, or killed at the hard limit)
  or ``error`` (bad input files, a crash of the worker, an internal error: see ``note``).

An ``expected.csv`` beside the instances (header ``onnx,vnnlib,expected``; sat/unsat/...) adds the
columns ``expected`` and ``correct`` (yes / no / empty = undecided or no known answer). ``sat``
means a counterexample exists (correct answer: falsified), ``unsat`` that none does (verified).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bench_worker import (DEFAULT_RUNNER, START_LIMIT, Worker, WorkerError, died_row,
                           timeout_row)
from .config import METHODS

STATUSES = ("verified", "falsified", "unknown", "timeout", "error")
BASE_FIELDS = ("onnx", "vnnlib", "status", "time_s", "margin_lower", "margin_upper", "method")
EXPECTED_FIELDS = ("expected", "correct")
NOTE_FIELD = "note"
# the answer a correct verifier gives for each word an expected.csv may use
_EXPECTED_ANSWER = {"sat": "falsified", "violated": "falsified", "falsified": "falsified",
                    "unsat": "verified", "holds": "verified", "verified": "verified"}
DEFAULT_GRACE = 5.0


class BenchError(ValueError):
    """Bad instances file, results file or option; the message is one line for the user."""


# ------------------------------------------------------------------------------------------------
# instances and expected answers
# ------------------------------------------------------------------------------------------------
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

    def task(self, method: str, timeout: float | None = None) -> dict:
        return {"onnx_path": self.onnx_path, "vnnlib_path": self.vnnlib_path,
                "timeout": float(timeout or self.timeout), "method": method}


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
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        return out
    header = [c.strip().lower() for c in rows[0]]
    try:
        io_, iv, ie = header.index("onnx"), header.index("vnnlib"), header.index("expected")
    except ValueError:
        raise BenchError(f"{path}: needs a header with columns onnx,vnnlib,expected") from None
    for n, r in enumerate(rows[1:], 2):
        if len(r) <= max(io_, iv, ie):
            raise BenchError(f"{path}: line {n} has {len(r)} fields, expected {len(header)}")
        out[(_norm(r[io_]), _norm(r[iv]))] = r[ie].strip().lower()
    return out


def read_instances(instances_csv) -> list[Instance]:
    """Rows ``onnx,vnnlib,timeout`` (no header; blank and ``#`` lines skipped; a repeated
    (onnx, vnnlib) pair keeps its first row). Paths are relative to the file's folder."""
    path = Path(instances_csv)
    if not path.is_file():
        raise BenchError(f"instances file not found: {path}")
    folder = path.resolve().parent
    exp_path = folder / "expected.csv"
    expected = read_expected(exp_path) if exp_path.is_file() else {}
    out, seen = [], set()
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not any(row) or row[0].startswith("#"):
                continue
            if len(row) != 3:
                raise BenchError(f"{path}: line {n}: expected onnx,vnnlib,timeout, got "
                                 f"{len(row)} fields")
            onnx, vnnlib, t = row
            try:
                timeout = float(t)
            except ValueError:
                if n == 1 and t.lower() == "timeout":       # tolerate a header row
                    continue
                raise BenchError(f"{path}: line {n}: timeout {t!r} is not a number") from None
            if not (math.isfinite(timeout) and timeout > 0):
                raise BenchError(f"{path}: line {n}: timeout must be > 0 seconds, got {t}")
            if (onnx, vnnlib) in seen:
                continue
            seen.add((onnx, vnnlib))
            out.append(Instance(onnx, vnnlib, timeout, _local_path(folder, onnx),
                                _local_path(folder, vnnlib),
                                expected.get((_norm(onnx), _norm(vnnlib)))))
    if not out:
        raise BenchError(f"{path}: no instances")
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


# ------------------------------------------------------------------------------------------------
# the results file
# ------------------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)              # full precision: margins are evidence
    return str(v)


class ResultsFile:
    """Append-only results CSV; ``rows`` holds the rows already there, by (onnx, vnnlib)."""

    def __init__(self, path, fields: tuple[str, ...], resume: bool):
        self.path = Path(path)
        self.rows: dict[tuple[str, str], dict] = {}
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not resume:
            raise BenchError(f"results file {self.path} exists: pass --resume to continue it, "
                             f"or choose another --out")
        if self.path.parent and not self.path.parent.exists():
            raise BenchError(f"folder of the results file does not exist: {self.path.parent}")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.fields = self._load(fields) if exists else None
            if self.fields is None:
                os.ftruncate(self.fd, 0)
                self.fields = tuple(fields)
                self._write_line(self.fields)
        except BaseException:
            os.close(self.fd)
            raise

    def _load(self, fields):
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
        reader = csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
        header = tuple(reader.fieldnames or ())
        missing = [c for c in BASE_FIELDS if c not in header]
        if missing:
            raise BenchError(f"{self.path} is not a results file (no column {missing[0]!r}); "
                             f"choose another --out")
        for r in reader:
            if r.get("status") in STATUSES:
                self.rows.setdefault((r["onnx"], r["vnnlib"]), r)
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
        self._write_line([_fmt(row.get(c)) for c in self.fields])
        self.rows.setdefault((row["onnx"], row["vnnlib"]), {c: _fmt(row.get(c)) for c in
                                                            self.fields})

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ------------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    """Counts over the instances of one instances file, from the results file (earlier runs
    included). ``judged`` counts are over instances with a known sat/unsat answer."""
    total: int
    counts: dict = field(default_factory=lambda: {s: 0 for s in STATUSES})
    missing: int = 0                # not in the results file (run interrupted)
    resumed: int = 0                # already in the results file when this run started
    correct: int = 0
    wrong: int = 0
    undecided: int = 0
    wrong_rows: list = field(default_factory=list)   # (onnx, vnnlib, status, expected)
    error_rows: list = field(default_factory=list)   # (onnx, vnnlib, note)
    out: str = ""
    wall_s: float = 0.0

    @classmethod
    def from_rows(cls, instances: list[Instance], rows: dict, resumed: int = 0, out="",
                  wall_s=0.0) -> "Summary":
        s = cls(total=len(instances), resumed=resumed, out=str(out), wall_s=wall_s)
        for inst in instances:
            r = rows.get(inst.key)
            if r is None:
                s.missing += 1
                continue
            status = r["status"]
            s.counts[status] += 1
            if status == "error":
                s.error_rows.append((inst.onnx, inst.vnnlib, r.get(NOTE_FIELD) or ""))
            verdict = judge(status, inst.expected)
            if verdict is not None:
                setattr(s, verdict, getattr(s, verdict) + 1)
            if verdict == "wrong":
                s.wrong_rows.append((inst.onnx, inst.vnnlib, status, inst.expected))
        return s

    @property
    def judged(self) -> int:
        return self.correct + self.wrong + self.undecided

    def table(self, max_listed: int = 20) -> str:
        lines = [f"instances {self.total}" + (f"  ({self.resumed} done in an earlier run)"
                                              if self.resumed else "")]
        lines += [f"  {s:<10}{self.counts[s]:>6}" for s in STATUSES]
        if self.missing:
            lines.append(f"  {'not run':<10}{self.missing:>6}")
        if self.judged:
            lines.append(f"against {self.judged} expected answers: correct {self.correct}, "
                         f"wrong {self.wrong}, undecided {self.undecided}")
        if self.wrong_rows:
            lines.append("WRONG answers:")
            lines += [f"  {o} {v}: {s}, expected {e}" for o, v, s, e in self.wrong_rows]
        if self.error_rows:
            lines.append("errors:")
            lines += [f"  {o} {v}: {n}" for o, v, n in self.error_rows[:max_listed]]
            if len(self.error_rows) > max_listed:
                lines.append(f"  ... and {len(self.error_rows) - max_listed} more "
                             f"(column note of {self.out})")
        if self.out:
            lines.append(f"results in {self.out}  (wall time {self.wall_s:.1f} s)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, total: int, done: int, counts: dict, enabled: bool, json_lines: bool):
        self.counts, self.json_lines, self.bar = counts, json_lines, None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=done, unit="inst", file=sys.stderr,
                                dynamic_ncols=True, desc="verify")
                self._postfix()
            except ImportError:
                pass

    def _postfix(self):
        c = self.counts
        text = " ".join(f"{k[:3]} {c[k]}" for k in STATUSES)
        if c.get("wrong"):
            text += f" WRONG {c['wrong']}"
        self.bar.set_postfix_str(text, refresh=False)

    def row(self, row: dict) -> None:
        if self.json_lines:
            line = json.dumps(_json_row(row), default=_plain)
            if self.bar is not None:
                self.bar.write(line, file=sys.stdout)
            else:
                print(line, flush=True)
        if self.bar is not None:
            self._postfix()
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _plain(v):
    return v.tolist() if hasattr(v, "tolist") else str(v)     # numpy values in stats


def _json_row(row: dict) -> dict:
    cert = dict(row.get("cert") or {})
    d = {"onnx": row["onnx"], "vnnlib": row["vnnlib"], "status": row["status"],
         "time_s": row.get("time_s"), "margin_lower": row.get("margin_lower"),
         "margin_upper": row.get("margin_upper"), "counterexample": cert.get("counterexample"),
         "output": cert.get("output"), "method": row.get("method", ""),
         "stats": cert.get("stats", {})}
    for k in ("expected", "correct", NOTE_FIELD):
        if row.get(k):
            d[k] = row[k]
    for k in ("margin_lower", "margin_upper", "time_s"):
        if isinstance(d[k], float) and not math.isfinite(d[k]):
            d[k] = None
    return d


# ------------------------------------------------------------------------------------------------
# local pool
# ------------------------------------------------------------------------------------------------
class _Queue:
    """Pending instances grouped by model, so a worker gets more of the model it has loaded."""

    def __init__(self, instances):
        self.groups: dict[str, list] = {}
        for inst in reversed(instances):
            self.groups.setdefault(inst.onnx_path, []).append(inst)
        self.groups = dict(reversed(list(self.groups.items())))
        self.n = len(instances)

    def __len__(self):
        return self.n

    def pop(self, prefer: str | None):
        key = prefer if self.groups.get(prefer) else next(k for k, v in self.groups.items() if v)
        self.n -= 1
        inst = self.groups[key].pop()
        if not self.groups[key]:
            del self.groups[key]
        return inst


def run_local(todo: list[Instance], jobs: int, runner: str, method: str, grace: float,
              timeout: float | None, on_row) -> None:
    """Run ``todo`` on ``jobs`` warm workers; ``on_row(instance, row)`` for each, in the order
    they finish. A worker that overruns its hard limit or dies is replaced."""
    from multiprocessing.connection import wait
    queue = _Queue(todo)
    workers = [Worker(runner) for _ in range(max(1, min(jobs, len(todo))))]
    owner: dict[int, Instance] = {}
    try:
        while len(queue) or any(w.task is not None for w in workers):
            for w in workers:
                if w.ready and w.task is None and len(queue):
                    inst = queue.pop(w.last_onnx)
                    owner[id(w)] = inst
                    w.assign(inst.task(method, timeout), grace)
            busy = [w.deadline if w.ready else w.started + START_LIMIT for w in workers
                    if w.task is not None or not w.ready]
            wait_s = max(0.0, min(busy) - time.monotonic()) if busy else None
            for conn in wait([w.conn for w in workers], wait_s):
                w = next(w for w in workers if w.conn is conn)
                msg = w.receive()
                if not w.ready:
                    w.handle_startup(msg)
                elif msg is not None and msg[0] == "done":
                    w.task = None
                    on_row(owner.pop(id(w)), msg[1])
                else:                   # died while working (or between tasks)
                    if w.task is not None:
                        w.kill()
                        on_row(owner.pop(id(w)), died_row(w.task, time.monotonic() - w.started,
                                                          w.proc.returncode))
                    w.restart()
            now = time.monotonic()
            for w in workers:
                if w.task is not None and now >= w.deadline:
                    task, elapsed, limit = w.task, now - w.started, w.deadline - w.started
                    w.restart()         # kill first: the row is written only once it is dead
                    on_row(owner.pop(id(w)), timeout_row(task, elapsed, limit))
                elif not w.ready and now - w.started > START_LIMIT:
                    raise WorkerError(f"a worker process did not start within {START_LIMIT} s")
    finally:
        for w in workers:
            w.kill()


# ------------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------------
def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_instances(instances_csv, *, jobs: int | None = None, out=None, resume: bool = False,
                  plot=None, scheduler: str | None = None, method: str = "auto",
                  timeout: float | None = None, grace: float = DEFAULT_GRACE,
                  progress: bool = True, json_lines: bool = False,
                  runner: str = DEFAULT_RUNNER) -> Summary:
    """Run every instance of ``instances_csv`` and append one row each to ``out``.

    jobs: local worker processes (default: the usable cores); ignored with ``scheduler``.
    out: results CSV (default ``results.csv`` in the current folder); must not exist unless
         ``resume``, which skips the instances already in it.
    plot: also write a cactus plot of ``out`` to this image file.
    scheduler: ``tcp://host:port`` of a Dask scheduler: run there instead of locally.
    timeout: override every instance's timeout (seconds); hard limit = timeout + ``grace``.
    json_lines: print one JSON object per finished instance on stdout.
    runner: the per-instance function, ``module:function`` or ``file.py:function``.
    Raises ``BenchError`` (bad files/options) or ``WorkerError`` (workers cannot start).
    """
    t0 = time.monotonic()
    if method not in METHODS:
        raise BenchError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise BenchError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if jobs is not None and jobs < 1:
        raise BenchError(f"--jobs must be at least 1, got {jobs}")
    instances = read_instances(instances_csv)
    has_expected = any(i.expected is not None for i in instances)
    fields = BASE_FIELDS + (EXPECTED_FIELDS if has_expected else ()) + (NOTE_FIELD,)
    results = ResultsFile(out or "results.csv", fields, resume)
    try:
        wanted = {i.key for i in instances}
        done = {k for k in results.rows if k in wanted}
        todo = [i for i in instances if i.key not in done]
        counts = {s: 0 for s in STATUSES}
        counts["wrong"] = 0
        for k in done:
            r = results.rows[k]
            counts[r["status"]] += 1
        prog = _Progress(len(instances), len(done), counts, progress, json_lines)

        def on_row(inst: Instance, row: dict) -> None:
            row = {**row, "onnx": inst.onnx, "vnnlib": inst.vnnlib}
            verdict = judge(row["status"], inst.expected)
            if inst.expected is not None:
                row["expected"] = inst.expected
                row["correct"] = {"correct": "yes", "wrong": "no"}.get(verdict, "")
            row["time_s"] = round(float(row["time_s"]), 4)
            results.append(row)
            counts[row["status"]] += 1
            counts["wrong"] += verdict == "wrong"
            prog.row(row)

        try:
            if todo and scheduler:
                from .bench_dask import run_dask
                run_dask(todo, scheduler, runner, method, grace, timeout, on_row)
            elif todo:
                run_local(todo, jobs or default_jobs(), runner, method, grace, timeout, on_row)
        finally:
            prog.close()
        summary = Summary.from_rows(instances, results.rows, resumed=len(done),
                                    out=results.path, wall_s=time.monotonic() - t0)
    finally:
        results.close()
    if plot:
        from .bench_plot import plot_cactus
        plot_cactus([results.path], plot)
    return summary


def main(argv=None) -> int:
    """``python -m verifier.bench INSTANCES.csv [...]``: the same as ``verify --instances``."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m verifier.bench",
                                description="Run a VNN-COMP instances file; results CSV + summary.")
    p.add_argument("instances")
    p.add_argument("--jobs", type=int)
    p.add_argument("--out", default="results.csv")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--plot")
    p.add_argument("--scheduler")
    p.add_argument("--method", default="auto")
    p.add_argument("--timeout", type=float, help="override every instance's timeout")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE)
    p.add_argument("--runner", default=DEFAULT_RUNNER, help="module:function per instance")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        s = run_instances(a.instances, jobs=a.jobs, out=a.out, resume=a.resume, plot=a.plot,
                          scheduler=a.scheduler, method=a.method, timeout=a.timeout,
                          grace=a.grace, progress=not a.no_progress, json_lines=a.json,
                          runner=a.runner)
    except (BenchError, WorkerError, ImportError) as e:
        print(f"verify: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("verify: interrupted (finished rows are saved; --resume continues)",
              file=sys.stderr)
        return 130
    print(s.table(), file=sys.stderr if a.json else sys.stdout)
    return 1 if s.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
