"""Every option of a batch run checked before any work: a bad option fails in a second, not after
the whole suite (and never by overwriting an input file with results)."""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..config import METHODS
from .errors import BatchError
from .plots import check_plot_path


def check_run_options(method: str, timeout, jobs, threads=None) -> None:
    if method not in METHODS:
        raise BatchError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout)
                                    and timeout > 0):
        raise BatchError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise BatchError(f"--jobs must be a whole number of at least 1, got {jobs!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise BatchError(f"--threads must be a whole number of at least 1, got {threads!r}")


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(out, plot, inputs: list[tuple[str, str]]) -> None:
    """``out`` (results CSV) and ``plot`` (image), either may be None, can be written and name
    none of ``inputs`` (``(path, what it is)``) nor each other."""
    outputs = [(Path(p), flag) for p, flag in ((out, "--out"), (plot, "--plot")) if p]
    for p, flag in outputs:
        if p.is_dir():
            raise BatchError(f"{flag} {p} is a directory; give a file name")
        folder = p.parent if str(p.parent) else Path(".")
        if not folder.is_dir():
            raise BatchError(f"{flag}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
            raise BatchError(f"{flag}: cannot write {p} (permission denied)")
        for q, what in inputs:
            if _same_file(p, Path(q)):
                raise BatchError(f"{flag} {p} is {what}: writing there would destroy an input; "
                                 f"choose another file")
    if plot:
        if out and _same_file(Path(out), Path(plot)):
            raise BatchError(f"--plot {plot} is the results file (--out): choose another file")
        check_plot_path(plot)
