"""The layering the README describes, checked on every import in the shipped code.

Arrows point one way: server → serving → (model_repo, batching, events); batching/ imports only
the standard library; the HTTP client imports nothing of batchserve; the root command is the one
place that knows every subcommand.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "setuptools"]["package-dir"]
LAYERS = {name.removeprefix("batchserve."): folder for name, folder in PACKAGE_DIRS.items() if name != "batchserve"}

# What each package may import from batchserve (besides itself and the root package's __version__).
# The HTTP client sits below everything: command-line tools of any package may talk to a server.
ALLOWED = {
    "client": set(),
    "batching": set(),
    "model_repo": set(),
    "events": {"client", "model_repo"},
    "serving": {"batching", "model_repo", "events"},
    "server": {"serving", "batching", "model_repo", "events", "client", "jobs"},
    "loadtest": {"batching", "model_repo", "server", "serving", "client", "jobs"},
    "deploy": set(),
    "jobs": {"serving", "events", "model_repo", "batching", "client"},
}
COMMAND_MODULES = {
    "batchserve.server.cli", "batchserve.model_repo.commands", "batchserve.server.model_control",
    "batchserve.events.commands", "batchserve.loadtest.commands", "batchserve.deploy.cli",
    "batchserve.jobs.commands", "batchserve.server.auth.commands", "batchserve.client.commands",
    "batchserve.events.drift_commands",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_every_package_has_a_rule() -> None:
    assert set(LAYERS) == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers_only(package: str) -> None:
    allowed = ALLOWED[package] | {package}
    wrong = []
    for path in _modules(LAYERS[package]):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "batchserve" and len(parts) > 1 and parts[1] != "__version__" \
                    and parts[1] in LAYERS and parts[1] not in allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_batching_imports_only_the_standard_library() -> None:
    outside = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in _modules("batching")
        for name in _imports(path)
        if name.split(".")[0] not in sys.stdlib_module_names and not name.startswith("batchserve.batching")
    }
    assert not outside, "\n".join(sorted(outside))


def test_only_the_root_command_knows_every_subcommand() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for folder in ("batchserve", *LAYERS.values())
        for path in _modules(folder)
        if _imports(path) & COMMAND_MODULES and path.stem != "__main__"
    }
    assert importers == {"batchserve/cli.py"}
