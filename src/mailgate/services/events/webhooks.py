"""A tenant's webhook endpoints: create (the secret is shown once), list, change, delete,
the deliveries log, and the test event."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgate.adapters.db.events import emit_test
from mailgate.adapters.db.tables import WebhookAttempt, WebhookEndpoint, WebhookEvent
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.errors import NotFound, ValidationFailed
from mailgate.domain.events import DeliveryState, new_endpoint_id
from mailgate.domain.outbound import OutboundPolicy
from mailgate.ports import SecretCipher
from mailgate.schemas.webhook import WebhookIn, WebhookPatch
from mailgate.services.caps import check_room


def secret_context(endpoint_id: str) -> str:
    """The associated data of an endpoint's encrypted secret: it decrypts in this row only."""
    return f"webhook:{endpoint_id}"


class Webhooks:
    def __init__(
        self,
        cipher: SecretCipher,
        clock: Clock,
        policy: Callable[[], OutboundPolicy],
        new_secret: Callable[[], str],
        *,
        refuse_local_names: bool,
        max_per_tenant: int = 20,
    ) -> None:
        """``policy``: the outbound policy of webhook connections (the sender applies it
        again at connect time); ``refuse_local_names``: ``localhost`` is refused by name."""
        self.cipher = cipher
        self.clock = clock
        self.policy = policy
        self.new_secret = new_secret
        self.refuse_local_names = refuse_local_names
        self.max_per_tenant = max_per_tenant

    def check_destination(self, url: str) -> None:
        """What can be told from the URL alone: an address literal or ``localhost`` that
        the rules refuse is a 422 naming ``url``. Names are checked again on every
        connection, on the addresses they resolve to then."""
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if self.refuse_local_names and (host == "localhost" or host.endswith(".localhost")):
                raise ValidationFailed.one(
                    "url",
                    "loopback and private destinations are refused "
                    "(MAILGATE_WEBHOOK_ALLOW_PRIVATE)",
                ) from None
            return
        why = self.policy().refusal(ip)
        if why is not None:
            raise ValidationFailed.one("url", f"this destination is refused: {why}")

    def create(self, db: Session, tenant_id: int, body: WebhookIn) -> tuple[WebhookEndpoint, str]:
        self.check_destination(body.url)
        check_room(
            db,
            WebhookEndpoint,
            tenant_id,
            self.max_per_tenant,
            "webhooks",
            "MAILGATE_MAX_WEBHOOKS_PER_TENANT",
        )
        now = self.clock()
        endpoint_id = new_endpoint_id()
        secret = self.new_secret()
        row = WebhookEndpoint(
            id=endpoint_id,
            tenant_id=tenant_id,
            url=body.url,
            events=body.events,
            enabled=body.enabled,
            description=body.description,
            secret_enc=self.cipher.encrypt(secret.encode(), secret_context(endpoint_id)),
            created_at=now,
            updated_at=now,
        )
        db.add(row)
        db.flush()
        return row, secret

    def list(self, db: Session, tenant_id: int) -> list[WebhookEndpoint]:
        return list(
            db.scalars(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.tenant_id == tenant_id)
                .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
            )
        )

    def get(self, db: Session, tenant_id: int, endpoint_id: str) -> WebhookEndpoint:
        row = db.get(WebhookEndpoint, endpoint_id) if len(endpoint_id) <= 32 else None
        if row is None or row.tenant_id != tenant_id:
            raise NotFound(f"webhook {endpoint_id!r} not found")
        return row

    def update(self, db: Session, row: WebhookEndpoint, patch: WebhookPatch) -> dict[str, Any]:
        """Apply ``patch``; returns the changed fields as ``{field: [before, after]}``."""
        changes: dict[str, Any] = {}
        if patch.url is not None and patch.url != row.url:
            self.check_destination(patch.url)
            changes["url"] = [row.url, patch.url]
            row.url = patch.url
        if patch.events is not None and patch.events != row.events:
            changes["events"] = [row.events, patch.events]
            row.events = patch.events
        if patch.enabled is not None and patch.enabled != row.enabled:
            changes["enabled"] = [row.enabled, patch.enabled]
            row.enabled = patch.enabled
        if "description" in patch.model_fields_set and patch.description != row.description:
            changes["description"] = [row.description, patch.description]
            row.description = patch.description
        if changes:
            row.updated_at = self.clock()
            db.flush()
        return changes

    def delete(self, db: Session, row: WebhookEndpoint) -> None:
        db.delete(row)
        db.flush()

    def secret_of(self, row: WebhookEndpoint) -> str:
        return self.cipher.decrypt(row.secret_enc, secret_context(row.id)).decode()

    def view(self, db: Session, row: WebhookEndpoint) -> dict[str, Any]:
        pending = db.execute(
            select(func.count(), func.min(WebhookEvent.created_at)).where(
                WebhookEvent.endpoint_id == row.id,
                WebhookEvent.status == DeliveryState.PENDING.value,
                WebhookEvent.attempts > 0,
            )
        ).one()
        waiting = db.scalar(
            select(func.count()).where(
                WebhookEvent.endpoint_id == row.id,
                WebhookEvent.status == DeliveryState.PENDING.value,
            )
        )
        return {
            "id": row.id,
            "url": row.url,
            "events": row.events,
            "enabled": row.enabled,
            "description": row.description,
            "created_at": isoformat(row.created_at),
            "updated_at": isoformat(row.updated_at),
            "pending": waiting or 0,
            "failing_since": isoformat(pending[1]) if pending[0] else None,
        }

    def deliveries(
        self, db: Session, row: WebhookEndpoint, limit: int, cursor: str | None
    ) -> dict[str, Any]:
        """The attempts to deliver to ``row``, newest first."""
        query = (
            select(WebhookAttempt, WebhookEvent.status)
            .join(WebhookEvent, WebhookEvent.id == WebhookAttempt.event_row_id)
            .where(WebhookAttempt.endpoint_id == row.id)
        )
        if cursor is not None:
            if not cursor.isdigit() or len(cursor) > 18:
                raise ValidationFailed.one("cursor", "not a cursor returned by this list")
            query = query.where(WebhookAttempt.id < int(cursor))
        rows = db.execute(query.order_by(WebhookAttempt.id.desc()).limit(limit + 1)).all()
        items = [
            {
                "id": a.id,
                "at": isoformat(a.at),
                "event_id": a.event_id,
                "type": a.type,
                "status_code": a.status_code,
                "ms": a.ms,
                "ok": a.status_code is not None and 200 <= a.status_code < 300,
                "error": a.error,
                "event_status": status,
            }
            for a, status in rows[:limit]
        ]
        return {
            "items": items,
            "next_cursor": str(rows[limit - 1][0].id) if len(rows) > limit else None,
        }

    def queue_test(
        self, db: Session, row: WebhookEndpoint, tenant: str, holder: str, lease: timedelta
    ) -> int:
        """A ``webhook.test`` event for ``row``, held by ``holder`` (who sends it now)."""
        now = self.clock()
        return emit_test(
            db.connection(),
            row.tenant_id,
            tenant,
            row.id,
            now=now,
            holder=holder,
            hold_until=now + lease,
        )
