"""Batch runs on an existing Dask distributed cluster (``verify --instances ... --scheduler``).

Each instance is one Dask task. Inside the task the instance runs in a warm child process
(``bench_worker.Worker``) owned by the Dask worker process, with the same hard limit as locally, so
a stuck solver is killed and never blocks a Dask worker thread for longer than timeout + grace.
Results stream back in completion order (``as_completed``) to the caller's ``on_row``, which
appends them to the results file: the resume semantics are the local ones.

The Dask workers need only the package and the files, at the absolute paths the client resolved.
"""
from __future__ import annotations

import threading
import uuid

from .bench_worker import Worker

_IDLE: list[Worker] = []        # warm children of this Dask worker process, not in use
_LOCK = threading.Lock()        # a Dask worker may run several tasks at once (threads)


def run_task(task: dict, runner: str, grace: float) -> dict:
    """The Dask task: one instance in a warm child of this Dask worker process; always a row."""
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


def run_dask(todo, scheduler: str, runner: str, method: str, grace: float, timeout, on_row):
    """Run the instances ``todo`` on the cluster at ``scheduler``; ``on_row(instance, row)``."""
    from .bench import BenchError
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise BenchError("--scheduler needs Dask: pip install 'dask[distributed]'") from None
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as e:
        raise BenchError(f"cannot connect to the Dask scheduler at {scheduler}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    futures = []
    try:
        run_id = uuid.uuid4().hex[:8]
        owner = {}
        for i, inst in enumerate(todo):
            f = client.submit(run_task, inst.task(method, timeout), runner, grace, pure=False,
                              key=f"verify-{run_id}-{i}", priority=-i)   # earlier rows first
            owner[f.key] = inst
            futures.append(f)
        for f in as_completed(futures):
            inst = owner[f.key]
            try:
                row = f.result()
            except Exception as e:      # the Dask worker died repeatedly, or the child can't start
                msg = str(e).splitlines()[0] if str(e) else ""
                row = {"status": "error", "time_s": 0.0, "method": method,
                       "note": f"dask: {type(e).__name__}: {msg}".rstrip(": ")}
            f.release()
            on_row(inst, row)
    finally:
        if futures:
            client.cancel([f for f in futures if not f.done()])
        client.close()
