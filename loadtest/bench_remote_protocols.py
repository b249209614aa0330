"""What one forwarded image costs the forwarding side's CPU, by protocol: /v1 raw bytes or V2 binary.

The remote backend could send each image to its upstream as a raw /v1/classify body (JSON answer
with the top k) or as a V2 inference request with the binary tensor data extension: a BYTES
`image` input and the `probabilities` output as Triton's classification strings (the cheapest
V2 answer that carries the top k with labels; its scores have six decimals). This module makes N
such exchanges in turn from this process against one server, each side through the web tier's own
HTTP client (client/pooled_http.py, one pooled connection) and decoding the answer into
predictions, and reports the process CPU time per exchange: the cost the web tier would pay,
without the web tier's own routes around it.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from batchserve.client.pooled_http import ClientSettings, UpstreamClient
from batchserve.server.remote.wire import Answered, classify_request, decode_answer, image_answers
from batchserve.serving.classifier import ImageInput, Prediction

V2_HEADER = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")
TIMEOUT_S = 30.0
Exchange = Callable[[UpstreamClient], Awaitable[list[Prediction]]]


def v1_exchange(model: str, image: bytes, k: int) -> Exchange:
    outbound = classify_request(model, 1, k, [ImageInput(image, None, "image/jpeg")])

    async def exchange(client: UpstreamClient) -> list[Prediction]:
        reply = await client.request("POST", outbound.path_and_query, body=outbound.body,
                                     headers="Content-Type: image/jpeg\r\n", timeout_s=TIMEOUT_S)
        (answer,) = image_answers(decode_answer(reply.body), reply.status, {}, 1)
        if not isinstance(answer, Answered):
            raise RuntimeError(f"v1 exchange failed: {answer}")
        return answer.predictions

    return exchange


def v2_request(image: bytes, k: int) -> tuple[bytes, str]:
    """The body and its header lines (CRLF-ended)."""
    element = _LENGTH.pack(len(image)) + image
    header = json.dumps({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "parameters": {"binary_data_size": len(element)}}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": k, "binary_data": True}}],
    }).encode()
    return header + element, f"Content-Type: application/octet-stream\r\n{V2_HEADER}: {len(header)}\r\n"


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


def v2_exchange(model: str, image: bytes, k: int) -> Exchange:
    path = f"/v2/models/{model}/versions/1/infer"
    body, headers = v2_request(image, k)

    async def exchange(client: UpstreamClient) -> list[Prediction]:
        reply = await client.request("POST", path, body=body, headers=headers, timeout_s=TIMEOUT_S)
        length = int(reply.headers.get(V2_HEADER.lower(), "0"))
        if reply.status != 200 or not length:
            raise RuntimeError(f"v2 exchange failed: {reply.status} {reply.body[:200]!r}")
        return v2_predictions(reply.body, length)

    return exchange


async def _cpu_per_exchange(base_url: str, exchange: Exchange, count: int) -> dict[str, float]:
    client = UpstreamClient(base_url, ClientSettings(connections=1))
    try:
        await exchange(client)  # the connection opens outside the measurement, as a pooled one would be
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            await exchange(client)
        return {"cpu_us": (time.process_time() - cpu) / count * 1e6,
                "wall_ms": (time.perf_counter() - wall) / count * 1e3}
    finally:
        await client.close()


def compare(base_url: str, model: str, image: bytes, count: int, k: int = 5, v2_first: bool = False,
            ) -> dict[str, Any]:
    """CPU per exchange of each protocol, measured one after the other (order as asked), and the
    predictions each gave for the image (they must agree)."""
    sides = {"v1_raw": v1_exchange(model, image, k), "v2_binary": v2_exchange(model, image, k)}
    order = ["v2_binary", "v1_raw"] if v2_first else ["v1_raw", "v2_binary"]

    async def run() -> dict[str, Any]:
        result: dict[str, Any] = {}
        for side in order:
            result[side] = await _cpu_per_exchange(base_url, sides[side], count)
        client = UpstreamClient(base_url, ClientSettings(connections=1))
        try:
            result["top1_agree"] = (await sides["v1_raw"](client))[0].class_id == \
                (await sides["v2_binary"](client))[0].class_id
        finally:
            await client.close()
        return result

    return uvloop.run(run())  # the web tier's loop
