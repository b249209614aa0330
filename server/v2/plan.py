"""What a decoded V2 request asks of one model: which samples, which outputs, in which form.

A model takes exactly one of two inputs: its own tensor input (FP32 [N, *input shape], e.g.
[N,3,224,224], in the model's own layout, already preprocessed) or `image`, a BYTES [N] tensor
of encoded images that the server decodes and preprocesses exactly as /v1/classify does. It
answers with `logits` and/or `probabilities` (softmax of the logits), either as FP32 [N,C]
tensors or, with Triton's classification parameter, as BYTES [N,k] strings
"<value>:<class id>:<label>".
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

import numpy as np

from batchserve.server.v2.codec import DecodedRequest, Tensor
from batchserve.server.v2.datatypes import BYTES
from batchserve.server.v2.wire import bool_parameter, int_parameter
from batchserve.serving.errors import InvalidRequest
from batchserve.serving.registry import LoadedModel

IMAGE_INPUT = "image"
PROBABILITIES_OUTPUT = "probabilities"
MAX_TIMEOUT_US = 2**63 - 1  # Triton's own bound; the model's max_timeout_ms caps what is used


def output_names(model: LoadedModel) -> tuple[str, ...]:
    if model.output_name == PROBABILITIES_OUTPUT:  # a graph whose output bears the name: listed once
        return (PROBABILITIES_OUTPUT,)
    return (model.output_name, PROBABILITIES_OUTPUT)


@dataclass(frozen=True)
class OutputPlan:
    name: str
    classification: int | None  # top-k strings instead of the raw tensor
    binary: bool


@dataclass(frozen=True)
class Plan:
    count: int                        # samples in the request (N)
    tensor: np.ndarray | None         # FP32 [N, *input_shape] when the tensor input was sent
    images: list[bytes] | None        # encoded images when `image` was sent
    outputs: list[OutputPlan]
    timeout_ms: float | None          # from the request's Triton `timeout` parameter (microseconds)


def plan_request(decoded: DecodedRequest, model: LoadedModel, max_samples: int) -> Plan:
    tensor, images, count = _the_input(decoded.inputs, model, max_samples)
    request = decoded.request
    binary_default = bool_parameter(request.parameters, "binary_data_output", "request") or False
    timeout_us = int_parameter(request.parameters, "timeout", "request")
    if timeout_us is not None and not 0 < timeout_us <= MAX_TIMEOUT_US:
        raise InvalidRequest(
            f"request: parameter 'timeout' must be a positive number of microseconds up to {MAX_TIMEOUT_US}"
        )
    return Plan(
        count=count, tensor=tensor, images=images,
        outputs=_outputs(decoded, model, binary_default),
        timeout_ms=None if timeout_us is None else timeout_us / 1000.0,
    )


def _the_input(
    inputs: list[Tensor], model: LoadedModel, max_samples: int
) -> tuple[np.ndarray | None, list[bytes] | None, int]:
    accepted = f"{model.input_name!r} (FP32 [N,{','.join(map(str, model.input_shape))}]) or {IMAGE_INPUT!r} (BYTES [N])"
    if len(inputs) != 1:
        names = ", ".join(repr(t.name) for t in inputs)
        raise InvalidRequest(f"model {model.name!r} takes exactly one input, {accepted}; got {names}")
    given = inputs[0]
    if given.name == model.input_name:
        if given.datatype != "FP32":
            raise InvalidRequest(f"input {given.name!r} must be FP32, not {given.datatype}")
        if len(given.shape) != 1 + len(model.input_shape) or given.shape[1:] != tuple(model.input_shape):
            raise InvalidRequest(
                f"input {given.name!r} must have shape [N,{','.join(map(str, model.input_shape))}], "
                f"not {list(given.shape)}"
            )
        count = _check_count(given.shape[0], max_samples)
        assert isinstance(given.values, np.ndarray)
        if not np.isfinite(given.values).all():
            raise InvalidRequest(f"input {given.name!r} contains NaN or infinite values")
        return given.values, None, count
    if given.name == IMAGE_INPUT:
        if given.datatype != BYTES:
            raise InvalidRequest(f"input {IMAGE_INPUT!r} must be BYTES (encoded images), not {given.datatype}")
        if not (len(given.shape) == 1 or (len(given.shape) == 2 and given.shape[1] == 1)):
            raise InvalidRequest(f"input {IMAGE_INPUT!r} must have shape [N] (or [N,1]), not {list(given.shape)}")
        count = _check_count(given.shape[0], max_samples)
        assert isinstance(given.values, list)
        images = [_b64(v, i) for i, v in enumerate(given.values)] if given.from_json else given.values
        for i, data in enumerate(images):
            if not data:
                raise InvalidRequest(f"input {IMAGE_INPUT!r}: element {i} is empty")
        return None, images, count
    raise InvalidRequest(f"model {model.name!r} has no input {given.name!r}; send {accepted}")


def _check_count(n: int, max_samples: int) -> int:
    if n < 1:
        raise InvalidRequest("the batch dimension must be at least 1")
    if n > max_samples:
        raise InvalidRequest(f"{n} samples in one request; at most {max_samples} are accepted")
    return n


def _b64(text: bytes, index: int) -> bytes:
    """JSON cannot carry image bytes, so `image` elements sent as JSON are base64 text."""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error as exc:
        raise InvalidRequest(
            f"input {IMAGE_INPUT!r}: element {index} is not base64 ({exc}); JSON image data must be base64, "
            "or send raw bytes with the binary tensor data extension"
        ) from None


def _outputs(decoded: DecodedRequest, model: LoadedModel, binary_default: bool) -> list[OutputPlan]:
    known = output_names(model)
    requested = decoded.request.outputs
    if not requested:
        # As Triton does: no outputs named means every output, in its plain tensor form.
        return [OutputPlan(name, None, binary_default) for name in known]
    plans = []
    seen: set[str] = set()
    for out in requested:
        where = f"output {out.name!r}"
        if out.name not in known:
            raise InvalidRequest(
                f"model {model.name!r} has no output {out.name!r}; outputs: {', '.join(map(repr, known))}"
            )
        if out.name in seen:
            raise InvalidRequest(f"{where} is requested twice")
        seen.add(out.name)
        k = int_parameter(out.parameters, "classification", where)
        if k is not None and not 1 <= k <= model.classes:
            raise InvalidRequest(f"{where}: classification must be between 1 and {model.classes}, not {k}")
        binary = bool_parameter(out.parameters, "binary_data", where)
        plans.append(OutputPlan(out.name, k, binary_default if binary is None else binary))
    return plans
