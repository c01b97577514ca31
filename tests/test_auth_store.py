"""The auth store on disk (a temporary directory, no server): persistence, re-issue, revocation bookkeeping."""

from __future__ import annotations

import os
import stat

import pytest

from hub.auth import AuthStore, jwt
from hub.grants import Grant


def test_revocations_accumulate_and_expired_ones_are_pruned(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    grant = Grant(id="g1", consumer="acme", protocol="xapi", courses=["c"])
    _, short = auth.consumer_creds(grant, expires_in=5)
    _, forever = auth.consumer_creds(grant)
    _, later = auth.consumer_creds(grant, expires_in=3600)
    first = jwt.decode(auth.add_revocations([short, forever, later]))
    assert first["iss"] == auth.operator_pub and first["sub"] == auth.hub_pub
    assert set(first["nats"]["revocations"]) == {short, forever, later}
    now = first["nats"]["revocations"][short]
    # Thirty seconds on, the short credential has expired: its revocation is no longer needed.
    second = jwt.decode(auth.add_revocations([], at=now + 30))
    assert set(second["nats"]["revocations"]) == {forever, later}
    assert second["iat"] > first["iat"]  # strictly newer, so the resolver takes it
    assert AuthStore.ensure(tmp_path).revocations().keys() == {forever, later}


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
    claims = jwt.decode(jwt.creds_jwt(other.read_text()))
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


def test_a_revoked_service_credential_is_reissued(tmp_path):
    auth = AuthStore.ensure(tmp_path)
    path = auth.service_creds("publisher")
    leaked = jwt.decode(jwt.creds_jwt(path.read_text()))["sub"]
    auth.add_revocations([leaked])
    fresh = jwt.decode(jwt.creds_jwt(auth.service_creds("publisher").read_text()))
    assert fresh["sub"] != leaked and fresh["nats"]["pub"]["allow"][0] == "lms.>"
