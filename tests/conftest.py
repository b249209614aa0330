"""Fixtures shared by every test package: photos, built models, and real server processes."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchserve.loadtest.samples import SAMPLE_IMAGES as IMAGES
from batchserve.loadtest.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPO = ROOT / "model_repo" / "models"


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return IMAGES


@pytest.fixture(scope="session")
def manifest() -> dict:
    return tomllib.loads((IMAGES / "manifest.toml").read_text())


@pytest.fixture(scope="session")
def chelsea() -> bytes:
    return (IMAGES / "chelsea.jpg").read_bytes()


@pytest.fixture(scope="session")
def built_models() -> Path:
    """The default repository with the real and the tiny model built (no-op when they are)."""
    from batchserve.model_repo.build import build_model

    for name in ("efficientnet_lite0", "tiny"):
        build_model(name, MODEL_REPO, if_missing=True, progress=lambda _msg: None)
    return MODEL_REPO


@pytest.fixture(scope="session")
def real_server(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with the real EfficientNet-Lite0 (and tiny), SQLite events, shared by e2e tests
    that only read. Tests that change server state start their own."""
    cwd = tmp_path_factory.mktemp("real-server")
    server = ServerProcess("--models", "efficientnet_lite0,tiny", "--default-model", "efficientnet_lite0",
                           "--events-flush-interval-ms", "50", cwd=cwd)
    with server:
        yield server
