"""A progress bar on stderr (tqdm) for batch runs, and printing lines past it on stdout."""
from __future__ import annotations

import sys

from .results import STATUSES


class Progress:
    """``total`` tasks, ``done`` of them finished before; ``counts`` (status -> number, plus an
    optional ``wrong``) is shown beside the bar.  Without ``enabled`` (or tqdm) it only prints."""

    def __init__(self, total: int, done: int, counts: dict, enabled: bool, unit: str = "inst"):
        self.counts, self.bar = counts, None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, initial=done, unit=unit, file=sys.stderr,
                                dynamic_ncols=True, desc="verify")
                self._postfix()
            except ImportError:
                pass

    def _postfix(self):
        c = self.counts
        text = " ".join(f"{k[:3]} {c.get(k, 0)}" for k in STATUSES)
        if c.get("wrong"):
            text += f" WRONG {c['wrong']}"
        self.bar.set_postfix_str(text, refresh=False)

    def write(self, line: str) -> None:
        echo(line)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self._postfix()
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def echo(line: str) -> None:
    """Print ``line`` on stdout without tearing a progress bar shown on stderr."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, flush=True)
        return
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
