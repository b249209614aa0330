"""How to serve a foreign classifier: its graph's facts and the user's flags become one plan
(layout, crop, normalisation, batch size, output kind), or a named error saying what cannot be fed.

Decisions, for graph and flags alike:
- the layout is read from where the 3 colour channels sit; a contradicting `--layout` is refused;
- a fixed spatial size is the crop (a different `--crop` is refused), a symbolic one takes
  `--crop` (default 224) and is declared fixed in the served copy of the graph;
- a fixed batch of B serves batches of at most B, padded with zeros up to B;
- a graph ending in Softmax gives probabilities; otherwise `models add` decides by running it
  (see add_check), unless `--output-kind` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onnx import TensorProto

from batchserve.model_repo.graph_inspect import Dim, GraphFacts, ModelAddError, TensorFacts, value_names
from batchserve.model_repo.preprocess import ChannelOrder, Layout, Normalisation, PreprocessConfig

DEFAULT_CROP = 224
DEFAULT_MAX_BATCH_SIZE = 32
# torchvision's evaluation transform: Resize(256) then CenterCrop(224), the same ratio at any size.
RESIZE_RATIO = 256 / 224
# V2 names this input for encoded images, beside the model's own tensor input.
RESERVED_INPUT_NAME = "image"
_DEFAULTS = PreprocessConfig()


@dataclass(frozen=True)
class AddOptions:
    """What the user asked for; None: read it from the graph, or take the default."""

    crop: int | None = None
    resize_short_side: int | None = None
    mean: Normalisation | None = None
    std: Normalisation | None = None
    layout: Layout | None = None
    channel_order: ChannelOrder | None = None
    output_kind: str | None = None
    max_batch_size: int | None = None


@dataclass(frozen=True)
class ModelPlan:
    graph_input: str
    """The input's name in the given file."""
    input_name: str
    """The input's name as served (differs when the given one is reserved)."""
    output_name: str
    classes: int
    preprocessing: PreprocessConfig
    fixed_batch: int | None
    max_batch_size: int
    output_kind: str | None
    """"logits", "probabilities", or None: decided by a test run."""
    fixed_dims: dict[int, int] = field(default_factory=dict)
    """Input axes whose symbolic size the served copy declares fixed (axis -> size)."""
    notes: tuple[str, ...] = ()

    @property
    def rewrites_graph(self) -> bool:
        return bool(self.fixed_dims) or self.input_name != self.graph_input


def plan_model(facts: GraphFacts, options: AddOptions, labels: int, labels_source: str) -> ModelPlan:
    notes: list[str] = []
    shape = _image_input(facts.input)
    layout, channel_axis = _layout(facts.input, shape, options.layout, notes)
    fixed_dims: dict[int, int] = {}
    if not isinstance(shape[channel_axis], int):
        fixed_dims[channel_axis] = 3
    crop = _crop(facts.input, shape, layout, options.crop, fixed_dims, notes)
    fixed_batch, max_batch = _batch(facts, shape[0], options.max_batch_size, notes)
    classes = _classes(facts, fixed_batch, labels, labels_source)
    resize = options.resize_short_side
    if resize is None:
        resize = round(crop * RESIZE_RATIO)
    if options.resize_short_side is None and crop != DEFAULT_CROP:
        notes.append(f"resize_short_side {resize} ({crop} x 256/224, as torchvision's Resize(256) + CenterCrop(224))")
    if options.mean is None or options.std is None:
        notes.append("mean/std not given: the defaults 127 and 128 map pixels to about -1..1; pass the "
                     "normalisation the model was trained with (torchvision: --mean 123.675,116.28,103.53 "
                     "--std 58.395,57.12,57.375)")
    try:
        preprocessing = PreprocessConfig(
            resize_short_side=resize, crop=crop, layout=layout, channel_order=options.channel_order or "RGB",
            mean=_DEFAULTS.mean if options.mean is None else options.mean,
            std=_DEFAULTS.std if options.std is None else options.std,
        )
    except ValueError as exc:
        raise ModelAddError("preprocessing", f"cannot preprocess for this model: {exc}") from None
    output_kind = options.output_kind
    if output_kind is None and facts.final_op == "Softmax":
        output_kind = "probabilities"
        notes.append("the graph ends in Softmax: its output is taken as probabilities (--output-kind logits to "
                     "override)")
    input_name = facts.input.name
    if input_name == RESERVED_INPUT_NAME:
        input_name = _free_name(facts, "input")
        notes.append(f"the input {RESERVED_INPUT_NAME!r} is served as {input_name!r}: V2 reserves "
                     f"{RESERVED_INPUT_NAME!r} for encoded images")
    return ModelPlan(
        graph_input=facts.input.name, input_name=input_name, output_name=facts.output.name, classes=classes,
        preprocessing=preprocessing, fixed_batch=fixed_batch, max_batch_size=max_batch,
        output_kind=output_kind, fixed_dims=fixed_dims, notes=tuple(notes),
    )


