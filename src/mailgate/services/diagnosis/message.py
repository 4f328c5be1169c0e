"""The sender and the test e-mail, from a configuration's message defaults."""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from mailgate.domain.clock import Clock
from mailgate.domain.headers import header_value_problem
from mailgate.schemas.email_server import EmailServerIn


def sender_of(cfg: EmailServerIn) -> tuple[str | None, str | None]:
    """(header From address, envelope MAIL FROM) from the message defaults."""
    defaults = cfg.message_defaults
    username = cfg.authentication.username
    from_address = defaults.from_address or (username if username and "@" in username else None)
    return from_address, defaults.envelope_from or from_address


def header_problem(cfg: EmailServerIn) -> str | None:
    """Why the message defaults cannot go into the test e-mail's headers (saved before
    header injection was checked), or ``None``."""
    defaults = cfg.message_defaults
    values = [("message_defaults.from_name", defaults.from_name)]
    values += [(f"message_defaults.headers.{k}", v) for k, v in defaults.headers.items()]
    for field, value in values:
        if value is not None and (problem := header_value_problem(value)) is not None:
            return f"{field}: {problem}"
    return None


def build_test_message(
    cfg: EmailServerIn, label: str, to: str, clock: Clock
) -> tuple[str, bytes] | None:
    """The test e-mail (Message-ID, bytes) built from the message defaults; None without a
    sender."""
    from_address, _envelope = sender_of(cfg)
    if from_address is None:
        return None
    defaults = cfg.message_defaults
    msg = EmailMessage()
    for name, value in defaults.headers.items():
        msg[name] = value
    msg["From"] = formataddr((defaults.from_name or "", from_address))
    msg["To"] = to
    if defaults.reply_to:
        msg["Reply-To"] = defaults.reply_to
    msg["Subject"] = f"mailgate test e-mail: {label}"
    msg["Date"] = format_datetime(clock())
    domain = from_address.rpartition("@")[2]
    message_id = f"<mailgate-test.{uuid.uuid4().hex}@{domain}>"  # short: no header folding
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to a test
    msg.set_content(
        "This is a test e-mail from mailgate.\n\n"
        f"It was sent through the e-mail server configuration {label} "
        f"({cfg.describe()}, authentication {cfg.authentication.method}).\n\n"
        "If you can read this, the configuration can send mail. No reply is needed.\n"
    )
    return message_id, msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
