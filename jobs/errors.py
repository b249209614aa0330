"""The errors of queue mode. Those a client is told about are ServeErrors, so the one mapper
(batchserve.serving.errors.describe) gives them their status and code as for any other error."""

from __future__ import annotations

from batchserve.serving.errors import ServeError


class MalformedMessage(ServeError):
    """A request message that is not JSON, lacks a field or holds a wrong value. `salvage` keeps
    the string fields that could be read (image_id, request_id, reply_to, ...), to direct the answer."""

    status, code = 400, "invalid_request"

    def __init__(self, message: str, salvage: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.salvage = salvage or {}


class ImageNotFound(ServeError):
    """The message names an image object that does not exist (or a bucket that does not)."""

    status, code = 404, "image_not_found"


class InvalidReplyQueue(ServeError):
    """`reply_to` names a queue that is not one of this deployment's reply queues."""

    status, code = 400, "invalid_request"


class QueueModeSetupError(Exception):
    """The deployment's resources are missing or the configuration cannot reach them."""
