"""Warm, killable worker processes for batch runs (used by ``bench`` locally and by ``bench_dask``).

A ``Worker`` is one child process (``python -m verifier.bench_worker``) that imports the package
once, keeps the graphs it has loaded, and answers one instance at a time over a pair of pipes.
The parent gives every instance a hard wall-clock limit and kills the child's whole process group
when it overruns (a solver stuck in presolve can't be interrupted from inside); a fresh child then
takes its place.

Why ``subprocess`` and not ``multiprocessing``: Dask's worker processes are daemonic, and
multiprocessing refuses to start children from a daemonic process; an exec'd child (the same thing
the ``spawn`` start method does) works in both places, so both paths share this one class.

Guarantees: a row comes back for every task handed to ``Worker.run``/the pool loop — the runner's
answer, ``timeout`` if the child overran its hard limit (it is dead by then), or ``error`` if the
runner raised or the child died. Children set PR_SET_PDEATHSIG (Linux) and watch their parent, so
killing the batch run (even with SIGKILL) does not leave solvers running.

The per-instance function ("runner") is named by a string, ``"package.module:function"`` or
``"/path/to/file.py:function"``, imported in the child; it is called as
``fn(onnx_path, vnnlib_path, timeout=..., method=...)`` and returns a ``Certificate`` (or a dict
with at least ``status``). The default is ``verify_instance`` below.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import OrderedDict
from multiprocessing.connection import Connection, wait
from pathlib import Path

DEFAULT_RUNNER = "verifier.bench_worker:verify_instance"
STATUSES = ("verified", "falsified", "unknown", "timeout", "error")
START_LIMIT = 300.0          # seconds a child may take to import before it counts as broken
# one thread per worker: the workers already fill the cores (HiGHS's own advice; see SOLVER-NOTES)
THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# stdout=2: stray prints of the runner go to stderr, never into --json output on stdout
_OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}


class WorkerError(RuntimeError):
    """A worker could not start (runner not importable, broken installation); one-line message."""


# ------------------------------------------------------------------------------------------------
# rows
# ------------------------------------------------------------------------------------------------
def _row(status, time_s, method="", note="", margin_lower=None, margin_upper=None, cert=None):
    return {"status": status, "time_s": time_s, "margin_lower": margin_lower,
            "margin_upper": margin_upper, "method": method, "note": note, "cert": cert}


def timeout_row(task: dict, elapsed: float, limit: float) -> dict:
    return _row("timeout", elapsed, task.get("method", ""),
                f"killed at the hard limit ({limit:.3g} s)")


def died_row(task: dict, elapsed: float, returncode) -> dict:
    how = f"signal {-returncode}" if isinstance(returncode, int) and returncode < 0 \
        else f"exit code {returncode}"
    return _row("error", elapsed, task.get("method", ""), f"worker process died ({how})")


# ------------------------------------------------------------------------------------------------
# parent side
# ------------------------------------------------------------------------------------------------
class Worker:
    """One warm child process. ``ready`` once its imports are done; ``task``/``deadline`` while it
    works on an instance. Not thread-safe: one owner at a time."""

    def __init__(self, runner: str = DEFAULT_RUNNER):
        self.runner = runner
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None     # results from the child
        self._out: Connection | None = None     # tasks to the child
        self.ready = False
        self.task: dict | None = None
        self.started = 0.0
        self.deadline = 0.0
        self.last_onnx: str | None = None
        self.start()

    def start(self) -> None:
        task_r, task_w = os.pipe()          # os.pipe fds are not inherited by other children, so
        res_r, res_w = os.pipe()            # a child's death shows as EOF on its result pipe
        env = {**os.environ, **THREAD_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "verifier.bench_worker", str(task_r), str(res_w),
                 str(os.getpid()), self.runner],
                pass_fds=(task_r, res_w), stdin=subprocess.DEVNULL, stdout=2, env=env,
                **_OWN_GROUP)               # own group: kill solver subprocesses with it
        except BaseException:
            for fd in (task_r, task_w, res_r, res_w):
                os.close(fd)
            raise
        os.close(task_r)
        os.close(res_w)
        self._out = Connection(task_w, readable=False)
        self.conn = Connection(res_r, writable=False)
        self.ready, self.task, self.last_onnx = False, None, None
        self.started = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assign(self, task: dict, grace: float) -> None:
        """Send one task; its hard limit (timeout + grace) starts now."""
        self._out.send(task)
        self.task = task
        self.started = time.monotonic()
        self.deadline = self.started + task["timeout"] + grace
        self.last_onnx = task["onnx_path"]

    def receive(self):
        """The next message, or None if the child died (EOF, or a message cut short)."""
        try:
            return self.conn.recv()
        except Exception:
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)    # not yet reaped: the group still exists
            except OSError:
                self.proc.kill()
            self.proc.wait()
        for c in (self.conn, self._out):
            if c is not None:
                c.close()
        self.conn = self._out = None
        self.ready = False

    def restart(self) -> None:
        self.kill()
        self.start()

    def handle_startup(self, msg) -> None:
        """Process a message received while not ready; raise WorkerError if the child is broken."""
        if msg is not None and msg[0] == "ready":
            self.ready = True
            return
        if msg is not None and msg[0] == "fatal":
            self.kill()
            raise WorkerError(msg[1])
        self.kill()
        raise WorkerError(f"a worker process died while starting (exit code "
                          f"{self.proc.returncode}); its error is on stderr above")

    def run(self, task: dict, grace: float) -> dict:
        """Run one task to its end or its hard limit (blocking; used inside Dask tasks)."""
        for attempt in (0, 1):              # an idle child may have died since its last task
            if not self.alive:
                self.restart()
            try:
                while not self.ready:
                    if not self.conn.poll(max(0.0, self.started + START_LIMIT - time.monotonic())):
                        self.kill()
                        raise WorkerError(f"a worker process did not start within {START_LIMIT} s")
                    self.handle_startup(self.receive())
                self.assign(task, grace)
                break
            except (BrokenPipeError, ConnectionError, EOFError):
                if attempt:
                    raise
                self.kill()
        remaining = self.deadline - time.monotonic()
        if wait([self.conn], max(0.0, remaining)):
            msg = self.receive()
            self.task = None
            if msg is not None and msg[0] == "done":
                return msg[1]
            self.kill()
            return died_row(task, time.monotonic() - self.started, self.proc.returncode)
        self.kill()
        return timeout_row(task, time.monotonic() - self.started, self.deadline - self.started)


# ------------------------------------------------------------------------------------------------
# the default runner (runs in the child): the Python API with a per-worker cache of loaded graphs
# ------------------------------------------------------------------------------------------------
_GRAPHS: OrderedDict = OrderedDict()
GRAPH_CACHE_SIZE = 4


def verify_instance(onnx_path: str, vnnlib_path: str, *, timeout: float, method: str = "auto"):
    """``api.verify_vnnlib`` on one instance. Graphs are cached per (path, mtime, size) in this
    process; the time spent loading is taken off the property's timeout."""
    from . import api
    from .certificate import Certificate
    t0 = time.perf_counter()
    st = os.stat(onnx_path)
    key = (os.path.abspath(onnx_path), st.st_mtime_ns, st.st_size)
    net = _GRAPHS.get(key)
    if net is None:
        net = api.load(onnx_path)
        _GRAPHS[key] = net
        while len(_GRAPHS) > GRAPH_CACHE_SIZE:
            _GRAPHS.popitem(last=False)
    _GRAPHS.move_to_end(key)
    left = timeout - (time.perf_counter() - t0)
    if left <= 0:
        return Certificate("timeout", time.perf_counter() - t0, method="load")
    return api.verify_vnnlib(net, vnnlib_path, options=api.Options(timeout=left, method=method))


