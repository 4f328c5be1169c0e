"""The durable outbox (README "Sending mail"), one module per job:

- ``submit``: accept a JSON request or a complete MIME message and store it (``Submitter``;
  ``store_many`` is the group commit's insert), with ``SubmitOptions`` from ``options``;
- ``mime`` builds the message (``simple_mime`` is its fast path for the common message);
- ``lookup`` reads an API-key submission's caller, tenant and server in one statement;
- ``steer``: hold, release, cancel, retry, one message or many (``Steering``);
- ``query``: the list, one message with its attempts, the stored bytes (plain functions).

Every function takes the tenant explicitly.
"""

from __future__ import annotations

from datetime import timedelta

from mailgate.domain.clock import Clock
from mailgate.services.email_servers import EmailServers
from mailgate.services.outbox.options import Owner, SubmitOptions
from mailgate.services.outbox.steer import BulkResult, Steering
from mailgate.services.outbox.submit import Prepared, Submitted, Submitter, store_many

__all__ = [
    "BulkResult",
    "Outbox",
    "Owner",
    "Prepared",
    "Steering",
    "SubmitOptions",
    "Submitted",
    "Submitter",
    "store_many",
]


class Outbox:
    """The outbox's stateful parts, built once from the settings they share (reads need
    none: ``outbox.query``)."""

    def __init__(
        self,
        servers: EmailServers,
        clock: Clock,
        max_message_bytes: int,
        retry_max_age: timedelta,
    ) -> None:
        self.submitter = Submitter(servers, clock, max_message_bytes, retry_max_age)
        self.steering = Steering(clock, retry_max_age)
