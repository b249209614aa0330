"""Which ONNX Runtime execution providers a session asks for, and with which options.

ONNX Runtime hands each graph node to the FIRST listed provider that can run it, so the order
is not a preference among equals: a CPU entry ahead of CUDA would claim every node and leave
the GPU idle, and CUDA ahead of TensorRT would do the same to TensorRT. The only useful order is
therefore TensorRT -> CUDA -> CPU, and that is the order returned whatever order the names were
given in. CPU always comes last, requested or not, so nodes no accelerator supports still run.

TensorRT is never chosen implicitly: it compiles an engine per input shape on first use, which
takes minutes for a CNN unless `trt_engine_cache_path` keeps engines between runs.
"""

from __future__ import annotations

from collections.abc import Sequence
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
) -> dict[str, Any]:
    """Session options for one provider (the second element of ONNX Runtime's (name, options)).

    CUDA: `cudnn_conv_algo_search=HEURISTIC` because EXHAUSTIVE benchmarks every convolution
    algorithm again for each new input shape, and a dynamic batcher produces a new batch size
    at any moment, stalling that batch for seconds; `arena_extend_strategy=kSameAsRequested`
    grows the memory arena by what is asked instead of doubling, so warm-up at the largest
    batch size leaves the pool at its working size rather than twice it.
    TensorRT: FP16 kernels (trt_fp16) and an engine cache when a path is given.
    """
    if provider == TENSORRT:
        options: dict[str, Any] = {"device_id": device_id, "trt_fp16_enable": trt_fp16}
        if trt_engine_cache_path:
            options["trt_engine_cache_enable"] = True
            options["trt_engine_cache_path"] = trt_engine_cache_path
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
