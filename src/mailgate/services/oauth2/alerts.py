"""Notices to a tenant's admins when the OAuth2 authorization of one of its e-mail servers breaks,
or when its provider's quota or throttling answer pauses it (``kind`` ``paused``, written by
``adapters/db/pauses.py`` with the pause, dropped when the pause ended before it went out).

The token service calls ``record_incident`` in the transaction that moves a configuration to
``needs_reauthorization`` or ``error``: one ``oauth2_notices`` row per admin of the tenant with
an e-mail address, so each admin hears once per incident. ``OAuth2Alerts.send_due`` sends the
due notices through the system e-mail server, outside any transaction, and deletes each once
sent; one that fails waits and is tried again (the keeper's round calls ``send_due`` every few
minutes) for up to two days. A notice whose configuration works again first is dropped.

Why two steps: the system mailer needs OAuth2 tokens itself (those of the system server), so
the token service cannot hold the mailer; the alerts hold it, and nothing they use holds them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db.events import emit
from mailgate.adapters.db.pauses import NOTICE_PAUSED
from mailgate.adapters.db.tables import (
    EmailServer,
    Membership,
    OAuth2Notice,
    ServerDelivery,
    Tenant,
    User,
)
from mailgate.domain.access import Role
from mailgate.domain.clock import Clock
from mailgate.domain.events import EventType
from mailgate.domain.oauth2 import OAuth2State, backoff
from mailgate.ports import SystemMailer

log = logging.getLogger("mailgate.oauth2")

# A notice not sent in this time is dropped: the server's page shows the state meanwhile.
NOTICE_GIVE_UP = timedelta(days=2)
# A claimed notice is its sender's this long; after a crash mid-send another process sends it.
CLAIM_LEASE = timedelta(minutes=10)
_BATCH = 100
_FAILING = (OAuth2State.NEEDS_REAUTHORIZATION.value, OAuth2State.ERROR.value)
NOTICE_OAUTH2 = "oauth2"


def record_incident(db: Session, row: EmailServer, reason: str, now: datetime) -> int:
    """Queue one notice per admin of ``row``'s tenant in the caller's transaction; returns
    how many. The system server has no tenant: nobody to tell (and no way but through it)."""
    if row.tenant_id is None:
        return 0
    # Webhooks hear of it in the same transaction (README "Webhooks").
    emit(
        db.connection(),
        row.tenant_id,
        EventType.SERVER_NEEDS_REAUTHORIZATION,
        {"server": row.name, "state": row.oauth2_state, "reason": reason},
        now=now,
    )
    # A new incident replaces the notices of an earlier one that are still waiting.
    db.execute(
        delete(OAuth2Notice).where(
            OAuth2Notice.server_id == row.id, OAuth2Notice.kind == NOTICE_OAUTH2
        )
    )
    admins = list(
        db.scalars(
            select(User.email)
            .join(Membership, Membership.user_id == User.id)
            .where(
                Membership.tenant_id == row.tenant_id,
                Membership.role == Role.ADMIN.value,
                User.email.is_not(None),
            )
            .order_by(User.username)
        )
    )
    if not admins:
        log.warning("oauth2: no tenant admin with an e-mail address to notify")
        return 0
    for address in admins:
        db.add(
            OAuth2Notice(
                server_id=row.id,
                recipient=str(address),
                reason=reason,
                created_at=now,
                next_try_at=now,
                attempts=0,
            )
        )
    return len(admins)


@dataclass(frozen=True)
class _Mail:
    notice_id: int
    attempts: int
    to: str
    subject: str
    text: str


class OAuth2Alerts:
    """Sends the recorded notices through the system e-mail server."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        mailer: SystemMailer,
        clock: Clock,
        public_base_url: str,
    ) -> None:
        self.sessions = sessions
        self.mailer = mailer
        self.clock = clock
        self.public_base_url = public_base_url.rstrip("/")

    def send_due(self) -> int:
        """Send every notice that is due; returns how many went out. Never raises for a
        notice that cannot be sent: it stays and is tried again later."""
        sent = 0
        for mail in self._claim():
            try:
                self.mailer.send_system_mail(mail.to, mail.subject, mail.text)
            except Exception as exc:
                log.warning("oauth2: notifying an admin failed: %s", type(exc).__name__)
                self._retry_later(mail, exc)
            else:
                self._done(mail)
                sent += 1
        return sent

    def _claim(self) -> list[_Mail]:
        now = self.clock()
        mails: list[_Mail] = []
        with self.sessions() as db, db.begin():
            rows = db.execute(
                select(OAuth2Notice, EmailServer, Tenant, ServerDelivery.paused_until)
                .join(EmailServer, EmailServer.id == OAuth2Notice.server_id)
                .join(Tenant, Tenant.id == EmailServer.tenant_id)
                .outerjoin(ServerDelivery, ServerDelivery.server_id == EmailServer.id)
                .where(OAuth2Notice.next_try_at <= now)
                .order_by(OAuth2Notice.id)
                .limit(_BATCH)
                .with_for_update(of=OAuth2Notice, skip_locked=True)
            ).all()
            for notice, server, tenant, paused_until in rows:
                paused = notice.kind == NOTICE_PAUSED
                if (paused and paused_until is None) or (
                    not paused and server.oauth2_state not in _FAILING
                ):
                    # Working again (authorized again, resumed, the probe went through), or
                    # forgotten, before the notice went out.
                    db.delete(notice)
                    continue
                if notice.created_at + NOTICE_GIVE_UP <= now:
                    log.warning(
                        "oauth2: gave up notifying an admin of server %s after %d attempts",
                        server.id,
                        notice.attempts,
                    )
                    db.delete(notice)
                    continue
                notice.attempts += 1
                notice.next_try_at = now + CLAIM_LEASE
                compose = self._compose_pause if paused else self._compose
                subject, text = compose(tenant.name, server.name, notice.reason)
                mails.append(_Mail(notice.id, notice.attempts, notice.recipient, subject, text))
        return mails

    def _compose(self, tenant: str, server: str, reason: str) -> tuple[str, str]:
        link = (
            f"{self.public_base_url}/ui/email-servers/{quote(server, safe='')}"
            f"?tenant={quote(tenant)}"
        )
        subject = f"mailgate: e-mail server {server} of {tenant} needs attention"
        text = (
            f"The OAuth2 authorization of the e-mail server {server!r} in tenant "
            f"{tenant!r} no longer works:\n\n    {reason}\n\n"
            "Mail for this server waits in the queue; nothing is lost. Open the server's "
            f"page and authorize it again:\n\n    {link}\n"
        )
        return subject, text

    def _compose_pause(self, tenant: str, server: str, reason: str) -> tuple[str, str]:
        link = (
            f"{self.public_base_url}/ui/email-servers/{quote(server, safe='')}"
            f"?tenant={quote(tenant)}"
        )
        subject = f"mailgate: e-mail server {server} of {tenant} is paused"
        text = (
            f"The provider of the e-mail server {server!r} in tenant {tenant!r} asked "
            f"mailgate to wait:\n\n    {reason}\n\n"
            "Its mail waits in the queue; nothing is lost. When the pause is over, one message "
            "tries again, and if it goes through the rest follows. If the provider's sending "
            "limits are lower than this server's traffic, raise them or lower the server's "
            "limits (limits.messages_per_minute, limits.recipients_per_day). The server's page "
            f"shows the pause and can end it now (Resume):\n\n    {link}\n"
        )
        return subject, text

    def _done(self, mail: _Mail) -> None:
        with self.sessions() as db, db.begin():
            db.execute(delete(OAuth2Notice).where(OAuth2Notice.id == mail.notice_id))

    def _retry_later(self, mail: _Mail, exc: Exception) -> None:
        with self.sessions() as db, db.begin():
            notice = db.get(OAuth2Notice, mail.notice_id)
            if notice is not None:
                notice.next_try_at = self.clock() + backoff(mail.attempts)
                notice.last_error = f"{type(exc).__name__}: {exc}"[:1000]
