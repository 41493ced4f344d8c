"""ONNX → layer graph.

The loader walks the ONNX nodes that the output depends on, in a topological order (nodes the
output does not need are never looked at), with every tensor either a
*constant* (a numpy array: weights and the shape arithmetic PyTorch emits) or a *computed* tensor
(a node of the layer graph plus its ONNX shape, batch dimension fixed to 1).

- Nodes whose inputs are all constant are evaluated at load time with onnx's reference
  implementation, under the model's own opset: this folds Shape/Gather/Concat/… chains to constants.
- Nodes with a computed input go through one converter per op type (``CONVERTERS``).
  Ops that only move values around (Transpose, Slice, Gather, Pad, Concat, Split, Expand, …) are
  run on an *index tensor* (``arange`` in the computed tensor's shape), which turns the op into a
  selection matrix without a hand-written rule per op.
- Every unsupported op is collected; the load then fails once, naming them all (also unsupported
  op types downstream of another unsupported op).
"""
from __future__ import annotations

import gzip
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .graph import Graph, Input, Linear, Node, Relu
from .ops.sshape import ORT_ERROR
from . import onnx_layers, onnx_ops
from .onnx_ops import Tensor, Unsupported
from .passes import simplify

CONVERTERS = {**onnx_ops.CONVERTERS, **onnx_layers.CONVERTERS}


class ModelError(ValueError):
    """The model file cannot be read or converted; the message is one line for the user."""


# protobuf cannot parse a model above 2 GiB, so nothing larger is worth decompressing: a 2 MB
# ``.onnx.gz`` bomb would otherwise inflate to whatever it claims (4.3 GB measured) before failing
MAX_MODEL_BYTES = 2 * 2**30
# a folded constant (shape arithmetic, weights moved by Transpose/Expand, ...) never needs many
# more values than the model's own weights; a 540-byte model with ConstantOfShape of 2.5e8 values
# would otherwise allocate 2 GB in the reference evaluator
MIN_FOLD_LIMIT = 2**24          # values; the limit is max(this, 4 x the model's weight values)


# --------------------------------------------------------------------------------------------
# reading the file
# --------------------------------------------------------------------------------------------
def read_model(path) -> onnx.ModelProto:
    """Read ``.onnx`` or gzip-compressed ``.onnx.gz``; external data is only read from inside the
    model's folder (checked for every tensor, subgraphs included, before any of it is opened)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"model path is a directory, not an ONNX file: {path}")
    data = read_model_bytes(path)
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # protobuf raises DecodeError …
        raise ModelError(f"cannot read ONNX model {path.name}: not a valid ONNX file "
                         f"({type(e).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"cannot read ONNX model {path.name}: the file holds no graph")
    _load_external_data(model, path.parent)
    return model


def read_model_bytes(path) -> bytes:
    """The serialized model in ``path``, gunzipped when it starts with the gzip magic (whatever the
    file is called), at most ``MAX_MODEL_BYTES`` of it (``ModelError`` beyond)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror or e}") from None
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(MAX_MODEL_BYTES + 1)     # bounded: a bomb stops at the limit
    except (OSError, EOFError) as e:              # BadGzipFile is an OSError
        raise ModelError(f"cannot read ONNX model {path.name}: not a valid gzip file "
                         f"({type(e).__name__})") from None
    if len(out) > MAX_MODEL_BYTES:
        raise ModelError(f"{path.name} decompresses to more than {MAX_MODEL_BYTES} bytes (the "
                         f"largest ONNX model protobuf can hold): refused")
    return out


def _load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    tensors = [t for t in _all_tensors(model)
               if t.data_location == onnx.TensorProto.EXTERNAL]
    if not tensors:
        return
    root = folder.resolve()
    for t in tensors:
        entry = {e.key: e.value for e in t.external_data}
        target = (root / entry.get("location", "")).resolve()   # follows symlinks and ".."
        if root not in target.parents:
            raise ModelError(f"tensor {t.name!r} points to external data outside the model's "
                             f"folder ({entry.get('location')!r}): refused")
        if not target.is_file():
            raise ModelError(f"tensor {t.name!r}: external data file {entry.get('location')!r} "
                             f"is missing")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(root))
    except Exception as e:
        raise ModelError(f"cannot read external data of the model: {e}".split("\n")[0]) from None


