"""Admin hints (services/diagnosis/hints.py): by failure kind, then by the server's reply."""

from __future__ import annotations

import pytest

from mailgate.adapters.smtp.replies import SmtpReply
from mailgate.domain.transport import FailureKind
from mailgate.services.diagnosis.hints import KIND_HINTS, hint_for


def _r(code: int, text: str) -> SmtpReply:
    return SmtpReply.parse(code, text)


@pytest.mark.parametrize(
    ("step", "kind", "reply", "expect"),
    [
        ("resolve", "dns", None, "does not resolve"),
        ("connect", "refused", None, "Nothing accepts connections"),
        ("connect", "timeout", None, "did not answer in time"),
        ("tls", "cert_untrusted", None, "tls.ca_certificates_pem"),
        ("tls", "hostname_mismatch", None, "does not name this host"),
        ("tls", "starttls_missing", None, "does not offer STARTTLS"),
        ("auth", "auth_missing", None, "offers no authentication"),
        ("auth", "auth_failed", _r(535, "5.7.3 Authentication unsuccessful"), "rejected the cred"),
        ("auth", "auth_failed", _r(535, "5.7.139 Authentication unsuccessful"), "disabled"),
        ("mail_from", "reply", _r(530, "5.7.0 Must issue a STARTTLS command first"), "STARTTLS"),
        ("mail_from", "reply", _r(530, "5.7.57 Client not authenticated"), "requires auth"),
        (
            "data",
            "reply",
            _r(550, "5.7.60 SMTP; Client does not have permissions to send as this sender"),
            "Send As",
        ),
        ("rcpt_to", "reply", _r(550, "5.7.1 Unable to relay"), "relay"),
        ("rcpt_to", "reply", _r(554, "5.7.1 Relay access denied"), "relay"),
        ("mail_from", "reply", _r(421, "4.3.2 Service not available"), "temporary"),
        ("rcpt_to", "reply", _r(451, "4.7.1 Greylisted"), "temporary"),
        ("data", "reply", _r(552, "5.3.4 Message size exceeds fixed limit"), "larger"),
        ("mail_from", "too_large", None, "larger"),
        ("rcpt_to", "reply", _r(550, "5.1.1 User unknown"), "does not know this recipient"),
    ],
)
def test_hints(step: str, kind: str, reply: SmtpReply | None, expect: str) -> None:
    hint = hint_for(step, FailureKind(kind), reply)
    assert hint is not None and expect in hint


def test_no_hint_for_success_or_unknown() -> None:
    assert hint_for("data", None, _r(250, "2.0.0 OK")) is None
    assert hint_for("data", FailureKind.REPLY, _r(554, "5.6.0 something odd")) is None


def test_every_failure_kind_is_in_the_table() -> None:
    # A new kind must say whether it has advice of its own or leaves it to the reply.
    assert set(KIND_HINTS) == set(FailureKind)


@pytest.mark.parametrize("kind", list(FailureKind))
def test_a_kind_with_advice_gives_it_at_any_step_without_a_reply(kind: FailureKind) -> None:
    advice = KIND_HINTS[kind]
    for step in ("resolve", "connect", "auth", "data", "token", "send"):
        assert hint_for(step, kind, None) == advice


@pytest.mark.parametrize(
    "kind",
    [FailureKind.REPLY, FailureKind.PROTOCOL, FailureKind.AUTH_FAILED, FailureKind.REMOTE],
)
def test_a_kind_without_advice_leaves_it_to_the_reply(kind: FailureKind) -> None:
    assert KIND_HINTS[kind] is None
    reply = _r(535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled")
    assert "Set-CASMailbox" in (hint_for("auth", kind, reply) or "")


def test_the_kind_wins_over_the_reply() -> None:
    reply = _r(421, "4.3.2 Service not available")
    assert (
        hint_for("connect", FailureKind.DISCONNECTED, reply)
        == (KIND_HINTS[FailureKind.DISCONNECTED])
    )
    assert "temporary problem" in (hint_for("connect", FailureKind.REPLY, reply) or "")


def test_quota_and_throttling_replies_say_the_configuration_pauses() -> None:
    quota = _r(554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException")
    assert "quota is used up" in (hint_for("data", FailureKind.REPLY, quota) or "")
    gmail = _r(550, "5.4.5 Daily user sending limit exceeded.")
    assert "quota is used up" in (hint_for("mail_from", FailureKind.REPLY, gmail) or "")
    busy = _r(432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded")
    assert "throttling" in (hint_for("mail_from", FailureKind.REPLY, busy) or "")
    full = _r(452, "4.2.2 The email account that you tried to reach is over quota")
    assert "temporary problem" in (hint_for("rcpt_to", FailureKind.REPLY, full) or "")
