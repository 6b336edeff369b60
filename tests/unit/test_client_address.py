"""Which address a per-address limit counts: the peer, or X-Forwarded-For from trusted proxies.

Why: behind an ingress every peer is the ingress, so the header must be read; but a client can
write any header, so it is read only from trusted peers, from the right, and only addresses
can become keys.
"""

from __future__ import annotations

import pytest

from chat_api.transport.client_address import MAX_HOPS, ClientAddress, parse_networks

INGRESS = ClientAddress(parse_networks("10.0.0.0/8, fd00::/8"))


def test_nobody_is_trusted_by_default() -> None:
    assert ClientAddress().resolve("203.0.113.7", "198.51.100.1") == "203.0.113.7"


def test_an_untrusted_peer_cannot_name_another_address() -> None:
    assert INGRESS.resolve("203.0.113.7", "198.51.100.1") == "203.0.113.7"


def test_the_rightmost_untrusted_hop_is_the_client() -> None:
    # The client wrote "1.2.3.4" itself; the ingress appended what it saw, 198.51.100.9.
    assert INGRESS.resolve("10.1.2.3", "1.2.3.4, 198.51.100.9") == "198.51.100.9"
    # Two trusted proxies in a row.
    assert INGRESS.resolve("10.1.2.3", "1.2.3.4, 198.51.100.9, 10.9.9.9") == "198.51.100.9"


def test_a_trusted_peer_without_the_header_is_the_client() -> None:
    assert INGRESS.resolve("10.1.2.3", None) == "10.1.2.3"
    assert INGRESS.resolve("10.1.2.3", "") == "10.1.2.3"


def test_only_trusted_hops_gives_the_leftmost() -> None:
    assert INGRESS.resolve("10.1.2.3", "10.0.0.5, 10.0.0.6") == "10.0.0.5"


@pytest.mark.parametrize("header", ["garbage", "1.2.3.4, not-an-ip", "1.2.3.4, ", "x" * 500])
def test_text_that_is_no_address_never_becomes_a_key(header: str) -> None:
    assert INGRESS.resolve("10.1.2.3", header) == "10.1.2.3"


def test_ports_brackets_and_ipv6() -> None:
    assert INGRESS.resolve("10.1.2.3", "198.51.100.9:5123") == "198.51.100.9"
    assert INGRESS.resolve("fd00::1", "[2001:db8::7]:443") == "2001:db8::7"
    assert INGRESS.resolve("fd00::1", "2001:db8::7") == "2001:db8::7"
    # An IPv4-mapped IPv6 peer is the IPv4 address it maps.
    assert INGRESS.resolve("::ffff:10.1.2.3", "198.51.100.9") == "198.51.100.9"


def test_the_walk_is_bounded() -> None:
    chain = ", ".join(["198.51.100.1"] + ["10.0.0.1"] * (MAX_HOPS + 10))
    assert INGRESS.resolve("10.1.2.3", chain) == "10.0.0.1"


def test_bad_networks_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/8, ingress")
    assert parse_networks(" 10.0.0.0/8 ,, 192.168.1.7 ") == parse_networks(
        "10.0.0.0/8,192.168.1.7/32")
