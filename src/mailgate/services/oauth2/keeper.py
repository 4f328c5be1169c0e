"""One round of the token keeper: keep idle refresh tokens alive, retry refreshes whose backoff
is over, and send the admins' notices that are due. ``entrypoints/keeper.py`` runs a round
every few minutes on a thread.

Every process may run a keeper; refreshes of a configuration are serialized by its row lock,
and the round's test is asked again under the lock, so several keepers refresh it once.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db.tables import EmailServer
from mailgate.domain.clock import Clock
from mailgate.domain.oauth2 import (
    KEEPALIVE_AFTER,
    NeedsAuthorization,
    OAuth2State,
    TokenEndpointDown,
)
from mailgate.services.oauth2.alerts import OAuth2Alerts
from mailgate.services.oauth2.tokens import OAuth2Tokens

log = logging.getLogger("mailgate.oauth2")


def keeper_due(row: EmailServer, now: datetime) -> bool:
    """An authorization-code configuration whose refresh token was not used for
    ``KEEPALIVE_AFTER`` (so an idle one does not lapse), or whose backoff after a failed
    refresh is over."""
    auth = row.config.get("authentication", {})
    if auth.get("method") != "oauth2" or auth.get("grant") != "authorization_code":
        return False
    if row.oauth2_retry_at is not None:
        return row.oauth2_retry_at <= now
    last = row.refresh_token_last_used_at
    return last is None or last + KEEPALIVE_AFTER <= now


def _still_due(row: EmailServer, _tokens: dict[str, Any], now: datetime) -> bool:
    return row.oauth2_state == OAuth2State.AUTHORIZED.value and keeper_due(row, now)


class OAuth2Keeper:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        tokens: OAuth2Tokens,
        alerts: OAuth2Alerts,
        clock: Clock,
    ) -> None:
        self.sessions = sessions
        self.tokens = tokens
        self.alerts = alerts
        self.clock = clock

    def run_once(self) -> int:
        """One round; returns how many configurations it refreshed."""
        refreshed = self._keep_alive()
        sent = self.alerts.send_due()
        if sent:
            log.info("oauth2 keeper: sent %d notice(s)", sent)
        return refreshed

    def _keep_alive(self) -> int:
        now = self.clock()
        with self.sessions() as db:
            candidates = [
                row.id
                for row in db.scalars(
                    select(EmailServer).where(
                        EmailServer.oauth2_state == OAuth2State.AUTHORIZED.value
                    )
                )
                if keeper_due(row, now)
            ]
        done = 0
        for server_id in candidates:
            try:
                if self.tokens.refresh_locked(server_id, _still_due, honour_backoff=True).refreshed:
                    done += 1
            except (NeedsAuthorization, TokenEndpointDown) as exc:
                log.warning("oauth2 keeper: server %s: %s", server_id, exc.title)
            except Exception as exc:
                # One configuration's failure never stops the others' refreshes. Type only:
                # an exception's text may carry a secret.
                log.error("oauth2 keeper: server %s failed: %s", server_id, type(exc).__name__)
        return done
