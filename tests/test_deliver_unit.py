"""Pure delivery logic: signatures, SSRF address rules, retry decisions, request building. No I/O."""

from __future__ import annotations

import email.utils
import ipaddress
import json
import random

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from hub.core.grants import Target
from hub.deliver.engine import retry
from hub.deliver.settings import seconds
from hub.deliver.transport import signing, ssrf
from hub.deliver.transport.request import build, caliper_envelope


def test_signature_matches_the_independent_verifier():
    secret = signing.new_secret()
    body = b'{"id": "abc", "x": "\xc3\xa9"}'
    headers = signing.headers([secret], "abc", body)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "other"})


def test_rotation_sends_both_signatures():
    old, new = signing.new_secret(), signing.new_secret()
    headers = signing.headers([new, old], "id1", b"{}", timestamp=1_700_000_000)
    sigs = headers["webhook-signature"].split(" ")
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs)
    assert sigs[0] == signing.signature(new, "id1", 1_700_000_000, b"{}")
    assert signing.secret_key(old) != signing.secret_key(new)


@pytest.mark.parametrize("addr", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "::1", "fe80::1", "fc00::1", "fd12:3456::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::", "224.0.0.1",
    "2002:7f00:1::1", "2002:a00:1::1", "fec0::1",
])
def test_non_public_addresses_are_refused(addr):
    with pytest.raises(ssrf.Refused):
        ssrf.check_address(ipaddress.ip_address(addr), [])


@pytest.mark.parametrize("addr", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(addr):
    ssrf.check_address(ipaddress.ip_address(addr), [])


async def test_refusal_names_the_host_not_its_address():
    with pytest.raises(ssrf.Refused) as refused:
        await ssrf.resolve("http://localhost:1/x", [], False)
    assert str(refused.value) == "localhost: address not allowed (not a public address)"
    assert "127.0.0.1" not in str(refused.value) and "::1" not in str(refused.value)


def test_allowed_networks_open_exactly_their_range():
    allowed = ssrf.networks(["127.0.0.1/32"])
    ssrf.check_address(ipaddress.ip_address("127.0.0.1"), allowed)
    ssrf.check_address(ipaddress.ip_address("::ffff:127.0.0.1"), allowed)
    with pytest.raises(ssrf.Refused):
        ssrf.check_address(ipaddress.ip_address("127.0.0.2"), allowed)


def test_url_rules():
    assert ssrf.check_url("https://h.example/x", True) == ("https", "h.example", 443)
    for url, https_only in (("ftp://h/x", False), ("file:///etc/passwd", False), ("http://h/x", True),
                            ("http://u:p@h/x", False)):
        with pytest.raises(ssrf.Refused):
            ssrf.check_url(url, https_only)
    assert ssrf.pinned_url("https://h.example:8443/a?b=1", ipaddress.ip_address("2001:db8::1")) == \
        "https://[2001:db8::1]:8443/a?b=1"


def test_classify():
    assert retry.classify("webhook", 204) == "delivered"
    assert retry.classify("webhook", 410) == "disable"
    assert retry.classify("webhook", 400) == "retry"
    assert retry.classify("webhook", 409) == "retry"
    assert retry.classify("lrs", 409, 1) == "delivered"
    assert retry.classify("lrs", 409, 3) == "reject"
    assert retry.classify("lrs", 400, 3) == "reject"
    assert retry.classify("caliper", 503) == "retry"


def test_schedule_jitter_and_retry_after():
    schedule = [seconds(x) for x in ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]]
    assert schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]
    rnd = random.Random(1)
    delays = [retry.next_delay(schedule, 2, 0.1, 500, None, 36000, rnd) for _ in range(50)]
    assert all(270 <= d <= 330 for d in delays) and len(set(delays)) > 40
    assert retry.next_delay(schedule, 8, 0.1, 500, None, 36000) is None
    assert retry.next_delay(schedule, 1, 0.0, 429, 42.0, 36000) == 42.0
    assert retry.next_delay(schedule, 1, 0.0, 503, 99999.0, 3600) == 3600
    assert retry.next_delay(schedule, 1, 0.0, 500, 42.0, 36000) == 5  # Retry-After only for 429/503
    assert retry.retry_after("120") == 120
    assert retry.retry_after(email.utils.formatdate(1_000_060, usegmt=True), now=1_000_000) == 60
    assert retry.retry_after("soon") is None


