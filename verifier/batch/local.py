"""The local pool: tasks on ``jobs`` warm worker processes of this machine.

A task source has ``pending()`` (can a task start now?) and ``take(group)`` (the next task, as
``(item, task)``, preferring one of ``group``, the one the worker last ran, whose model it has
loaded; None when none can start now).  ``on_row(item, row)`` may make more tasks startable (a
robustness curve picks a sample's next ε from its last answer), so the source is asked again after
every row.
"""
from __future__ import annotations

import os
import time

from .errors import WorkerError
from .results import died_row, timeout_row
from .worker import START_LIMIT, Worker, wait_until


class TaskQueue:
    """A fixed list of ``(item, task)``, grouped so a worker gets more of the group it ran last."""

    def __init__(self, pairs):
        self.groups: dict = {}
        for pair in reversed(list(pairs)):
            self.groups.setdefault(pair[1].get("group"), []).append(pair)
        self.groups = dict(reversed(list(self.groups.items())))
        self.n = sum(len(v) for v in self.groups.values())

    def __len__(self):
        return self.n

    def pending(self) -> bool:
        return self.n > 0

    def take(self, prefer):
        if not self.n:
            return None
        key = prefer if self.groups.get(prefer) else next(iter(self.groups))
        self.n -= 1
        pair = self.groups[key].pop()
        if not self.groups[key]:
            del self.groups[key]
        return pair


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_local(source, jobs: int, runner: str, grace: float, on_row) -> None:
    """Run every task of ``source`` on ``jobs`` warm workers; ``on_row(item, row)`` for each, in
    the order they finish. A worker that overruns its hard limit or dies is replaced."""
    workers = [Worker(runner) for _ in range(max(1, jobs))]
    owner: dict[int, object] = {}
    try:
        while True:
            for w in workers:
                if w.ready and w.task is None:
                    got = source.take(w.last_group)
                    if got is not None:
                        owner[id(w)] = got[0]
                        w.assign(got[1], grace)
            working = [w for w in workers if w.task is not None]
            if not working and not source.pending():
                return
            deadlines = [w.deadline for w in working] + \
                [w.started + START_LIMIT for w in workers if not w.ready]
            for conn in wait_until([w.conn for w in workers], min(deadlines, default=None)):
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
