"""The auth store on disk (a temporary directory, no server): persistence, re-issue, revocation bookkeeping."""

from __future__ import annotations

import os
import stat

import pytest

from hub.auth import AuthStore, jwt
from hub.core.creds import creds_jwt
from hub.core.grants import Grant


def test_service_revocations_accumulate_in_the_data_account(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    keys = [jwt.decode(creds_jwt(auth.service_creds(s).read_text()))["sub"] for s in ("hub", "deliverer")]
    first = jwt.decode(auth.add_revocations(keys[:1]))
    assert first["iss"] == auth.signing_pub and first["sub"] == auth.hub_pub  # signing key, not the operator
    second = jwt.decode(auth.add_revocations(keys[1:]))
    assert set(second["nats"]["revocations"]) == set(keys)
    assert second["iat"] > first["iat"]  # strictly newer, so the resolver takes it
    assert second["nats"]["exports"] == first["nats"]["exports"]  # revocation keeps the subscriber exports
    assert AuthStore.ensure(tmp_path).revocations().keys() == set(keys)


def test_each_direct_subscriber_gets_its_own_account_with_exact_imports(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    grant = Grant(id="g1", consumer="acme", protocol="xapi", sites=["s"], courses=["course-v1:O+A+1"])
    with pytest.raises(RuntimeError, match="not open"):
        auth.consumer_creds(grant)  # no account yet: no user
    tenant = jwt.decode(auth.open_tenant(grant))
    assert tenant["iss"] == auth.signing_pub and tenant["sub"] != auth.hub_pub
    assert "mem_storage" not in tenant["nats"]["limits"]  # no JetStream of its own
    imports = {(i["type"], i["subject"]) for i in tenant["nats"]["imports"]}
    assert imports == {("service", "$JS.API.CONSUMER.MSG.NEXT.XAPI.rthub_g1"), ("service", "$JS.ACK.XAPI.rthub_g1.>"),
                       ("service", "$JS.API.CONSUMER.MSG.NEXT.XAPI.rthub_g1_replay"),
                       ("service", "$JS.ACK.XAPI.rthub_g1_replay.>"),
                       ("service", "$JS.API.CONSUMER.INFO.XAPI.rthub_g1"),  # issue 24: under the API prefix
                       ("stream", "xapi.s.*.course-v1:O+A+1.*")}
    local = {i.get("local_subject") for i in tenant["nats"]["imports"]} - {None}
    assert local == {"JS.rthub.API.CONSUMER.INFO.XAPI.rthub_g1", "JS.rthub.API.CONSUMER.MSG.NEXT.XAPI.rthub_g1"}
    for imp in tenant["nats"]["imports"]:
        act = jwt.decode(imp["token"])  # signed by the data account, for this account and this subject only
        assert (act["iss"], act["sub"], act["nats"]["subject"], imp["account"]) == (
            auth.hub_pub, tenant["sub"], imp["subject"], auth.hub_pub)
    exports = jwt.decode(auth.hub_jwt)["nats"]["exports"]
    assert all(e["token_req"] for e in exports)  # private: an activation is required
    text, user = auth.consumer_creds(grant, expires_in=60)
    user_claims = jwt.decode(creds_jwt(text))
    assert user_claims["iss"] == tenant["sub"] and user_claims["sub"] == user
    assert "_INBOX.>" not in user_claims["nats"]["sub"]["allow"]
    assert auth.tenant_jwts() == {tenant["sub"]: (tmp_path / "nats-auth" / "tenants" / "g1.jwt").read_text()}
    assert tenant["sub"] in auth.server_config(tmp_path / "resolver")  # preloaded into servers


def test_a_closed_account_gets_no_user_and_a_revoked_one_never_reopens(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    grant = Grant(id="g1", consumer="acme", protocol="caliper", courses=["c"])
    auth.open_tenant(grant)
    auth.consumer_creds(grant)
    suspended = jwt.decode(auth.close_tenant("g1", final=False))
    assert "imports" not in suspended["nats"] and "*" in suspended["nats"]["revocations"]
    with pytest.raises(RuntimeError, match="not open"):
        auth.consumer_creds(grant)
    reopened = jwt.decode(auth.open_tenant(grant))  # resume
    assert reopened["nats"]["revocations"]["*"] == suspended["nats"]["revocations"]["*"]  # old users stay cut
    text, _ = auth.consumer_creds(grant)
    assert jwt.decode(creds_jwt(text))["iat"] > reopened["nats"]["revocations"]["*"]  # the new one is not
    auth.close_tenant("g1", final=True)
    with pytest.raises(RuntimeError, match="for good"):
        auth.open_tenant(grant)
    auth.close_tenant("never", final=True)  # a tombstone: nothing racing can open it later
    with pytest.raises(RuntimeError, match="for good"):
        auth.open_tenant(Grant(id="never", consumer="x", protocol="xapi", courses=["c"]))


def test_an_older_store_is_upgraded_and_its_data_account_users_revoked(tmp_path):
    """Stores of earlier versions: no signing key, no exports, consumer users inside HUB (listed in
    expiries.json). Upgrading adds the key, the exports, and revokes those users."""
    auth = AuthStore.ensure(tmp_path)
    folder = tmp_path / "nats-auth"
    legacy_user = "U" + "A" * 55
    (folder / "operator-signing.nk").unlink()
    op = auth.operator_seed
    old_hub = jwt.encode(jwt.account_claims("HUB", auth.hub_pub, jetstream=True), op)
    (folder / "HUB.jwt").write_text(old_hub)
    claims = jwt.decode(auth.operator_jwt)
    claims["nats"].pop("signing_keys")
    (folder / "operator.jwt").write_text(jwt.encode({k: v for k, v in claims.items() if k != "jti"}, op))
    import json
    import time
    (folder / "expiries.json").write_text(json.dumps({legacy_user: int(time.time()) + 3600}))
    upgraded = AuthStore.ensure(tmp_path)
    assert jwt.decode(upgraded.operator_jwt)["nats"]["signing_keys"] == [upgraded.signing_pub]
    hub = jwt.decode(upgraded.hub_jwt)
    assert hub["iss"] == upgraded.signing_pub and hub["nats"]["exports"]
    assert legacy_user in hub["nats"]["revocations"]
    assert not (folder / "expiries.json").exists()


def test_invalid_keys_are_rejected_and_nothing_changes(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    before = auth.hub_jwt
    with pytest.raises(ValueError):
        auth.add_revocations(["ADP53QXGMVJPG65MQRFOCQYMKS72BAOSRCIEGPLWTIF6NBYLIQKEY7R3"])  # an account key
    assert auth.hub_jwt == before


def test_service_creds_are_reissued_only_when_permissions_change(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    path = auth.service_creds("hub")
    text = path.read_text()
    assert auth.service_creds("hub").read_text() == text
    other = auth.service_creds("hub", hub_consumer="hub2")  # a different durable: new permissions
    assert other.read_text() != text
    claims = jwt.decode(creds_jwt(other.read_text()))
    assert "$JS.API.CONSUMER.MSG.NEXT.LMS_RAW.hub2" in claims["nats"]["pub"]["allow"]
    assert claims["iss"] == auth.hub_pub
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o600


def test_incomplete_store_is_an_error_not_a_silent_new_identity(tmp_path):
    AuthStore.ensure(tmp_path)
    (tmp_path / "nats-auth" / "HUB.nk").unlink()
    with pytest.raises(RuntimeError, match="incomplete"):
        AuthStore.ensure(tmp_path)


def test_no_credential_for_a_suspended_grant(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    with pytest.raises(ValueError, match="suspended"):
        auth.consumer_creds(Grant(id="g2", consumer="acme", protocol="xapi", courses=["c"], status="suspended"))
    with pytest.raises(ValueError, match="suspended"):
        auth.open_tenant(Grant(id="g2", consumer="acme", protocol="xapi", courses=["c"], status="suspended"))


def test_a_revoked_service_credential_is_reissued(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    path = auth.service_creds("publisher")
    leaked = jwt.decode(creds_jwt(path.read_text()))["sub"]
    auth.add_revocations([leaked])
    fresh = jwt.decode(creds_jwt(auth.service_creds("publisher").read_text()))
    assert fresh["sub"] != leaked and fresh["nats"]["pub"]["allow"][0] == "lms.>"


def test_everything_after_set_up_works_without_the_operator_seed(tmp_path):
    """The operator seed can live offline: the signing key signs accounts, so the portal never needs it."""
    auth = AuthStore.ensure(tmp_path)
    (tmp_path / "nats-auth" / "operator.nk").unlink()
    again = AuthStore.ensure(tmp_path)
    grant = Grant(id="g1", consumer="acme", protocol="xapi", courses=["c"])
    tenant = jwt.decode(again.open_tenant(grant))
    assert tenant["iss"] == again.signing_pub
    again.consumer_creds(grant)
    again.close_tenant("g1")
    assert jwt.decode(again.add_revocations([jwt.decode(creds_jwt(again.service_creds("hub").read_text()))["sub"]]))["iss"] == auth.signing_pub
    assert jwt.decode(again.operator_jwt)["nats"]["signing_keys"] == [again.signing_pub]
    with pytest.raises(RuntimeError, match="missing"):
        again.operator_seed  # noqa: B018 - only re-signing the operator JWT would need it
