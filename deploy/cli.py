"""`batchserve deploy {aws,gcp,k8s}`: render a profile, validate it, print the commands, apply them.

    batchserve deploy aws --image IMAGE (--certificate-arn ARN | --insecure-http) [--region R]
                          [--min N --max N] [--instance-type T | --instance-types T1,T2[,T3]]
                          [--stack-name NAME] [--out DIR] [--dry-run | --status | --destroy]
                          [--preflight-only | --skip-preflight] [--remote-build]
                          [--mode direct|queue [--queue-name NAME]]
                          [--backend-url URL (--backend-key-secret-arn ARN | --backend-key-secret NAME)]
    batchserve deploy gcp --image IMAGE [--region R] [--min N --max N] [--service-name NAME]
                          [--project P] [--out DIR] [--dry-run | --status | --destroy]
                          [--admin-key-secret NAME] [--auth required|off] [--no-events]
                          [--database-url-secret NAME [--cloudsql-instance PROJECT:REGION:INSTANCE]]
                          [--service-account ID|EMAIL] [--model-repo gs://BUCKET/PREFIX]
                          [--remote-build [--source DIR]] [--skip-preflight]
    batchserve deploy k8s --image IMAGE [--namespace NS] [--name NAME] [--mode direct|queue]
                          [--autoscaler keda|hpa|none] [--prometheus-url URL] [--out DIR]
                          [--dry-run | --status | --destroy]   (see deploy/k8s/command.py)

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
from batchserve.deploy.k8s import command as k8s_command
from batchserve.deploy.regions import check_aws_region, check_gcp_region
from batchserve.deploy.render import (
    AUTH_MODES,
    AwsProfile,
    GcpProfile,
    render_aws,
    render_gcp,
    service_commands,
    shell,
)
from batchserve.deploy.validate import check_cloud_run_service, lint_cloudformation

DEFAULT_OUT = Path("deploy-out")
# `deploy aws --mode`: the packaged template of each mode and the folder it renders into by default.
# `remote` is the CPU web tier in front of a backend elsewhere (`--backend-url`).
AWS_TEMPLATES = {"direct": "template.yaml", "queue": "queue_template.yaml", "remote": "web_template.yaml"}
AWS_OUT = {"direct": "aws", "queue": "aws-queue", "remote": "aws-web"}
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
    queue_out = (
        f"; ./deploy-out/{AWS_OUT['queue']}/ with --mode queue, ./deploy-out/{AWS_OUT['remote']}/ with --backend-url"
        if cloud == "aws"
        else ""
    )
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
        help="deploy to AWS (EC2 GPU Auto Scaling, or a CPU web tier), Cloud Run (L4 GPU) or a Kubernetes cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    clouds = deploy.add_subparsers(dest="cloud", required=True, metavar="{aws,gcp,k8s}")

    aws = clouds.add_parser(
        "aws", help="CloudFormation stack: GPU Auto Scaling group behind an ALB, or a CPU web tier (--backend-url)"
    )
    _add_common(aws, "aws", "--stack-name")
    aws.add_argument(
        "--mode",
        choices=AWS_TEMPLATES,
        help="direct: GPU instances serve HTTP behind the ALB (template.yaml); queue: a CPU web tier behind the "
        "ALB, SQS and S3, and GPU workers scaled on the queue's backlog (queue_template.yaml), --min, --max and "
        "--instance-type sizing the GPU group in both; remote: only a CPU web tier that forwards to "
        "--backend-url (web_template.yaml), sized by --min, --max and --instance-type. Default: remote with "
        "--backend-url, else direct",
    )
    aws.add_argument(
        "--queue-name", metavar="NAME", help="--mode queue: deployment name NAME (default: the stack name)"
    )
    aws.add_argument(
        "--instance-type",
        help="GPU instance type (template default g4dn.xlarge); with --backend-url the web tier's CPU type "
        "(default c6i.large)",
    )
    aws.add_argument(
        "--instance-types",
        metavar="T1,T2[,T3]",
        help="GPU instance types tried in this order (a mixed instances policy), e.g. g6.xlarge,g5.xlarge: the "
        "group rides out a capacity shortage of one; the default subnets are those of zones offering at least one",
    )
    remote = aws.add_argument_group("remote backend (--mode remote)")
    remote.add_argument(
        "--backend-url",
        metavar="URL[,URL...]",
        help="https:// URL of the batchserve server(s) that classify, e.g. a Cloud Run service's; renders a "
        "CPU-only web tier (no GPU instances) that forwards /v1/classify there",
    )
    backend_key = remote.add_mutually_exclusive_group()
    backend_key.add_argument(
        "--backend-key-secret-arn",
        metavar="ARN",
        help="Secrets Manager secret holding the key the web tier presents to the backend",
    )
    backend_key.add_argument(
        "--backend-key-secret",
        metavar="NAME",
        help="the same secret by name (in the stack's account and region)",
    )
    aws.add_argument(
        "--vpc-id", help="VPC (default: on creation, the region's default VPC; an update keeps the deployed one)"
    )
    aws.add_argument("--subnet-ids", help="comma-separated subnets in two or more zones (with --vpc-id)")
    https = aws.add_mutually_exclusive_group()
    https.add_argument(
        "--certificate-arn",
        metavar="ARN",
        help="ACM certificate for the load balancer: HTTPS on :443, :80 redirects to it (required to create a "
        "stack unless --insecure-http; an update keeps the deployed one)",
    )
    https.add_argument("--insecure-http", action="store_true", help="serve plain HTTP on :80, without a certificate")
    checks = aws.add_mutually_exclusive_group()
    checks.add_argument(
        "--preflight-only",
        action="store_true",
        help="check the GPU vCPU quota and that the image is in ECR, then stop (exit 1 when a check fails)",
    )
    checks.add_argument(
        "--skip-preflight", action="store_true", help="apply without first checking the GPU quota and the image"
    )
    aws.add_argument(
        "--remote-build",
        action="store_true",
        help="render the CodeBuild buildspec that builds Dockerfile.gpu for linux/amd64 and pushes --image to ECR "
        "(no local Docker engine), print its commands and stop",
    )
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
        help="let anyone reach the service (grants roles/run.invoker to allUsers); batchserve's own API keys "
        "still apply under --auth required",
    )
    gcp.add_argument(
        "--auth",
        choices=AUTH_MODES,
        default="required",
        help="required (default): every API route needs a batchserve API key, from --admin-key-secret or the "
        "key table of --database-url-secret's database; off: only Cloud Run's IAM guards the service (refused "
        "with --allow-unauthenticated)",
    )
    gcp.add_argument(
        "--admin-key-secret",
        metavar="SECRET",
        help="Secret Manager secret holding the server's bootstrap admin key (BATCHSERVE_ADMIN_KEY), e.g. the "
        "key a web tier elsewhere presents",
    )
    gcp.add_argument(
        "--no-events",
        dest="events",
        action="store_false",
        help="record no events (a backend whose web tier records them)",
    )
    gcp.add_argument(
        "--cloudsql-instance",
        metavar="PROJECT:REGION:INSTANCE",
        help="Cloud SQL for PostgreSQL instance reached through Cloud Run's Cloud SQL connection (a unix socket "
        "at /cloudsql/PROJECT:REGION:INSTANCE); --database-url-secret then holds "
        "postgresql://USER:PASSWORD@/DATABASE?host=/cloudsql/PROJECT:REGION:INSTANCE",
    )
    gcp.add_argument(
        "--service-account",
        metavar="ID|EMAIL",
        help="the service's runtime identity, created when missing and granted only what the server uses "
        "(default: NAME-run in the project; never the Compute Engine default account)",
    )
    gcp.add_argument(
        "--model-repo",
        metavar="gs://BUCKET/PREFIX",
        help="serve the models of a Cloud Storage repository (the service account may read that bucket only); "
        "default: the models built into the image",
    )
    gcp.add_argument(
        "--remote-build",
        action="store_true",
        help="build --image with Cloud Build from --source (no local Docker engine needed; linux/amd64) before "
        "deploying",
    )
    gcp.add_argument(
        "--source", type=Path, default=Path("."), metavar="DIR",
        help="with --remote-build: the batchserve checkout to build (default: the current folder)",
    )
    gcp.add_argument(
        "--skip-preflight",
        action="store_true",
        help="apply without first checking the APIs, the GPU quota, the image and the secrets",
    )
    gcp.set_defaults(func=run)

    k8s_command.register(clouds).set_defaults(func=run)
    return deploy


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if args.cloud == "aws":
            return _run_aws(args, out)
        if args.cloud == "k8s":
            return k8s_command.run(args, out, err)
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


def _aws_mode(args: argparse.Namespace) -> str:
    """The template a run renders: --mode as given, else remote when --backend-url is, else direct."""
    mode: str = args.mode or ("remote" if args.backend_url is not None else "direct")
    if mode == "remote" and args.backend_url is None:
        raise UsageError("--mode remote needs --backend-url URL (the backend the web tier forwards to)")
    if mode != "remote":
        if args.backend_url is not None:
            raise UsageError(f"--backend-url renders the remote web tier; it does not go with --mode {mode}")
        if args.backend_key_secret_arn is not None or args.backend_key_secret is not None:
            raise UsageError("--backend-key-secret-arn / --backend-key-secret go with --backend-url")
    return mode


def _check_backend_key(values: dict[str, str]) -> None:
    """The web tier presents exactly one key to the backend, read from exactly one secret."""
    named = [k for k in ("BackendKeySecretArn", "BackendKeySecretName") if values.get(k)]
    if not named:
        raise UsageError(
            "the backend requires a key: store it in Secrets Manager and pass --backend-key-secret-arn ARN "
            "or --backend-key-secret NAME (docs/deploy.md, 'Pages on AWS, CNN on Cloud Run')"
        )
    if len(named) > 1:
        raise UsageError("name the backend's key secret once: by ARN or by name, not both")


def _aws_parameters(args: argparse.Namespace, mode: str) -> dict[str, str]:
    from batchserve.deploy.aws.choices import certificate_values, instance_type_values

    values = {"ImageUri": _require_image(args)}
    flags = {
        "MinSize": args.min_size,
        "MaxSize": args.max_size,
        "InstanceType": args.instance_type,
        "DatabaseUrlSecretArn": args.database_url_secret,
        "VpcId": args.vpc_id,
        "SubnetIds": args.subnet_ids,
    }
    if args.instance_types is not None:
        if mode == "remote":
            raise UsageError("--instance-types chooses GPU types; the remote web tier takes --instance-type")
        if args.instance_type is not None:
            raise UsageError("pass --instance-type or --instance-types, not both")
        flags.update(instance_type_values(args.instance_types))
    flags.update(certificate_values(args.certificate_arn, args.insecure_http))
    if mode == "remote":
        flags.update(
            BackendUrl=args.backend_url,
            BackendKeySecretArn=args.backend_key_secret_arn,
            BackendKeySecretName=args.backend_key_secret,
        )
    if mode == "queue":
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
    if mode == "remote":
        _check_backend_key(values)
        urls = [u.strip().rstrip("/") for u in values.get("BackendUrl", "").split(",")]
        repeated = sorted({u for u in urls if urls.count(u) > 1})
        if repeated:
            raise UsageError(f"--backend-url lists {repeated[0]} twice")
    return values


def _run_aws(args: argparse.Namespace, out: TextIO) -> int:
    from batchserve.deploy.aws import apply as aws_apply
    from batchserve.deploy.aws import preflight
    from batchserve.deploy.aws.build import render_buildspec
    from batchserve.deploy.aws.choices import check_https, effective_values, zone_type_sets
    from batchserve.deploy.aws.session import AwsContext, default_region
    from batchserve.deploy.aws.stack import StackOperations, created_by_deploy, deployed_parameters

    region = args.region or default_region()
    if not region:
        raise UsageError("no AWS region: pass --region or set AWS_REGION")
    check_aws_region(region)
    poll, timeout_s = max(args.poll_interval, 0.0), args.timeout * 60
    if args.preflight_only and (args.dry_run or args.status or args.destroy):
        raise UsageError(
            "--preflight-only checks before a deployment: it does not go with --dry-run, --status or --destroy"
        )
    if args.remote_build:
        if args.status or args.destroy or args.preflight_only:
            raise UsageError("--remote-build only renders the image build: drop --status, --destroy, --preflight-only")
        build = render_buildspec(_require_image(args), args.out or DEFAULT_OUT / "aws-build")
        print(f"rendered {build.buildspec}", file=out)
        print(
            "commands (nothing run; the source bucket and the role once: docs/deploy-aws.md, "
            "'Building without Docker'):",
            file=out,
        )
        for command in build.commands():
            print(f"  {command}", file=out)
        return 0
    if args.status or args.destroy:
        existing = AwsContext(region, args.endpoint_url)
        print(f"AWS account {existing.account()}, region {region}", file=out)
        if args.status:
            return aws_apply.status(existing, args.name, out)
        return aws_apply.destroy(existing, args.name, out, poll_interval_s=poll, timeout_s=timeout_s)

    mode = _aws_mode(args)
    parameters = _aws_parameters(args, mode)
    template = cfn_yaml.load(cfn_yaml.TEMPLATE_PATH.with_name(AWS_TEMPLATES[mode]))
    # A dry run needs neither credentials nor a network; a real one checks both before rendering.
    context = None if args.dry_run else AwsContext(region, args.endpoint_url)
    deployed = None  # the parameters of the stack an update changes
    if context is not None:
        print(f"AWS account {context.account()}, region {region}", file=out)
        stack = StackOperations(context, args.name, out).describe()
        deployed = None if created_by_deploy(stack) else deployed_parameters(stack or {})
    if not args.preflight_only:
        check_https(parameters, deployed)
    if context is not None and "VpcId" not in parameters:
        if deployed is None:
            # Only a creation chooses a network: an update keeps the deployed one (UsePreviousValue).
            type_sets = zone_type_sets(mode, effective_values(template, parameters))
            vpc_id, subnets = context.default_network(type_sets)
            offering = "; ".join(" or ".join(types) for types in type_sets)
            print(f"network: default VPC {vpc_id}, subnets {', '.join(subnets)} (zones offering {offering})", file=out)
            parameters.update(VpcId=vpc_id, SubnetIds=",".join(subnets))
        else:
            print(
                f"network: kept as deployed: VPC {deployed.get('VpcId')}, subnets {deployed.get('SubnetIds')}", file=out
            )
    out_dir = args.out or DEFAULT_OUT / AWS_OUT[mode]
    rendered = render_aws(AwsProfile(region=region, stack_name=args.name, parameters=parameters), out_dir, template,
                          source_name=AWS_TEMPLATES[mode])
    print(f"rendered {rendered.template_path} and {rendered.parameters_path}", file=out)
    if not args.skip_validation:
        findings = lint_cloudformation(rendered.template_path, regions=[region])
        if findings:
            raise ValidationFailed(f"{rendered.template_path} (cfn-lint)", findings)
        print("validated: cfn-lint found no problems", file=out)
    if context is None and "VpcId" not in parameters:
        print(
            "note: a creation takes VpcId and SubnetIds from the region's default VPC (the zones offering the "
            "instance types); an update keeps the deployed ones",
            file=out,
        )
    print("equivalent command:", file=out)
    print(f"  {shell(rendered.deploy_command())}", file=out)
    plan = preflight.plan_for(mode, region, effective_values(template, parameters, deployed))
    if context is None:
        print("preflight (run before applying; --preflight-only runs it alone):", file=out)
        for line in plan.describe():
            print(f"  {line}", file=out)
        print("dry run: nothing applied", file=out)
        return 0
    if not args.skip_preflight:
        checks = preflight.run_preflight(context.client_in, plan)
        print("preflight:", file=out)
        for check in checks:
            print(f"  {check}", file=out)
        failed = preflight.failures(checks)
        if failed:
            raise DeployError(
                f"preflight: {len(failed)} check(s) failed, each above with its fix; nothing was "
                "applied (--skip-preflight applies anyway)"
            )
        if args.preflight_only:
            print("preflight passed; nothing applied (--preflight-only)", file=out)
            return 0
    return aws_apply.apply(context, rendered, out, poll_interval_s=poll, timeout_s=timeout_s)


# ---------------------------------------------------------------- Google Cloud


def _run_gcp(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from batchserve.deploy.gcp import apply as gcp_apply
    from batchserve.deploy.gcp.build import check_source
    from batchserve.deploy.gcp.names import check_project
    from batchserve.deploy.gcp.plan import plan_deployment
    from batchserve.deploy.gcp.preflight import run_preflight

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
        return gcp_apply.run_commands([command], out)

    image = _require_image(args)
    # The service account is named in the project, so a deploy needs it even where gcloud would guess.
    project = args.project or os.environ.get("CLOUDSDK_CORE_PROJECT") or gcp_apply.configured_project()
    if not project:
        raise UsageError("no project: pass --project PROJECT (or set gcloud's: gcloud config set project PROJECT)")
    check_project(project)
    source = check_source(args.source) if args.remote_build else None
    profile = GcpProfile(
        image=image,
        region=region,
        service_name=args.name,
        min_instances=0 if args.min_size is None else args.min_size,
        max_instances=20 if args.max_size is None else args.max_size,
        project=project,
        concurrency=args.concurrency,
        database_url_secret=args.database_url_secret,
        allow_unauthenticated=args.allow_unauthenticated,
        auth=args.auth,
        admin_key_secret=args.admin_key_secret,
        events=args.events,
        service_account=args.service_account,
        cloudsql_instance=args.cloudsql_instance,
        model_repo=args.model_repo,
    )
    out_dir = args.out or DEFAULT_OUT / "gcp"
    rendered = render_gcp(profile, out_dir)
    print(f"rendered {rendered.path}", file=out)
    for note in rendered.notes:
        print(f"warning: {note}", file=err)
    if not args.skip_validation:
        findings = check_cloud_run_service(rendered.document)
        if findings:
            raise ValidationFailed(f"{rendered.path} (Cloud Run v1 schema and GPU rules)", findings)
        print("validated: Cloud Run v1 schema and GPU rules passed", file=out)
    deployment = plan_deployment(profile, rendered, out_dir, source)
    grants = "; ".join(f"{role} on {what}" for role, what in deployment.identity.grants()) or "no roles"
    print(f"runs as {deployment.identity.email}: {grants}", file=out)
    print(f"one-time setup, not run by this command: {deployment.setup_path}", file=out)
    if args.dry_run:
        print("preflight (run before applying):", file=out)
        checks = deployment.preflight
        for command in (checks.services_command(), checks.quota_command(),
                        *([checks.image_command()] if checks.image_in_artifact_registry and not source else []),
                        *(checks.secret_command(s) for s in checks.secrets)):
            print(f"  {shell(command)}", file=out)
        print("commands:", file=out)
        for step in deployment.steps:
            print(f"  {step.describe()}", file=out)
        print(deployment.setup_path.read_text(encoding="utf-8"), file=out)
        print("dry run: nothing applied", file=out)
        return 0
    if not args.skip_preflight:
        report = run_preflight(deployment.preflight, gcp_apply.capture)
        print("preflight:", file=out)
        for passed in report.passed:
            print(f"  ok: {passed}", file=out)
        for problem in report.problems:
            print(f"  {'error' if problem.fatal else 'warning'}: {problem}", file=out)
        if report.errors:
            raise DeployError(f"preflight found {len(report.errors)} problem(s) (listed above, each with its fix); "
                              "nothing was applied. --skip-preflight applies anyway")
    return gcp_apply.run_steps(deployment.steps, out)


def main(argv: list[str] | None = None) -> int:
    """`python -m batchserve.deploy.cli aws ...`: the same command without the rest of batchserve."""
    parser = argparse.ArgumentParser(prog="batchserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["deploy", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