def _all_tensors(model: onnx.ModelProto):
    """Every TensorProto of the model: initializers and tensor attributes, in subgraphs and
    functions too (the set onnx's external-data loader walks)."""
    graphs = [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            yield from g.initializer
            for s in g.sparse_initializer:
                yield from (s.values, s.indices)
            nodes.extend(g.node)
            continue
        for attr in nodes.pop().attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in [attr.sparse_tensor] * attr.HasField("sparse_tensor"):
                yield from (sparse.values, sparse.indices)
            if attr.HasField("g"):
                graphs.append(attr.g)
            graphs.extend(attr.graphs)


# --------------------------------------------------------------------------------------------
# the walk
# --------------------------------------------------------------------------------------------
def load(path) -> Graph:
    """Load an ONNX model (``.onnx`` or ``.onnx.gz``) as a float64 layer graph.

    Raises ``ModelError`` with one line naming the problem — for unsupported models, every
    unsupported op by type and node name."""
    model = read_model(path)
    graph = convert(model, name=Path(path).name)
    graph.source = str(path)
    graph.model_bytes = model.SerializeToString()
    return graph


def convert(model: onnx.ModelProto, name: str = "") -> Graph:
    """Convert an in-memory ONNX model (external data already loaded) to a layer graph."""
    try:
        return _Converter(model).run(name)
    except (ModelError, RecursionError, MemoryError):
        raise
    except Exception as e:  # a malformed graph must never surface as a traceback
        raise ModelError(f"malformed ONNX model: {type(e).__name__}: {e}".split("\n")[0]) from None


class _Dead:
    """The value of an output of an unsupported node; ``computed`` if it had a computed input."""
    def __init__(self, computed: bool):
        self.computed = computed


_DEAD_COMPUTED, _DEAD_CONSTANT = _Dead(True), _Dead(False)


class _Converter:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import
                           if o.domain in ("", "ai.onnx")), 13)
        self.values: dict[str, object] = {}      # ONNX name -> np.ndarray | Tensor | _Dead
        self.nodes: list[Node] = []
        self.unsupported: list[str] = []
        self.notes: list[str] = []               # what the graph leaves out (Graph.notes)
        self.output_softmax: onnx.NodeProto | None = None   # the Softmax the graph drops
        self.output_groups: np.ndarray | None = None        # its groups (Graph.output_groups)
        self.fold_limit = MIN_FOLD_LIMIT

    # -- set-up ----------------------------------------------------------------------------
    def run(self, name: str) -> Graph:
        g = self.graph
        known = onnx.defs.onnx_opset_version()
        if self.opset > known:
            raise ModelError(f"the model uses ONNX opset {self.opset}, newer than any this onnx "
                             f"release ({onnx.__version__}) knows (up to {known})")
        for t in g.initializer:
            self.values[t.name] = numpy_helper.to_array(t)
        inputs = [i for i in g.input if i.name not in self.values]
        if len(inputs) != 1:
            raise ModelError(f"the model must have exactly one input, it has {len(inputs)}: "
                             f"{[i.name for i in inputs]}")
        if not g.output:
            raise ModelError("the model declares no output")
        if len(g.output) > 1:
            raise ModelError(f"the model has {len(g.output)} outputs "
                             f"({', '.join(o.name for o in g.output)}); only models with one "
                             f"output are supported")
        weights = sum(int(np.prod(t.dims, dtype=np.int64)) for t in _all_tensors(self.model))
        self.fold_limit = max(MIN_FOLD_LIMIT, 4 * weights)
        shape = self._input_shape(inputs[0])
        self.nodes.append(Input((), shape, name=inputs[0].name, origin="input"))
        self.values[inputs[0].name] = Tensor(0, shape)

        needed = self._needed_nodes(g.output[0].name)
        self.output_softmax = _output_softmax(needed, g.output[0].name)
        for node in needed:
            self._convert_node(node)
        if self.unsupported:
            raise ModelError("unsupported ONNX ops: " + ", ".join(dict.fromkeys(self.unsupported)))

        out = self.values.get(g.output[0].name)
        if not isinstance(out, Tensor):
            raise ModelError(f"the output {g.output[0].name!r} does not depend on the input")
        if out.node == 0:
            self._linear([(out, sp.identity(out.size, format="csr"))], np.zeros(out.size),
                         out.shape, "Identity", g.output[0].name)
            out = Tensor(len(self.nodes) - 1, out.shape)
        # the output node reports the ONNX output shape (a final Reshape/Unsqueeze makes no node)
        self.nodes[out.node] = replace(self.nodes[out.node], shape=out.shape)
        graph = simplify(Graph(self.nodes, output=out.node, name=name))
        graph.notes = list(self.notes) + _relaxed_note(graph)
        graph.output_groups = self.output_groups
        return graph

    def _input_shape(self, value_info) -> tuple[int, ...]:
        t = value_info.type
        if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            raise ModelError(f"input {value_info.name!r} has no declared tensor shape")
        elem = t.tensor_type.elem_type
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            # the graph reads real-valued inputs, and replay feeds float32 (or float64)
            raise ModelError(f"input {value_info.name!r} has element type "
                             f"{onnx.TensorProto.DataType.Name(elem)}; only float and double "
                             f"inputs are supported")
        shape = []
        for k, d in enumerate(t.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif k == 0:        # a symbolic batch dimension: one sample at a time
                shape.append(1)
            else:
                raise ModelError(f"input {value_info.name!r}: dimension {k} "
                                 f"({d.dim_param or '?'}) has no fixed size; only the first "
                                 f"(batch) dimension may be symbolic")
        return tuple(shape)

    def _needed_nodes(self, output: str) -> list[onnx.NodeProto]:
        """The nodes the output depends on, in a topological order (depth first from the
        output, inputs in order), whatever order the file lists them in."""
        producer = {o: n for n in self.graph.node for o in n.output if o}
        order, state = [], {}                     # id(node) -> "open" | "done"
        stack = [(producer[output], False)] if output in producer else []
        while stack:
            node, finished = stack.pop()
            if finished:
                state[id(node)] = "done"
                order.append(node)
                continue
            if id(node) in state:
                continue
            state[id(node)] = "open"
            stack.append((node, True))
            for i in reversed(node.input):
                p = producer.get(i) if i else None
                if p is not None and state.get(id(p)) == "open":
                    raise ModelError(f"the graph has a cycle through {p.op_type} "
                                     f"({p.name or p.output[0]})")
                if p is not None and id(p) not in state:
                    stack.append((p, False))
        return order

    # -- one node --------------------------------------------------------------------------
    def _convert_node(self, node: onnx.NodeProto) -> None:
        label = f"{node.op_type} ({node.name or node.output[0]})"
        missing = [i for i in node.input if i and i not in self.values]
        if missing:
            raise ModelError(f"node {label} reads {missing[0]!r}, which nothing produces")
        args = [self.values[i] if i else None for i in node.input]
        computed = any(isinstance(a, Tensor) or (isinstance(a, _Dead) and a.computed)
                       for a in args)
        standard = node.domain in ("", "ai.onnx")
        handled = CONVERTERS.keys() if computed else _FOLDABLE | CONVERTERS.keys()
        known = standard and node.op_type in handled
        if not known:
            self.unsupported.append(label if standard else f"{node.domain}.{label}")
        if not known or any(isinstance(a, _Dead) for a in args):   # or downstream of one
            self._kill(node, computed)
            return
        try:
            if computed:
                results = CONVERTERS[node.op_type](self, node, args, _attrs(node))
            else:
                results = self._fold(node, args)
        except Unsupported as e:
            self.unsupported.append(label + (f": {e}" if str(e) else ""))
            self._kill(node, computed)
            return
        except (ModelError, RecursionError, MemoryError):
            raise
        except Exception as e:  # malformed node: name it
            raise ModelError(f"cannot convert node {label}: {type(e).__name__}: {e}"
                             .split("\n")[0]) from None
        if not isinstance(results, (list, tuple)):
            results = [results]
        for name, value in zip(node.output, results):
            if name:
                self.values[name] = value

    def _kill(self, node: onnx.NodeProto, computed: bool) -> None:
        for o in node.output:
            self.values[o] = _DEAD_COMPUTED if computed else _DEAD_CONSTANT

    def _fold(self, node: onnx.NodeProto, args: list) -> list[np.ndarray]:
        """Evaluate a node whose inputs are all constants, under the model's opset."""
        names = [i for i in node.input if i]
        g = helper.make_graph(
            [node], "fold", [helper.make_tensor_value_info(i, 0, None) for i in names],
            [helper.make_tensor_value_info(o, 0, None) for o in node.output if o])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        feeds = {i: a for i, a in zip(node.input, args) if i}
        self._check_fold_size(node, feeds)
        try:
            return [np.asarray(r) for r in ReferenceEvaluator(m).run(None, feeds)]
        except Exception as e:
            raise ModelError(f"cannot evaluate node {node.op_type} "
                             f"({node.name or node.output[0]}): {e}".split("\n")[0]) from None

    def _check_fold_size(self, node: onnx.NodeProto, feeds: dict) -> None:
        """Refuse, before evaluating it, a node whose output would exceed ``fold_limit`` values.
        onnx infers the output shapes from the input types and the small inputs' values (shape
        vectors, scalars); an output whose shape it cannot infer is not checked."""
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain)
            types = {k: helper.make_tensor_type_proto(
                helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v))
                for k, v in feeds.items()}
            data = {k: numpy_helper.from_array(np.asarray(v), k) for k, v in feeds.items()
                    if np.size(v) <= 4096}
            outs = onnx.shape_inference.infer_node_outputs(schema, node, types, data)
        except Exception:              # no schema or no inference rule: evaluate as before
            return
        for name, t in outs.items():
            if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
                continue
            dims = t.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                size = int(np.prod([d.dim_value for d in dims], dtype=object))
                if size > self.fold_limit:
                    raise ModelError(f"node {node.op_type} ({node.name or node.output[0]}) "
                                     f"would make a constant of {size} values, more than "
                                     f"{self.fold_limit} (4 x the model's weights): refused")

    # -- building graph nodes ----------------------------------------------------------------
    def _linear(self, terms, bias, shape, origin, name, params=0) -> Tensor:
        """Append ``y = sum A_k x_k + bias`` (``terms`` = [(Tensor, A)]) and return its tensor."""
        by_node: dict[int, object] = {}
        for t, A in terms:               # x + x: one matrix per distinct input
            by_node[t.node] = A if t.node not in by_node else by_node[t.node] + A
        mats = tuple(A if isinstance(A, np.ndarray) else sp.csr_array(A) for A in by_node.values())
        bias = np.asarray(bias, np.float64).reshape(-1)
        self._check_finite(origin, name, bias, *(A if isinstance(A, np.ndarray) else A.data
                                                 for A in mats))
        self.nodes.append(Linear(tuple(by_node), tuple(shape), name=name, origin=origin,
                                 params=params, mats=mats, bias=bias))
        return Tensor(len(self.nodes) - 1, tuple(shape))

    @staticmethod
    def _check_finite(origin, name, *arrays) -> None:
        if not all(np.all(np.isfinite(a)) for a in arrays if a is not None):
            raise ModelError(f"node {origin} ({name}) has NaN or infinite weights")

    def _select(self, index: np.ndarray, fill: np.ndarray, sources: list[Tensor], origin, name):
        """A tensor whose entries are picked from ``sources`` by a global ``index`` (entries
        ``>= 0`` count through the sources in order) or are the constant ``fill`` where
        ``index < 0``.  Pure reshapes of one source come back without a new node."""
        shape = tuple(index.shape)
        flat = index.reshape(-1)
        if len(sources) == 1 and flat.size == sources[0].size and \
                np.array_equal(flat, np.arange(flat.size)):
            return Tensor(sources[0].node, shape)
        fill = np.where(flat < 0, np.broadcast_to(fill, shape).reshape(-1), 0.0)
        terms, offset = [], 0
        for s in sources:
            rows = np.nonzero((flat >= offset) & (flat < offset + s.size))[0]
            if rows.size:
                S = sp.csr_array((np.ones(rows.size), (rows, flat[rows] - offset)),
                                 shape=(flat.size, s.size))
                terms.append((s, S))
            offset += s.size
        if not terms:             # e.g. an empty slice: the result is a constant
            return fill.reshape(shape)
        return self._linear(terms, fill, shape, origin, name)

    def _relu(self, x: Tensor, name: str, origin: str = "Relu") -> Tensor:
        return self._unary(Relu, x, name, origin)

    def _unary(self, kind, x: Tensor, name: str, origin: str) -> Tensor:
        """Append an elementwise node of ``kind`` (Relu, Sigmoid, Tanh) reading ``x``."""
        self.nodes.append(kind((x.node,), x.shape, name=name, origin=origin))
        return Tensor(len(self.nodes) - 1, x.shape)


