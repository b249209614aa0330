"""The AWS profile's flags that map onto several template parameters, or onto none without a check:
the instance types tried in order, HTTPS by default, and which values a run works with (given,
deployed, or the template's defaults)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchserve.deploy.errors import UsageError

TYPE_SLOTS = ("InstanceType", "InstanceType2", "InstanceType3")

HTTPS_REQUIRED = (
    "the load balancer serves HTTPS by default: pass --certificate-arn arn:aws:acm:REGION:ACCOUNT:certificate/ID "
    "(an ACM certificate in the stack's region; :443 then serves and :80 redirects to it), or --insecure-http to "
    "serve plain HTTP on :80 (API keys would cross the network in the clear)"
)


def instance_type_values(text: str) -> dict[str, str]:
    """`--instance-types a,b[,c]`: the template's type slots, every one set (unused ones empty, so an
    update to fewer types drops the others)."""
    types = [t.strip() for t in text.split(",")]
    if not all(types):
        raise UsageError(f"--instance-types takes TYPE[,TYPE...] without empty entries, got {text!r}")
    if len(types) > len(TYPE_SLOTS):
        raise UsageError(f"--instance-types takes at most {len(TYPE_SLOTS)} types, got {len(types)}")
    repeated = sorted({t for t in types if types.count(t) > 1})
    if repeated:
        raise UsageError(f"--instance-types lists {repeated[0]} twice")
    return {slot: types[i] if i < len(types) else "" for i, slot in enumerate(TYPE_SLOTS)}


def certificate_values(certificate_arn: str | None, insecure_http: bool) -> dict[str, str]:
    if certificate_arn is not None and insecure_http:
        raise UsageError("--certificate-arn and --insecure-http contradict each other: pass one")
    if certificate_arn is not None:
        return {"CertificateArn": certificate_arn}
    return {"CertificateArn": ""} if insecure_http else {}


def check_https(values: Mapping[str, str], deployed: Mapping[str, str] | None) -> None:
    """A creation must say how the load balancer serves: a certificate, or plain HTTP on purpose. An
    update that says neither keeps what was chosen at creation; a dry run cannot tell the two apart,
    so it must say it too."""
    if "CertificateArn" not in values and deployed is None:
        raise UsageError(HTTPS_REQUIRED)


def effective_values(
    template: Mapping[str, Any], given: Mapping[str, str], deployed: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Each declared parameter's value for this run: given, else deployed (an update keeps it), else
    the template's default; parameters with none of the three are left out."""
    values: dict[str, str] = {}
    for name, spec in template.get("Parameters", {}).items():
        if name in given:
            values[name] = str(given[name])
        elif deployed is not None and name in deployed:
            values[name] = str(deployed[name])
        elif "Default" in spec:
            values[name] = str(spec["Default"])
    return values


def zone_type_sets(mode: str, values: Mapping[str, str]) -> list[list[str]]:
    """The instance types each group launches: a zone is kept for the default subnets when it offers
    at least one type of every group."""
    sets = [[values[s] for s in TYPE_SLOTS if values.get(s)]]
    if mode == "queue" and values.get("WebInstanceType"):
        sets.append([values["WebInstanceType"]])
    return [s for s in sets if s]
