"""The outbound destination policy: which resolved addresses are denied
(``domain/outbound.py``), and resolving within it (``adapters/outbound.py``)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpcore
import httpx
import pytest

from mailgate.adapters.outbound import (
    DestinationDenied,
    GuardedBackend,
    allowed,
    denied_reason,
    resolve_allowed,
    resolve_allowed_sync,
)
from mailgate.domain.outbound import OutboundPolicy, denied_network, parse_networks
from mailgate.services.outbound import policy_of

DEFAULT = OutboundPolicy()


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fe80::1%eth0",
        "[fe80::2]",
        "::ffff:169.254.169.254",
    ],
)
def test_link_local_is_denied_by_default(address: str) -> None:
    assert DEFAULT.refusal(address) is not None


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "::1", "8.8.8.8"])
def test_loopback_private_and_public_are_allowed_by_default(address: str) -> None:
    assert DEFAULT.refusal(address) is None


def test_refusal_names_host_address_and_network() -> None:
    text = DEFAULT.refusal("169.254.169.254", "metadata.example")
    assert text == (
        "metadata.example resolves to 169.254.169.254, in 169.254.0.0/16, "
        "which the outbound policy denies"
    )


def test_policy_of_lists_and_bad_entries() -> None:
    policy = OutboundPolicy.of(["10.0.0.0/8"], ["127.0.0.1", " "])
    assert denied_network("10.9.9.9", policy.deny_networks) is not None
    assert denied_network("127.0.0.1", policy.deny_networks) is not None
    assert denied_network("169.254.169.254", policy.deny_networks) is None  # replaced
    with pytest.raises(ValueError, match="not a network"):
        parse_networks(["10.0.0.0/33"])
    assert policy_of({"deny_networks": ["nonsense"]}, ()).deny_networks == DEFAULT.deny_networks
    assert policy_of(None, ["10.0.0.0/8"]).refusal("10.0.0.1") is not None


def _info(address: str) -> tuple[Any, ...]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return (family, socket.SOCK_STREAM, 6, "", (address, 25))


def test_allowed_keeps_allowed_addresses_and_refuses_when_none_is() -> None:
    infos = [_info("169.254.169.254"), _info("10.0.0.1")]
    assert allowed("h", infos, DEFAULT) == [infos[1]]
    with pytest.raises(DestinationDenied, match=r"169\.254\.169\.254"):
        allowed("h", infos[:1], DEFAULT)


def test_resolving_checks_what_the_name_resolves_to() -> None:
    deny_loopback = OutboundPolicy.of(["127.0.0.0/8", "::1"])
    with pytest.raises(DestinationDenied, match="localhost resolves to"):
        asyncio.run(resolve_allowed("localhost", 25, deny_loopback, timeout=5))
    with pytest.raises(DestinationDenied):
        resolve_allowed_sync("localhost", 25, deny_loopback, timeout=5)
    assert asyncio.run(resolve_allowed("127.0.0.1", 25, DEFAULT, timeout=5))


def test_http_client_refuses_a_denied_address_before_connecting() -> None:
    deny_loopback = OutboundPolicy.of(["127.0.0.0/8", "::1"])
    transport = httpx.HTTPTransport()
    transport._pool = httpcore.ConnectionPool(network_backend=GuardedBackend(lambda: deny_loopback))
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError) as caught:
        client.get("http://localhost:9/")
    reason = denied_reason(caught.value)
    assert reason is not None and "outbound policy" in reason