def _relaxed_note(graph: Graph) -> list[str]:
    """The summary's line on the nodes the graph keeps but bounds and MILP only relax."""
    count: dict[str, list[int]] = {}
    for n in graph.nodes:
        if n.outer:
            c = count.setdefault(type(n).__name__, [0, 0])
            c[0] += 1
            c[1] += n.size
    if not count:
        return []
    what = " and ".join(f"{k} ({c} node{'s' * (c > 1)}, {v} values)"
                        for k, (c, v) in count.items())
    return [f"{what} relaxed, not exact: bounds use sound linear relaxations and the MILP a linear "
            f"outer approximation, which prove but never disprove by themselves (a counterexample "
            f"must replay in onnxruntime); onnxruntime's float32 error (<= {ORT_ERROR:g} per "
            f"value) is charged"]


# ops between an output Softmax and the graph output that keep every value and its flat order
_ORDER_KEEPING = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def _output_softmax(needed: list[onnx.NodeProto], output: str) -> onnx.NodeProto | None:
    """The Softmax whose values are the model's output (directly or through reshapes), read by
    nothing else; ``None`` if there is none.  Only that Softmax may be dropped (see
    ``onnx_ops.softmax``)."""
    producer = {o: n for n in needed for o in n.output if o}
    readers: dict[str, int] = {}
    for n in needed:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    name = output
    while name in producer:
        n = producer[name]
        if readers.get(name, 0) > (0 if name == output else 1) or \
                (n.domain not in ("", "ai.onnx")):
            return None
        if n.op_type == "Softmax":
            return n
        if n.op_type not in _ORDER_KEEPING or not n.input:
            return None
        name = n.input[0]
    return None


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# Constant-only ops the reference evaluator may fold (shape arithmetic PyTorch emits, and more).
_FOLDABLE = {
    "Shape", "Gather", "GatherElements", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast",
    "CastLike", "Mod", "Range", "Reshape", "Constant", "ConstantOfShape", "Expand", "Equal",
    "Where", "Transpose", "Identity", "Flatten", "Neg", "Floor", "Ceil", "Sqrt", "Pow", "Min",
    "Max", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceMean", "Not", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Size", "Tile", "Split", "Add",
    "Sub", "Mul", "Div", "Abs", "Sign", "Pad", "Clip", "Relu", "Dropout", "Gemm", "MatMul",
    "Exp", "Log", "Reciprocal", "Sum", "Mean", "NonZero", "ScatterND", "Trilu", "Einsum",
}
