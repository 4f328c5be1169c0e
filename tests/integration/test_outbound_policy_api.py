"""The outbound destination policy as a system setting (README "Security model")."""

from __future__ import annotations

from tests.conftest import Api

from mailgate.domain.outbound import OutboundPolicy

SETTINGS = "/api/v1/system/settings"


def test_outbound_policy_is_a_validated_system_setting_that_applies_at_once(api: Api) -> None:
    admin = api.admin_token()
    policy = api.container.outbound_policy
    assert policy() == OutboundPolicy()  # link-local by default
    r = api.request(
        "PUT", SETTINGS, admin, json={"outbound_policy": {"deny_networks": ["10.0.0.0/33"]}}
    )
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["outbound_policy.deny_networks.0"]

    api.make_tenant(admin, "acme")
    tenant_admin = api.make_user(admin, "ann", {"acme": "admin"})
    r = api.request("PUT", SETTINGS, tenant_admin, json={"outbound_policy": {"deny_networks": []}})
    assert r.status_code == 403
    assert policy().refusal("169.254.169.254") is not None

    deny = ["169.254.0.0/16", "127.0.0.1", "10.1.2.3/8"]
    r = api.request("PUT", SETTINGS, admin, json={"outbound_policy": {"deny_networks": deny}})
    assert r.status_code == 200, r.text
    stored = ["169.254.0.0/16", "127.0.0.1/32", "10.0.0.0/8"]
    assert r.json()["outbound_policy"] == {"deny_networks": stored}
    assert api.request("GET", SETTINGS, admin).json()["outbound_policy"]["deny_networks"] == stored
    assert policy().refusal("127.0.0.1") is not None  # this process: at once
    assert policy().refusal("fe80::1") is None
