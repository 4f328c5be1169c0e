"""Messages: submit, list, inspect, release, cancel, retry (README "Sending mail")."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import StringConstraints, ValidationError
from sqlalchemy.orm import Session
from starlette.routing import Route

from mailgate.bootstrap import Container
from mailgate.domain.access import Perm, Principal
from mailgate.domain.errors import BadRequest, MailgateError, PayloadTooLarge, ValidationFailed
from mailgate.domain.messages import Action, Priority, Status
from mailgate.domain.metadata import FILTER_PREFIX, metadata_errors
from mailgate.entrypoints.api.audit_trail import audit
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller, check_csrf, credential
from mailgate.schemas.common import ObjectName, SendAt, StrictModel
from mailgate.schemas.email_server import pydantic_field_errors
from mailgate.schemas.message import BulkIn, MessageIn
from mailgate.schemas.out.message import (
    BulkOut,
    MessageOut,
    MessagePageOut,
    MessageSummaryOut,
    SubmittedOut,
)
from mailgate.services.identity import API_KEY_PREFIX
from mailgate.services.outbox import Owner, Prepared, SubmitOptions, Submitted, lookup, query
from mailgate.services.outbox.options import idempotency_key
from mailgate.services.tenants import tenant_for, tenant_id_for

SUBMIT_PATH = "/api/v1/tenants/{tenant}/messages"
router = APIRouter(prefix=SUBMIT_PATH, tags=["messages"])


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The request schema with ``$defs`` inlined, for ``openapi_extra`` (no shared refs)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _inline_refs(MessageIn.model_json_schema(by_alias=True))
            },
            "message/rfc822": {
                "schema": {"type": "string", "format": "binary"},
                "description": "A complete MIME message; recipients from To/Cc/Bcc.",
            },
        },
    }
}


class UnsupportedMediaType(MailgateError):
    status = 415
    title = "Unsupported media type"

    def __init__(self, ctype: str) -> None:
        super().__init__(f"send application/json or message/rfc822, not {ctype!r}")


def owner_of(caller: Principal, tenant_id: int) -> Owner:
    """Callers without ``messages:read`` (web_service keys) see only their own messages."""
    return Owner(
        name=caller.name,
        api_key_id=caller.api_key_id,
        own_only=not caller.can(tenant_id, Perm.MESSAGES_READ),
    )


class RawOptions(StrictModel):
    """Query parameters of a message/rfc822 submission (JSON carries them in the body);
    metadata comes as ``metadata.KEY=VALUE`` parameters (README "Message metadata")."""

    server: ObjectName | None = None
    hold: bool = False
    send_at: SendAt | None = None
    priority: Priority = Priority.NORMAL
    metadata: dict[str, Annotated[str, StringConstraints(strip_whitespace=False)]] | None = None


def split_metadata(items: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """Query parameters apart from ``metadata.KEY=VALUE`` ones, and those as a dict (the
    last of a repeated key wins)."""
    params: dict[str, str] = {}
    meta: dict[str, str] = {}
    for name, value in items:
        if name.startswith(FILTER_PREFIX):
            meta[name.removeprefix(FILTER_PREFIX)] = value
        else:
            params[name] = value
    return params, meta


_SUBMIT_DOC: dict[str, Any] = {
    **_SUBMIT_BODY,
    "parameters": [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": "message/rfc822 only",
            "schema": _inline_refs(RawOptions.model_json_schema())["properties"][name],
        }
        for name in RawOptions.model_fields
        if name != "metadata"
    ]
    + [
        {
            "name": "metadata.KEY",
            "in": "query",
            "required": False,
            "description": "message/rfc822 only: metadata pairs, one parameter per key "
            "(metadata.order=42); JSON requests carry ``metadata`` in the body",
            "schema": {"type": "string"},
        }
    ]
    + [
        {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}
    ],
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubmittedOut,
    response_description="Accepted: stored, and will be delivered",
    openapi_extra=_SUBMIT_DOC,
)
async def submit_message(tenant: str, request: Request) -> Response:
    """Accept a message: ``202`` means it is stored durably and will be delivered.

    The hot path of the gateway, so it is lean: no declared parameters for FastAPI to
    resolve, the body parsed on the event loop, the reads (caller, tenant, server) as a few
    column queries on a read-only connection (on the event loop with SQLite, in a worker
    thread with PostgreSQL), and the rows written by group commit (``BatchWriter``) together
    with other requests', before this one is answered. With an idempotency key the request
    runs in its own transaction instead (the key must be checked and taken atomically).
    The answer is written directly (its shape is ``SubmittedOut``; validating it would cost
    the hot path for nothing).
    """
    c: Container = request.app.state.container
    token, is_cookie = credential(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    content: MessageIn | bytes | MailgateError
    if ctype not in ("application/json", "message/rfc822", ""):
        content = UnsupportedMediaType(ctype)
    else:
        content = _parse(ctype, await request.body(), c.settings.max_message_bytes)
    options = RawOptions()
    if request.query_params:
        params, meta = split_metadata(request.query_params.multi_items())
        try:
            options = RawOptions.model_validate({**params, "metadata": meta or None})
        except ValidationError as exc:
            content = ValidationFailed(pydantic_field_errors(exc))
        if "metadata" in params:
            content = ValidationFailed.one("metadata", "give each pair as metadata.KEY=VALUE")
        elif meta and (errors := metadata_errors(meta)):
            content = ValidationFailed(errors)
        if meta and isinstance(content, MessageIn):
            content = ValidationFailed.one(
                FILTER_PREFIX + next(iter(meta)),
                "a JSON request carries its metadata in the body",
            )
    header_key = request.headers.get("idempotency-key")
    key = header_key
    if isinstance(content, MessageIn) and content.idempotency_key is not None:
        key = content.idempotency_key
    if key is not None:
        submitted = await run_in_threadpool(
            _submit_keyed, c, request, token, is_cookie, tenant, content, options, header_key
        )
        m = submitted.message
        headers = {"Idempotent-Replayed": "true"} if submitted.replayed else None
        return _json_202({"id": m.id, "status": m.status}, headers)
    if c.engine.dialect.name == "sqlite":
        # A few indexed reads of a local file, without waiting for any lock: cheaper on the
        # event loop than the trip to a thread and back, which also contends for the GIL.
        prepared = _prepare(c, request, token, is_cookie, tenant, content, options)
    else:
        prepared = await run_in_threadpool(
            _prepare, c, request, token, is_cookie, tenant, content, options
        )
    await c.submissions.write(prepared)
    return _json_202({"id": prepared.values["id"], "status": prepared.values["status"]})


def submit_route() -> Route:
    """``submit_message`` as a plain Starlette route, which ``create_app`` puts first: the
    FastAPI route above only documents it in the OpenAPI schema. FastAPI's per-request
    handling (dependency solving, response wrapping) cost 12 % of a submission's CPU
    (0.53 -> 0.46 ms on the ASGI app), and this endpoint needs none of it: it reads its
    request itself. Both run the same function."""

    async def endpoint(request: Request) -> Response:
        return await submit_message(request.path_params["tenant"], request)

    return Route(SUBMIT_PATH, endpoint, methods=["POST"], name="submit_message_fast")


def _json_202(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status_code=202, media_type="application/json", headers=headers
    )


def _parse(ctype: str, body: bytes, limit: int) -> MessageIn | bytes | MailgateError:
    """The request body, or the error to answer once the caller is known to be allowed."""
    if ctype == "message/rfc822":
        if len(body) > limit:
            return PayloadTooLarge(f"the message is larger than {limit} bytes")
        return body
    try:
        return MessageIn.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return BadRequest("the request body is not valid JSON")
        return ValidationFailed(pydantic_field_errors(exc))


def _prepare(
    c: Container,
    request: Request,
    token: str,
    is_cookie: bool,
    tenant: str,
    content: MessageIn | bytes | MailgateError,
    options: RawOptions,
) -> Prepared:
    with c.submission_reads.connect() as conn:
        found = None
        if (
            not is_cookie
            and token.startswith(API_KEY_PREFIX)
            and not isinstance(content, MailgateError)
        ):
            # A workflow's usual request: its reads in one statement.
            server = content.server if isinstance(content, MessageIn) else options.server
            found = lookup.lookup(conn, token, tenant, server, c.clock())
        if found is not None:
            caller, touch, tenant_id, ref = found.caller, found.touch, found.tenant_id, found.server
        else:
            caller, touch = c.identity.authenticate_read_only(conn, token)
            if is_cookie:
                check_csrf(request, caller)
            tenant_id = tenant_id_for(conn, caller, tenant, Perm.MESSAGES_SEND)
            ref = None
        request.state.principal = caller
        if isinstance(content, MailgateError):
            raise content
        prepared = c.outbox.submitter.prepare(
            conn,
            tenant_id,
            owner_of(caller, tenant_id),
            content,
            _submit_options(content, options, None),
            server=ref,
        )
    if touch is not None:
        with c.session() as db:
            c.identity.touch_api_keys(db, [touch])
    return prepared


def _submit_keyed(
    c: Container,
    request: Request,
    token: str,
    is_cookie: bool,
    tenant: str,
    content: MessageIn | bytes | MailgateError,
    options: RawOptions,
    header_key: str | None,
) -> Submitted:
    with c.session(durable=True) as db:
        caller = c.identity.authenticate(db, token)
        if is_cookie:
            check_csrf(request, caller)
        request.state.principal = caller
        t = tenant_for(db, caller, tenant, Perm.MESSAGES_SEND)
        if isinstance(content, MailgateError):
            raise content
        return c.outbox.submitter.submit(
            db,
            t.id,
            owner_of(caller, t.id),
            content,
            _submit_options(content, options, header_key),
        )


def _submit_options(
    content: MessageIn | bytes, query_options: RawOptions, idempotency_header: str | None
) -> SubmitOptions:
    """A JSON request carries its options in its body; a MIME message in the query."""
    if isinstance(content, MessageIn):
        return SubmitOptions.of(content, idempotency_header)
    return SubmitOptions(
        query_options.server,
        query_options.hold,
        query_options.send_at,
        query_options.priority,
        idempotency_key(None, idempotency_header),
        query_options.metadata,
    )


@router.get(
    "",
    openapi_extra={
        "parameters": [
            {
                "name": "metadata.KEY",
                "in": "query",
                "required": False,
                "description": "only messages whose metadata has KEY with this value "
                "(metadata.order=42); several are combined with AND",
                "schema": {"type": "string"},
            }
        ]
    },
)
def list_messages(
    tenant: str,
    request: Request,
    caller: Caller,
    db: DB,
    status: Status | None = None,
    server: str | None = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> MessagePageOut:
    """Newest first. ``next_cursor`` is null on the last page."""
    t = tenant_for(db, caller, tenant, Perm.MESSAGES_READ_OWN)
    _params, meta = split_metadata(request.query_params.multi_items())
    return query.search(
        db,
        t.id,
        owner_of(caller, t.id),
        status=status,
        server=server,
        q=q,
        limit=limit,
        cursor=cursor,
        metadata=meta,
    )


def _bulk(
    action: Action,
    request: Request,
    tenant: str,
    body: BulkIn,
    caller: Principal,
    db: Session,
    c: Container,
) -> BulkOut:
    t = tenant_for(db, caller, tenant, Perm.MESSAGES_MANAGE)
    out = c.outbox.steering.bulk(db, t.id, action, body).out()
    selector: dict[str, Any] = (
        {"ids": len(body.ids)}
        if body.ids is not None
        else {"filter": body.model_dump(mode="json", exclude={"ids"}, exclude_none=True)}
    )
    audit(
        request,
        db,
        c,
        f"messages.{action.value}",
        tenant_id=t.id,
        detail={**selector, "changed": out.changed, "skipped": len(out.skipped)},
    )
    return out


@router.post("/release")
def release_many(
    tenant: str, body: BulkIn, request: Request, caller: Caller, db: DB, c: AppContainer
) -> BulkOut:
    """Release held messages, by ``ids`` or by filter (``status``, ``server``)."""
    return _bulk(Action.RELEASE, request, tenant, body, caller, db, c)


@router.post("/cancel")
def cancel_many(
    tenant: str, body: BulkIn, request: Request, caller: Caller, db: DB, c: AppContainer
) -> BulkOut:
    """Cancel messages not yet sent, by ``ids`` or by filter."""
    return _bulk(Action.CANCEL, request, tenant, body, caller, db, c)


@router.post("/retry")
def retry_many(
    tenant: str, body: BulkIn, request: Request, caller: Caller, db: DB, c: AppContainer
) -> BulkOut:
    """Try deferred and failed messages now, by ``ids`` or by filter."""
    return _bulk(Action.RETRY, request, tenant, body, caller, db, c)


@router.post("/hold")
def hold_many(
    tenant: str, body: BulkIn, request: Request, caller: Caller, db: DB, c: AppContainer
) -> BulkOut:
    """Hold scheduled, queued and deferred messages, by ``ids`` or by filter."""
    return _bulk(Action.HOLD, request, tenant, body, caller, db, c)


@router.get("/{message_id}")
def get_message(tenant: str, message_id: str, caller: Caller, db: DB) -> MessageOut:
    """The message with its envelope, main headers, recipients' state and attempts."""
    t = tenant_for(db, caller, tenant, Perm.MESSAGES_READ_OWN)
    return query.view(db, query.get(db, t.id, owner_of(caller, t.id), message_id))