def test_requests_per_kind():
    st = [b'{"id":"a"}', b'{"id":"b"}']
    url, headers, body = build(Target(id="g", kind="lrs", url="https://lrs/x/", basic_auth="k:s"), "xapi", st,
                               ["a", "b"], "s", batch=True)
    assert url == "https://lrs/x/statements" and json.loads(body) == [{"id": "a"}, {"id": "b"}]
    assert headers["x-experience-api-version"] == "1.0.3" and headers["authorization"] == "Basic azpz"
    url, headers, body = build(Target(id="g", kind="caliper", url="https://c/e", bearer="t"), "caliper", st,
                               ["a", "b"], "urn:s", batch=True)
    env = json.loads(body)
    assert env["data"] == [{"id": "a"}, {"id": "b"}] and env["sensor"] == "urn:s"
    assert headers["authorization"] == "Bearer t" and "webhook-id" not in headers
    url, headers, body = build(Target(id="g", kind="webhook", url="https://w/h"), "xapi", st[:1], ["a"], "s",
                               batch=False)
    assert body == st[0] and headers["webhook-id"] == "a" and "webhook-signature" not in headers
    assert json.loads(caliper_envelope([], "s"))["data"] == []


def test_attempt_log_keeps_one_record_per_attempt_packed_per_flush():
    from hub.deliver.state.records import Attempt, pack, unpack

    entries = [Attempt(t=i, ids=[str(i)], attempt=1, outcome="delivered", status=200, seqs=[i],
                       response_body="x" * 1000) for i in range(1, 601)]
    messages = pack(entries, max_bytes=64 * 1024)
    assert len(messages) > 1 and all(len(m) <= 64 * 1024 for m in messages)
    records = [r for m in messages for r in unpack(m)]
    assert [r["ids"] for r in records] == [[str(i)] for i in range(1, 601)]  # none merged, in order
    assert unpack(b'{"t": 1, "ids": ["a"], "attempt": 1, "outcome": "delivered"}')[0]["ids"] == ["a"]  # old records


def test_delivery_kinds_registry_is_the_one_list():
    """Grants, targets, the deliverer and the portal's form all take the kinds from hub.core.delivery_kinds."""
    import typing

    from hub.core.delivery_kinds import KINDS, PUSH, DeliveryName, PushName
    from hub.core.grants import Grant, Target
    from portal.validation import DELIVERIES, DELIVERY_LABELS

    assert set(typing.get_args(DeliveryName)) == set(KINDS) == set(DELIVERIES) == set(DELIVERY_LABELS)
    assert set(typing.get_args(PushName)) == set(PUSH) == {"webhook", "lrs", "caliper"}
    assert Grant.__annotations__["delivery"] in ("Delivery", "DeliveryName") and Target.__annotations__["kind"] == "PushName"
    # The LRS's special answers come from its row: 409 on one statement is "already stored", on a batch a split.
    assert retry.classify("lrs", 409) == "delivered" and retry.classify("lrs", 409, batch_len=5) == "reject"
    assert retry.classify("webhook", 409) == "retry" and retry.classify("caliper", 400) == "retry"


def test_portal_form_takes_protocol_rules_from_the_registry():
    from portal.validation import validate_request

    def delivery_error(delivery: str, protocol: str) -> str | None:
        _, errors = validate_request({"name": "n", "protocol": protocol, "delivery": delivery, "sites": "s",
                                      "url": "https://lrs.example.org/x", "basic_auth": "u:p", "bearer": "t"},
                                     known_sites=["s"])
        return errors.get("delivery")

    assert "xapi" in delivery_error("lrs", "caliper") and "caliper" in delivery_error("caliper", "xapi")
    assert delivery_error("webhook", "caliper") is None and delivery_error("direct", "xapi") is None


def test_no_delivery_kind_is_compared_by_name_outside_the_registry():
    """What a kind is (push, signed, credential, protocols) is asked of hub.core.delivery_kinds; only the request
    builder, which is each kind's own code, branches on the name."""
    import re

    from tests.helpers import ROOT

    literal = re.compile(r"""(delivery|kind)\s*(==|!=)\s*["'](webhook|lrs|caliper|direct)["']"""
                         r"""|(delivery|kind)\s+(not\s+)?in\s+\(["'](webhook|lrs|caliper|direct)["']""")
    allowed = {ROOT / "hub" / "deliver" / "transport" / "request.py"}
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()[:80]}"
             for package in ("hub", "portal", "lms_publisher")
             for path in sorted((ROOT / package).rglob("*")) if path.suffix in (".py", ".html") and path not in allowed
             for n, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert found == []
