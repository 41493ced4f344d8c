"""The public API: load a model, verify a property, find the minimal distortion, export the MILP.
The CLI calls only these functions (and ``check.check_certificate``, which is built on them).

What an answer guarantees (see ``Certificate``): ``verified`` comes only from sound bounds (the
symbolic/LP bound propagation, or the MILP's dual bound minus its tolerance); ``falsified`` only from
an input that was replayed in onnxruntime in float32, inside the input box, violating the property.
Everything else is ``unknown`` (or ``timeout`` when the time ran out first).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .certificate import (Certificate, CertificateError, MinDistortionResult)
from .config import Options, OptionsError, check_domain, check_eps
from .graph import Graph
from .onnx_loader import ModelError, load as _load_graph
from .spec import (Property, SpecError, check_norm, check_order_only, distance, input_vector,
                   robustness_property)
from .vnnlib import VnnlibError, parse_vnnlib

# errors that are the user's input, not our bug: the CLI prints them as one line, exit code 2
USER_ERRORS = (ModelError, OptionsError, SpecError, VnnlibError, CertificateError,
               FileNotFoundError, IsADirectoryError, PermissionError)

DISTORTION_GAP = 1e-3      # relative gap target of min_distortion (asked of the solver: half)


def load(path) -> Graph:
    """Load an ONNX model (``.onnx`` / ``.onnx.gz``) as a layer graph; ``ModelError`` if it can't."""
    return _load_graph(path)


def _graph(model) -> Graph:
    return model if isinstance(model, Graph) else load(model)


def forward_check(net: Graph, samples: int = 3, seed: int = 0) -> str:
    """Compare the float64 graph with onnxruntime on random inputs in [0, 1]; one line of result."""
    from .replay import run_model
    if net.model_bytes is None:
        return "forward check: skipped (graph was not loaded from ONNX)"
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(samples):
        x = rng.random(net.n_inputs).astype(np.float32)
        try:
            y = run_model(net.model_bytes, x).astype(np.float64)
        except Exception as e:      # the file loads but onnxruntime refuses it: bad input
            raise ModelError(f"onnxruntime cannot run this model: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}") \
                from None
        ours = model_output(net, net.forward(x))
        worst = max(worst, float(np.max(np.abs(y - ours))) / max(1.0, np.abs(y).max()))
    return f"forward check: float64 graph vs onnxruntime on {samples} random inputs, " \
           f"max relative difference {worst:.1e}"


def model_output(net: Graph, y: np.ndarray) -> np.ndarray:
    """The model's output from the graph's (they differ only by a dropped output Softmax)."""
    if net.output_groups is None:
        return y
    y = np.asarray(y, np.float64)
    out = np.empty_like(y)
    for g in np.unique(net.output_groups):
        sel = net.output_groups == g
        e = np.exp(y[sel] - y[sel].max())
        out[sel] = e / e.sum()
    return out


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------
def _input_vector(net: Graph, x, domain) -> np.ndarray:
    return input_vector(x, net.n_inputs, domain, net.input_shape)


def robustness(model, x, label: int, eps: float, *, domain=(0.0, 1.0),
               target: int | None = None) -> Property:
    """The L∞ robustness property around ``x`` (validated: size, finite, inside ``domain``)."""
    net = _graph(model)
    domain = check_domain(domain)
    x = _input_vector(net, x, domain)
    return check_property(net, robustness_property(x, label, check_eps(eps), domain,
                                                   n_outputs=net.n_outputs, target=target))


def read_vnnlib(model, vnnlib) -> Property:
    """Parse a VNN-LIB file for this model's input and output sizes."""
    net = _graph(model)
    return check_property(net, parse_vnnlib(Path(vnnlib), n_inputs=net.n_inputs,
                                            n_outputs=net.n_outputs))


def check_property(net: Graph, prop: Property) -> Property:
    """``prop`` if the graph can decide it; ``SpecError`` if not: a graph that dropped the model's
    output Softmax decides only comparisons of two outputs of one softmax."""
    if net.output_groups is not None:
        check_order_only(prop, net.output_groups, "the model's output Softmax")
    return prop


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------
def verify(model, x, label: int, eps: float, *, domain=(0.0, 1.0), target: int | None = None,
           timeout: float | None = None, method: str | None = None,
           arithmetic: str | None = None, options: Options | None = None) -> Certificate:
    """Is every input within L∞ distance ``eps`` of ``x`` (inside ``domain``) classified ``label``?

    ``model`` is a path or a loaded ``Graph``; ``x`` any array holding the model's input size,
    with values inside ``domain``.  ``arithmetic``: ``float32`` (default: ``verified`` covers the
    model as onnxruntime runs it) or ``real``."""
    options = _options(options, timeout, method, arithmetic)
    net = _graph(model)
    prop = robustness(net, x, label, eps, domain=domain, target=target)
    return verify_property(net, prop, options)


