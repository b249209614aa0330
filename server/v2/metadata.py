"""Server metadata, model metadata and model configuration, in the shapes V2 clients parse."""

from __future__ import annotations

from typing import Any

from batchserve import __version__
from batchserve.server.v2.datatypes import BYTES, CONFIG_NAMES
from batchserve.server.v2.plan import IMAGE_INPUT, output_names
from batchserve.serving.registry import LoadedModel, ModelRegistry

SERVER_NAME = "batchserve"
EXTENSIONS = ("binary_tensor_data", "classification", "model_repository", "model_configuration")
ONNX_PLATFORM = "onnxruntime_onnx"
SIMULATED_PLATFORM = "batchserve_simulated"


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def platform(model: LoadedModel) -> str:
    return ONNX_PLATFORM if model.runner is not None else SIMULATED_PLATFORM


def model_metadata(registry: ModelRegistry, model: LoadedModel) -> dict[str, Any]:
    image_note = {
        "content": "encoded images (JPEG, PNG, WebP...), decoded and preprocessed by the server; "
                   "base64 text when sent as JSON",
        "alternative_to": model.input_name,
    }
    return {
        "name": model.name,
        "versions": [str(v) for v in registry.versions(model.name)],
        "platform": platform(model),
        "inputs": [
            {"name": model.input_name, "datatype": "FP32", "shape": [-1, *model.input_shape]},
            {"name": IMAGE_INPUT, "datatype": BYTES, "shape": [-1], "parameters": image_note},
        ],
        "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, model.classes]} for name in output_names(model)],
        "parameters": {"inputs": f"send exactly one of {model.input_name!r} or {IMAGE_INPUT!r}"},
    }


def model_config(registry: ModelRegistry, model: LoadedModel) -> dict[str, Any]:
    """Triton's ModelConfig, as JSON: what tritonclient's get_model_config reads."""
    batching = model.batching
    spec = registry.spec(model.name)
    if spec is not None and spec.versions.policy == "specific":
        policy: dict[str, Any] = {"specific": {"versions": list(spec.versions.specific)}}
    else:
        policy = {"latest": {"num_versions": spec.versions.latest if spec is not None else 1}}
    dynamic: dict[str, Any] = {
        "preferred_batch_size": list(batching.preferred_batch_sizes),
        "max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000),
        "default_queue_policy": {
            "max_queue_size": batching.max_queue_size,
            "default_timeout_microseconds": int(model.limits.default_timeout_ms * 1000),
            "allow_timeout_override": True,
        },
    }
    gpu = any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in model.providers)
    return {
        "name": model.name,
        "platform": platform(model),
        "backend": "onnxruntime" if model.runner is not None else "",
        "version_policy": policy,
        "max_batch_size": batching.max_batch_size,
        "input": [
            {"name": model.input_name, "data_type": CONFIG_NAMES["FP32"], "format": f"FORMAT_{model.preprocess.layout}",
             "dims": list(model.input_shape)},
            {"name": IMAGE_INPUT, "data_type": CONFIG_NAMES[BYTES], "dims": [1], "reshape": {"shape": []},
             "optional": True},
        ],
        "output": [
            {"name": name, "data_type": CONFIG_NAMES["FP32"], "dims": [model.classes], "label_filename": "labels.txt"}
            for name in output_names(model)
        ],
        "dynamic_batching": dynamic,
        "instance_group": [{"count": batching.max_inflight_batches, "kind": "KIND_GPU" if gpu else "KIND_CPU"}],
        "parameters": {"execution_providers": {"string_value": ",".join(model.providers)}},
    }
