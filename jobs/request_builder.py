"""The request message a web tier sends for one image, whoever asked for it: a synchronous
/v1/classify request (answered on the instance's reply queue) or a job (answered in its results)."""

from __future__ import annotations

from batchserve.jobs.messages import RequestMessage
from batchserve.serving.recording import Caller
from batchserve.serving.registry import LoadedModel

# What a message carries of free text the client chose (file names, user agents): enough to
# recognise it, bounded so a message stays far below SQS's 256 KiB.
TEXT_LIMIT = 1024
REQUEST_ID_LIMIT = 128


def clipped(value: str | None) -> str | None:
    return None if value is None else value[:TEXT_LIMIT]


def carried(data: bytes, inline_max_bytes: int) -> bytes | None:
    """The image bytes a request message carries besides its key: those of an image up to
    `inline_max_bytes` (the web tier's --queue-inline-max-bytes), else none."""
    return data if len(data) <= inline_max_bytes else None


def request_message(*, image_id: str, bucket: str, key: str, file_name: str | None, model: LoadedModel, top_k: int,
                    caller: Caller, job_id: str | None = None, reply_to: str | None = None,
                    inline: bytes | None = None, content_type: str | None = None) -> RequestMessage:
    """The message asking a worker to classify the image at s3://`bucket`/`key` for `caller`; with
    `inline`, the image's bytes travel in the message as well."""
    return RequestMessage(
        image_id=image_id, request_id=caller.request_id[:REQUEST_ID_LIMIT], image_bucket=bucket, image_key=key,
        image_file_name=clipped(file_name), model=model.name, version=model.version, top_k=top_k, job_id=job_id,
        reply_to=reply_to, received_at=caller.received_at, user=caller.user[:TEXT_LIMIT],
        client_ip=clipped(caller.client_ip), user_agent=clipped(caller.user_agent),
        image_data=inline, image_content_type=None if inline is None else clipped(content_type),
    )