def verify_vnnlib(model, vnnlib, *, timeout: float | None = None, method: str | None = None,
                  arithmetic: str | None = None, options: Options | None = None) -> Certificate:
    """Check a VNN-LIB v1 property (``verified`` = unsat, ``falsified`` = sat)."""
    options = _options(options, timeout, method, arithmetic)
    net = _graph(model)
    return verify_property(net, read_vnnlib(net, vnnlib), options)


def _options(options, timeout, method, arithmetic=None) -> Options:
    return (options or Options()).override(timeout=timeout, method=method, arithmetic=arithmetic)


def verify_property(net: Graph, prop: Property, options: Options, progress=None) -> Certificate:
    """Run the pipeline on a parsed property; see the module docstring for the guarantees.
    ``progress(phase, info)``, if given, is called as each phase ends (attack, bounds, split,
    milp) with a small dict of what it found."""
    from threadpoolctl import threadpool_limits

    from .pipeline import run
    # one BLAS thread per solve: the products here are small, and on a shared machine a
    # multi-threaded BLAS made them up to 100x slower (measured on 2 cores with other jobs)
    check_property(net, prop)
    with threadpool_limits(limits=options.threads):
        return run(net, prop, options, progress)


# --------------------------------------------------------------------------------------------
# MILP export
# --------------------------------------------------------------------------------------------
def export_milp(model, prop: Property, path) -> dict:
    """Write the exact MILP of the first case CROWN bounds do not decide, as ``solve_case``
    builds it (big-M constants from CROWN bounds): network encoding + the disjunction of the
    case's output constraints not already proved safe; minimise the margin (the case holds iff the
    optimum is > 0).  If bounds decide every case, case 0 with all its constraints is written.
    ``.mps`` or ``.lp`` by the suffix.  Returns what was written (case, rows, columns, ...)."""
    from .bounds import compute_bounds
    from .encode import disjunction_objective, encode_network, prune_conjunctions
    from .solvers import conjunction_lower
    from .solvers.pulp_backend import export_model
    path = Path(path)
    if path.suffix.lower() not in (".mps", ".lp"):
        raise OptionsError(f"--export: the file must end in .mps or .lp, not {path.name!r}")
    net = _graph(model)
    check_property(net, prop)
    out = net.output
    pick = None
    for k, case in enumerate(prop.cases):
        C = np.vstack([np.atleast_2d(c.C) for c in case.unsafe])
        d = np.concatenate([np.ravel(c.d) for c in case.unsafe])
        b = compute_bounds(net, case.box, level="symbolic", C=C, d=d)
        kept, _ = prune_conjunctions(case.unsafe, b.lower[out], b.upper[out],
                                     conjunction_lower(case.unsafe, b.margin_lower))
        kept = [j for j in kept if np.atleast_2d(case.unsafe[j].C).shape[0] > 0]
        if pick is None:
            pick = (k, case, b, list(range(len(case.unsafe))), True)
        if kept:
            pick = (k, case, b, kept, False)
            break
    k, case, b, kept, decided = pick
    kept = [j for j in kept if np.atleast_2d(case.unsafe[j].C).shape[0] > 0]
    if not kept:
        raise OptionsError("--export: the property's output constraints have no rows (every "
                           "output is unsafe): there is no MILP to write")
    milp = disjunction_objective(encode_network(net, b, case.box),
                                 [case.unsafe[j] for j in kept], b.lower[out], b.upper[out],
                                 node=out)
    export_model(milp, path)
    return {"path": str(path), "case": k, "constraints": len(kept),
            "of_constraints": len(case.unsafe), "decided_by_bounds": decided, **milp.stats()}


