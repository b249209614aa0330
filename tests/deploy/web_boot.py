"""Run deploy/aws/web_template.yaml's boot script here: Fn::Sub applied as CloudFormation would, the
real AWS CLI reading Secrets Manager (and ECR) on moto's server, and stand-ins for what only an
instance has: IMDS (curl), dnf, systemctl and a Docker daemon (docker records its calls). What it
writes lands under a temporary folder instead of /etc and /var."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from batchserve.deploy.aws import cfn_yaml

TEMPLATE = cfn_yaml.TEMPLATE_PATH.with_name("web_template.yaml")
REGION = "us-east-1"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/batchserve:3"
BACKEND = "https://batchserve-backend-abc123-uk.a.run.app"
SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:batchserve/backend-key-AbCdEf"
DATABASE_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:batchserve/db-AbCdEf"

AWS_CLI = shutil.which("aws")

STUBS = {
    # IMDS: a token, then the instance id.
    "curl": 'case "$*" in *api/token*) echo token ;; *instance-id*) echo i-0123 ;; *) exit 7 ;; esac',
    "dnf": "exit 0",
    "systemctl": "exit 0",
    # `docker login --password-stdin` reads the password, as the real one does (else its writer gets SIGPIPE).
    "docker": 'printf "%s\\n" "$*" >> "$STUB_LOG"; if [ "$1" = login ]; then cat > /dev/null; fi',
}


def user_data(template: dict) -> str:
    sub = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"][
        "Fn::Sub"]
    return str(sub[0])


def substituted(script: str, **values: str) -> str:
    """The script as CloudFormation's Fn::Sub leaves it: ${Name} replaced, ${!x} turned into ${x}."""
    defaults = {"AWS::Region": REGION, "ImageUri": IMAGE, "BackendUrl": BACKEND, "BackendKeySecret": SECRET_ARN,
                "DatabaseSecret": DATABASE_SECRET_ARN, "AdminKeySecretArn": "", "Models": "efficientnet_lite0",
                "LogGroup": "/batchserve/bs-web"}
    defaults.update(values)
    return re.sub(r"\$\{([A-Za-z:]+)\}", lambda m: defaults[m.group(1)], script).replace("${!", "${")


@dataclass(frozen=True)
class Boot:
    returncode: int
    env_file: Path
    journal: Path
    calls: str  # one line per docker call
    log: str  # what the script printed (its /var/log/batchserve-boot.log)

    def docker_runs(self) -> list[str]:
        return [line for line in self.calls.splitlines() if line.startswith("run ")]

    def settings(self) -> dict[str, str]:
        """The env file the container gets, as docker's --env-file reads it."""
        return dict(line.split("=", 1) for line in self.env_file.read_text().splitlines())

    def command(self) -> list[str]:
        """What the container runs: `batchserve serve ...`, the words after the image of the one `docker run`."""
        (run,) = self.docker_runs()
        words = shlex.split(run)
        start = next(i for i, w in enumerate(words) if w == "batchserve" and words[i + 1:i + 2] == ["serve"])
        return words[start:]


def run_boot(tmp_path: Path, endpoint_url: str, **values: str) -> Boot:
    """Run the packaged template's user data with `values` substituted, its AWS CLI calls going to the
    local AWS at `endpoint_url` (with the credentials of the test's environment)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/bash\n{body}\n")
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    etc, boot_log, journal = tmp_path / "etc-batchserve", tmp_path / "boot.log", tmp_path / "journal"
    script = substituted(user_data(cfn_yaml.load(TEMPLATE)), **values)
    script = (script.replace("/etc/batchserve", str(etc)).replace("/var/log/batchserve-boot.log", str(boot_log))
              .replace("/var/lib/batchserve/journal", str(journal)))
    if os.geteuid() != 0:  # the journal belongs to the container's user; only root can give it away
        script = script.replace("install -d -o 10001 -g 10001 ", "install -d ")
    path = tmp_path / "user-data.sh"
    path.write_text(script)
    calls = tmp_path / "calls.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_LOG": str(calls),
           "AWS_ENDPOINT_URL": endpoint_url}
    result = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=60)
    return Boot(result.returncode, etc / "env", journal, calls.read_text() if calls.exists() else "",
                boot_log.read_text() if boot_log.exists() else "")
