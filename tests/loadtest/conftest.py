"""A fast server for load-tool tests: the simulated accelerator, no ONNX Runtime, no events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchserve.loadtest.server_process import ServerProcess


@pytest.fixture(scope="session")
def simulated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cwd: Path = tmp_path_factory.mktemp("simulated-server")
    with ServerProcess("--simulate-model", "5+0.5", "--no-events", "--drain-delay", "0", cwd=cwd) as server:
        yield server
