"""The outbound destination policy: which resolved addresses a tenant may make mailgate
connect to (README "Security model").

A tenant administrator chooses SMTP hosts, token endpoints and webhook URLs; without a
policy they could aim the installation at the cloud metadata service or scan its network.
The policy is a list of denied networks, checked on every address a name resolves to, at
connect time (checking the name when it is saved would let DNS rebinding through). Default:
link-local, which holds the cloud metadata services (169.254.169.254; AWS' IPv6 one,
fd00:ec2::254, is in a private range: deny it where that matters). Loopback and private
ranges stay allowed by default: on-premise relays are the common case; a system
administrator may deny them.

The adapters resolve and connect (``adapters/outbound.py``); this module only decides.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENY_NETWORKS: tuple[str, ...] = ("169.254.0.0/16", "fe80::/10")
"""Link-local: the cloud metadata services and what only this machine's link can reach."""
SETTING_KEY = "outbound_policy"
"""The system setting (``{"deny_networks": [...]}``)."""


def parse_network(value: str) -> IPNetwork:
    """``"10.0.0.0/8"`` or a single address; ``ValueError`` saying what is wrong."""
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network (e.g. 10.0.0.0/8 or fe80::/10)") from None


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(dict.fromkeys(parse_network(v) for v in values if v.strip()))


def as_address(address: str | IPAddress) -> IPAddress:
    """An address as resolved (``fe80::1%eth0`` keeps its zone out), IPv4-mapped IPv6
    (``::ffff:169.254.169.254``) as the IPv4 address it reaches."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.partition("%")[0].strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def denied_network(address: str | IPAddress, deny: Iterable[IPNetwork]) -> IPNetwork | None:
    """The first network of ``deny`` that holds ``address``, or ``None`` (allowed).
    A string that is not an IP address raises ``ValueError``."""
    ip = as_address(address)
    for network in deny:
        if ip.version == network.version and ip in network:
            return network
    return None


@dataclass(frozen=True)
class OutboundPolicy:
    """The installation's policy, as one value (system settings plus
    ``MAILGATE_OUTBOUND_DENY``)."""

    deny_networks: tuple[IPNetwork, ...] = parse_networks(DEFAULT_DENY_NETWORKS)

    @classmethod
    def of(cls, *lists: Iterable[str]) -> OutboundPolicy:
        """The networks of all ``lists`` together (e.g. the system setting and the
        environment's)."""
        return cls(parse_networks(v for values in lists for v in values))

    def refusal(self, address: str | IPAddress, host: str | None = None) -> str | None:
        """Why connecting to ``address`` (resolved from ``host``) is refused, or ``None``."""
        network = denied_network(address, self.deny_networks)
        if network is None:
            return None
        ip = as_address(address)
        via = f"{host} resolves to {ip}" if host and host.strip("[]") != str(ip) else str(ip)
        return f"{via}, in {network}, which the outbound policy denies"
