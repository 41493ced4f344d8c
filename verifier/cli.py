"""The ``verify`` command: argument parsing and printing only; the work is done by the Python API.

Exit codes: 0 verified, 1 falsified, 3 unknown or timeout, 2 bad input or usage (one line on stderr).
``--min-distortion``: 0 answered (bracketed to the gap with a replayed counterexample, or robust
within the search radius), 3 not answered in time.  ``--check``: 0 the certificate checks out,
1 it does not hold, 3 a requested re-run decided nothing, 4 what was re-checked holds but the proof
itself was not re-checked, 2 bad input (including a certificate that does not match the model, was
modified, or names a method this verifier does not know).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import api
from .batch import robustness_curve
from .check import check_certificate
from .certificate import Certificate, certificate_record, file_entry, vnncomp_result, \
    write_certificate

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one line instead of usage + message
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="verify", description="Formal robustness verification of ReLU networks "
                "(ONNX) by mixed-integer programming.")
    p.add_argument("model", nargs="?", help="the network, .onnx or .onnx.gz")
    what = p.add_argument_group("property")
    what.add_argument("--eps", type=float, nargs="+", metavar="EPS",
                      help="L-infinity radius around --input / --dataset; with --dataset several "
                      "radii give a robustness curve (with --min-distortion: the largest "
                      "distance searched)")
    what.add_argument("--input", help="one input, .npy (any shape holding the model's input size)")
    what.add_argument("--label", type=int, help="the input's true class")
    what.add_argument("--target", type=int, help="only check this other class")
    what.add_argument("--vnnlib", help="a VNN-LIB v1 property file instead of --eps/--input/--label")
    what.add_argument("--dataset", help=".npz with arrays x (N, ...) and y (N,): verify every "
                      "sample (at every --eps)")
    what.add_argument("--domain", nargs=2, type=float, metavar=("LO", "HI"),
                      help="valid input range around --input / --dataset (default 0 1)")
    how = p.add_argument_group("how")
    how.add_argument("--method", default=None,
                     help="auto|bounds|lp|milp|bab|attack (default auto)")
    how.add_argument("--arithmetic", default=None, choices=["float32", "real"],
                     help="what VERIFIED covers: float32 = the model as onnxruntime runs it "
                          "(default), real = real arithmetic")
    how.add_argument("--timeout", type=float, help=f"seconds per property (default "
                     f"{api.Options().timeout:g}; with "
                     "--instances the file's timeouts)")
    how.add_argument("--threads", type=int, help="cores one property may use (default 1): HiGHS "
                     "threads, BLAS threads and worker processes for the MILP-refined bounds; "
                     "with --instances, per instance (--jobs x --threads cores in all)")
    how.add_argument("--min-distortion", action="store_true",
                     help="find the smallest distortion that changes the label of --input")
    how.add_argument("--norm", default="inf", help="with --min-distortion: inf or 1 (default inf)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object per property")
    out.add_argument("--certificate", help="write a certificate file (re-check it with --check)")
    out.add_argument("--results-file", help="write the VNN-COMP result file")
    out.add_argument("--export", help="write the MILP (.mps or .lp) of the first case bounds do "
                     "not decide, then verify as usual")
    out.add_argument("--check", metavar="CERT", help="re-check certificate file CERT against MODEL")
    batch = p.add_argument_group("batch runs (--instances, --dataset)")
    batch.add_argument("--instances", help="VNN-COMP instances CSV (onnx,vnnlib,timeout): run all")
    batch.add_argument("--jobs", type=int, help="worker processes (default: all cores with "
                       "--instances, 1 with --dataset)")
    batch.add_argument("--out", help="results CSV (default results.csv with --instances, none "
                       "with --dataset)")
    batch.add_argument("--resume", action="store_true",
                       help="continue --out, skipping what is done")
    batch.add_argument("--plot", help="also write a plot (.png/.svg/.pdf): a cactus plot, or "
                       "the robustness curve")
    batch.add_argument("--scheduler", help="tcp://HOST:PORT of a Dask scheduler: run there")
    from . import __version__
    p.add_argument("--version", action="version", version=f"verify {__version__}")
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return _run(args)
    except UsageError as e:
        _error(str(e))
    except _user_errors() as e:
        _error(_first_line(e))
    except KeyboardInterrupt as e:
        print("verify: interrupted" + (f" ({e.args[0]})" if e.args else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:         # stdout closed early (verify ... | head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (MemoryError, RecursionError) as e:
        _error(f"out of resources ({type(e).__name__}): the input is too large or too deeply "
               f"nested")
    except Exception as e:     # a bug: one line, the traceback only on request
        if os.environ.get("VERIFY_TRACEBACK"):
            raise
        _error(f"internal error ({type(e).__name__}: {_first_line(e)}); this is a bug, please "
               f"report it (VERIFY_TRACEBACK=1 shows the traceback)")
    return EXIT_USAGE


def _error(msg: str) -> None:
    print(f"verify: error: {msg}", file=sys.stderr)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        s = f"{e.strerror}: {e.filename}"
    return s.splitlines()[0] if s else type(e).__name__


def _user_errors() -> tuple:
    from .batch.errors import BatchError, WorkerError
    return api.USER_ERRORS + (BatchError, WorkerError)


# --------------------------------------------------------------------------------------------
# dispatch and argument checks
# --------------------------------------------------------------------------------------------
def _given(args, *names) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n) not in (None, False)]


def _run(args) -> int:
    args.eps_all = args.eps             # several only for --dataset; elsewhere args.eps is one
    if args.eps is not None:
        if len(args.eps) > 1 and not args.dataset:
            raise UsageError("several --eps values need --dataset (a robustness curve)")
        args.eps = args.eps[0]
    _check_domain_applies(args)
    if args.check:
        return _check(args)
    if args.instances:
        return _instances(args)
    batch = _given(args, "jobs", "out", "resume", "plot", "scheduler")
    if batch and (not args.dataset or batch[0] == "--scheduler"):
        raise UsageError(f"{batch[0]} applies only to --instances"
                         + ("" if batch[0] == "--scheduler" else " or --dataset"))
    if args.model is None:
        raise UsageError("the model file is required (verify MODEL.onnx [options])")
    modes = [m for m in ("vnnlib", "dataset", "input") if getattr(args, m)]
    if len(modes) > 1:
        raise UsageError("use one of --vnnlib, --input or --dataset")
    if args.min_distortion:
        return _distortion(args, modes)
    _check_property_args(args, modes)
    if not modes:
        net = api.load(args.model)
        check = api.forward_check(net)        # first: a model onnxruntime refuses prints nothing
        print(net.summary())
        print(check)
        return 0
    if modes == ["dataset"]:
        return _dataset(args, _options(args))
    return _single(args, modes[0], _options(args))


def _check_domain_applies(args) -> None:
    """``--domain`` only shapes the L∞ ball of --input / --dataset / --min-distortion; elsewhere it
    would be silently ignored, so it is refused.  Then it gets its default, 0 1."""
    if args.domain is not None:
        for given, why in ((args.check, "--check (the certificate records its domain)"),
                           (args.instances, "--instances (the VNN-LIB files hold the input "
                                            "boxes)"),
                           (args.vnnlib, "--vnnlib (the file's input boxes are the whole input "
                                         "region)")):
            if given:
                raise UsageError(f"--domain does not apply to {why}")
        if not (args.input or args.dataset):
            raise UsageError("--domain needs a property (--input or --dataset)")
    args.domain = (0.0, 1.0) if args.domain is None else tuple(args.domain)


def _check_property_args(args, modes) -> None:
    """Which options go with which mode: fail on the first one that does not apply."""
    if args.norm != "inf":
        raise UsageError("--norm needs --min-distortion")
    for name in ("certificate", "results_file", "export"):
        if getattr(args, name) and modes in ([], ["dataset"]):
            raise UsageError(f"--{name.replace('_', '-')} needs a single property "
                             f"(--input or --vnnlib)")
    _check_output_paths(args)
    if not modes:
        extra = _given(args, "eps", "label", "target", "timeout", "method", "json")
        if extra:
            raise UsageError(f"{extra[0]} needs a property (--input, --vnnlib or --dataset)")
        return
    if modes == ["vnnlib"] and _given(args, "eps", "label", "target"):
        raise UsageError(f"{_given(args, 'eps', 'label', 'target')[0]} does not apply to "
                         f"--vnnlib (the file holds the whole property)")
    if modes != ["vnnlib"] and args.eps is None:
        raise UsageError(f"--eps is required with --{modes[0]}")
    if modes == ["input"] and args.label is None:
        raise UsageError("--label is required with --input")
    if modes == ["dataset"] and args.label is not None:
        raise UsageError("--label does not apply to --dataset (the labels are its array y)")


def _single(args, mode: str, options) -> int:
    """One property (--input or --vnnlib): export, verify, report."""
    if mode == "input":
        x = _read_npy(args.input)               # cheap errors before loading the model
    else:
        _need_file(args.vnnlib, "VNN-LIB file")
    net = api.load(args.model)
    if mode == "vnnlib":
        prop = api.read_vnnlib(net, args.vnnlib)
        record = {"kind": "vnnlib", **file_entry(args.vnnlib)}
    else:
        prop = api.robustness(net, x, args.label, args.eps, domain=args.domain, target=args.target)
        record = {"kind": "linf_ball", "x": x.reshape(-1), "label": args.label, "eps": args.eps,
                  "domain": list(args.domain), "target": args.target,
                  "input": file_entry(args.input)}
    exported = api.export_milp(net, prop, args.export) if args.export else None
    cert = api.verify_property(net, prop, options, _progress())
    return _report(cert, args, record, options, exported)


def _options(args) -> api.Options:
    return api.Options().override(method=args.method, timeout=args.timeout,
                                  arithmetic=args.arithmetic, threads=args.threads)


def _need_file(path, what: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{what} {p} is a directory, not a file")
    if not p.is_file():
        raise UsageError(f"{what} not found: {p}")
    return p


def _same_file(a, b) -> bool:
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)          # also through links
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _check_output_paths(args) -> None:
    """Fail before the run, not after it, when an output file cannot be written or would
    overwrite one of the run's inputs (or another output)."""
    inputs = [(f, getattr(args, n)) for f, n in (("the model", "model"), ("--vnnlib", "vnnlib"),
                                                  ("--input", "input"), ("--dataset", "dataset"))
              if getattr(args, n)]
    seen = []
    for name in ("certificate", "results_file", "export"):
        path = getattr(args, name)
        if not path:
            continue
        p = Path(path)
        flag = "--" + name.replace("_", "-")
        for what, other in inputs + seen:
            if _same_file(p, other):
                raise UsageError(f"{flag} {p} names the same file as {what}: it would be "
                                 f"overwritten; give another file name")
        seen.append((flag, path))
        if p.is_dir():
            raise UsageError(f"{flag} {p} is a directory; give a file name")
        if not p.parent.is_dir():
            raise UsageError(f"{flag}: folder {p.parent} does not exist")
        if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
            raise UsageError(f"{flag}: cannot write {p} (permission denied)")
    if args.export and Path(args.export).suffix.lower() not in (".mps", ".lp"):
        raise UsageError(f"--export: the file must end in .mps or .lp, "
                         f"not {Path(args.export).name!r}")


