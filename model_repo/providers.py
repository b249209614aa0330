"""Which ONNX Runtime execution providers a session asks for, and with which options.

ONNX Runtime hands each graph node to the FIRST listed provider that can run it, so the order
is not a preference among equals: a CPU entry ahead of CUDA would claim every node and leave
the GPU idle, and CUDA ahead of TensorRT would do the same to TensorRT. The only useful order is
therefore TensorRT -> CUDA -> CPU, and that is the order returned whatever order the names were
given in. CPU always comes last, requested or not, so nodes no accelerator supports still run.

TensorRT is never chosen implicitly: it compiles an engine per input shape on first use, which
takes minutes for a CNN unless `trt_engine_cache_path` keeps engines between runs. When it is
asked for, it runs in FP16, and in INT8 for a graph that carries QuantizeLinear/DequantizeLinear
pairs (the int8 variants the repository builds): TensorRT then takes each tensor's scale from
those nodes (explicit quantization), so no calibration table is involved and the engine computes
what the graph says. The cache directory holds both the engines and TensorRT's timing cache (the
measured speed of each kernel candidate), which also shortens building an engine for a new shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Priority order; also the complete list of names accepted.
KNOWN_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA, CPU)
DEFAULT_PROVIDERS: tuple[str, ...] = (CUDA, CPU)


def choose_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The requested providers this ONNX Runtime build has, in priority order, ending with CPU.

    `requested` None means DEFAULT_PROVIDERS (CUDA when present, else CPU). Names are ONNX
    Runtime's exact provider names; anything else raises ValueError listing the known ones.
    """
    if isinstance(requested, str):
        raise TypeError("requested must be a sequence of provider names, not a single string")
    wanted = DEFAULT_PROVIDERS if requested is None else tuple(requested)
    unknown = [name for name in wanted if name not in KNOWN_PROVIDERS]
    if unknown:
        raise ValueError(
            f"unknown execution provider(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(KNOWN_PROVIDERS)}"
        )
    have = set(available)
    chosen = [name for name in KNOWN_PROVIDERS if name in wanted and name in have and name != CPU]
    return [*chosen, CPU]


def provider_options(
    provider: str,
    *,
    trt_engine_cache_path: str | None = None,
    device_id: int = 0,
    trt_fp16: bool = True,
    trt_int8: bool = False,
) -> dict[str, Any]:
    """Session options for one provider (the second element of ONNX Runtime's (name, options)).

    CUDA: `cudnn_conv_algo_search=HEURISTIC` because EXHAUSTIVE benchmarks every convolution
    algorithm again for each new input shape, and a dynamic batcher produces a new batch size
    at any moment, stalling that batch for seconds; `arena_extend_strategy=kSameAsRequested`
    grows the memory arena by what is asked instead of doubling, so warm-up at the largest
    batch size leaves the pool at its working size rather than twice it.
    TensorRT: FP16 kernels (trt_fp16), INT8 kernels for a QDQ graph (trt_int8: see the module
    doc; on a float graph it would need a calibration table, so it is off there), and the
    engine and timing caches when a directory is given.
    """
    if provider == TENSORRT:
        options: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": trt_fp16, "trt_int8_enable": trt_int8}
        if trt_engine_cache_path:
            options["trt_engine_cache_enable"] = True
            options["trt_engine_cache_path"] = trt_engine_cache_path
            options["trt_timing_cache_enable"] = True
            options["trt_timing_cache_path"] = trt_engine_cache_path
        else:
            options["trt_engine_cache_enable"] = False
        return options
    if provider == CUDA:
        return {
            "device_id": device_id,
            "cudnn_conv_algo_search": "HEURISTIC",
            "arena_extend_strategy": "kSameAsRequested",
        }
    if provider == CPU:
        return {}
    raise ValueError(f"unknown execution provider {provider!r}; known: {', '.join(KNOWN_PROVIDERS)}")


QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def is_qdq_graph(model_path: str | Path) -> bool:
    """Whether the ONNX file carries QuantizeLinear/DequantizeLinear nodes (a statically quantized
    QDQ graph), read without its external data. Only asked when TensorRT is requested."""
    import onnx  # only TensorRT sessions need it, and only once per load

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - the session that loads the file next reports what is wrong with it
        return False
    return any(node.op_type in QDQ_OPS for node in model.graph.node)


def session_providers(
    model_path: str | Path,
    requested: Sequence[str] | None,
    available: Sequence[str],
    trt_engine_cache_path: str | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The (name, options) list an InferenceSession for this model file gets: the providers
    `choose_providers` keeps, each with its options; TensorRT in INT8 when the graph is QDQ."""
    names = choose_providers(requested, available)
    int8 = TENSORRT in names and is_qdq_graph(model_path)
    return [
        (name, provider_options(name, trt_engine_cache_path=trt_engine_cache_path, trt_int8=int8)) for name in names
    ]
