"""`batchserve deploy aws --remote-build`: the image built by CodeBuild instead of a local Docker engine.

Renders `buildspec.yaml` (the packaged one, with IMAGE_URI set) and the AWS CLI commands that
upload the checkout, create the project once and start a build. Nothing is run: the project's
service role and source bucket are one-time choices of the account's owner (docs/deploy-aws.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from batchserve.deploy.aws.preflight import ecr_reference
from batchserve.deploy.errors import UsageError

BUILDSPEC = Path(__file__).with_name("buildspec.yaml")
PROJECT = "batchserve-image"
# An x86-64 CodeBuild image with Docker: the build is linux/amd64 whatever machine runs the deploy.
BUILD_IMAGE = "aws/codebuild/standard:7.0"


@dataclass(frozen=True)
class RemoteBuild:
    image: str
    region: str
    account: str
    repository: str
    buildspec: Path

    def commands(self) -> list[str]:
        """The commands, in order; SOURCE_BUCKET and the role are the caller's to choose once."""
        scope = f"--region {self.region}"
        return [
            "git archive --format zip --output batchserve-source.zip HEAD",
            "aws s3 cp batchserve-source.zip s3://SOURCE_BUCKET/batchserve-source.zip",
            f"aws codebuild create-project {scope} --name {PROJECT} "
            "--source type=S3,location=SOURCE_BUCKET/batchserve-source.zip --artifacts type=NO_ARTIFACTS "
            f"--environment type=LINUX_CONTAINER,computeType=BUILD_GENERAL1_LARGE,image={BUILD_IMAGE},"
            "privilegedMode=true "
            f"--service-role arn:aws:iam::{self.account}:role/batchserve-codebuild   # once",
            f"aws codebuild start-build {scope} --project-name {PROJECT} --buildspec-override file://{self.buildspec}",
            f"batchserve deploy aws --image {self.image} ...   # once the build succeeded",
        ]


def render_buildspec(image: str, out_dir: Path) -> RemoteBuild:
    reference = ecr_reference(image)
    if reference is None:
        raise UsageError(
            f"--remote-build pushes to ECR: --image must be ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG, "
            f"got {image!r}"
        )
    if "digest" in reference:
        raise UsageError("--remote-build tags what it builds: give --image a tag, not a digest")
    spec = yaml.safe_load(BUILDSPEC.read_text(encoding="utf-8"))
    spec["env"]["variables"]["IMAGE_URI"] = image
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "buildspec.yaml"
    path.write_text(
        "# Rendered by `batchserve deploy aws --remote-build` from deploy/aws/buildspec.yaml.\n"
        + yaml.safe_dump(spec, sort_keys=False, width=120),
        encoding="utf-8",
    )
    return RemoteBuild(image, reference["region"], reference["account"], reference["repository"], path.resolve())
