"""Batch runs on an existing Dask distributed cluster (``verify --instances ... --scheduler``).

Each instance is one Dask task. Inside the task the instance runs in a warm child process
(``worker.Worker``) owned by the Dask worker process, with the same hard limit as locally, so a
stuck solver is killed and never blocks a Dask worker thread for longer than timeout + grace.
Results stream back in completion order (``as_completed``) to the caller's ``on_row``, which
appends them to the results file: the resume semantics are the local ones.

The Dask workers need only the package and the files, at the absolute paths the client resolved.
"""
from __future__ import annotations

import threading
import uuid

from .errors import BatchError
from .results import make_row
from .worker import Worker

_IDLE: list[Worker] = []        # warm children of this Dask worker process, not in use
_LOCK = threading.Lock()        # a Dask worker may run several tasks at once (threads)


def run_task(task: dict, runner: str, grace: float) -> dict:
    """The Dask task: one task in a warm child of this Dask worker process; always a row."""
    with _LOCK:
        w = next((w for w in _IDLE if w.runner == runner), None)
        if w is not None:
            _IDLE.remove(w)
    if w is None:
        w = Worker(runner)
    try:
        return w.run(task, grace)
    finally:
        if w.alive:
            with _LOCK:
                _IDLE.append(w)
        else:
            w.kill()


def run_dask(pairs, scheduler: str, runner: str, grace: float, on_row) -> None:
    """Run the ``(item, task)`` pairs on the cluster at ``scheduler``; ``on_row(item, row)``."""
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise BatchError("--scheduler needs Dask: pip install 'dask[distributed]'") from None
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise BatchError(f"cannot connect to the Dask scheduler at {scheduler}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    futures = []
    try:
        run_id = uuid.uuid4().hex[:8]
        owner = {}
        for i, (item, task) in enumerate(pairs):
            f = client.submit(run_task, task, runner, grace, pure=False,
                              key=f"verify-{run_id}-{i}", priority=-i)   # earlier rows first
            owner[f.key] = (item, task)
            futures.append(f)
        for f in as_completed(futures):
            item, task = owner[f.key]
            try:
                row = f.result()
            except Exception as e:      # the Dask worker died repeatedly, or the child can't start
                msg = str(e).splitlines()[0] if str(e) else ""
                row = make_row("error", 0.0, task["kwargs"].get("method", ""),
                               f"dask: {type(e).__name__}: {msg}".rstrip(": "))
            f.release()
            on_row(item, row)
    finally:
        if futures:
            client.cancel([f for f in futures if not f.done()])
        client.close()
