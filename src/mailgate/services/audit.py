"""The audit trail (README "Audit log"): who changed what, from where, when.

Every change writes one ``audit_log`` row in the transaction of the change (``record``), so
the trail holds exactly what was committed. ``actor`` is the signed-in user's name or the API
key (``apikey:<name>``); the source address comes from the request being served
(``REQUEST_SOURCE``, set by the API's middleware) and is filled in on every new row before it
is flushed, also on rows other services write (exports, imports).

Configurations are recorded as a field diff (``{"field.path": [before, after]}``); a secret
field appears only as ``"changed"``, never with a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import AuditEntry, Tenant
from mailgate.domain.clock import isoformat
from mailgate.domain.errors import ValidationFailed

REQUEST_SOURCE: ContextVar[str | None] = ContextVar("mailgate_request_source", default=None)
"""The client address of the request being served (None: not a request, e.g. the CLI)."""
CHANGED = "changed"
_MAX_VALUE = 500


def record(
    db: Session,
    action: str,
    *,
    tenant_id: int | None,
    actor: str,
    now: datetime,
    detail: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> None:
    """One audit entry, in ``db``'s transaction."""
    db.add(
        AuditEntry(
            tenant_id=tenant_id,
            at=now,
            actor=actor[:100],
            action=action[:64],
            detail=dict(detail) if detail else None,
            source=source or REQUEST_SOURCE.get(),
        )
    )


@event.listens_for(Session, "before_flush")
def _fill_source(db: Session, _context: Any, _instances: Any) -> None:
    source = REQUEST_SOURCE.get()
    if source is None:
        return
    for obj in db.new:
        if isinstance(obj, AuditEntry) and obj.source is None:
            obj.source = source


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_VALUE:
        return value[:_MAX_VALUE] + "..."
    return value


def field_diff(
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    *,
    ignore: Iterable[str] = (),
    secrets: Iterable[str] = (),
) -> dict[str, Any]:
    """``{"a.b": [before, after]}`` for every leaf that differs; a key under ``secrets``
    (dotted paths, or a last component such as ``password``) shows only ``"changed"``."""
    ignored = tuple(ignore)
    secret_names = set(secrets)
    flat_before = _flatten(before or {})
    flat_after = _flatten(after or {})
    out: dict[str, Any] = {}
    for key in sorted(set(flat_before) | set(flat_after)):
        if any(key == i or key.startswith(i + ".") for i in ignored):
            continue
        old, new = flat_before.get(key), flat_after.get(key)
        if old == new:
            continue
        if key in secret_names or key.rsplit(".", 1)[-1] in secret_names:
            out[key] = CHANGED
        else:
            out[key] = [_short(old), _short(new)]
    return out


def secrets_given(body: Mapping[str, Any], names: Iterable[str]) -> dict[str, str]:
    """The secret fields a request body sets (to a value): ``{"a.password": "changed"}``."""
    wanted = set(names)
    return {
        key: CHANGED
        for key, value in _flatten(body).items()
        if key.rsplit(".", 1)[-1] in wanted and value not in (None, "")
    }


def page(
    db: Session,
    *,
    tenant_id: int | None,
    all_tenants: bool,
    action: str | None,
    actor: str | None,
    since: datetime | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """Entries newest first: a tenant's (``tenant_id``), or with ``all_tenants`` every one
    (the installation's own ones too). ``action`` matches exactly or, ending in ``.*``, by
    prefix (``email_server.*``)."""
    query = select(AuditEntry, Tenant.name).outerjoin(Tenant, Tenant.id == AuditEntry.tenant_id)
    if not all_tenants:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    if cursor is not None:
        # ASCII digits that fit a 64-bit integer (str.isdigit alone also accepts "²" and "٣").
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
            raise ValidationFailed.one("cursor", "not a cursor from a previous page")
        query = query.where(AuditEntry.id < int(cursor))
    if action:
        if action.endswith(".*"):
            prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(AuditEntry.action.like(prefix + "%", escape="\\"))
        else:
            query = query.where(AuditEntry.action == action)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    rows = db.execute(query.order_by(AuditEntry.id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [
            {
                "id": e.id,
                "at": isoformat(e.at),
                "tenant": name,
                "actor": e.actor,
                "action": e.action,
                "source": e.source,
                "detail": e.detail,
            }
            for e, name in rows
        ],
        "next_cursor": str(rows[-1][0].id) if more else None,
    }