@router.get(
    "/{message_id}/raw",
    response_class=Response,
    responses={200: {"content": {"message/rfc822": {}}}},
)
def get_raw(tenant: str, message_id: str, caller: Caller, db: DB) -> Response:
    """The stored MIME message, as it is sent (without Bcc)."""
    t = tenant_for(db, caller, tenant, Perm.MESSAGES_READ_OWN)
    row = query.get(db, t.id, owner_of(caller, t.id), message_id)
    return Response(query.raw(db, row), media_type="message/rfc822")


def _act(
    action: Action,
    request: Request,
    tenant: str,
    message_id: str,
    caller: Principal,
    db: Session,
    c: Container,
) -> MessageSummaryOut:
    t = tenant_for(db, caller, tenant, Perm.MESSAGES_MANAGE)
    row = c.outbox.steering.act(db, t.id, message_id, action)
    detail = {"id": row.id, "status": row.status}
    audit(request, db, c, f"message.{action.value}", tenant_id=t.id, detail=detail)
    return query.summary(row)


@router.post("/{message_id}/release")
def release(
    tenant: str,
    message_id: str,
    request: Request,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> MessageSummaryOut:
    """A held message goes to the queue (or waits for its send_at)."""
    return _act(Action.RELEASE, request, tenant, message_id, caller, db, c)


@router.post("/{message_id}/cancel")
def cancel(
    tenant: str,
    message_id: str,
    request: Request,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> MessageSummaryOut:
    """Held, scheduled, queued or deferred mail is not sent; 409 for anything else."""
    return _act(Action.CANCEL, request, tenant, message_id, caller, db, c)


@router.post("/{message_id}/hold")
def hold(
    tenant: str,
    message_id: str,
    request: Request,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> MessageSummaryOut:
    """Stop a scheduled, queued or deferred message until it is released."""
    return _act(Action.HOLD, request, tenant, message_id, caller, db, c)


@router.post("/{message_id}/retry")
def retry(
    tenant: str,
    message_id: str,
    request: Request,
    caller: Caller,
    db: DB,
    c: AppContainer,
) -> MessageSummaryOut:
    """Try a deferred or failed message now."""
    return _act(Action.RETRY, request, tenant, message_id, caller, db, c)