def _image_input(tensor: TensorFacts) -> tuple[Dim, ...]:
    if tensor.elem_type != TensorProto.FLOAT:
        raise ModelAddError("input_type", _input_type_message(tensor))
    if tensor.shape is None:
        raise ModelAddError("input_rank", f"the input {tensor.describe()} declares no shape; an image classifier's "
                            "input is 4-D: [N, 3, H, W] or [N, H, W, 3]")
    if len(tensor.shape) != 4:
        raise ModelAddError("input_rank", f"the input {tensor.describe()} is {len(tensor.shape)}-D; an image "
                            "classifier's input is 4-D: [N, 3, H, W] or [N, H, W, 3]")
    return tensor.shape


def _input_type_message(tensor: TensorFacts) -> str:
    found = f"the input {tensor.describe()} is {tensor.type_name}, and batchserve feeds float32"
    if tensor.elem_type == TensorProto.FLOAT16:
        return (f"{found}: export the model with a float32 input (onnxconverter-common's "
                "convert_float_to_float16(model, keep_io_types=True) keeps float16 inside and float32 at the edges)")
    if tensor.elem_type in (TensorProto.UINT8, TensorProto.INT8):
        return (f"{found}: export the graph with a float32 input and give its normalisation as --mean/--std "
                "(--mean 0 --std 1 feeds the 0-255 pixel values unchanged)")
    return f"{found} images"


def _layout(tensor: TensorFacts, shape: tuple[Dim, ...], asked: Layout | None, notes: list[str]) -> tuple[Layout, int]:
    """The layout, and the axis of the colour channels."""
    axes: dict[Layout, int] = {"NCHW": 1, "NHWC": 3}
    if asked is not None:
        axis = axes[asked]
        size = shape[axis]
        if isinstance(size, int) and size != 3:
            other: Layout = "NHWC" if asked == "NCHW" else "NCHW"
            if shape[axes[other]] == 3:
                raise ModelAddError("layout_mismatch", f"--layout {asked} contradicts the input {tensor.describe()}, "
                                    f"which is {other} (its 3 colour channels are on axis {axes[other]})")
            raise ModelAddError("input_channels", _channels_message(tensor, f"axis {axis} ({asked}) holds {size}"))
        return asked, axis
    first, last = shape[1], shape[3]
    if first == 3:
        return "NCHW", 1
    if last == 3:
        notes.append(f"layout NHWC (read from the input {tensor.describe()})")
        return "NHWC", 3
    if not isinstance(first, int):
        notes.append(f"layout NCHW assumed: the input {tensor.describe()} does not fix its channels "
                     "(--layout NHWC if it is channels-last)")
        return "NCHW", 1
    if not isinstance(last, int):
        notes.append(f"layout NHWC assumed: axis 1 of the input {tensor.describe()} is not 3 channels")
        return "NHWC", 3
    found = f"neither axis 1 ({first}) nor axis 3 ({last}) is 3"
    raise ModelAddError("input_channels", _channels_message(tensor, found))


def _channels_message(tensor: TensorFacts, found: str) -> str:
    return (f"the input {tensor.describe()} does not take 3 colour channels: {found}; batchserve feeds "
            "RGB (or BGR) images, not grayscale, RGBA or other bands")