def _warm_default() -> None:
    from . import api  # noqa: F401  (imports numpy, onnx, onnxruntime, the loader and parser)
    try:
        importlib.import_module("verifier.pipeline")
    except ImportError:
        pass


# ------------------------------------------------------------------------------------------------
# child side
# ------------------------------------------------------------------------------------------------
def resolve_runner(spec: str):
    """``"pkg.module:function"`` or ``"/path/file.py:function"`` -> the function."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise WorkerError(f"runner must look like module:function, got {spec!r}")
    if where.endswith(".py"):
        mod_name = "_bench_runner_" + Path(where).stem
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
        from .api import USER_ERRORS
        return USER_ERRORS
    except Exception:
        return ()


def execute(fn, task: dict) -> dict:
    """Call the runner on one task; every outcome becomes a row (never raises Exception)."""
    t0 = time.perf_counter()
    try:
        result = fn(task["onnx_path"], task["vnnlib_path"], timeout=task["timeout"],
                    method=task["method"])
        d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        status = d.get("status")
        if status not in STATUSES:
            raise ValueError(f"the runner returned status {status!r}")
        row = _row(status, time.perf_counter() - t0, str(d.get("method") or ""),
                   str(d.get("note") or ""), d.get("margin_lower"), d.get("margin_upper"), d)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        note = f"{type(e).__name__}: {first}" if first else type(e).__name__
        if not isinstance(e, _user_errors()):
            note = "internal error: " + note
            traceback.print_exc()
        row = _row("error", time.perf_counter() - t0, task.get("method", ""), note)
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


def child_main(argv: list[str]) -> int:
    task_fd, res_fd, ppid, runner = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    _die_with_parent(ppid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the parent handles Ctrl-C and kills us
    tasks = Connection(task_fd, writable=False)
    results = Connection(res_fd, readable=False)
    try:
        fn = resolve_runner(runner)
        if runner == DEFAULT_RUNNER:
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
