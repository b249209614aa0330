"""What a foreign ONNX file is: its one image input and its one class-score output, read from the
graph alone (no session), with a named error for each way it is not an image classifier.

`batchserve models add` builds on this; ONNX Runtime only confirms afterwards that the graph
really runs (see add_check).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from onnx import TensorProto

from batchserve.model_repo.errors import ModelRepoError

Dim = int | str | None
"""A fixed size, a symbolic name (dynamic), or None (unknown)."""

# Nodes that pass a tensor through unchanged in value, between a Softmax and the graph's output.
_PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Cast"})


class ModelAddError(ModelRepoError):
    """A model cannot be added as asked. `code` names the problem (stable, snake_case); the
    message says what was found and what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TensorFacts:
    name: str
    elem_type: int
    """onnx.TensorProto data type (FLOAT = 1)."""
    shape: tuple[Dim, ...] | None
    """None when the graph does not declare the rank."""

    @property
    def type_name(self) -> str:
        return type_name(self.elem_type)

    def describe(self) -> str:
        dims = "?" if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name!r} {self.type_name} [{dims}]"


@dataclass(frozen=True)
class GraphFacts:
    model: onnx.ModelProto
    """The parsed graph (external tensor data, if any, not loaded)."""
    input: TensorFacts
    output: TensorFacts
    final_op: str | None
    """The operator that computes the output, looking through reshapes and identities."""
    uses_external_data: bool


def type_name(elem_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower() if elem_type in TensorProto.DataType.values() else "?"


def read_graph(path: Path) -> onnx.ModelProto:
    """Parse the file's graph (without external tensor data): `onnx_missing`, `not_onnx`."""
    if not path.exists():
        raise ModelAddError("onnx_missing", f"--onnx {path}: no such file")
    if not path.is_file():
        raise ModelAddError("onnx_missing", f"--onnx {path}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError) as exc:
        raise ModelAddError("not_onnx", _not_onnx(path, f"it cannot be parsed ({exc or type(exc).__name__})")) from None
    except OSError as exc:
        raise ModelAddError("onnx_missing", f"--onnx {path}: cannot read it: {exc}") from None
    # Protobuf parses many byte strings that are not models (an empty file is a valid empty message).
    if not model.HasField("graph") or not model.graph.node or not model.opset_import:
        raise ModelAddError("not_onnx", _not_onnx(path, "it holds no graph with operators"))
    return model


def _not_onnx(path: Path, why: str) -> str:
    size = path.stat().st_size
    return (f"--onnx {path} ({size:,} bytes) is not an ONNX model: {why}; a truncated download or copy "
            "looks like this too")


def inspect_graph(model: onnx.ModelProto) -> GraphFacts:
    """One input, one output, both tensors: `inputs`, `outputs` otherwise."""
    graph = model.graph
    initialised = {t.name for t in graph.initializer}
    # Graphs from IR version < 4 list their weights as inputs too; those are not fed.
    inputs = [value for value in graph.input if value.name not in initialised]
    if len(inputs) != 1:
        names = ", ".join(repr(v.name) for v in inputs) or "none"
        raise ModelAddError("inputs", f"the graph has {len(inputs)} inputs ({names}); an image classifier takes "
                            "exactly one image tensor")
    if len(graph.output) != 1:
        names = ", ".join(repr(v.name) for v in graph.output) or "none"
        raise ModelAddError(
            "outputs", f"the graph has {len(graph.output)} outputs ({names}); an image classifier gives exactly one "
            "[N, classes] tensor of scores"
        )
    return GraphFacts(
        model=model,
        input=_tensor(inputs[0], "input"),
        output=_tensor(graph.output[0], "output"),
        final_op=final_operator(graph, graph.output[0].name),
        uses_external_data=any(
            t.data_location == TensorProto.EXTERNAL for t in _all_initializers(graph)
        ),
    )


def _tensor(value: onnx.ValueInfoProto, role: str) -> TensorFacts:
    if value.type.WhichOneof("value") != "tensor_type":
        kind = value.type.WhichOneof("value") or "untyped"
        raise ModelAddError(f"{role}_type", f"the {role} {value.name!r} is a {kind}, not a tensor")
    tensor = value.type.tensor_type
    shape: tuple[Dim, ...] | None = None
    if tensor.HasField("shape"):
        shape = tuple(_dim(d) for d in tensor.shape.dim)
    return TensorFacts(value.name, tensor.elem_type, shape)


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    which = dim.WhichOneof("value")
    if which == "dim_value":
        return int(dim.dim_value)
    if which == "dim_param":
        return str(dim.dim_param)
    return None


def final_operator(graph: onnx.GraphProto, output: str) -> str | None:
    producers = {name: node for node in graph.node for name in node.output}
    seen: set[str] = set()
    node = producers.get(output)
    while node is not None and node.op_type in _PASS_THROUGH and node.input and node.input[0] not in seen:
        seen.add(node.input[0])
        node = producers.get(node.input[0])
    return None if node is None else node.op_type


def _all_initializers(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            for sub in _subgraphs(attr):
                yield from _all_initializers(sub)


def _subgraphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename one tensor everywhere it appears: the graph's inputs, outputs and value infos, and
    every node's inputs and outputs (subgraphs included: they may read outer-scope values)."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                rename_value(sub, old, new)


def value_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names.update(t.name for t in graph.initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                names |= value_names(sub)
    return names


def fix_input_dims(model: onnx.ModelProto, input_name: str, dims: dict[int, int]) -> None:
    """Declare fixed sizes for some axes of the input (axis -> size) in place of symbolic ones."""
    for value in model.graph.input:
        if value.name == input_name:
            shape = value.type.tensor_type.shape
            for axis, size in dims.items():
                shape.dim[axis].Clear()
                shape.dim[axis].dim_value = size
            return
    raise KeyError(input_name)
