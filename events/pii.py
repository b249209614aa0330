"""The personal-data policy for client IPs and user agents (``EventsConfig.pii``)."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

import msgspec

from batchserve.events.model import Event

__all__ = ["apply_pii", "scrub_line", "truncate_ip"]

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


# A JSON string member of the journal's encoding, possibly cut off by the end of a torn line.
_PERSONAL_MEMBER = re.compile(rb'"(client_ip|user_agent)"\s*:\s*"((?:[^"\\]|\\.)*)("|$)')


def scrub_line(raw: bytes, mode: str) -> bytes:
    """A journal line that is no valid event, with what ``mode`` removes removed as far as recognisable.

    Unreadable lines are kept for inspection; they must not carry what the policy would have
    stripped from the event they were meant to be.  A value cut off by a torn write is dropped
    whole, since it cannot be truncated.
    """
    if mode == "full":
        return raw

    def replace(match: re.Match[bytes]) -> bytes:
        name, value, closed = match[1], match[2], match[3]
        kept: str | None = None
        if name == b"client_ip" and mode == "truncated" and closed:
            kept = truncate_ip(value.decode("utf-8", "replace"))
        elif name == b"user_agent" and mode == "truncated" and closed:
            return match[0]
        return b'"%s":%s' % (name, b"null" if kept is None else b'"%s"' % kept.encode())

    return _PERSONAL_MEMBER.sub(replace, raw)
