"""Every HTTP client that mailgate aims at a tenant's mail API is made here: Graph, the Gmail
API, and the upload URLs Graph hands out.

One place on purpose: an outbound destination policy (which resolved addresses a tenant may
reach, checked at connect time) plugs in here for all of them. Trust is the system's CA store
(certifi) plus ``MAILGATE_OAUTH_CA_BUNDLE``, as for the token endpoints.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

import certifi
import httpx

from mailgate.adapters.outbound import PolicySource, async_guarded_transport
from mailgate.domain.outbound import OutboundPolicy

USER_AGENT = "mailgate"


@functools.lru_cache(maxsize=8)
def trust(ca_bundle: Path | None) -> ssl.SSLContext:
    """The TLS context for API calls (one per CA bundle; building one reads the CA files)."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def api_client(
    ca_bundle: Path | None,
    *,
    connect_s: float,
    command_s: float,
    policy: PolicySource = OutboundPolicy,
) -> httpx.AsyncClient:
    """An HTTP client for one delivery session or server test.

    httpx's timeouts bound each phase (connect, each read, each write); the callers bound
    every whole request on top (``exchange.ApiCall``). No redirects: an API answer that
    redirects is an error, not a place to send a message and a token to. Connections go only
    to addresses the outbound ``policy`` allows, checked where they are made.
    """
    return httpx.AsyncClient(
        transport=async_guarded_transport(trust(ca_bundle), policy),
        timeout=httpx.Timeout(connect=connect_s, read=command_s, write=command_s, pool=command_s),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
    )
