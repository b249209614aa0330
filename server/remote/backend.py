"""The remote backend of `batchserve serve --backend remote`: each request's images go to one upstream.

Images whose declared type or bytes are refused here (as direct mode refuses them, with the same
answer) never travel; the others go together in one request (wire.py) to the upstream the pool
picks (forwarding.py), and each comes back as the sample outcome the routes answer from. The web
tier records every sample's event itself (`recorded_elsewhere` stays False): its upstreams run
with `--no-events`. Ready while at least one upstream is in rotation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from batchserve import __version__
from batchserve.client.pooled_http import ClientSettings, UpstreamClient
from batchserve.model_repo.image_formats import check_declared_type
from batchserve.server.config import BackendConfig
from batchserve.server.remote.catalog import UpstreamCatalog
from batchserve.server.remote.errors import invalid_answer
from batchserve.server.remote.forwarding import ForwardSettings, Reply, forward
from batchserve.server.remote.health import HealthChecker
from batchserve.server.remote.upstreams import Upstream, UpstreamPool
from batchserve.server.remote.wire import (
    Answered,
    AnswerError,
    ImageAnswer,
    classify_request,
    decode_answer,
    header_safe,
    image_answers,
)
from batchserve.serving.answer_markers import NO_LOGITS, cache_hit, hashed_on_loop, stand_in
from batchserve.serving.backend import BackendName
from batchserve.serving.classifier import Classification, Classified, Deadline, Failed, ImageInput, SampleResult
from batchserve.serving.config import ServingConfig
from batchserve.serving.errors import ErrorInfo, describe
from batchserve.serving.recording import Caller
from batchserve.serving.registry import LoadedModel

log = logging.getLogger("batchserve.remote")
FIRST_CHECK_S = 3.0  # start() waits this long at most for the first round of checks


@dataclass(frozen=True)
class RemoteSettings:
    upstreams: tuple[str, ...]
    api_key: str | None = None
    check_interval_s: float = 1.0
    connect_timeout_s: float = 1.0
    timeout_ms: float = 60000.0
    retries: int = 2
    failure_threshold: int = 3
    connections: int = 64

    @classmethod
    def from_config(cls, config: BackendConfig) -> RemoteSettings:
        return cls(config.upstream, config.upstream_api_key, config.upstream_check_interval_s,
                   config.upstream_connect_timeout_s, config.upstream_timeout_ms, config.upstream_retries,
                   config.upstream_failure_threshold, config.upstream_connections)

    def forwarding(self) -> ForwardSettings:
        return ForwardSettings(self.retries + 1, self.timeout_ms / 1000.0)

    def client(self, connections: int) -> ClientSettings:
        return ClientSettings(connections=connections, connect_timeout_s=self.connect_timeout_s)


class RemoteBackend:
    name: BackendName = "remote"

    def __init__(self, settings: RemoteSettings, pool: UpstreamPool, catalog: UpstreamCatalog) -> None:
        self.settings = settings
        self.pool = pool
        self.catalog = catalog
        self._forwarding = settings.forwarding()
        self._clients: dict[Upstream, UpstreamClient] = {}  # the requests' connections
        self._check_clients: dict[Upstream, UpstreamClient] = {}  # the checks' own
        self._checks: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    def build(cls, config: BackendConfig, serving: ServingConfig, *, retire_grace_s: float) -> RemoteBackend:
        """The backend and its catalog (the serving core's registry in remote mode: `.catalog`)."""
        settings = RemoteSettings.from_config(config)
        pool = UpstreamPool.of(settings.upstreams, failure_threshold=settings.failure_threshold,
                               check_interval_s=settings.check_interval_s)
        return cls(settings, pool, UpstreamCatalog(serving, pool, retire_grace_s=retire_grace_s))

    @property
    def ready(self) -> bool:
        return not self._closing and self.pool.ready

    async def start(self) -> None:
        """Makes each upstream's connection pools and checks every upstream once (not waiting past
        FIRST_CHECK_S: readiness follows the checks either way), then goes on checking in the
        background, while it is needed (health.py)."""
        headers = {"User-Agent": f"batchserve-web-tier/{__version__}"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        for upstream in self.pool.upstreams:
            self._clients[upstream] = UpstreamClient(upstream.url, self.settings.client(self.settings.connections),
                                                     headers=headers)
            self._check_clients[upstream] = UpstreamClient(upstream.url, self.settings.client(1), headers=headers)
        checker = HealthChecker(self.pool, self._check_clients, interval_s=self.settings.check_interval_s,
                                on_change=self.catalog.refresh)
        try:
            await asyncio.wait_for(checker.check_all(), FIRST_CHECK_S)
        except TimeoutError:
            log.warning("the upstreams' first check took over %.0f s; going on checking in the background",
                        FIRST_CHECK_S)
        self._checks = asyncio.create_task(checker.run(), name="upstream-checks")
        log.info("remote backend: forwarding to %s (%d in rotation)", ", ".join(self.settings.upstreams),
                 sum(u.in_rotation for u in self.pool.upstreams))

    async def close(self, timeout_s: float) -> None:
        self._closing = True
        if self._checks is not None:
            self._checks.cancel()
            await asyncio.gather(self._checks, return_exceptions=True)
        for client in (*self._clients.values(), *self._check_clients.values()):
            await client.close()

    async def classify_images(self, model: LoadedModel, images: Sequence[ImageInput], k: int, deadline: Deadline,
                              caller: Caller) -> Classification:
        results: list[SampleResult | None] = [None] * len(images)
        sent: list[tuple[int, ImageInput]] = []
        for position, image in enumerate(images):
            try:
                check_declared_type(image.content_type, image.data)  # refused here as in direct mode: no trip
            except Exception as exc:  # noqa: BLE001 - the image's own error, answered and recorded here
                results[position] = Failed(position, image, describe(exc), "decode")
                continue
            sent.append((position, image))
        if sent:
            answers = await self._forward(model, [image for _, image in sent], k, deadline, caller)
            for (position, image), answer in zip(sent, answers, strict=True):
                if isinstance(answer, Answered):
                    results[position] = await self._classified(model, position, image, answer)
                else:
                    results[position] = Failed(position, image, answer, "batch")
        return Classification(model, [r for r in results if r is not None])

    async def _classified(self, model: LoadedModel, position: int, image: ImageInput,
                          answer: Answered) -> Classified:
        """One image's answer, with the upstream's markers (markers.py): its cache, its fallback."""
        hit = None
        if answer.cache_hit:
            hit = cache_hit(image) if hashed_on_loop(image) else await asyncio.to_thread(cache_hit, image)
        answered_by = None if answer.fallback is None else stand_in(self.catalog, model, *answer.fallback)
        return Classified(position, None, answer.predictions, NO_LOGITS, answer.queue_ms, answer.inference_ms,
                          answer.batch_size, sent=image, cached=hit, stand_in=answered_by)

    async def _forward(self, model: LoadedModel, images: list[ImageInput], k: int, deadline: Deadline,
                       caller: Caller) -> list[ImageAnswer]:
        outbound = classify_request(model.name, model.version, k, images)
        request_id = header_safe(caller.request_id)  # the server's own or a client's checked one: always is
        headers = f"X-Request-ID: {request_id}\r\n" if request_id else ""
        reply = await forward(self._clients, self.pool, outbound, model.name, model.version, deadline, headers,
                              self._forwarding)
        if isinstance(reply, ErrorInfo):
            return [reply] * len(images)
        return _answers(reply, len(images))


def _answers(reply: Reply, count: int) -> list[ImageAnswer]:
    try:
        return image_answers(decode_answer(reply.body), reply.status, reply.headers, count)
    except AnswerError as exc:
        log.warning("upstream %s answered %d with something else than batchserve's answer: %s", reply.url,
                    reply.status, exc)
        return [invalid_answer(reply.url, str(exc))] * count