# --------------------------------------------------------------------------------------------
# minimal distortion
# --------------------------------------------------------------------------------------------
def min_distortion(model, x, label: int, *, norm: str = "inf", timeout: float | None = None,
                   max_eps: float | None = None, domain=(0.0, 1.0),
                   target: int | None = None) -> MinDistortionResult:
    """The smallest L∞ (``norm="inf"``) or L1 (``"1"``) distance from ``x`` to an input inside
    ``domain`` that is not classified ``label`` (or, with ``target``, scores ``target`` at least as
    high as ``label``), searched within L∞ distance ``max_eps`` (default: the whole domain).

    ``distortion_lower`` is sound (no closer input is unsafe; at most the search radius, since
    every input farther than that in L∞ is at least that far in L1 too).  ``distortion_upper`` is
    the exact distance of ``counterexample``, which was replayed in onnxruntime: float32, inside
    the domain, its output unsafe.  A solver point that fails replay is not reported (``replay``
    says why; the solver's claim is in ``stats["solver_upper"]``)."""
    from threadpoolctl import threadpool_limits

    from . import distortion
    t0 = time.perf_counter()
    norm = check_norm(norm)
    timeout = Options().override(timeout=timeout).timeout      # validated; None: the default
    net = _graph(model)
    domain = check_domain(domain)
    x = _input_vector(net, x, domain)
    check_property(net, robustness_property(x, label, 0.0, domain, n_outputs=net.n_outputs,
                                            target=target))                          # checks
    if max_eps is not None:
        max_eps = check_eps(max_eps)
    radius = float(np.max(np.maximum(x - domain[0], domain[1] - x))) if max_eps is None \
        else max_eps
    if net.model_bytes is not None:         # already misclassified: distance 0, nothing to search
        from .replay import replay
        rep = replay(net.model_bytes, x, robustness_property(
            x, label, 0.0, domain, n_outputs=net.n_outputs, target=target))
        if rep.ok and distance(rep.x32, x, norm) == 0.0:
            return MinDistortionResult(
                "found", norm, 0.0, 0.0, [float(v) for v in rep.x32], [float(v) for v in rep.y32],
                "ok", "replay", time.perf_counter() - t0, DISTORTION_GAP,
                {"radius": radius, "replay_margin": rep.margin,
                 "note": f"the input itself is not classified {label}"
                         + ("" if target is None else f" against {target}")})
    with threadpool_limits(limits=1):
        r = distortion.min_distortion(net, x, label, target=target, norm=norm, domain=domain,
                                      max_eps=max_eps, time_limit=float(timeout),
                                      gap=DISTORTION_GAP / 2)
    stats = {"radius": radius, "solver_status": r.status, **r.stats}
    method = "bisect" if "steps" in r.stats else "milp"
    lower = min(float(r.distortion_lower), radius)
    if lower < r.distortion_lower:
        stats["note"] = (f"lower bound capped at the search radius {radius:g} (the search saw only "
                         f"inputs within L∞ {radius:g}); raise max_eps / --eps to search farther")

    def result(status, lo, hi=None, x32=None, y32=None, why=""):
        return MinDistortionResult(status, norm, lo, hi,
                                None if x32 is None else [float(v) for v in x32],
                                None if y32 is None else [float(v) for v in y32], why, method,
                                time.perf_counter() - t0, DISTORTION_GAP, stats)

    if r.status == "none":
        return result("robust", lower, why="nothing unsafe within the search radius")
    undecided = "timeout" if r.status == "timeout" else "unknown"
    if r.x_adv is None:
        return result(undecided, lower, why="no unsafe input found")
    stats["solver_upper"] = float(r.distortion_upper)
    rep, why = _replay_distortion(net, x, label, target, domain, norm, np.asarray(r.x_adv))
    if rep is None:
        return result(undecided, lower, why=why)
    upper = distance(rep.x32, x, norm)
    stats["replay_margin"] = rep.margin
    lower = min(lower, upper)
    status = "found" if upper - lower <= DISTORTION_GAP * upper + 1e-12 else undecided
    return result(status, lower, upper, rep.x32, rep.y32, "ok")


def _replay_distortion(net, x0, label, target, domain, norm, x_adv):
    """Replay the solver's closest unsafe point.  It sits on the decision boundary (margin ~ 0),
    so float32 rounding can make it safe: then it is pushed slightly farther out along its own
    direction (relative 1e-6 .. 3e-4, within the gap target) and tried again."""
    from .replay import replay
    if net.model_bytes is None:
        return None, "graph was not loaded from ONNX: nothing to replay it in"
    lo, hi = domain
    v = x_adv - x0
    why = ""
    for push in (0.0, 1e-6, 1e-5, 1e-4, 3e-4):
        xp = np.clip(x0 + (1.0 + push) * v, lo, hi)
        # the L∞ ball that holds xp, plus a float32 ulp: replay rounds xp to float32 inside it
        ulp = float(np.spacing(np.float32(max(1.0, np.abs(xp).max(), np.abs(x0).max()))))
        eps = float(np.abs(xp - x0).max()) + 2 * ulp
        prop = robustness_property(x0, label, eps, domain, n_outputs=net.n_outputs, target=target)
        rep = replay(net.model_bytes, xp, prop)
        if rep.ok:
            return rep, ""
        why = rep.reason
    return None, f"onnxruntime replay failed: {why}"
