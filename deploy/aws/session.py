"""boto3 plumbing for `batchserve deploy aws`: clients, credential checks, the default network, and
the translation of botocore's exceptions into messages that say what to do."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from batchserve.deploy.errors import DeployError, MissingCredentials, UsageError

CREDENTIALS_HELP = (
    "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary credentials), "
    "or AWS_PROFILE to a profile in ~/.aws/credentials or ~/.aws/config (`aws configure` or "
    "`aws configure sso` creates one); on EC2 an instance role works too."
)
_REJECTED = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
    "InvalidAccessKeyId",
    "RequestExpired",
}


def default_region() -> str | None:
    """The region boto3 would use: AWS_REGION, AWS_DEFAULT_REGION, then the profile's config."""
    import boto3

    return os.environ.get("AWS_REGION") or boto3.session.Session().region_name


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Run an AWS step; any botocore failure becomes a DeployError naming the step."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise MissingCredentials(f"{action}: no AWS credentials found ({exc}). {CREDENTIALS_HELP}") from None
    except ProfileNotFound as exc:
        raise MissingCredentials(f"{action}: {exc}. {CREDENTIALS_HELP}") from None
    except NoRegionError:
        raise UsageError(f"{action}: no region; pass --region or set AWS_REGION") from None
    except EndpointConnectionError as exc:
        raise DeployError(f"{action}: cannot reach AWS ({exc})") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", str(exc))
        if code in _REJECTED:
            raise MissingCredentials(
                f"{action}: AWS refused the credentials ({code}: {message}). {CREDENTIALS_HELP}"
            ) from None
        raise DeployError(f"{action}: {code}: {message}") from None
    except BotoCoreError as exc:
        raise DeployError(f"{action}: {exc}") from None


def error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", exc))
    return str(exc)


@dataclass
class AwsContext:
    """One region (and optionally one endpoint, such as a local emulator) to make clients for."""

    region: str
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        import boto3

        self.session = boto3.session.Session(region_name=self.region)
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            kwargs = {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}
            self._clients[service] = self.session.client(service, region_name=self.region, **kwargs)
        return self._clients[service]

    def client_in(self, service: str, region: str) -> Any:
        """A client for another region (an ECR registry elsewhere), or this region's."""
        if region == self.region:
            return self.client(service)
        kwargs = {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}
        return self.session.client(service, region_name=region, **kwargs)

    def account(self) -> str:
        """Who we are; the cheapest call that fails early and clearly without credentials."""
        with aws_errors("checking AWS credentials"):
            return str(self.client("sts").get_caller_identity()["Account"])

    def default_network(self, type_sets: Sequence[Sequence[str]] = ()) -> tuple[str, list[str]]:
        """The region's default VPC and its default subnets (one per Availability Zone), keeping only
        the zones that offer at least one instance type of each set (GPU types are not offered in
        every zone, and a group launching into a zone without its type fails there)."""
        ec2 = self.client("ec2")
        with aws_errors("looking up the default VPC"):
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise UsageError(f"{self.region} has no default VPC; pass --vpc-id and --subnet-ids")
            vpc_id = vpcs[0]["VpcId"]
            subnets = ec2.describe_subnets(
                Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "default-for-az", "Values": ["true"]}]
            )["Subnets"]
        by_zone = {s["AvailabilityZone"]: s["SubnetId"] for s in sorted(subnets, key=lambda s: s["SubnetId"])}
        if len(by_zone) < 2:
            raise UsageError(
                f"the default VPC {vpc_id} has default subnets in {len(by_zone)} Availability Zone(s); "
                "a load balancer needs two: pass --vpc-id and --subnet-ids"
            )
        for types in type_sets:
            offered = self.zones_offering(types)
            left_out = sorted(set(by_zone) - offered)
            by_zone = {zone: subnet for zone, subnet in by_zone.items() if zone in offered}
            if len(by_zone) < 2:
                raise UsageError(
                    f"only {len(by_zone)} Availability Zone(s) of {self.region}'s default VPC offer "
                    f"{' or '.join(types)} (not: {', '.join(left_out) or 'none'}); a load balancer needs two: "
                    "add instance types with --instance-types, or pass --vpc-id and --subnet-ids"
                )
        return vpc_id, [by_zone[zone] for zone in sorted(by_zone)]

    def zones_offering(self, instance_types: Sequence[str]) -> set[str]:
        """The region's Availability Zones that offer at least one of `instance_types`."""
        ec2 = self.client("ec2")
        zones: set[str] = set()
        with aws_errors(f"looking up the zones that offer {', '.join(instance_types)}"):
            pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
                LocationType="availability-zone",
                Filters=[{"Name": "instance-type", "Values": list(instance_types)}],
            )
            for page in pages:
                zones.update(o["Location"] for o in page["InstanceTypeOfferings"])
        return zones
