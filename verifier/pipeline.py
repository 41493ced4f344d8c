"""One property through the ladder: attack → CROWN → α-CROWN (optimised slopes) → MILP (or, for
networks with few inputs, branch and bound on the input box before the MILP).

Each rung may decide; the cheaper ones run first.  The answer obeys the soundness rules:

- ``verified`` only when every case's worst-case margin has a sound lower bound > 0: from the
  bound propagation (``verifier.bounds``, float-error charged, LP bounds rebuilt from duals) or from
  the MILP's dual bound minus its tolerance (``verifier.solvers.solve_case``).
- ``falsified`` only with a point replayed by ``verifier.replay`` in onnxruntime (float32, inside a
  case's box, output in its unsafe region).  A solver incumbent that fails replay gives ``unknown``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .attack import falsify
from .bab import branch_and_bound, per_conjunction
from .bounds import Ladder
from .bounds.engine import MemoryCapError
from .certificate import Certificate
from .config import Options
from .exact import milp_refusal, solve_domain
from .graph import Graph
from .spec import Property, conjunction_max

# which bound levels and whether the MILP runs, per method.  Per-neuron LP tightening is not in
# auto: alpha-CROWN reaches the same margins 10-20 times faster on mnist_fc 256x4 (and better
# ones within a budget; benchmarks/bench_bounds.py, numbers in the README)
_PLAN = {
    "auto":   (("symbolic", "alpha"), True),   # input splitting comes before the MILP on few inputs
    "bounds": (("symbolic", "alpha"), False),
    "lp":     (("symbolic", "alpha", "lp"), False),
    "milp":   (("symbolic", "alpha"), True),
    "bab":    (("symbolic", "alpha"), False),
    "attack": ((), False),
}
class _Clock:
    def __init__(self, timeout: float):
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + timeout

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _quiet(phase, info):
    pass


def run(net: Graph, prop: Property, options: Options, progress=None) -> Certificate:
    clock = _Clock(options.timeout)
    progress = progress or _quiet
    stats: dict = {"relus": net.relu_count, "cases": len(prop.cases),
                   "arithmetic": options.arithmetic}
    best_x, best_upper = None, math.inf
    attack_left = [0.0]          # seconds of the attack's share not used by the first attack

    def cert(status, method, lower=None, upper=None, x=None, y=None) -> Certificate:
        return Certificate(status, clock.elapsed(), lower,
                           upper if upper is None or math.isfinite(upper) else None,
                           None if x is None else [float(v) for v in x],
                           None if y is None else [float(v) for v in y], method, stats)

    if options.method in ("auto", "attack"):
        share = 1.0 if options.method == "attack" else options.attack_share
        found, margin = _attack(net, prop, options.timeout * share, options.seed, stats,
                                options.tuning.attack_steps)
        attack_left[0] = options.timeout * share - found.attack.time_s
        progress("attack", dict(stats["attack"], found=found.found))
        if found.found:
            return cert("falsified", "attack", upper=margin, x=found.x32, y=found.y32)
        best_x, best_upper = found.attack.x_best, found.attack.margin_best
        if options.method == "attack":
            return cert("unknown", "attack", upper=best_upper)

    levels, use_milp = _PLAN[options.method]
    if options.method in ("auto", "bab") and _few_inputs(net):
        levels = ("symbolic",)          # input splitting bounds its own boxes
    lowers, methods = [], []
    for k, case in enumerate(prop.cases):
        if clock.left() <= 0:
            return cert("timeout", _strongest(methods), upper=best_upper)
        start = best_x if best_x is not None and case.box.contains(best_x) else None
        try:
            outcome = _decide_case(net, prop, k, case, levels, use_milp, clock, start, options,
                                   stats, progress, attack_left)
        except (MemoryCapError, MemoryError) as e:
            # the bounds of this case do not fit the memory cap (or the machine): nothing is
            # claimed about it, and the reason goes with the answer
            stats["unknown_reason"] = f"memory: {e}" if str(e) else "memory: out of memory"
            return cert("unknown", _strongest(methods), upper=best_upper)
        if outcome.status == "falsified":
            return cert("falsified", outcome.method, upper=outcome.upper, x=outcome.x32,
                        y=outcome.y32)
        best_upper = min(best_upper, outcome.upper if outcome.upper is not None else math.inf)
        if outcome.status != "verified":
            return cert(outcome.status, outcome.method, lower=outcome.lower, upper=best_upper)
        lowers.append(outcome.lower)
        methods.append(outcome.method)
    return cert("verified", _strongest(methods), lower=min(lowers), upper=best_upper)


MAX_INPUTS = 32          # input splitting pays off only in low dimension


def _few_inputs(net: Graph) -> bool:
    return net.n_inputs <= MAX_INPUTS


def _split_portfolio(net, prop, k, ladder, end: float, tune):
    """Input splitting as several searches taking turns, in slices that double
    (``tune.split_slice`` seconds first, each search resumed where it stopped), one per entry of
    ``tune.split_tops`` (the inputs it looks ahead among; ``tune.split_steps``: its slope steps
    for the open boxes' bounds); the first to decide answers.  No rule
    wins everywhere (ACAS Xu: see ``Tuning.split_tops``), and taking turns costs each search at
    most a few times its own time, where running them one after the other costs a later one the
    whole share of those before it."""
    kw = dict(rule="input", batch=tune.split_batch, leaf_relus=tune.leaf_relus,
              leaf_time=tune.leaf_time, attack_every=tune.domain_attack_every,
              attack_time=tune.domain_attack_time, pool_bytes=tune.pool_gb * 2**30)
    t0 = time.perf_counter()
    tops = list(tune.split_tops)
    last: list = [None] * len(tops)
    steps = list(tune.split_steps)
    tries = [{"top": t, "steps": a, "domains": 0, "rounds": 0, "max_depth": 0, "time_s": 0.0}
             for t, a in zip(tops, steps)]
    slice_s = tune.split_slice
    going = lambda r: r is None or (r.status == "timeout" and r.pool is not None)
    while time.perf_counter() < end and any(going(r) for r in last):
        for i, top in enumerate(tops):
            now = time.perf_counter()
            if now >= end:
                break
            if not going(last[i]):            # gave up: too many domains, or a box too small
                continue
            r = branch_and_bound(net, prop, k, ladder.dom, ladder.eng, min(end, now + slice_s),
                                 top=top, alpha_steps=steps[i], resume=last[i], **kw)
            last[i] = r
            for key in ("domains", "rounds"):
                tries[i][key] += r.stats.get(key, 0)
            tries[i]["time_s"] = round(tries[i]["time_s"] + r.stats.get("time_s", 0.0), 4)
            tries[i]["max_depth"] = max(tries[i]["max_depth"], r.stats.get("max_depth", 0))
            if r.status in ("verified", "falsified"):
                return _with_tries(r, tries, t0)
        slice_s *= 2
    ran = [r for r in last if r is not None]
    if not ran:                               # no time at all: the root's bound, as a timeout
        ran = [branch_and_bound(net, prop, k, ladder.dom, ladder.eng, end, top=tops[0],
                                alpha_steps=steps[0], **kw)]
    best = max(ran, key=lambda r: -np.inf if r.margin_lower is None else r.margin_lower)
    return _with_tries(best, tries, t0)


def _with_tries(r, tries: list, t0: float):
    """``r`` with the statistics of all turns: totals, and each search's own under ``tries``."""
    r.stats.update(domains=sum(t["domains"] for t in tries),
                   rounds=sum(t["rounds"] for t in tries),
                   max_depth=max(t["max_depth"] for t in tries),
                   time_s=round(time.perf_counter() - t0, 4), tries=tries)
    return r


def _relu_bab(net, prop, k, ladder, bounds, end: float, tune, resume=None):
    """ReLU branch and bound from the ladder's root bounds and slopes until ``end``, one search
    per open conjunction (``resume``: an undecided earlier search, whose open domains go on with
    the ladder's tighter bounds)."""
    return per_conjunction(net, prop, k, ladder.dom, ladder.eng, end, start=ladder.slopes,
                           batch=tune.bab_batch, fsb=tune.bab_fsb,
                           steps=(tune.bab_steps_large if tune.large_net(net.relu_count)
                                  else tune.bab_steps),
                           leaf_relus=tune.leaf_relus, leaf_time=tune.leaf_time,
                           root_lower=bounds.margin_lower[None, :],
                           attack_every=tune.domain_attack_every,
                           attack_time=tune.domain_attack_time,
                           pool_bytes=tune.pool_gb * 2**30, resume=resume)


def _strongest(methods) -> str:
    order = ["bounds", "lp", "split", "bab", "milp"]
    return max(methods, key=order.index, default="bounds")


def _attack(net, prop, budget, seed, stats, steps):
    found = falsify(net, net.model_bytes, prop, time_budget=budget, seed=seed, steps=steps)
    stats["attack"] = {"time_s": round(found.attack.time_s, 4),
                       "evaluations": found.attack.evaluations,
                       "best_margin": float(found.attack.margin_best),
                       "replayed": len(found.replays)}
    margin = float(prop.cases[found.case_index].margin(found.y32)) if found.found else None
    return found, margin


@dataclass
class _Outcome:
    status: str
    method: str
    lower: float | None = None
    upper: float | None = None
    x32: np.ndarray | None = None
    y32: np.ndarray | None = None


def _decide_case(net, prop, k, case, levels, use_milp, clock, start, options, stats,
                 progress, attack_left) -> _Outcome:
    C, d, owner = case.stacked()
    n_conj = len(case.unsafe)
    case_stats = stats.setdefault("per_case", [])
    entry: dict = {"case": k}
    case_stats.append(entry)
    tune = options.tuning
    ladder = Ladder(net, case.box.lower, case.box.upper, C, d, arithmetic=options.arithmetic,
                    alpha_steps=tune.alpha_steps, memory_gb=tune.memory_gb)
    entry["engine"] = ladder.eng.stats          # largest block, rows bounded per node (live)
    bounds, conj_lower = None, np.full(n_conj, -np.inf)
    for level in levels:
        budget = max(0.0, clock.left() * tune.lp_share)
        alpha_budget = max(0.0, clock.left() * tune.alpha_share)
        if (level == "lp" and budget < tune.min_stage) or \
                (level == "alpha" and alpha_budget < tune.min_stage):
            break
        bounds = ladder.run(level, budget=budget, alpha_budget=alpha_budget,
                            neuron_time=tune.milp_neuron_time if level == "milp" else None)
        conj_lower = np.maximum(conj_lower, conjunction_max(bounds.margin_lower, owner, n_conj))
        entry["bounds"] = bounds.report.to_dict()
        progress("bounds", {"case": k, "level": level, "unstable": bounds.report.levels[-1].unstable,
                            "margin_lower": float(conj_lower.min())})
        if conj_lower.min() > 0:
            return _Outcome("verified", "bounds" if level in ("symbolic", "alpha") else level,
                            lower=float(conj_lower.min()))
        if clock.left() <= 0:
            return _Outcome("timeout", level, lower=float(conj_lower.min()))
    splits = options.method in ("auto", "bab") and _few_inputs(net)
    if splits:
        # few inputs: branch and bound on the input box beats one big MILP (ACAS Xu); in auto the
        # MILP keeps the rest of the time for the small nets where splitting stalls
        share = 1.0 if options.method == "bab" else tune.split_share
        end = clock.deadline - (1 - share) * clock.left()
        r = _split_portfolio(net, prop, k, ladder, end, tune)
        entry["split"] = r.stats
        progress("split", dict(r.stats, case=k))
        if r.status == "falsified":
            return _Outcome("falsified", "split", upper=r.margin_upper, x32=r.x32, y32=r.y32)
        if r.status == "verified":
            return _Outcome("verified", "split", lower=r.margin_lower, upper=r.margin_upper)
    case_lower = float(conj_lower.min())
    if splits and r.margin_lower is not None:    # the worst open box's bound holds for the case
        case_lower = max(case_lower, r.margin_lower)
    relu_bab = bounds is not None and not splits and options.method in ("bab", "auto")
    unstable = bounds.report.levels[-1].unstable if bounds is not None else 0
    if use_milp and relu_bab:
        # a MILP that would be refused, or is too big to finish, gets no share of the time:
        # branch and bound takes it (all but the deep attack's budget).  oval21 deep and wide:
        # weights of 1e-13; cifar10_resnet: 450-1560 binaries, never a finished MILP
        why = (f"{unstable} unstable ReLUs after the bounds, over the {tune.milp_relus} up to "
               f"which the MILP gets time in auto" if unstable > tune.milp_relus
               else milp_refusal(ladder.eng, ladder.dom, case))
        if why is not None:
            use_milp = False
            entry["milp_skipped"] = why
    if relu_bab:
        share = 1.0 if options.method == "bab" else tune.bab_share
        end = clock.deadline - (1 - share) * clock.left()
        if options.method == "auto" and not use_milp and k == len(prop.cases) - 1:
            end = clock.deadline - attack_left[0]
        refine = (options.method == "auto" and 0 < unstable <= tune.refine_relus
                  and not tune.large_net(net.relu_count))
        now = time.perf_counter()
        first_end = now + tune.bab_first_share * (end - now) if refine else end
        r = _relu_bab(net, prop, k, ladder, bounds, first_end, tune)
        if refine and r.status not in ("verified", "falsified") and time.perf_counter() < end:
            # the first search did not decide: MILP-refined intermediate bounds, then a second
            # search from the tighter root (mnist_fc 256x4 / 256x6 at eps 0.05)
            now = time.perf_counter()
            bounds = ladder.refine(tune.refine_share * (end - now), tune.refine_neuron_time,
                                   options.threads)
            entry["bounds"] = bounds.report.to_dict()
            conj_lower = np.maximum(conj_lower,
                                    conjunction_max(bounds.margin_lower, owner, n_conj))
            progress("bounds", {"case": k, "level": "milp-refine",
                                "unstable": bounds.report.levels[-1].unstable,
                                "margin_lower": float(conj_lower.min())})
            if conj_lower.min() > 0:
                return _Outcome("verified", "milp", lower=float(conj_lower.min()))
            first = {key: r.stats[key] for key in ("domains", "rounds", "time_s")
                     if key in r.stats}
            r = _relu_bab(net, prop, k, ladder, bounds, end, tune, resume=r)
            r.stats["first_try"] = first
        entry["bab"] = r.stats
        progress("bab", dict(r.stats, case=k))
        if r.status == "falsified":
            return _Outcome("falsified", "bab", upper=r.margin_upper, x32=r.x32, y32=r.y32)
        if r.status == "verified":
            return _Outcome("verified", "bab", lower=r.margin_lower, upper=r.margin_upper)
        if r.margin_lower is not None:         # the smallest bound over the open leaves
            case_lower = max(case_lower, r.margin_lower)
    if options.method == "auto" and attack_left[0] > tune.min_stage and not splits:
        # the first attack stops after one round of restarts, so that instances the bounds
        # prove stay fast; a case branch and bound leaves open gets the rest of the attack's
        # budget, with more steps and fresh restarts, before the MILP (LP_d-CNN image 8: missed
        # by the first round in 0.3 s, found here within 9-13 s of a 60 s timeout, where the MILP
        # needed 47 s).  After branch and bound, not before: it would cost every unsat case that
        # branch and bound decides the whole budget (12 s of 120 on mnist_fc 256x2).
        # Input splitting tries points in every box itself, so it goes straight to that.
        one = Property((case,), prop.n_inputs, prop.n_outputs)
        deep = falsify(net, net.model_bytes, one, time_budget=attack_left[0],
                       seed=options.seed + 1 + k, steps=tune.deep_attack_steps,
                       rounds=tune.deep_attack_rounds)
        attack_left[0] = 0.0
        entry["deep_attack"] = {"time_s": round(deep.attack.time_s, 4),
                                "best_margin": float(deep.attack.margin_best)}
        if deep.found:
            return _Outcome("falsified", "attack", upper=float(case.margin(deep.y32)),
                            x32=deep.x32, y32=deep.y32)
        if deep.attack.x_best is not None and deep.attack.margin_best < math.inf:
            start = start if start is not None else deep.attack.x_best
    if not use_milp or bounds is None:
        status = "timeout" if clock.left() <= 0 else "unknown"
        method = "bab" if relu_bab else ("lp" if "lp" in levels else "bounds")
        return _Outcome(status, method, lower=case_lower)

    # the MILP models the network in real arithmetic: in float32 it must also clear the output's
    # float32 deviation (exact.solve_domain); a candidate counts only once replayed
    r = solve_domain(ladder.eng, ladder.dom, case, prop.n_inputs, prop.n_outputs, clock.left(),
                     start=start, margin_lower=conj_lower, threads=options.threads)
    entry["milp"] = r.stats
    progress("milp", {"case": k, "status": r.status, "binaries": r.stats.get("binaries"),
                      "nodes": r.stats.get("nodes")})
    lower = max(case_lower, r.lower)
    if r.status == "falsified":
        return _Outcome("falsified", "milp", upper=r.upper, x32=r.x32, y32=r.y32)
    if r.status == "verified":
        return _Outcome("verified", "milp", lower=lower)
    status = "timeout" if r.status == "timeout" or clock.left() <= 0 else "unknown"
    return _Outcome(status, "milp", lower=lower, upper=r.upper)
