"""Pure tests of the hand-written NATS JWTs and the permission tables (no server, no I/O)."""

from __future__ import annotations

import base64
import json

import pytest

from hub.auth import jwt
from hub.auth.consumers import example_subscriber
from hub.auth.permissions import (
    SERVICES,
    consumer_inbox,
    consumer_permissions,
    service_inbox,
    service_permissions,
)
from hub.core.creds import creds_jwt, inbox_prefix_of
from hub.core.grants import Grant, consumer_name, replay_name


def test_jwt_round_trip_and_field_names():
    op, acc = jwt.new_seed("operator"), jwt.new_seed("account")
    op_pub, acc_pub = jwt.public_key(op), jwt.public_key(acc)
    assert op_pub.startswith("O") and acc_pub.startswith("A") and len(op_pub) == 56
    token = jwt.encode(jwt.account_claims("HUB", acc_pub, jetstream=True, revocations={"UX": 5}, now=100), op)
    head = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert head == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert "=" not in token
    claims = jwt.decode(token)
    assert claims["iss"] == op_pub and claims["sub"] == acc_pub and claims["iat"] == 100
    assert claims["nats"]["type"] == "account" and claims["nats"]["version"] == 2
    limits = claims["nats"]["limits"]
    assert limits["mem_storage"] == -1 and limits["disk_storage"] == -1  # not "memory_storage"
    assert claims["nats"]["revocations"] == {"UX": 5}
    assert len(claims["jti"]) == 52  # base32 sha512/256, as nats-io/jwt


def test_tampered_jwt_is_rejected():
    op = jwt.new_seed("operator")
    token = jwt.encode(jwt.operator_claims("rthub", jwt.public_key(op), "ASYS"), op)
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["nats"]["system_account"] = "AEVIL"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(ValueError, match="signature"):
        jwt.decode(f"{head}.{forged}.{sig}")
    other = jwt.new_seed("operator")
    resigned = jwt.encode(claims, other)  # signed by someone else: iss is theirs, not the operator's
    assert jwt.decode(resigned)["iss"] == jwt.public_key(other) != jwt.public_key(op)


def test_user_claims_and_creds_text():
    acc, user = jwt.new_seed("account"), jwt.new_seed("user")
    token = jwt.encode(jwt.user_claims("u", jwt.public_key(user), ["a.>"], ["b"], expires=2000, now=1000), acc)
    claims = jwt.decode(token)
    assert claims["exp"] == 2000 and claims["nats"]["pub"] == {"allow": ["a.>"]}
    assert claims["nats"]["sub"] == {"allow": ["b"]} and claims["nats"]["type"] == "user"
    none = jwt.decode(jwt.encode(jwt.user_claims("n", jwt.public_key(user), [], []), acc))["nats"]
    assert none["pub"] == {"deny": [">"]} and none["sub"] == {"deny": [">"]}
    text = jwt.creds(token, user)
    assert creds_jwt(text) == token and user.decode() in text


def _grant(**kw) -> Grant:
    base = dict(id="g1", consumer="acme", protocol="xapi", courses=["course-v1:Org+C1+2024"])
    base.update(kw)
    return Grant(**base)


def test_consumer_permissions_name_one_consumer_exactly():
    grant = _grant(sites=["s1"])
    pub, sub = consumer_permissions(grant)
    main, replay = consumer_name("g1"), replay_name("g1")  # its durable and its replay (issue 19, item 3)
    assert pub == [f"$JS.API.CONSUMER.MSG.NEXT.XAPI.{main}", f"$JS.ACK.XAPI.{main}.>",
                   f"$JS.API.CONSUMER.MSG.NEXT.XAPI.{replay}", f"$JS.ACK.XAPI.{replay}.>",
                   # issue 24: its own consumer's info and pull under the JS API prefix (idiomatic clients)
                   f"JS.rthub.API.CONSUMER.INFO.XAPI.{main}", f"JS.rthub.API.CONSUMER.MSG.NEXT.XAPI.{main}"]
    assert "_INBOX.>" not in sub and f"{consumer_inbox('g1')}.>" in sub
    assert grant.filter_subjects() == ["xapi.s1.*.course-v1:Org+C1+2024.*"]
    assert sub[1:] == ["xapi.s1.*.course-v1:Org+C1+2024.*", "xapi.s1.*.course-v1:Org+C1+2024.>"]
    # No wildcard stands where a stream or consumer name goes.
    for subject in pub:
        tokens = subject.split(".")
        assert "*" not in tokens[:6] and ">" not in tokens[:-1]


