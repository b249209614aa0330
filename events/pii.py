"""The personal-data policy for client IPs and user agents (``EventsConfig.pii``)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

import msgspec

from batchserve.events.model import Event

__all__ = ["apply_pii", "truncate_ip"]

_V4_PREFIX = 24
_V6_PREFIX = 48


@lru_cache(maxsize=65_536)  # clients repeat; ipaddress parsing costs tens of microseconds
def truncate_ip(raw: str | None) -> str | None:
    """The network address of ``raw``'s /24 (IPv4) or /48 (IPv6), without the prefix length.

    Idempotent (truncating a truncated address changes nothing), so events replayed from the
    journal can go through the policy again.  IPv4-mapped IPv6 addresses count as IPv4.  A value
    that is no IP address at all (a proxy's placeholder, a test client's name) is dropped: it
    cannot be truncated, and keeping it unaltered could leak what truncation is meant to hide.
    """
    if raw is None:
        return None
    try:
        addr = ipaddress.ip_address(raw.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        # Zone ids ("%eth0") name the host's interface, not the client: rebuilding drops them.
        addr = addr.ipv4_mapped if addr.ipv4_mapped is not None else ipaddress.IPv6Address(addr.packed)
    prefix = _V4_PREFIX if addr.version == 4 else _V6_PREFIX
    network = ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    return str(network.network_address)


def apply_pii(event: Event, mode: str) -> Event:
    """``event`` with client IP and user agent as the policy allows."""
    if mode == "full":
        return event
    if mode == "off":
        if event.client_ip is None and event.user_agent is None:
            return event
        return msgspec.structs.replace(event, client_ip=None, user_agent=None)
    if mode == "truncated":
        ip = event.client_ip if isinstance(event.client_ip, str) else None
        truncated = truncate_ip(ip)
        if truncated == event.client_ip:
            return event
        return msgspec.structs.replace(event, client_ip=truncated)
    raise ValueError(f"unknown PII mode {mode!r}: expected full, truncated or off")
