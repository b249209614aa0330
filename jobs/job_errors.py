"""What a client of /v1/jobs can be told, as ServeErrors: the one mapper gives them status and code."""

from __future__ import annotations

from batchserve.serving.errors import ServeError


class JobsUnavailable(ServeError):
    """This server classifies in-process: bulk jobs need the queue backend's workers and buckets."""

    status, code = 404, "jobs_unavailable"


class JobNotFound(ServeError):
    """No such job, or not the caller's: both answer alike, so a job's existence does not leak."""

    status, code = 404, "job_not_found"


class JobCancelled(ServeError):
    """A worker's answer to an image whose job was cancelled before the image ran."""

    status, code = 409, "cancelled"
