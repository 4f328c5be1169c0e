"""The export document and the import report (services/transfer/)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from mailgate.schemas.out.base import OutModel, Timestamp, sometimes

Resource = Literal["email-servers", "remote-clients"]


class ExportSourceOut(OutModel):
    installation_id: str
    public_base_url: str
    tenant: str


class RemoteClientEntryOut(OutModel):
    name: str


class NotExportedOut(OutModel):
    resource: Resource
    name: str
    field: str
    reason: str


class ExportDocumentOut(OutModel):
    """Format version 1. With a passphrase, ``secrets`` is an envelope sealed together with
    the rest of the document: edit nothing, or the import refuses it."""

    format: Literal["mailgate-tenant-export"]
    format_version: Literal[1]
    generator: str
    source: ExportSourceOut
    exported_at: Timestamp
    exported_by: str
    resources: list[Resource]
    email_servers: list[dict[str, Any]] | SkipJsonSchema[None] = sometimes(
        "with the resource email-servers: each configuration as the create request takes it "
        "(name, is_default and every public member), without secrets"
    )
    remote_clients: list[RemoteClientEntryOut] | SkipJsonSchema[None] = sometimes(
        "with the resource remote-clients"
    )
    secrets: dict[str, Any] | None = Field(
        description="the passphrase envelope (scrypt, AES-256-GCM); null without a passphrase"
    )
    not_exported: list[NotExportedOut]


class ResourceRefOut(OutModel):
    resource: Resource
    name: str


class ImportWarningOut(OutModel):
    resource: Literal["email-servers", "remote-clients", "import"]
    name: str
    message: str
    field: str | SkipJsonSchema[None] = sometimes("the member the warning is about")


class ImportReportOut(OutModel):
    dry_run: bool = Field(description="true: nothing was changed")
    created: list[ResourceRefOut]
    overwritten: list[ResourceRefOut]
    unchanged: list[ResourceRefOut]
    warnings: list[ImportWarningOut]
