"""Region names checked before anything is rendered or sent, so a typo fails in a second, not in a cloud API."""

from __future__ import annotations

import sys
from typing import TextIO

from batchserve.deploy.errors import UsageError

# Google Cloud regions (2025). gcloud cannot list them without credentials and a network, so the
# list lives here; a region Google adds later needs a line here before it can be deployed to.
GCP_REGIONS = frozenset(
    {
        "africa-south1",
        "asia-east1",
        "asia-east2",
        "asia-northeast1",
        "asia-northeast2",
        "asia-northeast3",
        "asia-south1",
        "asia-south2",
        "asia-southeast1",
        "asia-southeast2",
        "australia-southeast1",
        "australia-southeast2",
        "europe-central2",
        "europe-north1",
        "europe-north2",
        "europe-southwest1",
        "europe-west1",
        "europe-west2",
        "europe-west3",
        "europe-west4",
        "europe-west6",
        "europe-west8",
        "europe-west9",
        "europe-west10",
        "europe-west12",
        "me-central1",
        "me-central2",
        "me-west1",
        "northamerica-northeast1",
        "northamerica-northeast2",
        "northamerica-south1",
        "southamerica-east1",
        "southamerica-west1",
        "us-central1",
        "us-east1",
        "us-east4",
        "us-east5",
        "us-south1",
        "us-west1",
        "us-west2",
        "us-west3",
        "us-west4",
    }
)

# Where Cloud Run offers NVIDIA L4 GPUs (2025; asia-south1 and, for new projects, us-central1 by
# invitation). Elsewhere `gcloud run services replace` is refused, so deploying warns first.
GCP_L4_REGIONS = ("asia-south1", "asia-southeast1", "europe-west1", "europe-west4", "us-central1", "us-east4")


def aws_regions() -> frozenset[str]:
    """Every region botocore's bundled endpoint data knows for CloudFormation, in every partition."""
    import boto3

    session = boto3.session.Session()
    names: set[str] = set()
    for partition in session.get_available_partitions():
        names.update(session.get_available_regions("cloudformation", partition_name=partition))
    return frozenset(names)


def check_aws_region(region: str) -> str:
    known = aws_regions()
    if region not in known:
        raise UsageError(f"unknown AWS region {region!r}; CloudFormation regions are: {', '.join(sorted(known))}")
    return region


def check_gcp_region(region: str, warn: TextIO = sys.stderr) -> str:
    if region not in GCP_REGIONS:
        raise UsageError(
            f"unknown Google Cloud region {region!r}; Cloud Run L4 GPUs are offered in: {', '.join(GCP_L4_REGIONS)}"
        )
    if region not in GCP_L4_REGIONS:
        print(
            f"warning: Cloud Run offers no L4 GPUs in {region} as far as this version knows "
            f"(L4 regions: {', '.join(GCP_L4_REGIONS)}); the deploy will likely be refused.",
            file=warn,
        )
    return region
