"""What the manifests rely on from the server and the worker, in one place.

deploy/ imports nothing from the rest of batchserve (tests/test_layers.py), so these names are
written out here; tests/deploy/test_k8s_contract.py checks each one against the code that owns it
(server/config.py, server/metrics.py, the routes, jobs/config.py).
"""

from __future__ import annotations

from typing import Final

# The image (Dockerfile.gpu): its user, and the working directory that is its only writable place
# (SQLite events, the spill journal, the model and CUDA caches under $HOME).
IMAGE_UID: Final = 10001
WORK_DIR: Final = "/var/lib/batchserve"

HTTP_PORT: Final = 8000
# `--metrics-port`: /metrics alone, without auth, for the cluster's scrapers (the main port's
# /metrics needs a key with the stats scope under --auth required).
METRICS_PORT: Final = 9090
READY_PATH: Final = "/readyz"  # 200 once models are loaded and warm; 503 while loading or draining
LIVE_PATH: Final = "/healthz"  # 200 while the process runs
METRICS_PATH: Final = "/metrics"

# Gauge of samples waiting in a model's batcher, labelled {model, version}; read at scrape time.
QUEUE_DEPTH_METRIC: Final = "batchserve_queue_depth"

# The shutdown sequence (CONTRACT "Shutdown"): SIGTERM, readiness 503, keep serving DRAIN_DELAY_S,
# stop accepting, finish in-flight batches, flush events, all within SHUTDOWN_GRACE_S.
DRAIN_DELAY_S: Final = 1
SHUTDOWN_GRACE_S: Final = 8
# A worker finishes what it holds, or hands it back to the queue, within this after SIGTERM.
WORKER_SHUTDOWN_GRACE_S: Final = 20

# Environment variables the manifests set; flags carry everything that is not a secret.
ENV_DATABASE_URL: Final = "BATCHSERVE_DATABASE_URL"
ENV_ADMIN_KEY: Final = "BATCHSERVE_ADMIN_KEY"
# Refuse to start without a GPU rather than serve slowly on the CPU. An environment variable, not a
# flag: a server that does not know the setting ignores it instead of failing to parse its flags.
ENV_REQUIRE_GPU: Final = "BATCHSERVE_REQUIRE_GPU"

# Queue mode: the request queue of a deployment named NAME (jobs/config.py ResourceNames).
REQUESTS_QUEUE_SUFFIX: Final = "-requests"
