"""The checks a model version passes before it leaves a machine: its config parses (done by
reading the spec), its labels match the classes in config.toml and in the graph, and its ONNX
file opens in ONNX Runtime. The server runs the same checks as it loads a version."""

from __future__ import annotations

from batchserve.model_repo.errors import ModelLoadError
from batchserve.model_repo.repository import ModelSpec


def check_classes(spec: ModelSpec, version: int, labels: int, graph_classes: int) -> None:
    if graph_classes != labels:
        raise ModelLoadError(
            f"{spec.model_path(version)} outputs {graph_classes} classes but {spec.labels_path} has {labels} labels"
        )


def check_version(spec: ModelSpec, version: int) -> None:
    """Raise ModelLoadError saying what is wrong with one version, on the CPU."""
    from batchserve.model_repo.runner import Runner, RunnerConfig  # ONNX Runtime loads only when a check runs

    labels = spec.read_labels()
    with Runner(spec.model_path(version), RunnerConfig(execution_providers=("CPUExecutionProvider",)),
                input_name=spec.input_name, output_name=spec.output_name) as runner:
        check_classes(spec, version, len(labels), runner.num_classes)
