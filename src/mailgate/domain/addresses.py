"""The private-address rule of webhooks, on top of the installation's outbound policy
(``domain/outbound.py``). Pure.

Unless ``MAILGATE_WEBHOOK_ALLOW_PRIVATE`` is set, a webhook may not reach loopback, private
(RFC 1918, unique local), shared (CGNAT), link-local (cloud metadata), multicast, reserved or
unspecified addresses: these networks are added to the installation's denied networks for
webhook connections, and the one policy is checked on every resolved address at connect time
(``adapters/outbound.py``).
"""

from __future__ import annotations

from mailgate.domain.outbound import OutboundPolicy, parse_networks

NON_PUBLIC_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network", 0.0.0.0 reaches this host
    "10.0.0.0/8",
    "100.64.0.0/10",  # shared address space (CGNAT)
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local: cloud metadata services
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",  # benchmarking
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the broadcast address
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",  # local-use NAT64
    "100::/64",  # discard
    "fc00::/7",  # unique local (AWS' metadata service fd00:ec2::254 too)
    "fe80::/10",
    "ff00::/8",
)
_NON_PUBLIC = parse_networks(NON_PUBLIC_NETWORKS)


def without_private(policy: OutboundPolicy) -> OutboundPolicy:
    """``policy`` with the non-public networks denied as well."""
    return OutboundPolicy(tuple(dict.fromkeys(policy.deny_networks + _NON_PUBLIC)))
