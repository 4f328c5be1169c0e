"""The SMTP transcript (adapters/smtp/transcript.py): redaction and its bound. No network."""

from __future__ import annotations

import base64

from mailgate.adapters.smtp.transcript import REDACTED, Transcript, redact_command


def test_redaction_of_auth_commands_and_continuations() -> None:
    assert redact_command([b"AUTH", b"PLAIN", b"AGFsaWNlAHB3"], in_auth=False) == (
        f"AUTH PLAIN {REDACTED}"
    )
    assert redact_command([b"AUTH", b"LOGIN"], in_auth=False) == "AUTH LOGIN"
    assert redact_command([b"cGFzc3dvcmQ="], in_auth=True) == REDACTED
    assert redact_command([b""], in_auth=True) == "(empty line)"
    assert redact_command([b"*"], in_auth=True) == "*"
    assert redact_command([b"MAIL", b"FROM:<a@b.c>"], in_auth=False) == "MAIL FROM:<a@b.c>"


def test_transcript_redacts_the_whole_auth_exchange_and_known_secrets() -> None:
    t = Transcript()
    t.add_secret("hunter2-password")
    t.client([b"AUTH", b"LOGIN", b"dXNlcg=="])
    t.server(334, "UGFzc3dvcmQ6")
    t.client([base64.b64encode(b"hunter2-password")])
    t.server(235, "2.7.0 ok")
    t.client([b"MAIL", b"FROM:<x@y.z>"])
    t.server(550, "echoing hunter2-password back\nsecond line")
    joined = "\n".join(t.lines)
    assert "hunter2" not in joined
    assert base64.b64encode(b"hunter2-password").decode() not in joined
    assert t.lines[2] == f"C: {REDACTED}"
    assert t.lines[4] == "C: MAIL FROM:<x@y.z>", "redaction ends with the AUTH exchange"
    assert t.lines[-2:] == [f"S: 550-echoing {REDACTED} back", "S: 550 second line"]


def test_transcript_is_bounded() -> None:
    t = Transcript(limit=3)
    for _ in range(10):
        t.note("x")
    t.client([b"MAIL", b"FROM:<x@y.z>"])
    t.server(250, "ok")
    assert len(t.lines) == 4 and "truncated" in t.lines[-1]
