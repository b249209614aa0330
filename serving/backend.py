"""Who classifies a front end's images: the serving core in this process, or something behind it.

The HTTP server's /v1 routes classify through one `Backend`. The direct backend is this process's
classifier and batcher; the queue backend (batchserve.jobs.web_tier) sends each image through S3
and SQS to the workers; the remote backend (batchserve.server.remote) forwards each request to
other batchserve servers over HTTP. Each answers with one `Classification` in request order, so
routes answer, and record, alike whoever did the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from batchserve.serving.classifier import Classification, Classifier, Deadline, ImageInput
from batchserve.serving.errors import ServeError
from batchserve.serving.recording import Caller
from batchserve.serving.registry import LoadedModel

BackendName = Literal["direct", "queue", "remote"]


class NotServedHere(ServeError):
    """A route this backend cannot answer (tensors sent to a web tier whose workers take images)."""

    status, code = 501, "not_supported"


class Backend(Protocol):
    name: BackendName

    @property
    def ready(self) -> bool:
        """False while what the backend depends on does not answer (readiness says 503)."""

    async def start(self) -> None: ...

    async def close(self, timeout_s: float) -> None: ...

    async def classify_images(self, model: LoadedModel, images: Sequence[ImageInput], k: int, deadline: Deadline,
                              caller: Caller) -> Classification: ...


@dataclass
class DirectBackend:
    """This process's own classifier: decode, batch and infer here."""

    classifier: Classifier
    name: BackendName = "direct"
    ready: bool = True

    async def start(self) -> None:
        return None

    async def close(self, timeout_s: float) -> None:
        return None  # the serving core closes the classifier's models and pools

    async def classify_images(self, model: LoadedModel, images: Sequence[ImageInput], k: int, deadline: Deadline,
                              caller: Caller) -> Classification:
        return await self.classifier.classify_images(model, images, k, deadline)