def test_inbox_prefixes_never_collide():
    names = {consumer_inbox(g) for g in ("hub", "svc_hub", "g1", "g1x")} | {service_inbox(s) for s in SERVICES}
    assert len(names) == 4 + len(SERVICES)
    for a in names:
        for b in names:
            assert a == b or not b.startswith(a + ".")
    assert inbox_prefix_of(["xapi.>", "_INBOX_c_g1.>"]) == "_INBOX_c_g1"
    assert inbox_prefix_of(["_INBOX.>"]) is None


def test_service_permission_tables_are_least_privilege():
    pub, sub = service_permissions("publisher")
    assert pub == ["lms.>"]  # no stream info, no JetStream API at all
    assert service_permissions("publisher", site="lms.example.org")[0] == ["lms.lms~2Eexample~2Eorg.>"]
    assert sub == [f"{service_inbox('publisher')}.>"]
    pub, sub = service_permissions("hub", hub_consumer="hub")
    assert "lms.>" not in pub and {"xapi.>", "caliper.>", "quarantine.>"} <= set(pub)
    assert "$JS.API.CONSUMER.MSG.NEXT.LMS_RAW.hub" in pub and "$JS.API.CONSUMER.MSG.NEXT.LMS_RAW.*" not in pub
    # to move a message never acked to quarantine: its own consumer's advisory and single gets on the raw
    # stream, nothing more (no protocol stream's gets, no direct gets on the raw stream, no other advisory)
    assert sub == [f"{service_inbox('hub')}.>", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.LMS_RAW.hub",
                   "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.OPENEDX_EVENTS.hub_openedx"]
    gets = [p for p in pub if "GET" in p and not any(f".KV_rthub_{b}" in p for b in ("grants", "courses", "groups", "learners"))]
    assert gets == ["$JS.API.STREAM.MSG.GET.LMS_RAW", "$JS.API.STREAM.MSG.GET.OPENEDX_EVENTS"]
    assert service_permissions("hub", hub_consumer="hub2")[1][1].endswith("MAX_DELIVERIES.LMS_RAW.hub2")
    # reads grants, never writes them; writes only the learner group buckets (membership events from the LMS)
    assert {p for p in pub if p.startswith("$KV.")} == {"$KV.rthub_groups.>", "$KV.rthub_learners.>"}
    assert not any("STREAM.DELETE" in p or "STREAM.PURGE" in p for p in pub)
    pub, sub = service_permissions("deliverer")
    assert "dlq.>" in pub and "xapi.>" not in pub and "lms.>" not in pub and "$KV.rthub_grants.>" not in pub
    pub, _ = service_permissions("portal")
    assert "$KV.rthub_grants.>" in pub and "xapi.>" not in pub
    assert not any(p.startswith("$JS.API.CONSUMER.MSG.NEXT.XAPI") for p in pub)
    # delivery operations (issue 10): redrive/resend/test events, one statement by sequence, its own KV keys
    assert {"redrive.>", "$JS.API.STREAM.MSG.GET.XAPI", "$JS.API.STREAM.MSG.DELETE.DEAD_LETTER",
            "$KV.rthub_delivery.replay.>", "$KV.rthub_delivery.retry.>", "$KV.rthub_delivery.failing.>"} <= set(pub)
    assert "$KV.rthub_delivery.>" not in pub and not any(p.startswith("$KV.rthub_delivery.stats") for p in pub)
    assert "attempts.>" not in pub and "dlq.>" not in pub
    assert service_permissions("admin") == (None, None)
    for service in SERVICES[:-1]:
        assert "_INBOX.>" not in service_permissions(service)[1]
    with pytest.raises(ValueError):
        service_permissions("root")


def test_example_subscriber_is_valid_python_with_the_right_names():
    grant = _grant(protocol="caliper")
    code = example_subscriber(grant, "rthub_g1", "nats://hub.example:4222", "acme.creds")
    compile(code, "example.py", "exec")
    assert 'pull_subscribe_bind(durable="rthub_g1", stream="CALIPER")' in code
    assert f'inbox_prefix="{consumer_inbox("g1")}"' in code and "acme.creds" in code
