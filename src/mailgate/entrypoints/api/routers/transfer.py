"""Export and import of a tenant's configuration (README "Export and import a tenant")."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response

from mailgate.domain.access import Perm
from mailgate.entrypoints.api.deps import DB, AppContainer, Caller
from mailgate.schemas.out.transfer import ExportDocumentOut, ImportReportOut
from mailgate.services.tenants import tenant_for
from mailgate.services.transfer.document import check_passphrase, parse_resources

router = APIRouter(prefix="/api/v1/tenants/{tenant}", tags=["export-import"])

Passphrase = Annotated[
    str | None,
    Header(
        alias="X-Export-Passphrase",
        description="Include (export) or restore (import) secrets, encrypted with a key "
        "derived from this passphrase (scrypt, AES-256-GCM).",
    ),
]


def _utf8(value: str | None) -> str | None:
    """Header values arrive as latin-1 text (RFC 9110 5.5: octets); senders such as curl and
    browsers send UTF-8, so read them as UTF-8 and a non-ASCII passphrase means the same
    here as on the command line."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


@router.get(
    "/export",
    response_model=ExportDocumentOut,
    responses={200: {"description": "The export file (a download for the browser)"}},
)
def export_tenant(
    tenant: str,
    caller: Caller,
    db: DB,
    c: AppContainer,
    passphrase: Passphrase = None,
    resources: Annotated[
        str | None,
        Query(description="Comma-separated: email-servers, remote-clients (default: all)."),
    ] = None,
) -> Response:
    t = tenant_for(db, caller, tenant, Perm.EXPORT)
    wanted = parse_resources(resources)
    doc = c.transfer.export(
        db, t, resources=wanted, passphrase=check_passphrase(_utf8(passphrase)), actor=caller.name
    )
    ExportDocumentOut.model_validate(doc)  # the answer is what the schema says
    stamp = doc["exported_at"].replace(":", "").replace("-", "")
    return Response(
        json.dumps(doc, indent=2).encode(),
        media_type="application/json",
        headers={
            # A download for the browser; scripts read the JSON body as usual.
            "Content-Disposition": f'attachment; filename="mailgate-{t.name}-{stamp}.json"',
            "Cache-Control": "no-store",
        },
    )


@router.post("/import")
def import_tenant(
    tenant: str,
    caller: Caller,
    db: DB,
    c: AppContainer,
    document: Annotated[Any, Body(description="A document made by the export endpoint.")],
    passphrase: Passphrase = None,
    dry_run: Annotated[bool, Query(description="Validate and report; change nothing.")] = False,
) -> ImportReportOut:
    t = tenant_for(db, caller, tenant, Perm.EXPORT)
    report = c.transfer.import_(
        db, t, document, passphrase=_utf8(passphrase), dry_run=dry_run, actor=caller.name
    )
    return ImportReportOut.model_validate(report)
