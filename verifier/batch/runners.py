"""The per-task functions the worker processes run: the Python API, with a per-process cache of
loaded graphs, and the time spent loading taken off the property's timeout."""
from __future__ import annotations

import os
import time
from collections import OrderedDict

from .. import api
from ..certificate import Certificate

_GRAPHS: OrderedDict = OrderedDict()
GRAPH_CACHE_SIZE = 4


def _graph(onnx_path: str):
    """The loaded graph of ``onnx_path``, cached per (path, mtime, size) in this process."""
    st = os.stat(onnx_path)
    key = (os.path.abspath(onnx_path), st.st_mtime_ns, st.st_size)
    net = _GRAPHS.get(key)
    if net is None:
        net = api.load(onnx_path)
        _GRAPHS[key] = net
        while len(_GRAPHS) > GRAPH_CACHE_SIZE:
            _GRAPHS.popitem(last=False)
    _GRAPHS.move_to_end(key)
    return net


def _loaded(onnx_path: str, timeout: float):
    """The graph, and the options' timeout: what is left of ``timeout`` after loading it
    (None when nothing is left)."""
    t0 = time.perf_counter()
    net = _graph(onnx_path)
    left = timeout - (time.perf_counter() - t0)
    return net, (left if left > 0 else None)


def _load_timeout(timeout: float) -> Certificate:
    return Certificate("timeout", timeout, method="load")


def verify_instance(onnx_path: str, vnnlib_path: str, *, timeout: float, method: str = "auto",
                    arithmetic: str = "float32", threads: int = 1):
    """``api.verify_vnnlib`` on one instance of an instances file."""
    net, left = _loaded(onnx_path, timeout)
    if left is None:
        return _load_timeout(timeout)
    return api.verify_vnnlib(net, vnnlib_path, options=api.Options(
        timeout=left, method=method, arithmetic=arithmetic, threads=threads))


def verify_sample(onnx_path: str, *, x, label: int, eps: float, domain, timeout: float,
                  method: str = "auto", arithmetic: str = "float32", threads: int = 1):
    """``api.verify`` on one sample of a data set at one ε (a point of a robustness curve)."""
    net, left = _loaded(onnx_path, timeout)
    if left is None:
        return _load_timeout(timeout)
    return api.verify(net, x, label, eps, domain=domain,
                      options=api.Options(timeout=left, method=method, arithmetic=arithmetic,
                                          threads=threads))
