"""Warm, killable worker processes (used by ``local`` and, inside Dask tasks, by ``cluster``).

A ``Worker`` is one child process (``python -m verifier.batch.child``) that imports the package
once, keeps the graphs it has loaded, and runs one task at a time over a pair of pipes.
The parent gives every task a hard wall-clock limit and kills the child's whole process group
when it overruns (a solver stuck in presolve can't be interrupted from inside); a fresh child then
takes its place.

Why ``subprocess`` and not ``multiprocessing``: Dask's worker processes are daemonic, and
multiprocessing refuses to start children from a daemonic process; an exec'd child (the same thing
the ``spawn`` start method does) works in both places, so both paths share this one class.

A task is a dict: ``args`` and ``kwargs`` for the runner, ``timeout`` (seconds; the hard limit is
``timeout + grace``) and ``group`` (tasks of one group, e.g. one model, go to the same child when
they can, so it reuses what it loaded).  Guarantees: a row comes back for every task handed to
``Worker.run``/the pool loop: the runner's answer, ``timeout`` if the child overran its hard limit
(it is dead by then), or ``error`` if the runner raised or the child died.  Children set
PR_SET_PDEATHSIG (Linux) and watch their parent, so killing the batch run (even with SIGKILL) does
not leave solvers running.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path

from .errors import WorkerError
from .results import died_row, timeout_row

DEFAULT_RUNNER = "verifier.batch.runners:verify_instance"
START_LIMIT = 300.0          # seconds a child may take to import before it counts as broken
# select/poll take milliseconds in a C int: waits longer than ~24.8 days (2.1e6 s) overflow, so
# every wait is cut into pieces of at most this many seconds and the deadline rechecked
WAIT_PIECE = 3600.0
# one thread per worker: the workers already fill the cores (HiGHS's own advice; see SOLVER-NOTES)
THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}


def wait_until(conns, deadline: float | None) -> list:
    """``multiprocessing.connection.wait`` until ``deadline`` (monotonic; None: forever), safe for
    deadlines any distance away."""
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait(conns, WAIT_PIECE if left is None else min(left, WAIT_PIECE))
        if ready or (left is not None and left <= WAIT_PIECE):
            return ready


class Worker:
    """One warm child process. ``ready`` once its imports are done; ``task``/``deadline`` while it
    works on a task. Not thread-safe: one owner at a time."""

    def __init__(self, runner: str = DEFAULT_RUNNER):
        self.runner = runner
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None     # results from the child
        self._out: Connection | None = None     # tasks to the child
        self.ready = False
        self.task: dict | None = None
        self.started = 0.0
        self.deadline = 0.0
        self.last_group: str | None = None
        self.start()

    def start(self) -> None:
        task_r, task_w = os.pipe()          # os.pipe fds are not inherited by other children, so
        res_r, res_w = os.pipe()            # a child's death shows as EOF on its result pipe
        env = {**os.environ, **THREAD_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            # stdout=2: stray prints of the runner go to stderr, never into --json output
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "verifier.batch.child", str(task_r), str(res_w),
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
        self.ready, self.task, self.last_group = False, None, None
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
        self.last_group = task.get("group")

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
        if wait_until([self.conn], self.deadline):
            msg = self.receive()
            self.task = None
            if msg is not None and msg[0] == "done":
                return msg[1]
            self.kill()
            return died_row(task, time.monotonic() - self.started, self.proc.returncode)
        self.kill()
        return timeout_row(task, time.monotonic() - self.started, self.deadline - self.started)
