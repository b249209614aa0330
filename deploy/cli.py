"""`batchserve deploy {aws,gcp}`: render a profile, validate it, print the commands, apply them.

    batchserve deploy aws --image IMAGE [--region R] [--min N --max N] [--instance-type T]
                          [--stack-name NAME] [--out DIR] [--dry-run | --status | --destroy]
                          [--mode direct|queue [--queue-name NAME]]
    batchserve deploy gcp --image IMAGE [--region R] [--min N --max N] [--service-name NAME]
                          [--project P] [--out DIR] [--dry-run | --status | --destroy]

Exit status: 0 done, 1 failed (validation, credentials, the cloud), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TextIO

from batchserve.deploy.aws import cfn_yaml
from batchserve.deploy.errors import DeployError, UsageError, ValidationFailed
from batchserve.deploy.regions import check_aws_region, check_gcp_region
from batchserve.deploy.render import AwsProfile, GcpProfile, render_aws, render_gcp, service_commands, shell
from batchserve.deploy.validate import check_cloud_run_service, lint_cloudformation

DEFAULT_OUT = Path("deploy-out")
# `deploy aws --mode`: the packaged template of each mode and the folder it renders into by default.
AWS_TEMPLATES = {"direct": "template.yaml", "queue": "queue_template.yaml"}
AWS_OUT = {"direct": "aws", "queue": "aws-queue"}
_QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,37}$")  # queue_template.yaml's QueueName pattern


def _add_common(parser: argparse.ArgumentParser, cloud: str, name_flag: str) -> None:
    parser.add_argument("--image", help="image built from Dockerfile.gpu (required to deploy)")
    parser.add_argument("--region", help="region to deploy to")
    parser.add_argument("--min", type=int, dest="min_size", metavar="N", help="fewest instances (0 = scale to zero)")
    parser.add_argument("--max", type=int, dest="max_size", metavar="N", help="most instances")
    parser.add_argument(
        name_flag, dest="name", default="batchserve", help="name of the deployment (default batchserve)"
    )
    parser.add_argument(
        "--database-url-secret",
        metavar="SECRET",
        help="secret holding the PostgreSQL URL for events "
        + ("(Secrets Manager ARN)" if cloud == "aws" else "(Secret Manager secret name)"),
    )
    queue_out = f"; ./deploy-out/{AWS_OUT['queue']}/ with --mode queue" if cloud == "aws" else ""
    parser.add_argument(
        "--out", type=Path, help=f"folder for the rendered files (default ./deploy-out/{cloud}/{queue_out})"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="render, validate and print the commands; apply nothing")
    mode.add_argument("--status", action="store_true", help="show what is deployed")
    mode.add_argument("--destroy", action="store_true", help="delete the deployment")
    parser.add_argument(
        "--skip-validation", action="store_true", help="apply without the local checks (cfn-lint / Cloud Run schema)"
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    deploy = subparsers.add_parser(
        "deploy",
        help="deploy to AWS (EC2 GPU Auto Scaling) or Cloud Run (L4 GPU)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    clouds = deploy.add_subparsers(dest="cloud", required=True, metavar="{aws,gcp}")

    aws = clouds.add_parser("aws", help="CloudFormation stack: GPU Auto Scaling group behind an ALB")
    _add_common(aws, "aws", "--stack-name")
    aws.add_argument(
        "--mode",
        choices=AWS_TEMPLATES,
        default="direct",
        help="direct: GPU instances serve HTTP behind the ALB (template.yaml); queue: a CPU web tier behind the "
        "ALB, SQS and S3, and GPU workers scaled on the queue's backlog (queue_template.yaml). --min, --max and "
        "--instance-type size the GPU group in both (default direct)",
    )
    aws.add_argument(
        "--queue-name", metavar="NAME", help="--mode queue: deployment name NAME (default: the stack name)"
    )
    aws.add_argument("--instance-type", help="GPU instance type (template default g4dn.xlarge)")
    aws.add_argument("--vpc-id", help="VPC (default: the region's default VPC)")
    aws.add_argument("--subnet-ids", help="comma-separated subnets in two or more zones (with --vpc-id)")
    aws.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other template parameter, e.g. WarmPoolSize=2 or CertificateArn=arn:... (repeatable)",
    )
    # For local emulators and tests; boto3 also honours AWS_ENDPOINT_URL by itself.
    aws.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"), help=argparse.SUPPRESS)
    aws.add_argument("--poll-interval", type=float, default=5.0, help=argparse.SUPPRESS)
    aws.add_argument(
        "--timeout",
        type=float,
        default=90.0,
        metavar="MINUTES",
        help="how long to follow a stack operation (default 90)",
    )
    aws.set_defaults(func=run)

    gcp = clouds.add_parser("gcp", help="Cloud Run service with an NVIDIA L4 GPU")
    _add_common(gcp, "gcp", "--service-name")
    gcp.add_argument("--project", help="Google Cloud project (default: gcloud's configured project)")
    gcp.add_argument("--concurrency", type=int, help="requests per instance (default 64)")
    gcp.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="let anyone call the service (grants roles/run.invoker to allUsers)",
    )
    gcp.set_defaults(func=run)
    return deploy


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if args.cloud == "aws":
            return _run_aws(args, out)
        return _run_gcp(args, out, err)
    except DeployError as exc:
        print(f"batchserve deploy {args.cloud}: error: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            f"batchserve deploy {args.cloud}: interrupted; the cloud operation may still be running "
            "(check with --status)",
            file=err,
        )
        return 1


def _require_image(args: argparse.Namespace) -> str:
    if not args.image:
        raise UsageError("--image is required to deploy (the image built from Dockerfile.gpu)")
    return args.image


def _key_values(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param takes KEY=VALUE, got {item!r}")
        values[key.strip()] = value
    return values


# ---------------------------------------------------------------- AWS


def _aws_parameters(args: argparse.Namespace) -> dict[str, str]:
    values = {"ImageUri": _require_image(args)}
    flags = {
        "MinSize": args.min_size,
        "MaxSize": args.max_size,
        "InstanceType": args.instance_type,
        "DatabaseUrlSecretArn": args.database_url_secret,
        "VpcId": args.vpc_id,
        "SubnetIds": args.subnet_ids,
    }
    if args.mode == "queue":
        if args.queue_name is None and not _QUEUE_NAME.match(args.name):
            raise UsageError(
                f"the stack name {args.name!r} cannot name the queues and buckets (1-38 lower-case letters, "
                "digits or '-'): pass --queue-name NAME"
            )
        flags["QueueName"] = args.queue_name or args.name
    elif args.queue_name is not None:
        raise UsageError("--queue-name goes with --mode queue")
    values.update({k: str(v) for k, v in flags.items() if v is not None})
    for key, value in _key_values(args.param).items():
        if key in values and key != "ImageUri" and values[key] != value:
            raise UsageError(f"{key} is set twice, by a flag and by --param")
        values[key] = value
    if ("VpcId" in values) != ("SubnetIds" in values):
        raise UsageError("--vpc-id and --subnet-ids go together (or leave both out for the default VPC)")
    return values


def _run_aws(args: argparse.Namespace, out: TextIO) -> int:
    from batchserve.deploy.aws import apply as aws_apply
    from batchserve.deploy.aws.session import AwsContext, default_region

    region = args.region or default_region()
    if not region:
        raise UsageError("no AWS region: pass --region or set AWS_REGION")
    check_aws_region(region)
    poll, timeout_s = max(args.poll_interval, 0.0), args.timeout * 60
    if args.status or args.destroy:
        existing = AwsContext(region, args.endpoint_url)
        print(f"AWS account {existing.account()}, region {region}", file=out)
        if args.status:
            return aws_apply.status(existing, args.name, out)
        return aws_apply.destroy(existing, args.name, out, poll_interval_s=poll, timeout_s=timeout_s)

    parameters = _aws_parameters(args)
    # A dry run needs neither credentials nor a network; a real one checks both before rendering.
    context = None if args.dry_run else AwsContext(region, args.endpoint_url)
    if context is not None:
        print(f"AWS account {context.account()}, region {region}", file=out)
        if "VpcId" not in parameters:
            vpc_id, subnets = context.default_network()
            print(f"network: default VPC {vpc_id}, subnets {', '.join(subnets)}", file=out)
            parameters.update(VpcId=vpc_id, SubnetIds=",".join(subnets))
    out_dir = args.out or DEFAULT_OUT / AWS_OUT[args.mode]
    template = cfn_yaml.load(cfn_yaml.TEMPLATE_PATH.with_name(AWS_TEMPLATES[args.mode]))
    rendered = render_aws(AwsProfile(region=region, stack_name=args.name, parameters=parameters), out_dir, template,
                          source_name=AWS_TEMPLATES[args.mode])
    print(f"rendered {rendered.template_path} and {rendered.parameters_path}", file=out)
    if not args.skip_validation:
        findings = lint_cloudformation(rendered.template_path, regions=[region])
        if findings:
            raise ValidationFailed(f"{rendered.template_path} (cfn-lint)", findings)
        print("validated: cfn-lint found no problems", file=out)
    if "VpcId" not in parameters:
        print("note: VpcId and SubnetIds are looked up from the region's default VPC when applied", file=out)
    print("equivalent command:", file=out)
    print(f"  {shell(rendered.deploy_command())}", file=out)
    if context is None:
        print("dry run: nothing applied", file=out)
        return 0
    return aws_apply.apply(context, rendered, out, poll_interval_s=poll, timeout_s=timeout_s)


# ---------------------------------------------------------------- Google Cloud


def _run_gcp(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from batchserve.deploy.gcp.apply import run_commands

    region = args.region or os.environ.get("CLOUDSDK_RUN_REGION")
    if not region:
        raise UsageError(
            "no region: pass --region (Cloud Run L4 regions include europe-west1, europe-west4, "
            "us-east4, asia-southeast1) or set CLOUDSDK_RUN_REGION"
        )
    check_gcp_region(region, warn=err)
    if args.status or args.destroy:
        coordinates = service_commands(args.name, region, args.project)
        command = coordinates.describe_command() if args.status else coordinates.delete_command()
        return run_commands([command], out)

    profile = GcpProfile(
        image=_require_image(args),
        region=region,
        service_name=args.name,
        min_instances=0 if args.min_size is None else args.min_size,
        max_instances=20 if args.max_size is None else args.max_size,
        project=args.project,
        concurrency=args.concurrency,
        database_url_secret=args.database_url_secret,
        allow_unauthenticated=args.allow_unauthenticated,
    )
    rendered = render_gcp(profile, args.out or DEFAULT_OUT / "gcp")
    print(f"rendered {rendered.path}", file=out)
    if not args.skip_validation:
        findings = check_cloud_run_service(rendered.document)
        if findings:
            raise ValidationFailed(f"{rendered.path} (Cloud Run v1 schema and GPU rules)", findings)
        print("validated: Cloud Run v1 schema and GPU rules passed", file=out)
    commands = rendered.commands()
    if args.dry_run:
        print("commands:", file=out)
        for command in commands:
            print(f"  {shell(command)}", file=out)
        print("dry run: nothing applied", file=out)
        return 0
    return run_commands(commands, out)


def main(argv: list[str] | None = None) -> int:
    """`python -m batchserve.deploy.cli aws ...`: the same command without the rest of batchserve."""
    parser = argparse.ArgumentParser(prog="batchserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["deploy", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
