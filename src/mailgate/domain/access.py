"""Roles and what they may do. Pure: no I/O.

Roles are held per tenant (README "Roles and tenants"); ``system_admin`` is
installation-wide and may act as ``admin`` in every tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    READ_ONLY = "read_only"
    WEB_SERVICE = "web_service"


class Perm(StrEnum):
    TENANT_READ = "tenant:read"
    SERVERS_READ = "servers:read"
    SERVERS_WRITE = "servers:write"
    SERVERS_TEST = "servers:test"
    MESSAGES_SEND = "messages:send"
    MESSAGES_READ = "messages:read"
    MESSAGES_READ_OWN = "messages:read_own"
    MESSAGES_MANAGE = "messages:manage"
    KEYS_MANAGE = "keys:manage"
    REMOTE_MANAGE = "remote:manage"
    EXPORT = "export"
    AUDIT_READ = "audit:read"
    WEBHOOKS_MANAGE = "webhooks:manage"


ROLE_PERMS: dict[Role, frozenset[Perm]] = {
    Role.ADMIN: frozenset(Perm),
    Role.USER: frozenset(
        {
            Perm.TENANT_READ,
            Perm.SERVERS_READ,
            Perm.MESSAGES_SEND,
            Perm.MESSAGES_READ,
            Perm.MESSAGES_READ_OWN,
            Perm.MESSAGES_MANAGE,
        }
    ),
    Role.READ_ONLY: frozenset(
        {Perm.TENANT_READ, Perm.SERVERS_READ, Perm.MESSAGES_READ, Perm.MESSAGES_READ_OWN}
    ),
    # API keys of workflows: send, and read what they sent.
    Role.WEB_SERVICE: frozenset({Perm.MESSAGES_SEND, Perm.MESSAGES_READ_OWN}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a signed-in user or an API key (bound to one tenant)."""

    kind: str  # "user" | "api_key"
    name: str  # username, or "apikey:<name>"
    user_id: int | None = None
    api_key_id: str | None = None
    system_admin: bool = False
    roles: dict[int, Role] = field(default_factory=dict)  # tenant id -> role
    session_id: int | None = None
    csrf_token: str | None = None

    def role_in(self, tenant_id: int) -> Role | None:
        if self.system_admin:
            return Role.ADMIN
        return self.roles.get(tenant_id)

    def can(self, tenant_id: int, perm: Perm) -> bool:
        role = self.role_in(tenant_id)
        return role is not None and perm in ROLE_PERMS[role]
