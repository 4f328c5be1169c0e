"""A tenant's webhook endpoints (README "Webhooks"): admin only."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool

from mailgate.bootstrap import Container
from mailgate.domain.access import Perm
from mailgate.domain.events import WebhookResponse
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller, check_csrf, credential
from mailgate.schemas.out.webhook import (
    NewWebhookOut,
    WebhookDeliveryPage,
    WebhookList,
    WebhookOut,
    WebhookTestOut,
)
from mailgate.schemas.webhook import WebhookIn, WebhookPatch
from mailgate.services.tenants import tenant_for

BASE = "/api/v1/tenants/{tenant}/webhooks"
router = APIRouter(prefix=BASE, tags=["webhooks"])
# The API sends a test event itself; a dispatcher takes it over only after this.
TEST_HOLD = timedelta(seconds=60)


@router.get("")
def list_webhooks(tenant: str, caller: Caller, db: DB, c: AppContainer) -> WebhookList:
    t = tenant_for(db, caller, tenant, Perm.WEBHOOKS_MANAGE)
    return WebhookList(
        items=[WebhookOut.model_validate(c.webhooks.view(db, w)) for w in c.webhooks.list(db, t.id)]
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def create_webhook(
    tenant: str, body: WebhookIn, request: Request, caller: Caller, db: DB, c: AppContainer
) -> NewWebhookOut:
    """The answer carries the signing secret: the only time it is shown."""
    t = tenant_for(db, caller, tenant, Perm.WEBHOOKS_MANAGE)
    row, secret = c.webhooks.create(db, t.id, body)
    detail = {"id": row.id, "url": row.url, "events": row.events, "enabled": row.enabled}
    audit(request, db, c, "webhook.create", tenant_id=t.id, detail={**detail, "secret": "set"})
    return NewWebhookOut.model_validate({**c.webhooks.view(db, row), "secret": secret})


@router.get("/{webhook_id}")
def get_webhook(
    tenant: str, webhook_id: str, caller: Caller, db: DB, c: AppContainer
) -> WebhookOut:
    t = tenant_for(db, caller, tenant, Perm.WEBHOOKS_MANAGE)
    return WebhookOut.model_validate(c.webhooks.view(db, c.webhooks.get(db, t.id, webhook_id)))


@router.patch("/{webhook_id}")
def update_webhook(
    tenant: str,
    webhook_id: str,
    body: WebhookPatch,
    request: Request,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> WebhookOut:
    t = tenant_for(db, caller, tenant, Perm.WEBHOOKS_MANAGE)
    row = c.webhooks.get(db, t.id, webhook_id)
    changes = c.webhooks.update(db, row, body)
    if changes:
        detail = {"id": row.id, "changes": changes}
        audit(request, db, c, "webhook.update", tenant_id=t.id, detail=detail)
    return WebhookOut.model_validate(c.webhooks.view(db, row))


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(
    tenant: str, webhook_id: str, request: Request, caller: Caller, db: DB, c: AppContainer
) -> None:
    """Its waiting events and deliveries log go with it."""
    t = tenant_for(db, caller, tenant, Perm.WEBHOOKS_MANAGE)
    row = c.webhooks.get(db, t.id, webhook_id)
    detail = {"id": row.id, "url": row.url}
    c.webhooks.delete(db, row)
    audit(request, db, c, "webhook.delete", tenant_id=t.id, detail=detail)


@router.get("/{webhook_id}/deliveries")
def list_deliveries(
    tenant: str,
    webhook_id: str,
    caller: Caller,
    db: DB,
    c: AppContainer,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
) -> WebhookDeliveryPage:
    """Every attempt to deliver to this endpoint, newest first."""
    t = tenant_for(db, caller, tenant, Perm.WEBHOOKS_MANAGE)
    row = c.webhooks.get(db, t.id, webhook_id)
    return WebhookDeliveryPage.model_validate(c.webhooks.deliveries(db, row, limit, cursor))


@router.post("/{webhook_id}/test")
async def test_webhook(tenant: str, webhook_id: str, request: Request) -> WebhookTestOut:
    """Send a ``webhook.test`` event now (also to a disabled endpoint) and answer with what
    the receiver said. The event is stored first and the POST made after the commit,
    outside any transaction, within the 10 s deadline; a test event is not retried."""
    c: Container = request.app.state.container
    holder = f"api-test:{id(request)}"
    row_id = await run_in_threadpool(_queue_test, c, request, tenant, webhook_id, holder)
    dispatcher = c.webhook_dispatcher(holder)
    job = await run_in_threadpool(dispatcher.claim_one, row_id, holder)
    if job is None:  # taken over meanwhile (cannot happen within TEST_HOLD)
        response = WebhookResponse(None, 0, "the event was taken over by a dispatcher")
        return WebhookTestOut(ok=False, event_id="", status_code=None, ms=0, error=response.error)
    response = await dispatcher.deliver(job, holder)
    return WebhookTestOut(
        ok=response.delivered,
        event_id=job.event_id,
        status_code=response.status_code,
        ms=response.ms,
        error=response.error,
    )


def _queue_test(c: Container, request: Request, tenant: str, webhook_id: str, holder: str) -> int:
    token, is_cookie = credential(request)
    with c.session() as db:
        caller = c.identity.authenticate(db, token)
        if is_cookie:
            check_csrf(request, caller)
        request.state.principal = caller
        t = tenant_for(db, caller, tenant, Perm.WEBHOOKS_MANAGE)
        row = c.webhooks.get(db, t.id, webhook_id)
        return c.webhooks.queue_test(db, row, t.name, holder, TEST_HOLD)
