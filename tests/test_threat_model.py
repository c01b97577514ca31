"""Rows of docs/security.md not covered by a test of their own elsewhere, against a real operator-mode server.

The portal's service user manages consumers and writes grants but never reads statements; the admin user is
the only unrestricted one and exists only on the hub's hosts; a message over the server's 1 MB payload limit
never leaves a publisher.
"""

from __future__ import annotations

import asyncio

import nats
from nats.js.api import ConsumerConfig

from hub.auth import AuthStore
from hub.auth import jwt as njwt
from hub.core.creds import creds_inbox_prefix, creds_jwt
from hub.core.events import MAX_EVENT_BYTES
from hub.core.grants import Grant, put_grant
from hub.core.subjects import GRANTS_BUCKET, subject
from tests.helpers import unique, wait_for
from tests.operator_kit import operator_fixtures
from tests.test_auth_nats import Probe

data_dir, op_server, admin_nc = operator_fixtures("threats")


async def test_the_portal_user_manages_consumers_and_grants_but_reads_no_statement(
    op_server, data_dir, admin_nc
):
    auth = AuthStore.ensure(data_dir)
    creds = auth.service_creds("portal")
    portal = await Probe().connect(op_server.url, str(creds), creds_inbox_prefix(creds))
    try:
        pjs = portal.nc.jetstream()
        name = unique("c")
        await pjs.add_consumer("XAPI", ConsumerConfig(durable_name=name, filter_subject="xapi.s.*.*.*"))
        await put_grant(pjs, Grant(id=unique("g"), consumer="c", protocol="xapi", sites=["s"]))
        await admin_nc.jetstream().publish(subject("xapi", "s", "O", "c", "e"), b"{}")
        for subj in (
            f"$JS.API.CONSUMER.MSG.NEXT.XAPI.{name}",
            subject("xapi", "s", "O", "c", "forged"),
            subject("lms", "s", "O", "c", "forged"),
            "$JS.API.STREAM.PURGE.XAPI",
            "$JS.API.STREAM.DELETE.LMS_RAW",
            "$SYS.REQ.CLAIMS.UPDATE",
        ):
            await portal.nc.publish(subj, b"{}")
            await wait_for(lambda s=subj: portal.violated(s), 5, f"portal refused on {subj}")
        await portal.nc.subscribe("xapi.>")
        await wait_for(lambda: portal.violated('"xapi.>"'), 5, "portal refused a live subscription")
        assert sorted(await (await admin_nc.jetstream().key_value(GRANTS_BUCKET)).keys())
    finally:
        await portal.close()


async def test_only_the_admin_user_is_unrestricted_and_every_other_user_has_a_private_inbox(data_dir):
    auth = AuthStore.ensure(data_dir)
    for service in ("hub", "deliverer", "portal", "admin"):
        claims = njwt.decode(creds_jwt(auth.service_creds(service).read_text()))["nats"]
        if service == "admin":
            assert claims["pub"] == {} and claims["sub"] == {}
            continue
        assert claims["pub"]["allow"] and ">" not in claims["pub"]["allow"]
        assert [s for s in claims["sub"]["allow"] if s.startswith("_INBOX")] == [f"_INBOX_svc_{service}.>"]
    publisher = njwt.decode(creds_jwt(auth.service_creds("publisher", site="a").read_text()))
    assert publisher["iss"] != auth.hub_pub and publisher["nats"]["pub"]["allow"] == ["lms.a.>"]


async def test_a_publisher_cannot_send_a_message_larger_than_the_largest_raw_event(
    op_server, data_dir, admin_nc
):
    auth = AuthStore.ensure(data_dir)
    creds = auth.service_creds("publisher")  # the all-sites publisher's account exists from the start
    errors: list[str] = []
    closed = asyncio.Event()

    async def on_error(exc):
        errors.append(str(exc))

    async def on_closed():
        closed.set()

    opts = dict(user_credentials=str(creds), inbox_prefix=creds_inbox_prefix(creds), allow_reconnect=False)
    nc = await nats.connect(op_server.url, error_cb=on_error, closed_cb=on_closed, **opts)
    try:
        await nc.publish(subject("lms", "a", "O", "c", "big"), b"x" * (MAX_EVENT_BYTES + 1))
        await asyncio.wait_for(closed.wait(), 5)  # cut off by the server: Maximum Payload Violation
        assert errors
    finally:
        if not nc.is_closed:
            await nc.close()
    ok = await nats.connect(op_server.url, **opts)
    try:  # the largest event the hub takes still goes through
        ack = await ok.jetstream().publish(
            subject("lms", "a", "O", "c", "max"), b"x" * (MAX_EVENT_BYTES - 1024)
        )
        assert ack.stream == "LMS_RAW"
    finally:
        await ok.close()
