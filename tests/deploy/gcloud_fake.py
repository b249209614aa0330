"""A stand-in `gcloud` on PATH: it records each call (argv and the prompt setting) and answers
from a table of recorded outputs, matched by the first words of the call; anything else exits 0
with no output. There is no Google endpoint here, so this is where gcloud's answers come from."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RECORDED = Path(__file__).parent / "gcp_recorded"

SCRIPT = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps({{"args": args, "prompts": os.environ.get("CLOUDSDK_CORE_DISABLE_PROMPTS")}}) + "\\n")
with open(os.environ["GCLOUD_ANSWERS"], encoding="utf-8") as table:
    answers = json.load(table)
for answer in answers:
    if args[:len(answer["prefix"])] == answer["prefix"]:
        sys.stdout.write(answer.get("stdout", ""))
        sys.stderr.write(answer.get("stderr", ""))
        sys.exit(answer.get("exit", 0))
sys.exit(int(os.environ.get("GCLOUD_EXIT", "0")))
"""


def recorded(name: str) -> str:
    return (RECORDED / name).read_text(encoding="utf-8")


@dataclass
class FakeGcloud:
    bin_dir: Path
    log: Path
    table: Path
    answers: list[dict] = field(default_factory=list)

    def answer(self, *prefix: str, stdout: str = "", stderr: str = "", exit: int = 0) -> None:
        """Calls starting with `prefix` (after `gcloud`) print these and exit so; earlier rules win."""
        self.answers.append({"prefix": list(prefix), "stdout": stdout, "stderr": stderr, "exit": exit})
        self.table.write_text(json.dumps(self.answers), encoding="utf-8")

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]
        assert all(e["prompts"] == "1" for e in entries)  # never waits on a prompt nobody sees
        return [e["args"] for e in entries]


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGcloud:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(SCRIPT.format(python=sys.executable), encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    fake = FakeGcloud(bin_dir, tmp_path / "gcloud.log", tmp_path / "gcloud-answers.json")
    fake.table.write_text("[]", encoding="utf-8")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GCLOUD_LOG", str(fake.log))
    monkeypatch.setenv("GCLOUD_ANSWERS", str(fake.table))
    for name in ("CLOUDSDK_RUN_REGION", "CLOUDSDK_CORE_PROJECT", "GCLOUD_EXIT"):
        monkeypatch.delenv(name, raising=False)
    return fake


def healthy_project(fake: FakeGcloud) -> None:
    """A project where every preflight check passes: APIs on, quota, the image and the secrets there."""
    fake.answer("services", "list", stdout=recorded("services_enabled.json"))
    fake.answer("beta", "quotas", "info", "describe", stdout=recorded("quota_l4_no_zonal_redundancy.json"))
    fake.answer("artifacts", "docker", "images", "describe", stdout=recorded("image_describe.json"))
    fake.answer("secrets", "describe", stdout=recorded("secret_describe.json"))
