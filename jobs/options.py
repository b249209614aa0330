"""`batchserve worker`'s and `batchserve queue`'s flags and their `BATCHSERVE_<NAME>` environment
twins, derived from the fields of `WorkerSettings` and `QueueSettings` (model knobs included) as
`batchserve serve`'s are (batchserve.serving.options). Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from batchserve.jobs.config import QueueConfig, QueueSettings, WorkerSettings
from batchserve.serving.options import from_sources, options_of

WORKER_OPTIONS = options_of(WorkerSettings)
QUEUE_OPTIONS = options_of(QueueSettings)
# What `batchserve queue up` prints: where the deployment is, for the workers and the web tier.
# The visibility timeout too: a worker receives with its own (so that every delivery has it), and
# one started from these lines then uses the queue's.
_EXPORTED = ("queue_name", "input_bucket", "output_bucket", "aws_endpoint_url", "aws_region", "visibility_timeout_s")


def exported_settings(config: QueueConfig, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`BATCHSERVE_<SETTING>`: value of the deployment `config` names (the endpoint only when one is set)."""
    names = config.names
    values = {"queue_name": names.name, "input_bucket": names.input_bucket, "output_bucket": names.output_bucket,
              "aws_endpoint_url": config.endpoint_url(environ), "aws_region": config.region(environ),
              "visibility_timeout_s": config.visibility_timeout_s}
    return {option.env: str(values[option.name]) for option in QUEUE_OPTIONS
            if option.name in _EXPORTED and values.get(option.name)}


def worker_settings(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> WorkerSettings:
    """Raises ValueError naming the setting that is wrong."""
    return from_sources(WorkerSettings, WORKER_OPTIONS, vars(args), environ)


def queue_settings(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> QueueSettings:
    """Raises ValueError naming the setting that is wrong."""
    return from_sources(QueueSettings, QUEUE_OPTIONS, vars(args), environ)
