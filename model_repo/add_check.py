"""Running a model about to be added, in ONNX Runtime on the CPU, before it joins the repository:
a probe that the graph loads and answers [N, classes] for the batch sizes it will be served with
(deciding, when nothing else did, whether its output is logits or probabilities), and `--check
IMAGE`, the top classes of real images through the same preprocessing the server uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batchserve.model_repo.add_plan import ModelPlan
from batchserve.model_repo.errors import ImageDecodeError, ModelLoadError, ModelRepoError
from batchserve.model_repo.graph_inspect import ModelAddError
from batchserve.model_repo.preprocess import PreprocessConfig, prepare_image
from batchserve.model_repo.runner import Runner, RunnerConfig, as_logits
from batchserve.model_repo.topk import softmax, top_k

CHECK_TOP_K = 5
_CPU = RunnerConfig(execution_providers=("CPUExecutionProvider",))
# Rows of a probability output sum to 1 up to float32 rounding over up to thousands of classes.
_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Probe:
    output_kind: str
    notes: tuple[str, ...]


@dataclass(frozen=True)
class CheckResult:
    image: Path
    top: list[tuple[int, str, float]]
    """(class id, label, score) best first."""


def open_runner(model_path: Path, plan: ModelPlan) -> Runner:
    """The graph in ONNX Runtime, raw outputs (no conversion: the probe decides what they are)."""
    try:
        return Runner(model_path, _CPU, input_name=plan.input_name, output_name=plan.output_name)
    except ModelLoadError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise ModelAddError("onnx_load_failed", f"ONNX Runtime cannot load the graph: {cause}") from None


def probe(runner: Runner, plan: ModelPlan) -> Probe:
    """Run a batch of 1 and (when it will be served that way) of 2; check the output's shape and
    values; decide the output kind when the plan left it open."""
    fed = plan.preprocessing.sample_shape
    if runner.sample_shape != fed:  # ONNX Runtime resolved the input differently from the declared shape
        raise ModelAddError("run_failed", f"ONNX Runtime sees the input as [N, *{list(runner.sample_shape)}] but "
                            f"images would be fed as [N, *{list(fed)}]")
    rng = np.random.default_rng(0)
    samples = [np.zeros(runner.sample_shape, dtype=np.float32),
               rng.standard_normal(runner.sample_shape).astype(np.float32)]
    single = [_run(runner, plan, samples[:1])]
    if plan.max_batch_size >= 2:
        single.append(_run(runner, plan, samples[1:]))
        pair = _run(runner, plan, samples)
        if not np.allclose(pair[0], single[0][0], rtol=1e-3, atol=1e-4):
            raise ModelAddError("dynamic_batch", "a batch of 2 answers differently for its first image than a batch "
                                "of 1: the graph mixes the images of a batch; pass --max-batch-size 1")
    outputs = np.concatenate(single)
    if not np.isfinite(outputs).all():
        raise ModelAddError("output_not_finite", "the graph outputs NaN or infinity for a blank image")
    sums_to_one = bool((outputs >= 0).all() and np.allclose(outputs.sum(axis=1), 1.0, atol=_SUM_TOLERANCE))
    if plan.output_kind is not None:
        if plan.output_kind == "probabilities" and not sums_to_one:
            raise ModelAddError("output_kind", "the output is taken as probabilities, but its rows do not sum to 1 "
                                f"(they sum to {outputs.sum(axis=1).round(4).tolist()}); pass --output-kind logits")
        return Probe(plan.output_kind, ())
    if sums_to_one:
        return Probe("probabilities", ("the outputs are non-negative and each row sums to 1: taken as "
                                       "probabilities (--output-kind logits to override)",))
    return Probe("logits", ())


def _run(runner: Runner, plan: ModelPlan, samples: list[np.ndarray]) -> np.ndarray:
    try:
        rows = np.stack(runner.infer_samples(samples))
    except Exception as exc:  # ORT's pybind exceptions share no useful base class
        detail = str(exc).strip()
        if len(samples) > 1 and plan.fixed_batch is None:
            raise ModelAddError("dynamic_batch", f"the graph declares a dynamic batch but fails on a batch of "
                                f"{len(samples)}: {detail}; pass --max-batch-size 1 to serve one image per "
                                "run") from exc
        raise ModelAddError("run_failed", f"ONNX Runtime cannot run the graph on a {list(runner.sample_shape)} "
                            f"image: {detail}") from exc
    if rows.ndim != 2:
        raise ModelAddError("output_rank", f"the output {plan.output_name!r} has shape {list(rows.shape)} per "
                            "image; an image classifier gives one row of class scores")
    if rows.shape[1] != plan.classes:
        raise ModelAddError("labels_mismatch", f"the output {plan.output_name!r} has {rows.shape[1]} classes but "
                            f"the labels have {plan.classes}")
    return rows


def check_images(
    runner: Runner, images: list[Path], preprocessing: PreprocessConfig, labels: list[str], output_kind: str,
) -> list[CheckResult]:
    """The best classes of each image, decoded and preprocessed as the server does."""
    results = []
    k = min(CHECK_TOP_K, len(labels))
    for path in images:
        try:
            data = path.read_bytes()
            tensor = prepare_image(data, preprocessing).tensor
        except OSError as exc:
            raise ModelAddError("check_image", f"--check {path}: cannot read it: {exc}") from None
        except (ImageDecodeError, ModelRepoError) as exc:
            raise ModelAddError("check_image", f"--check {path}: {exc}") from None
        logits = as_logits(runner.infer_samples([tensor])[0], output_kind)
        top = [(c, labels[c], score) for c, score in top_k(softmax(logits), k)]
        results.append(CheckResult(path, top))
    return results
