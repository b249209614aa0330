"""Shaping a V2 answer's outputs from the logits: FP32 tensors, or Triton's classification strings."""

from __future__ import annotations

import numpy as np

from batchserve.model_repo.topk import softmax, top_k
from batchserve.server.v2.codec import OutputTensor
from batchserve.server.v2.datatypes import BYTES
from batchserve.server.v2.plan import PROBABILITIES_OUTPUT, OutputPlan
from batchserve.serving.registry import LoadedModel


def classification_strings(values: np.ndarray, k: int, labels: list[str]) -> list[bytes]:
    """Triton's classification form, row by row: "<value>:<index>:<label>", best first.
    The value prints as C++'s std::to_string does (six decimals), as Triton's own server answers."""
    out: list[bytes] = []
    for row in values:
        out.extend(f"{value:.6f}:{index}:{labels[index]}".encode() for index, value in top_k(row, k))
    return out


def build_outputs(model: LoadedModel, plans: list[OutputPlan], logits: np.ndarray) -> list[OutputTensor]:
    logits = np.asarray(logits, dtype=np.float32)
    n, classes = logits.shape
    probabilities: np.ndarray | None = None
    # A graph that outputs probabilities hands the batcher their logarithm (see Runner); its own
    # output answers what the graph computed, the probabilities.
    graph_probabilities = model.runner is not None and model.runner.output_kind == "probabilities"
    outputs = []
    for plan in plans:
        if plan.name == PROBABILITIES_OUTPUT or graph_probabilities:
            if probabilities is None:
                probabilities = softmax(logits, axis=1).astype(np.float32)
            values = probabilities
        else:
            values = logits
        if plan.classification is not None:
            strings = classification_strings(values, plan.classification, model.labels)
            outputs.append(OutputTensor(plan.name, BYTES, [n, plan.classification], strings, plan.binary))
        else:
            outputs.append(OutputTensor(plan.name, "FP32", [n, classes], values, plan.binary))
    return outputs
