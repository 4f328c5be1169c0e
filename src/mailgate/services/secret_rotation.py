"""Re-encrypt every stored secret with the current key (``mailgate secrets rotate``).

``MAILGATE_SECRET_KEY`` (or the key file) may hold several keys: the first encrypts, all
decrypt. To rotate, put a new key first, run the rotation, then drop the old key.

Every column that holds ``SecretCipher`` ciphertexts is listed in ``ENCRYPTED_COLUMNS`` with the
associated data it was sealed with. Whoever adds an encrypted column adds it there, or the
old key can never be dropped safely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgate.adapters.db.tables import EmailServer, OAuth2Authorization, WebhookEndpoint
from mailgate.domain.errors import SecretKeyError
from mailgate.ports import SecretCipher
from mailgate.services.email_servers import secret_context
from mailgate.services.events.webhooks import secret_context as webhook_secret_context


@dataclass(frozen=True)
class EncryptedColumn:
    entity: type[Any]
    attribute: str
    context: Callable[[Any], str]

    @property
    def label(self) -> str:
        return f"{self.entity.__tablename__}.{self.attribute}"


ENCRYPTED_COLUMNS: tuple[EncryptedColumn, ...] = (
    EncryptedColumn(EmailServer, "secrets_enc", lambda row: secret_context(row)),
    EncryptedColumn(EmailServer, "tokens_enc", lambda row: secret_context(row, "tokens")),
    EncryptedColumn(
        OAuth2Authorization, "code_verifier_enc", lambda row: f"oauth2-state:{row.state_hash}"
    ),
    EncryptedColumn(WebhookEndpoint, "secret_enc", lambda row: webhook_secret_context(row.id)),
)


@dataclass
class RotationReport:
    rotated: int = 0
    current: int = 0
    changed_meanwhile: int = 0
    failed: list[str] = field(default_factory=list)


def count_secrets(db: Session) -> int:
    total = 0
    for col in ENCRYPTED_COLUMNS:
        attr = getattr(col.entity, col.attribute)
        total += (
            db.scalar(select(func.count()).select_from(col.entity).where(attr.isnot(None))) or 0
        )
    return total


def rotate_all(
    sessions: sessionmaker[Session],
    box: SecretCipher,
    progress: Callable[[int], None] = lambda _n: None,
    batch: int = 200,
) -> RotationReport:
    """Re-encrypt what is not under the current key, one committed batch at a time.

    Each write is a compare-and-set on the old ciphertext: a value that another process
    changed in the meantime (say, a refreshed OAuth2 token) is left alone, since that process
    wrote it with its current key; it is counted in ``changed_meanwhile``.
    """
    report = RotationReport()
    for col in ENCRYPTED_COLUMNS:
        pk = inspect(col.entity).primary_key[0]
        attr = getattr(col.entity, col.attribute)
        last: Any = None
        while True:
            with sessions() as db:
                query = select(col.entity).where(attr.isnot(None)).order_by(pk).limit(batch)
                if last is not None:
                    query = query.where(pk > last)
                rows = list(db.scalars(query))
                if not rows:
                    break
                for row in rows:
                    key = getattr(row, pk.key)
                    _rotate_one(db, box, col, pk, row, key, report)
                db.commit()
                last = getattr(rows[-1], pk.key)
                progress(len(rows))
    return report


def _rotate_one(
    db: Session,
    box: SecretCipher,
    col: EncryptedColumn,
    pk: Any,
    row: Any,
    key: Any,
    report: RotationReport,
) -> None:
    old = getattr(row, col.attribute)
    try:
        if not box.needs_rotation(old):
            report.current += 1
            return
        new = box.rotate(old, col.context(row))
    except SecretKeyError as exc:
        # The reason names no secret: only which key or context did not fit.
        report.failed.append(f"{col.label} of row {key}: {exc}")
        return
    attr = getattr(col.entity, col.attribute)
    done = db.execute(
        update(col.entity)
        .where(pk == key, attr == old)
        .values({col.attribute: new})
        .execution_options(synchronize_session=False)
    )
    if getattr(done, "rowcount", 0) == 1:
        report.rotated += 1
    else:
        report.changed_meanwhile += 1
