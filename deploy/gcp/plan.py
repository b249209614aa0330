"""Everything one `batchserve deploy gcp` does after rendering, in order: the preflight's questions,
the remote build, the service account and its grants, then the service itself; and the one-time
setup it writes down for people to run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchserve.deploy.gcp import build, preflight
from batchserve.deploy.gcp.identity import Identity, model_bucket
from batchserve.deploy.gcp.names import service_account
from batchserve.deploy.gcp.preflight import PreflightPlan
from batchserve.deploy.gcp.setup import SetupPlan, setup_script
from batchserve.deploy.gcp.steps import Step
from batchserve.deploy.render import GcpProfile, RenderedService

ZONAL_REDUNDANCY_OFF = "run.googleapis.com/gpu-zonal-redundancy-disabled"


@dataclass(frozen=True)
class Deployment:
    preflight: PreflightPlan
    identity: Identity
    steps: tuple[Step, ...]
    setup_path: Path


def plan_deployment(profile: GcpProfile, rendered: RenderedService, out_dir: Path,
                    source: Path | None = None) -> Deployment:
    """`source`: the folder Cloud Build builds (--remote-build), None to use the image as it is."""
    if profile.project is None:
        raise ValueError("a deployment plan needs the project")
    email, create_in = service_account(profile.service_account, profile.service_name, profile.project)
    secrets = tuple(s for s in (profile.database_url_secret, profile.admin_key_secret) if s)
    identity = Identity(email, profile.project, create_in, secrets, profile.cloudsql_instance,
                        model_bucket(profile.model_repo), profile.service_name)
    annotations = rendered.document["spec"]["template"]["metadata"]["annotations"]
    checks = PreflightPlan(
        project=profile.project, region=profile.region, image=profile.image,
        min_instances=profile.min_instances, max_instances=profile.max_instances,
        zonal_redundancy=annotations.get(ZONAL_REDUNDANCY_OFF) != "true",
        secrets=secrets, cloudsql=profile.cloudsql_instance is not None, remote_build=source is not None,
    )
    steps: list[Step] = []
    if source is not None:
        steps.append(build.build_step(build.write_config(profile.image, out_dir), source, profile.project))
    steps += identity.steps()
    steps += [Step(tuple(command)) for command in rendered.commands()]

    apis = (*checks.required_apis(), preflight.QUOTAS_API)
    setup = SetupPlan(profile.project, profile.region, profile.service_name, profile.image, email, apis,
                      profile.database_url_secret, profile.cloudsql_instance, profile.admin_key_secret,
                      profile.max_instances)
    setup_path = out_dir / "setup.sh"
    setup_path.write_text(setup_script(setup), encoding="utf-8")
    setup_path.chmod(0o755)
    return Deployment(checks, identity, tuple(steps), setup_path.resolve())
