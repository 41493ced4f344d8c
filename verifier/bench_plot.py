"""Cactus plots of results files: instances solved (y) against time per instance (x, log scale).

An instance counts as solved when its status is verified or falsified and it is not marked wrong
(``correct`` = no) against an expected answer: a fast wrong answer must not look like progress.
Several results files overlay as one line each, to compare runs or tools.

``python -m verifier.bench_plot A.csv B.csv [--labels a b] -o cactus.png``
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path


def solved_times(results_csv) -> tuple[list[float], int]:
    """Sorted times of the solved instances, and the number of instances in the file."""
    times, total = [], 0
    with open(results_csv, newline="") as f:
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
    from .bench import BenchError
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install matplotlib") from None
    paths = [Path(p) for p in result_csvs]
    if not paths:
        raise BenchError("plot_cactus: no results files given")
    if labels is not None and len(labels) != len(paths):
        raise BenchError(f"plot_cactus: {len(labels)} labels for {len(paths)} results files")
    labels = labels or _labels(paths)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        most = 0
        for p, label in zip(paths, labels):
            if not p.is_file():
                raise BenchError(f"results file not found: {p}")
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


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m verifier.bench_plot",
                                description="Cactus plot of one or more results CSVs.")
    p.add_argument("results", nargs="+")
    p.add_argument("-o", "--out", default="cactus.png")
    p.add_argument("--labels", nargs="+")
    p.add_argument("--title")
    a = p.parse_args(argv)
    from .bench import BenchError
    try:
        plot_cactus(a.results, a.out, labels=a.labels, title=a.title)
    except BenchError as e:
        print(f"verify: error: {e}", file=sys.stderr)
        return 2
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
