"""Webhook endpoints as the API takes them (README "Webhooks"); answers are in
``schemas/out/webhook.py``."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, StringConstraints, field_validator

from mailgate.domain.events import SUBSCRIBABLE
from mailgate.schemas.common import StrictModel, check_no_crlf, is_hostname

Url = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
Description = Annotated[str, StringConstraints(max_length=200)]


def check_url(value: str) -> str:
    """An absolute http(s) URL with a host and without credentials in it."""
    check_no_crlf(value)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError("only http and https URLs are allowed")
    if not parts.hostname or not is_hostname(parts.hostname):
        raise ValueError("the URL needs a valid host name")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL would be shown to everyone who reads it")
    if port == 0:
        raise ValueError("port 0 is not a port")
    return value


def check_events(value: list[str]) -> list[str]:
    unknown = [e for e in value if e not in SUBSCRIBABLE]
    if unknown:
        raise ValueError(f"unknown event type(s) {unknown}; known: {list(SUBSCRIBABLE)}")
    if not value:
        raise ValueError("subscribe to at least one event type")
    return sorted(set(value), key=SUBSCRIBABLE.index)


class WebhookIn(StrictModel):
    url: Url
    events: list[str] = Field(
        default_factory=lambda: list(SUBSCRIBABLE), max_length=len(SUBSCRIBABLE) * 2
    )
    enabled: bool = True
    description: Description | None = None

    _url = field_validator("url")(check_url)
    _events = field_validator("events")(check_events)


class WebhookPatch(StrictModel):
    url: Url | None = None
    events: list[str] | None = Field(default=None, max_length=len(SUBSCRIBABLE) * 2)
    enabled: bool | None = None
    description: Description | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_events(value)
