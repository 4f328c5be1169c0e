"""Remote clients of a tenant (README "Remote output") and the system settings they need.

A remote client is an agent in a customer's network that connects out to mailgate and
delivers the mail of configurations whose ``remote_output`` names it. Its token is a 256-bit
random string shown once; only its SHA-256 is stored, like API keys.
"""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailgate.adapters.db.notify import mark_ready
from mailgate.adapters.db.tables import EmailServer, Message, RemoteClient, SystemSetting, Tenant
from mailgate.domain.clock import Clock, isoformat
from mailgate.domain.errors import Conflict, NotFound, Unauthenticated
from mailgate.domain.remote import AgentIdentity
from mailgate.ports import AgentDirectory
from mailgate.services.caps import check_room
from mailgate.services.identity import new_token, token_hash

REMOTE_TOKEN_PREFIX = "mgr_"
ALLOW_SETTING = "allow_remote_clients"


def remote_clients_allowed(db: Session) -> bool:
    row = db.get(SystemSetting, ALLOW_SETTING)
    return bool(row is not None and row.value is True)


class RemoteClients:
    def __init__(self, clock: Clock, *, max_per_tenant: int = 50) -> None:
        self.clock = clock
        self.max_per_tenant = max_per_tenant

    def list(self, db: Session, tenant_id: int) -> list[RemoteClient]:
        return list(
            db.scalars(
                select(RemoteClient)
                .where(RemoteClient.tenant_id == tenant_id)
                .order_by(RemoteClient.name)
            )
        )

    def get(self, db: Session, tenant_id: int, name: str) -> RemoteClient:
        row = db.scalar(
            select(RemoteClient).where(
                RemoteClient.tenant_id == tenant_id, RemoteClient.name == name
            )
        )
        if row is None:
            raise NotFound(f"remote client {name!r} not found")
        return row

    def create(self, db: Session, tenant: Tenant, name: str) -> tuple[RemoteClient, str]:
        """Returns the row and its token (the only time the token exists in clear)."""
        clash = db.scalar(
            select(RemoteClient.id).where(
                RemoteClient.tenant_id == tenant.id, RemoteClient.name == name
            )
        )
        if clash is not None:
            raise Conflict(f"a remote client named {name!r} exists already")
        check_room(
            db,
            RemoteClient,
            tenant.id,
            self.max_per_tenant,
            "remote clients",
            "MAILGATE_MAX_REMOTE_CLIENTS_PER_TENANT",
        )
        token = new_token(REMOTE_TOKEN_PREFIX)
        row = RemoteClient(
            tenant_id=tenant.id,
            name=name,
            token_hash=token_hash(token),
            created_at=self.clock(),
        )
        db.add(row)
        db.flush()
        return row, token

    def delete(self, db: Session, row: RemoteClient) -> None:
        """Revoke at once. Configurations naming it keep their mail waiting (deferred) until a
        client of that name connects again: re-creating it is how a token is rotated."""
        db.delete(row)
        db.flush()

    def authenticate(self, db: Session, token: str) -> AgentIdentity:
        """The client a token belongs to; the same answer for malformed and unknown tokens."""
        if not token.startswith(REMOTE_TOKEN_PREFIX):
            raise Unauthenticated("unknown or deleted remote client token")
        row = db.scalar(select(RemoteClient).where(RemoteClient.token_hash == token_hash(token)))
        if row is None:
            raise Unauthenticated("unknown or deleted remote client token")
        tenant = db.get(Tenant, row.tenant_id)
        assert tenant is not None
        return AgentIdentity(row.id, row.tenant_id, tenant.name, row.name)

    def still_valid(self, db: Session, agent: AgentIdentity) -> bool:
        return db.get(RemoteClient, agent.client_id) is not None and remote_clients_allowed(db)

    def touch(
        self,
        db: Session,
        agent: AgentIdentity,
        *,
        alive_for_s: float,
        version: str | None = None,
        address: str | None = None,
    ) -> None:
        """Record a sign of life; ``connected_until`` lets every process see the state."""
        row = db.get(RemoteClient, agent.client_id)
        if row is None:
            return
        now = self.clock()
        row.last_seen_at = now
        row.connected_until = now + timedelta(seconds=alive_for_s)
        if version is not None:
            row.agent_version = version[:64]
        if address is not None:
            row.agent_address = address[:100]

    def mark_disconnected(self, db: Session, agent: AgentIdentity) -> None:
        row = db.get(RemoteClient, agent.client_id)
        if row is not None:
            row.connected_until = None

    def wake_waiting_mail(self, db: Session, agent: AgentIdentity) -> int:
        """Make the deferred mail of configurations this client delivers due now: it has been
        waiting for the agent, which is back. Returns how many messages were woken."""
        server_ids = [
            row.id
            for row in db.scalars(
                select(EmailServer).where(EmailServer.tenant_id == agent.tenant_id)
            )
            if (row.config.get("remote_output") or {}).get("enabled")
            and (row.config.get("remote_output") or {}).get("remote_client") == agent.name
        ]
        if not server_ids:
            return 0
        now = self.clock()
        result = db.execute(
            update(Message)
            .where(
                Message.tenant_id == agent.tenant_id,
                Message.server_id.in_(server_ids),
                Message.status == "deferred",
                Message.next_attempt_at > now,
            )
            .values(next_attempt_at=now)
        )
        woken = int(getattr(result, "rowcount", 0) or 0)
        if woken:
            mark_ready(db)
        return woken

    def servers_for_other_processes(self, db: Session, hub: AgentDirectory) -> builtins.list[int]:
        """E-mail servers whose mail this process's workers must leave alone.

        Remote output is delivered through the agent's WebSocket, which ends in one API
        process. A ``mailgate worker`` process (also the ones ``mailgate serve`` supervises)
        leaves every remote-output configuration to the API processes; an API process leaves
        those whose agent is connected to another process (it takes those whose agent is
        here, or connected nowhere: then it records that the client is not connected).
        """
        remote = self._remote_output_servers(db)
        if not remote or not hub.accepting:
            return [server_id for server_id, _t, _c in remote]
        elsewhere = self._connected_elsewhere(db, hub)
        return [sid for sid, tenant_id, name in remote if (tenant_id, name) in elsewhere]

    def servers_for_this_process(self, db: Session, hub: AgentDirectory) -> builtins.list[int]:
        """The remote-output configurations an API process delivers (the complement of
        ``servers_for_other_processes`` among them): those whose agent is connected here,
        or nowhere. Empty in a process that does not accept agents."""
        remote = self._remote_output_servers(db)
        if not remote or not hub.accepting:
            return []
        elsewhere = self._connected_elsewhere(db, hub)
        return [sid for sid, tenant_id, name in remote if (tenant_id, name) not in elsewhere]

    @staticmethod
    def _remote_output_servers(db: Session) -> builtins.list[tuple[int, int, str]]:
        remote: builtins.list[tuple[int, int, str]] = []
        for server_id, tenant_id, config in db.execute(
            select(EmailServer.id, EmailServer.tenant_id, EmailServer.config).where(
                EmailServer.tenant_id.is_not(None)
            )
        ):
            ro = (config or {}).get("remote_output") or {}
            if ro.get("enabled") and ro.get("remote_client"):
                remote.append((server_id, tenant_id, ro["remote_client"]))
        return remote

    def _connected_elsewhere(self, db: Session, hub: AgentDirectory) -> set[tuple[int, str]]:
        now = self.clock()
        return {
            (tenant_id, name)
            for tenant_id, name in db.execute(
                select(RemoteClient.tenant_id, RemoteClient.name).where(
                    RemoteClient.connected_until > now
                )
            )
            if not hub.is_connected(tenant_id, name)
        }

    def view(self, row: RemoteClient, now: datetime | None = None) -> dict[str, Any]:
        now = now or self.clock()
        return {
            "name": row.name,
            "connected": row.connected_until is not None and row.connected_until > now,
            "last_seen_at": isoformat(row.last_seen_at),
            "agent_version": row.agent_version,
            "agent_address": row.agent_address,
            "created_at": isoformat(row.created_at),
        }
