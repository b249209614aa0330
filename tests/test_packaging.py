"""The distribution installs one import name, `batchserve`, and ships every file its code reads."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from batchserve.events.config import EventsConfig
from batchserve.loadtest.samples import SAMPLE_IMAGES
from batchserve.loadtest.server_process import ServerProcess

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
        "batchserve/deploy/aws/queue_template.yaml",
        "batchserve/deploy/aws/web_template.yaml",
        "batchserve/deploy/k8s/crds/keda.sh_scaledobjects.yaml",
        "batchserve/deploy/k8s/crds/keda.sh_triggerauthentications.yaml",
        "batchserve/client/http.py",
    ):
        assert needed in names
    assert not any("/tests/" in name or name.endswith(".onnx") for name in names)


def test_the_wheel_ships_the_sample_photos_the_load_tools_default_to(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"batchserve/loadtest/sample_images/{p.name}" for p in SAMPLE_IMAGES.iterdir()}
    for needed in ("chelsea.jpg", "coffee.jpg", "rocket.jpg", "manifest.toml", "LICENSES.md"):
        assert f"batchserve/loadtest/sample_images/{needed}" in shipped
    assert shipped <= names


# ---- the wheel installed on its own ----------------------------------------------------------------

def _counts(report: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^(total requests|completed|failed|correct|wrong): (\d+)$", report, re.M)}


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment holding the wheel and nothing of the checkout. The project's dependencies
    come from this interpreter's site-packages directories, listed in a .pth file; .pth files inside
    a directory named that way are not run, so the editable install's import hook stays out.
    Returns the environment's python."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    dependencies = [p for p in sys.path if Path(p).name == "site-packages"]
    Path(site, "project-dependencies.pth").write_text("".join(f"{p}\n" for p in dependencies), encoding="utf-8")
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                          str(wheel)], capture_output=True, text=True, check=False)
    assert pip.returncode == 0, pip.stderr
    return python


@pytest.mark.slow
def test_the_installed_wheel_serves_and_runs_the_workload_on_its_own_photos(
    installed: Path, built_models: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "elsewhere"  # outside the checkout, so nothing can be found relative to it
    workdir.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(installed), *args], cwd=workdir, capture_output=True, text=True,
                              timeout=60, check=False)

    where = run("-c", "import batchserve, batchserve.server; print(batchserve.__file__, batchserve.server.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(Path(f).is_relative_to(installed.parent.parent) for f in where.stdout.split()), where.stdout
    bench = subprocess.run([str(installed.parent / "batchserve"), "bench", "--help"], cwd=workdir,
                           capture_output=True, text=True, timeout=60, check=False)
    assert bench.returncode == 0 and "--image" in bench.stdout, bench.stderr

    server = ServerProcess("--model-repo", str(built_models), "--models", "tiny", "--events-flush-interval-ms", "50",
                           cwd=workdir, python=str(installed), ready_timeout=60)
    with server:
        workload = run("-m", "batchserve.loadtest.workload", "--url", server.url, "-n", "6")
        assert server.stop() == 0, server.log()
    # The tiny model's answers are random: the run must complete, whatever it says of them.
    counts = _counts(workload.stdout)
    assert counts.get("total requests") == counts.get("completed") == 6, workload.stdout + workload.stderr
    assert counts["failed"] == 0, workload.stdout
    assert counts["correct"] + counts["wrong"] == 6
    assert workload.returncode == (1 if counts["wrong"] else 0), workload.stdout + workload.stderr
    # What reached the server is exactly the shipped photos (events are flushed before the exit).
    with sqlite3.connect(workdir / EventsConfig.events_path) as db:
        received = {sha for (sha,) in db.execute("SELECT sha256 FROM image_dim")}
    manifest = tomllib.loads((SAMPLE_IMAGES / "manifest.toml").read_text(encoding="utf-8"))
    assert received == {hashlib.sha256((SAMPLE_IMAGES / name).read_bytes()).hexdigest() for name in manifest}
