"""Webhook endpoints and their deliveries as the API shows them (README "Webhooks")."""

from __future__ import annotations

from pydantic import Field

from mailgate.schemas.out.base import OutModel, Timestamp


class WebhookOut(OutModel):
    id: str
    url: str
    events: list[str]
    enabled: bool
    description: str | None
    created_at: Timestamp
    updated_at: Timestamp
    pending: int = Field(description="events waiting to be delivered to this endpoint")
    failing_since: Timestamp | None = Field(
        description="when the oldest event still waiting was first refused (null: none is)"
    )


class NewWebhookOut(WebhookOut):
    secret: str = Field(
        description="the signing secret (whsec_...): shown only in this answer, keep it"
    )


class WebhookList(OutModel):
    items: list[WebhookOut]


class WebhookDeliveryOut(OutModel):
    id: int
    at: Timestamp
    event_id: str = Field(description="the webhook-id header (the same on every retry)")
    type: str
    status_code: int | None = Field(description="the receiver's answer (null: none)")
    ms: int
    ok: bool
    error: str | None
    event_status: str = Field(description="pending (will be retried) | delivered | failed")


class WebhookDeliveryPage(OutModel):
    items: list[WebhookDeliveryOut]
    next_cursor: str | None


class WebhookTestOut(OutModel):
    ok: bool
    event_id: str
    status_code: int | None
    ms: int
    error: str | None
