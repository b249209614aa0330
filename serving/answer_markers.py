"""The answer markers of a model run elsewhere (a remote upstream, a queue worker), as the web
tier's answers and events carry them.

An upstream or worker that answered an image from its result cache says so (`"cache": "hit"`); one
whose fallback model answered names that model (docs/cache-and-fallback.md). The web tier answers
and records such an image as direct mode would: a cache hit with the image's digest,
size and format (read here from the bytes and the header: the image is never decoded here), a
fallback's answer under the model that gave it, with the model asked for in `fallback_for`.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from batchserve.model_repo.image_formats import pillow_format, require_format
from batchserve.serving.cache import INLINE_HASH_BYTES, CachedScores, CacheHit, digest
from batchserve.serving.classifier import ImageInput
from batchserve.serving.fallback import StandIn
from batchserve.serving.registry import LoadedModel, ModelRegistry

NO_LOGITS = np.empty(0, dtype=np.float32)  # upstreams send the top k, not every class's logit
EXIF_ORIENTATION = 0x0112


def hashed_on_loop(image: ImageInput) -> bool:
    """Whether the image is small enough to hash on the event loop (as the classifier decides)."""
    return len(image.data) <= INLINE_HASH_BYTES


def cache_hit(image: ImageInput) -> CacheHit:
    """What a cache hit's event says of its image (CPU: a digest and a header read, ~50 us for a
    small image; see hashed_on_loop for large ones)."""
    fmt = require_format(image.data)  # the bytes were checked before they travelled: it is one we take
    width, height = _size(image.data, fmt)
    return CacheHit(digest(image.data), CachedScores(NO_LOGITS, width, height, fmt))


def _size(data: bytes, fmt: str) -> tuple[int, int]:
    """Width and height as the image is shown (EXIF orientation applied, as a decode would), from
    its header alone; (0, 0) when the header does not say (the upstream decoded it all the same)."""
    try:
        with Image.open(io.BytesIO(data), formats=[pillow_format(fmt)]) as img:
            width, height = img.size
            if "exif" in img.info and img.getexif().get(EXIF_ORIENTATION, 1) >= 5:  # these swap the axes
                width, height = height, width
            return int(width), int(height)
    except Exception:  # noqa: BLE001 - Pillow raises many types on odd headers; the sizes only annotate an event
        return 0, 0


def stand_in(catalog: ModelRegistry | None, asked: LoadedModel, name: str, version: int) -> StandIn:
    """The model that answered in `asked`'s place elsewhere: the catalog's when it lists it, else
    one known only by its name and version (no catalog, or one narrowed by --models)."""
    try:
        if catalog is None:
            raise LookupError(name)
        model = catalog.find(name, version)
    except Exception:  # noqa: BLE001 - not listed here (ModelNotFound, or no upstream listed it)
        return dataclasses.replace(StandIn.of(asked, asked.name, "unavailable"), name=name, version=version)
    # The upstream does not say why its fallback answered; the reason only feeds fallback counters,
    # which count in the process where the fallback happened (the upstream's /metrics).
    return StandIn.of(model, asked.name, "unavailable")
