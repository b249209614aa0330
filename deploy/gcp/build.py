"""`--remote-build`: the image built by Cloud Build instead of a local Docker engine.

`gcloud builds submit --tag IMAGE` only builds a file named `Dockerfile`; the GPU image's is
`Dockerfile.gpu`, so the build goes through a config (`cloudbuild.yaml`, written beside
`service.yaml`) that runs `docker build -f Dockerfile.gpu` and pushes the result. Cloud Build's
workers are linux/amd64, the platform Cloud Run runs, whatever machine starts the build (an ARM
laptop included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from batchserve.deploy.errors import UsageError
from batchserve.deploy.gcp.steps import Step

DOCKERFILE = "Dockerfile.gpu"
# Compiling Pillow-SIMD and building the model in the image take a while on the default 1-vCPU
# worker; 8 vCPUs finish in minutes. The timeout only bounds a stuck build.
MACHINE_TYPE = "E2_HIGHCPU_8"
TIMEOUT = "3600s"


def cloudbuild_config(image: str) -> dict[str, Any]:
    return {
        "steps": [{"name": "gcr.io/cloud-builders/docker",
                   "args": ["build", "--file", DOCKERFILE, "--tag", image, "."]}],
        "images": [image],  # pushed when every step has passed
        "timeout": TIMEOUT,
        "options": {"machineType": MACHINE_TYPE, "logging": "CLOUD_LOGGING_ONLY"},
    }


def check_source(source: Path) -> Path:
    if not (source / DOCKERFILE).is_file():
        raise UsageError(f"--remote-build uploads the source folder {source} and builds its {DOCKERFILE}, which is "
                         "not there: run from the batchserve checkout or pass --source DIR")
    return source.resolve()


def write_config(image: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cloudbuild.yaml"
    path.write_text("# Rendered by `batchserve deploy gcp --remote-build`.\n"
                    + yaml.safe_dump(cloudbuild_config(image), sort_keys=False), encoding="utf-8")
    return path.resolve()


def build_step(config: Path, source: Path, project: str) -> Step:
    """Uploads `source` (minus what .gcloudignore, or without one .gitignore, leaves out) and builds it."""
    return Step(("gcloud", "builds", "submit", str(source), "--config", str(config), "--project", project))
