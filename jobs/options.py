"""`batchserve worker`'s and `batchserve queue`'s flags and their `BATCHSERVE_<NAME>` environment
twins, derived from the fields of `WorkerSettings` and `QueueSettings` (model knobs included) as
`batchserve serve`'s are (batchserve.serving.options). Precedence: flag > environment > default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from batchserve.jobs.config import QueueSettings, WorkerSettings
from batchserve.serving.options import from_sources, options_of

WORKER_OPTIONS = options_of(WorkerSettings)
QUEUE_OPTIONS = options_of(QueueSettings)


def worker_settings(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> WorkerSettings:
    """Raises ValueError naming the setting that is wrong."""
    return from_sources(WorkerSettings, WORKER_OPTIONS, vars(args), environ)


def queue_settings(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> QueueSettings:
    """Raises ValueError naming the setting that is wrong."""
    return from_sources(QueueSettings, QUEUE_OPTIONS, vars(args), environ)