def _instances(args) -> int:
    if args.model or args.vnnlib or args.input or args.dataset:
        raise UsageError("--instances takes the models and properties from the file; "
                         "give no MODEL, --vnnlib, --input or --dataset")
    extra = _given(args, "certificate", "results_file", "export", "min_distortion", "eps",
                   "label", "target")
    if extra:
        raise UsageError(f"{extra[0]} does not apply to --instances")
    from .batch import run_instances
    out = args.out or "results.csv"
    with _resumable(out):
        s = run_instances(args.instances, jobs=args.jobs, out=out, resume=args.resume,
                          plot=args.plot, scheduler=args.scheduler,
                          method=args.method or "auto", timeout=args.timeout,
                          arithmetic=args.arithmetic, threads=args.threads,
                          progress=sys.stderr.isatty(), json_lines=args.json)
    print(s.table(), file=sys.stderr if args.json else sys.stdout)
    return 1 if s.wrong else 0


@contextlib.contextmanager
def _resumable(out):
    """Ctrl-C during a batch run says where the finished rows are and how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the finished rows are saved in {out}; run the same command "
                                f"with --resume to continue") from None


def _progress():
    """A line per finished phase on stderr, only when a person is watching it."""
    if not sys.stderr.isatty():
        return None

    def show(phase, info):
        items = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in info.items())
        print(f"[{phase}] {items}", file=sys.stderr, flush=True)
    return show


def _read_npy(path) -> np.ndarray:
    path = _need_file(path, "input file")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UsageError(f"{path.name} holds Python objects; save a numeric array "
                             f"(np.save(path, x.astype(np.float32)))") from None
        raise UsageError(f"cannot read {path.name} as a .npy array ({_first_line(e)})") from None
    except Exception as e:
        raise UsageError(f"cannot read {path.name} as a .npy array ({type(e).__name__})") from None
    if not isinstance(x, np.ndarray):
        if hasattr(x, "close"):
            x.close()
        raise UsageError(f"{path.name} is an .npz archive; give one array saved with np.save "
                         f"(or use --dataset)")
    return _numeric(x, path.name)


def _numeric(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == bool:
        raise UsageError(f"{name} holds booleans; save it as numbers "
                         f"(np.save(path, x.astype(np.float32)))")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UsageError(f"{name} must hold a real-valued numeric array, not {x.dtype}")
    if x.size == 0:
        raise UsageError(f"{name} holds an empty array")
    return x.astype(np.float64)


# --------------------------------------------------------------------------------------------
# one property: output
# --------------------------------------------------------------------------------------------
def _report(cert: Certificate, args, prop_record: dict, options, exported) -> int:
    if args.certificate:
        write_certificate(args.certificate, certificate_record(
            cert, model_path=args.model, prop=prop_record,
            options={"method": options.method, "timeout": options.timeout,
                     "arithmetic": options.arithmetic}))
    if args.results_file:
        Path(args.results_file).write_text(vnncomp_result(cert))
    export_line = None
    if exported:
        e = exported
        export_line = (f"  export   {e['path']}: MILP of box {e['case']} ({e['binaries']} binaries, "
                       f"{e['rows']} rows, {e['cols']} columns, {e['constraints']} of "
                       f"{e['of_constraints']} output constraints); minimise: the box is safe "
                       f"iff the optimum is > 0"
                       + ("; bounds alone decide every box" if e["decided_by_bounds"] else ""))
    if args.json:
        print(cert.to_json())
        if export_line:
            print(export_line.strip(), file=sys.stderr)
    else:
        print(cert.summary_line())
        for line in cert.details():
            print(line)
        if export_line:
            print(export_line)
        if args.certificate:
            print(f"  saved    certificate {args.certificate} "
                  f"(re-check: verify --check {args.certificate} {args.model})")
    return cert.exit_code


def _distortion(args, modes) -> int:
    if modes != ["input"]:
        raise UsageError("--min-distortion needs --input and --label")
    if args.label is None:
        raise UsageError("--label is required with --input")
    extra = _given(args, "results_file", "export", "method")
    if extra:
        raise UsageError(f"{extra[0]} does not apply to --min-distortion")
    norm = api.check_norm(args.norm)
    _check_output_paths(args)
    timeout = api.Options().override(timeout=args.timeout).timeout
    x = _read_npy(args.input)
    net = api.load(args.model)
    r = api.min_distortion(net, x, args.label, norm=norm,
                           timeout=timeout,
                           max_eps=args.eps, domain=args.domain, target=args.target)
    if args.certificate:
        prop = {"kind": "min_distortion", "x": x.reshape(-1), "label": args.label, "norm": norm,
                "max_eps": args.eps, "domain": list(args.domain), "target": args.target,
                "input": file_entry(args.input)}
        write_certificate(args.certificate, certificate_record(
            r, model_path=args.model, prop=prop,
            options={"timeout": timeout}))
    if args.json:
        print(r.to_json())
    else:
        print(r.summary_line())
        for line in r.details():
            print(line)
    return r.exit_code


def _check(args) -> int:
    if args.model is None:
        raise UsageError("--check needs the model too: verify --check CERT.json MODEL.onnx")
    extra = _given(args, "input", "dataset", "instances", "eps", "label", "target",
                   "certificate", "results_file", "export", "min_distortion")
    if extra:
        raise UsageError(f"{extra[0]} does not apply to --check")
    api.Options().override(method=args.method, timeout=args.timeout)     # validated before work
    res = check_certificate(args.check, args.model, vnnlib=args.vnnlib, method=args.method,
                            timeout=args.timeout)
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(res.summary_line())
        for line in res.checked:
            print(f"  checked      {line}")
        for line in res.not_checked:
            print(f"  not checked  {line}")
    return res.exit_code


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
def _read_dataset(path, net) -> tuple[np.ndarray, np.ndarray]:
    path = _need_file(path, "dataset file")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise UsageError(f"cannot read {path.name} as an .npz archive with arrays x and y "
                         f"({type(e).__name__})") from None
    if not hasattr(data, "files"):
        raise UsageError(f"{path.name} is a single array; --dataset needs an .npz archive with "
                         f"arrays x and y (np.savez(path, x=x, y=y))")
    with data:
        missing = [k for k in ("x", "y") if k not in data.files]
        if missing:
            raise UsageError(f"{path.name} has arrays {', '.join(data.files) or '(none)'}; "
                             f"--dataset needs x and y")
        try:
            xs, ys = np.asarray(data["x"]), np.asarray(data["y"])
        except ValueError as e:
            what = "Python objects" if "allow_pickle" in str(e) else _first_line(e)
            raise UsageError(f"{path.name}: cannot read x and y ({what})") from None
        except Exception as e:
            raise UsageError(f"{path.name}: cannot read x and y ({type(e).__name__})") from None
    xs = _numeric(xs, f"{path.name}: x")
    if xs.ndim < 1 or ys.ndim != 1:
        raise UsageError(f"{path.name}: y must be a 1-D array of labels and x hold one sample "
                         f"per label (x {list(xs.shape)}, y {list(ys.shape)})")
    if len(xs) != len(ys):
        raise UsageError(f"{path.name}: x has {len(xs)} samples but y has {len(ys)}")
    if xs[0].size != net.n_inputs:
        raise UsageError(f"{path.name}: each sample has {xs[0].size} values but the model expects "
                         f"{net.n_inputs} (x has shape {list(xs.shape)})")
    if ys.dtype == bool or not (np.issubdtype(ys.dtype, np.integer) or
                                np.issubdtype(ys.dtype, np.floating)):
        raise UsageError(f"{path.name}: y must hold integer labels, not {ys.dtype}")
    yi = ys.astype(np.int64) if np.all(np.isfinite(ys)) else None
    if yi is None or not np.array_equal(yi, ys):
        raise UsageError(f"{path.name}: y must hold integer labels")
    if yi.size and (yi.min() < 0 or yi.max() >= net.n_outputs):
        raise UsageError(f"{path.name}: labels must lie in 0..{net.n_outputs - 1}, "
                         f"y holds {yi.min()}..{yi.max()}")
    return xs.reshape(len(xs), -1), yi


def _dataset(args, options) -> int:
    """Every sample at every --eps: a line per sample (per row with --json), then the table."""
    if args.target is not None:
        raise UsageError("--target does not apply to --dataset")
    if args.resume and not args.out:
        raise UsageError("--resume needs --out, the results CSV to continue")
    net = api.load(args.model)
    xs, ys = _read_dataset(args.dataset, net)
    eps = sorted(set(args.eps_all))
    show = _SampleLines(eps, args.json)
    with _resumable(args.out) if args.out else contextlib.nullcontext():
        curve = robustness_curve(net, xs, ys, eps, domain=args.domain, options=options,
                                 jobs=1 if args.jobs is None else args.jobs,
                                 out=args.out, resume=args.resume, plot=args.plot,
                                 progress=sys.stderr.isatty(), on_row=show.row,
                                 on_sample=show.sample, dataset_path=args.dataset)
    if len(eps) > 1:
        print(curve.table(), file=sys.stderr if args.json else sys.stdout)
    elif not args.json:
        c = curve.count(0)
        undecided = c["unknown"] + c["timeout"] + c["error"] + c["missing"]
        print(f"verified {c['verified']}, falsified {c['falsified']}, unknown {undecided} of "
              f"{curve.n}; certified robust accuracy {curve.certified(0):.1%}")
    return 0


class _SampleLines:
    """What ``--dataset`` prints as answers come: with one ε a line per sample (the answer), with
    several a line per sample once all its ε are answered (V verified, F falsified, ? unknown,
    T timeout, E error); with --json one object per answer."""
    MARKS = {"verified": "V", "falsified": "F", "unknown": "?", "timeout": "T", "error": "E"}

    def __init__(self, eps, json_lines: bool):
        from .batch.progress import echo
        self.eps, self.json, self.echo = eps, json_lines, echo
        self.header = not json_lines

    def _line(self, text: str) -> None:
        if self.header:                 # with the first answer: every option was accepted
            cols = "answer" if len(self.eps) == 1 else "  ".join(f"{e:>6g}" for e in self.eps)
            self.echo(f"{'#':>4}  {'label':>5}  {cols}")
            self.header = False
        self.echo(text)

    def row(self, index: int, eps: float, row: dict) -> None:
        from .batch.results import json_line
        if self.json:
            keys = {"index": index} if len(self.eps) == 1 else {"index": index, "eps": eps}
            self.echo(json_line(row, keys))
        elif len(self.eps) == 1:
            self._line(f"{index:>4}  {row['label']:>5}  {_answer_line(row)}")

    def sample(self, index: int, label: int, statuses: list) -> None:
        if not self.json and len(self.eps) > 1:
            marks = "  ".join(f"{self.MARKS[s]:>6}" for s in statuses)
            self._line(f"{index:>4}  {label:>5}  {marks}")


def _answer_line(row: dict) -> str:
    if row["status"] == "error":
        return f"ERROR  {row.get('note') or ''}"
    cert = row.get("cert") or {}
    return Certificate(**{k: cert[k] for k in Certificate.__dataclass_fields__ if k in cert}
                       ).summary_line()


if __name__ == "__main__":
    sys.exit(main())
