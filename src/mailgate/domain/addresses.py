"""Which network addresses a tenant may aim mailgate at. Pure: ``ipaddress`` only.

A check is a function from a resolved address to the reason it is refused (None: allowed);
the outbound policy of the installation is a list of them, applied at connect time by the
adapters that open connections (webhooks now). ``non_public`` is the private-address rule of
webhooks (off with ``MAILGATE_WEBHOOK_ALLOW_PRIVATE``); ``in_networks`` turns a list of denied
networks (the installation's ``outbound_policy.deny_networks``) into a check of the same kind.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressCheck = Callable[[IPAddress], str | None]


def _unmapped(ip: IPAddress) -> IPAddress:
    # ::ffff:127.0.0.1 is 127.0.0.1 on the wire.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def non_public(ip: IPAddress) -> str | None:
    """Loopback, private (RFC 1918, unique local), link-local (cloud metadata), shared
    (CGNAT), multicast, reserved and unspecified addresses are refused."""
    ip = _unmapped(ip)
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_private or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED):
        return f"{ip} is a private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return f"{ip} is not a public unicast address"
    return None


_SHARED = ipaddress.ip_network("100.64.0.0/10")


def in_networks(networks: Iterable[str]) -> AddressCheck:
    """A check that refuses addresses inside any of ``networks`` (CIDR strings)."""
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]

    def check(ip: IPAddress) -> str | None:
        ip = _unmapped(ip)
        for net in nets:
            if ip.version == net.version and ip in net:
                return f"{ip} is in the denied network {net}"
        return None

    return check


def refusal(ip: IPAddress, checks: Sequence[AddressCheck]) -> str | None:
    """The first check's reason to refuse ``ip``, or None."""
    for check in checks:
        reason = check(ip)
        if reason is not None:
            return reason
    return None
