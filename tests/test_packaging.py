"""The distribution installs one import name, `batchserve`, and ships every file its code reads."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in SETUPTOOLS["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base).parts
            found.add(".".join((name, *relative)))
    return found


def test_every_package_on_disk_is_listed_for_installation() -> None:
    assert set(SETUPTOOLS["packages"]) == _packages_on_disk()


def test_every_mapped_folder_installs_under_batchserve() -> None:
    assert all(name == "batchserve" or name.startswith("batchserve.") for name in SETUPTOOLS["package-dir"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True)
    (built,) = out.glob("batchserve-*.whl")
    return built


def test_the_wheel_holds_batchserve_and_its_metadata_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"batchserve", wheel.name.split("-py3")[0] + ".dist-info"}


def test_the_wheel_ships_the_files_its_code_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "batchserve/model_repo/models/efficientnet_lite0/config.toml",
        "batchserve/model_repo/models/efficientnet_lite0/labels.txt",
        "batchserve/events/migrations/0001_star_schema.postgres.sql",
        "batchserve/server/ui/templates/base.html",
        "batchserve/server/ui/static/js/api.js",
        "batchserve/loadtest/targets.toml",
        "batchserve/deploy/aws/template.yaml",
    ):
        assert needed in names
    assert not any("/tests/" in name or name.endswith(".onnx") for name in names)
