"""The address a per-IP limit counts a call against: its peer, or what trusted proxies say.

Behind an ingress every call's peer is the ingress, so counting refused credentials per peer
would put every client in one bucket (one token guesser would lock everyone out). The
``X-Forwarded-For`` header names the client, but any client can send one: it is believed
only when the peer is in TRUSTED_PROXIES (a list of CIDR networks; empty, the default, trusts
nobody), and then read from the right. Each proxy appends the address it saw, so the rightmost
entry that is not itself a trusted proxy is the client; entries left of it were written by the
client or by proxies nobody vouches for, and are ignored. An entry that is not an IP address
ends the walk at the last trusted hop, so no text a client chose can become a limiter key.
The walk looks at most ``MAX_HOPS`` entries (the header's size is bounded by the HTTP server
anyway).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["MAX_HOPS", "ClientAddress", "Network", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 32
"""Entries of X-Forwarded-For read from the right; no deployment has more proxies than that."""


def parse_networks(value: str) -> tuple[Network, ...]:
    """The networks of a comma-separated list ("10.0.0.0/8, 192.168.1.7, fd00::/8").

    Raises:
        ValueError: an entry is not an IP address or network.
    """
    return tuple(ipaddress.ip_network(item.strip(), strict=False)
                 for item in value.split(",") if item.strip())


def _ip(text: str) -> IpAddress | None:
    """The address of one hop ("203.0.113.7", "203.0.113.7:5123", "[2001:db8::1]:443",
    "2001:db8::1"); None when it is none. IPv4-mapped IPv6 addresses become IPv4."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class ClientAddress:
    def __init__(self, trusted: Sequence[Network] = ()) -> None:
        self._trusted = tuple(trusted)

    @property
    def trusts_proxies(self) -> bool:
        return bool(self._trusted)

    def _is_trusted(self, ip: IpAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self._trusted)

    def resolve(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: ``peer`` unless it is a trusted proxy that forwarded the
        call, then the rightmost untrusted address of ``forwarded_for`` (module docstring)."""
        if not self._trusted or not forwarded_for:
            return peer
        peer_ip = _ip(peer)
        if peer_ip is None or not self._is_trusted(peer_ip):
            return peer
        client = str(peer_ip)
        for hop in reversed(forwarded_for.split(",")[-MAX_HOPS:]):
            ip = _ip(hop)
            if ip is None:
                return client
            client = str(ip)
            if not self._is_trusted(ip):
                return client
        return client
