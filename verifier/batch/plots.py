"""Plots of batch runs (matplotlib, the ``batch`` extra): cactus plots of results files, and
robustness curves.

Cactus: instances solved (y) against time per instance (x, log scale).  An instance counts as
solved when its status is verified or falsified and it is not marked wrong (``correct`` = no)
against an expected answer: a fast wrong answer must not look like progress.  Several results
files overlay as one line each, to compare runs or tools (``plot_cactus([a, b], path)``).

Robustness curve: clean accuracy, certified robust accuracy (verified) and empirical robust
accuracy (not falsified) against ε; the true robust accuracy lies in the band between the two.
"""
from __future__ import annotations

import csv
from pathlib import Path

from .errors import BatchError


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BatchError("--plot needs matplotlib: pip install 'verifier[batch]'") from None
    return plt


def check_plot_path(path, flag: str = "--plot") -> Path:
    """Fail now, before any work, if ``path`` cannot take a plot: matplotlib missing, or a suffix
    it does not write."""
    _pyplot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    kinds = sorted(FigureCanvasAgg(Figure()).get_supported_filetypes())
    p = Path(path)
    if p.suffix.lower().lstrip(".") not in kinds:
        raise BatchError(f"{flag} {p.name}: the file must end in one of "
                         f"{', '.join('.' + k for k in kinds)}")
    return p


def solved_times(results_csv) -> tuple[list[float], int]:
    """Sorted times of the solved instances, and the number of instances in the file."""
    times, total = [], 0
    with open(results_csv, newline="", encoding="utf-8", errors="replace") as f:
        for r in csv.DictReader(f):
            if not r.get("status"):
                continue
            total += 1
            if r["status"] in ("verified", "falsified") and (r.get("correct") or "") != "no":
                try:
                    times.append(max(float(r["time_s"]), 1e-3))
                except (TypeError, ValueError):
                    pass
    return sorted(times), total


def _labels(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{p.parent.name}/{p.stem}" for p in paths]


def plot_cactus(result_csvs: list, path, labels: list[str] | None = None,
                title: str | None = None) -> None:
    """Write a cactus plot of one or more results CSVs to ``path`` (format from the suffix)."""
    check_plot_path(path)
    plt = _pyplot()
    paths = [Path(p) for p in result_csvs]
    if not paths:
        raise BatchError("plot_cactus: no results files given")
    if labels is not None and len(labels) != len(paths):
        raise BatchError(f"plot_cactus: {len(labels)} labels for {len(paths)} results files")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BatchError(f"results file not found: {missing[0]}")
    labels = labels or _labels(paths)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        most = 0
        for p, label in zip(paths, labels):
            times, total = solved_times(p)
            most = max(most, total)
            xs = [times[0]] + times if times else []
            ys = [0] + list(range(1, len(times) + 1)) if times else []
            ax.step(xs, ys, where="post", label=f"{label} ({len(times)}/{total})")
        ax.set_xscale("log")
        ax.set_xlabel("time per instance (s)")
        ax.set_ylabel("instances solved")
        ax.set_ylim(0, max(most, 1))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def plot_curve(curve, path, title: str | None = None) -> None:
    """Write the plot of a ``RobustnessCurve`` to ``path`` (format from the suffix)."""
    check_plot_path(path)
    plt = _pyplot()
    eps = list(curve.eps)
    cert = [100 * curve.certified(k) for k in range(len(eps))]
    emp = [100 * curve.empirical(k) for k in range(len(eps))]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        ax.axhline(100 * curve.clean_accuracy, color="0.35", linestyle="--", linewidth=1.2,
                   label=f"clean accuracy ({100 * curve.clean_accuracy:.1f}%)")
        ax.fill_between(eps, cert, emp, color="tab:orange", alpha=0.25, linewidth=0,
                        label="undecided")
        # the empirical curve drawn wider underneath, so it shows where the two coincide
        ax.plot(eps, emp, "o-", color="tab:red", markersize=8, linewidth=3,
                label="empirical robust (not falsified)")
        ax.plot(eps, cert, "s-", color="tab:blue", markersize=5,
                label="certified robust (verified)")
        ax.set_xlabel("ε (L∞)")
        ax.set_ylabel(f"accuracy (%) of {curve.n} samples")
        ax.set_ylim(0, 102)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
        ax.set_title(title or curve.title())
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
