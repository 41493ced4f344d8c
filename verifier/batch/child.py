"""The worker process's side (``python -m verifier.batch.child``): load the runner, then run the
tasks the parent sends, one at a time, and send back one row each.

The runner is named by a string, ``"package.module:function"`` or ``"/path/to/file.py:function"``,
imported here; it is called as ``fn(*task["args"], **task["kwargs"])`` and returns a
``Certificate`` (or a dict with at least ``status``).  The default runners are in ``runners``.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from .errors import WorkerError
from .results import STATUSES, make_row


def resolve_runner(spec: str):
    """``"pkg.module:function"`` or ``"/path/file.py:function"`` -> the function."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise WorkerError(f"runner must look like module:function, got {spec!r}")
    if where.endswith(".py"):
        mod_name = "_batch_runner_" + Path(where).stem
        loader_spec = importlib.util.spec_from_file_location(mod_name, where)
        if loader_spec is None:
            raise WorkerError(f"cannot import runner file {where}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        loader_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise WorkerError(f"{where} has no function {name!r}")
    return fn


def _user_errors() -> tuple:
    try:
        from ..api import USER_ERRORS
        return USER_ERRORS
    except Exception:
        return ()


def execute(fn, task: dict) -> dict:
    """Call the runner on one task; every outcome becomes a row (never raises Exception)."""
    t0 = time.perf_counter()
    method = task["kwargs"].get("method", "")
    try:
        result = fn(*task["args"], **task["kwargs"])
        d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        status = d.get("status")
        if status not in STATUSES:
            raise ValueError(f"the runner returned status {status!r}")
        row = make_row(status, time.perf_counter() - t0, str(d.get("method") or ""),
                       str(d.get("note") or ""), d.get("margin_lower"), d.get("margin_upper"), d)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        note = f"{type(e).__name__}: {first}" if first else type(e).__name__
        if not isinstance(e, _user_errors()):
            note = "internal error: " + note
            traceback.print_exc()
        row = make_row("error", time.perf_counter() - t0, method, note)
    if row["cert"] is not None:
        # ensure the row pickles and prints as JSON: plain floats, no numpy scalars
        for k in ("margin_lower", "margin_upper"):
            if row[k] is not None:
                row[k] = float(row[k])
    return row


def _die_with_parent(ppid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except Exception:
            pass
    if os.getppid() != ppid:            # parent already gone before prctl took effect
        os._exit(0)

    def watch():                        # other systems (and belt and braces): poll the parent
        while True:
            time.sleep(0.5)
            if os.getppid() != ppid:
                os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def _warm_default() -> None:
    from .. import api  # noqa: F401  (imports numpy, onnx, onnxruntime, the loader and parser)
    try:
        importlib.import_module("verifier.pipeline")
    except ImportError:
        pass


def child_main(argv: list[str]) -> int:
    task_fd, res_fd, ppid, runner = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    _die_with_parent(ppid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent handles Ctrl-C and kills us
    tasks = Connection(task_fd, writable=False)
    results = Connection(res_fd, readable=False)
    try:
        fn = resolve_runner(runner)
        if runner.startswith("verifier."):
            _warm_default()
    except BaseException as e:
        results.send(("fatal", f"cannot load the runner {runner!r}: {type(e).__name__}: {e}"))
        return 1
    results.send(("ready", os.getpid()))
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            return 0
        if task is None:
            return 0
        results.send(("done", execute(fn, task)))


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
