"""What one forwarded image costs the forwarding side's CPU, by protocol: /v1 raw bytes or V2 binary.

The remote backend could send each image to its upstream as a raw /v1/classify body (JSON answer
with the top k) or as a V2 inference request with the binary tensor data extension: a BYTES
`image` input and the `probabilities` output as Triton's classification strings (the cheapest
V2 answer that carries the top k with labels; its scores have six decimals). This module makes N
such exchanges in turn from this process against one server, each side through the same pooled
aiohttp session and decoding the answer into predictions, and reports the process CPU time per
exchange: the cost the web tier would pay, without the web tier's own routes around it.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from batchserve.server.remote.wire import Answered, classify_request, decode_answer, image_answers
from batchserve.serving.classifier import ImageInput, Prediction

V2_HEADER = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")
Exchange = Callable[[aiohttp.ClientSession], Awaitable[list[Prediction]]]


def v1_exchange(base_url: str, model: str, image: bytes, k: int) -> Exchange:
    outbound = classify_request(model, 1, k, [ImageInput(image, None, "image/jpeg")])
    url = base_url + outbound.path_and_query
    headers = {"Content-Type": "image/jpeg"}

    async def exchange(session: aiohttp.ClientSession) -> list[Prediction]:
        async with session.post(url, data=outbound.body, headers=headers) as response:
            body, status = await response.read(), response.status
        (answer,) = image_answers(decode_answer(body), status, {}, 1)
        if not isinstance(answer, Answered):
            raise RuntimeError(f"v1 exchange failed: {answer}")
        return answer.predictions

    return exchange


def v2_request(image: bytes, k: int) -> tuple[bytes, dict[str, str]]:
    element = _LENGTH.pack(len(image)) + image
    header = json.dumps({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": len(element)}}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": k, "binary_data": True}}],
    }).encode()
    return header + element, {"Content-Type": "application/octet-stream", V2_HEADER: str(len(header))}


def v2_predictions(body: bytes, header_length: int) -> list[Prediction]:
    """The classification strings "<score>:<class id>:<label>" of a binary V2 answer, best first."""
    blob = body[header_length:]
    predictions, offset = [], 0
    while offset < len(blob):
        (size,) = _LENGTH.unpack_from(blob, offset)
        score, class_id, label = blob[offset + 4:offset + 4 + size].decode().split(":", 2)
        predictions.append(Prediction(int(class_id), label, float(score)))
        offset += 4 + size
    return predictions


def v2_exchange(base_url: str, model: str, image: bytes, k: int) -> Exchange:
    url = f"{base_url}/v2/models/{model}/versions/1/infer"
    body, headers = v2_request(image, k)

    async def exchange(session: aiohttp.ClientSession) -> list[Prediction]:
        async with session.post(url, data=body, headers=headers) as response:
            answer, status = await response.read(), response.status
            length = int(response.headers.get(V2_HEADER, "0"))
        if status != 200 or not length:
            raise RuntimeError(f"v2 exchange failed: {status} {answer[:200]!r}")
        return v2_predictions(answer, length)

    return exchange


async def _cpu_per_exchange(exchange: Exchange, count: int) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        await exchange(session)  # the connection opens outside the measurement, as a pooled one would be
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            await exchange(session)
        return {"cpu_us": (time.process_time() - cpu) / count * 1e6,
                "wall_ms": (time.perf_counter() - wall) / count * 1e3}


def compare(base_url: str, model: str, image: bytes, count: int, k: int = 5, v2_first: bool = False,
            ) -> dict[str, Any]:
    """CPU per exchange of each protocol, measured one after the other (order as asked), and the
    predictions each gave for the image (they must agree)."""
    sides = {"v1_raw": v1_exchange(base_url, model, image, k), "v2_binary": v2_exchange(base_url, model, image, k)}
    order = ["v2_binary", "v1_raw"] if v2_first else ["v1_raw", "v2_binary"]

    async def run() -> dict[str, Any]:
        result: dict[str, Any] = {}
        for side in order:
            result[side] = await _cpu_per_exchange(sides[side], count)
        async with aiohttp.ClientSession() as session:
            result["top1_agree"] = (await sides["v1_raw"](session))[0].class_id == \
                (await sides["v2_binary"](session))[0].class_id
        return result

    return asyncio.run(run())