def _crop(
    tensor: TensorFacts, shape: tuple[Dim, ...], layout: Layout, asked: int | None,
    fixed_dims: dict[int, int], notes: list[str],
) -> int:
    spatial = (2, 3) if layout == "NCHW" else (1, 2)
    sizes = [shape[axis] for axis in spatial]
    fixed: list[int] = [size for size in sizes if isinstance(size, int)]
    if len(fixed) == 2 and fixed[0] != fixed[1]:
        raise ModelAddError("input_not_square", f"the input {tensor.describe()} is {fixed[0]} x {fixed[1]}; "
                            "batchserve feeds square centre crops")
    if fixed:
        crop = fixed[0]
        if asked is not None and asked != crop:
            raise ModelAddError("crop_mismatch", f"--crop {asked} contradicts the input {tensor.describe()}, which "
                                f"takes {crop} x {crop} images; drop --crop (it is read from the graph)")
        if asked is None and crop != DEFAULT_CROP:
            notes.append(f"crop {crop} (read from the input {tensor.describe()})")
    else:
        crop = DEFAULT_CROP if asked is None else asked
        notes.append(f"the input {tensor.describe()} takes any image size: served at {crop} x {crop} "
                     "(--crop to change it)")
    for axis, declared in zip(spatial, sizes, strict=True):
        if not isinstance(declared, int):
            fixed_dims[axis] = crop
    return crop


def _batch(facts: GraphFacts, size: Dim, asked: int | None, notes: list[str]) -> tuple[int | None, int]:
    """(fixed batch size or None, max_batch_size)."""
    if asked is not None and asked < 1:
        raise ModelAddError("batch_size", f"--max-batch-size must be at least 1, not {asked}")
    if not isinstance(size, int):
        max_batch = DEFAULT_MAX_BATCH_SIZE if asked is None else asked
        return None, max_batch
    if size < 1:
        raise ModelAddError("input_rank", f"the input {facts.input.describe()} has a batch axis of {size}")
    if asked is not None and asked > size:
        raise ModelAddError("batch_size", f"--max-batch-size {asked} is more than the graph takes: its input "
                            f"{facts.input.describe()} has a fixed batch of {size}")
    max_batch = size if asked is None else asked
    if size == 1:
        notes.append("the graph takes exactly 1 image per run: max_batch_size = 1")
    else:
        notes.append(f"the graph takes exactly {size} images per run: max_batch_size = {max_batch}, and smaller "
                     f"batches are padded with zeros up to {size} (each run costs a full batch; export it with a "
                     "dynamic batch axis to avoid that)")
    return size, max_batch


def _classes(facts: GraphFacts, fixed_batch: int | None, labels: int, labels_source: str) -> int:
    """The class count, checked against the labels when the graph declares it (else after a run)."""
    out = facts.output
    if out.elem_type != TensorProto.FLOAT:
        raise ModelAddError("output_type", f"the output {out.describe()} is {out.type_name}; batchserve reads "
                            "float32 scores")
    if out.shape is None:
        return labels  # checked by the test run
    if len(out.shape) != 2:
        hint = " (flatten it to [N, classes] at the end of the graph)" if len(out.shape) > 2 else ""
        raise ModelAddError("output_rank", f"the output {out.describe()} is {len(out.shape)}-D; an image "
                            f"classifier gives [N, classes]{hint}")
    batch, classes = out.shape
    if isinstance(batch, int) and fixed_batch is not None and batch != fixed_batch:
        raise ModelAddError("output_rank", f"the output {out.describe()} has {batch} rows for an input batch of "
                            f"{fixed_batch}")
    if isinstance(classes, int) and classes != labels:
        raise ModelAddError("labels_mismatch", f"the output {out.describe()} has {classes} classes but "
                            f"{labels_source} has {labels} labels")
    return labels


def _free_name(facts: GraphFacts, wanted: str) -> str:
    taken = value_names(facts.model.graph)
    name, n = wanted, 1
    while name in taken:
        name, n = f"{wanted}_{n}", n + 1
    return name
