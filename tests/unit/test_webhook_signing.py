"""Standard Webhooks signatures (README "Webhooks"), pinned to the specification's own test
vector, and the address rules of webhook destinations."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from mailgate.adapters.webhooks import new_secret, signature_headers
from mailgate.domain.addresses import without_private
from mailgate.domain.events import next_try
from mailgate.domain.outbound import OutboundPolicy

# The specification's test vector (the Standard Webhooks specification's example, also in
# its reference libraries' tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_specifications_vector() -> None:
    headers = signature_headers(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
    assert headers == {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": SPEC_SIGNATURE,
    }


def test_a_new_secret_signs_what_an_independent_verifier_accepts() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert new_secret() != secret
    body = '{"type":"message.sent","data":{"subject":"Ø"}}'.encode()
    now = int(time.time())
    headers = signature_headers(secret, "evt_1", now, body)
    # The HMAC by hand, as the API documentation describes it.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, b"evt_1." + str(now).encode() + b"." + body, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    assert Webhook(secret).verify(body, headers)["data"]["subject"] == "Ø"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    webhooks = without_private(OutboundPolicy.of([]))
    assert webhooks.refusal(address) is not None
    assert OutboundPolicy.of([]).refusal(address) is None  # the rule is the webhooks' own


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_public_addresses_pass(address: str) -> None:
    assert without_private(OutboundPolicy.of([])).refusal(address) is None


def test_the_installations_denied_networks_apply_on_top() -> None:
    installation = OutboundPolicy.of(["93.184.0.0/16"])
    webhooks = without_private(installation)
    assert webhooks.refusal("93.184.215.14") is not None
    assert webhooks.refusal("127.0.0.1") is not None
    assert webhooks.refusal("8.8.8.8") is None


def test_retries_back_off_for_24_hours() -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    gaps = []
    now, attempts = t0, 0
    while True:
        attempts += 1
        when = next_try(attempts, t0, now)
        if when is None:
            break
        gaps.append(when - now)
        now = when
    assert gaps[:4] == [timedelta(seconds=s) for s in (30, 60, 120, 240)]
    assert max(gaps) == timedelta(hours=1)
    assert timedelta(hours=23) <= now - t0 <= timedelta(hours=24)
