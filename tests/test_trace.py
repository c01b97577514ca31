"""W3C trace context end to end (issue 24): a ``traceparent`` set at the LMS ``send()`` (or made there when the
event has none) travels through the spool-less publish, the hub and the deliverer to the webhook request and
the attempt log with its trace id unchanged; on a real nats-server with the real backend, hub, deliverer and an
HTTP receiver."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec
import pytest

from hub.core import trace
from hub.core.grants import Grant, Target, put_grant
from hub.core.settings import HubSettings
from hub.core.subjects import TARGETS_BUCKET
from hub.route.service import serve
from lms_publisher.backend import NatsBackend
from lms_publisher.codec import Record
from lms_publisher.spool import decode_line, encode_records
from tests.deliver_kit import deliverer
from tests.deliver_receivers import Receiver
from tests.helpers import unique, wait_for

COURSE = "course-v1:Trace+T1+run"


def test_traceparent_rules():
    tp = trace.new()
    assert trace.valid(tp) == tp and trace.valid("00-" + "0" * 32 + "-" + "1" * 16 + "-01") is None
    assert trace.valid("01-abc") is None and trace.valid(None) is None
    kid = trace.child(tp)
    assert trace.trace_id(kid) == trace.trace_id(tp) and kid != tp and kid.endswith("-01")
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace.of_event({"context": {"traceparent": given}}) == given
    assert trace.valid(trace.of_event({"context": {"traceparent": "junk"}}))


def test_spool_lines_keep_the_trace_and_read_old_lines():
    rec = Record("lms.s.o.c.e", "abc", b'{"a": 1}', trace.new())
    assert decode_line(encode_records([rec])) == rec
    assert decode_line(b'lms.s.o.c.e abc {"a": 1}\n') == Record("lms.s.o.c.e", "abc", b'{"a": 1}', "")


def event(tp: str | None, n: int) -> dict:
    ctx = {"course_id": COURSE, "org_id": "Trace", "user_id": 7, "username": "ada", "session": "s1",
           "event_source": "browser", "path": "/event"}
    if tp:
        ctx["traceparent"] = tp
    return {"name": "play_video", "timestamp": dt.datetime.now(dt.UTC).isoformat(), "context": ctx,
            "data": {"id": "0b9e39477cf34507a7a48f74be381fdd", "code": "html5", "currentTime": n, "duration": 60}}


@pytest.mark.asyncio
async def test_traceparent_from_send_arrives_at_the_receiver_and_in_the_attempt_log(nats_server, nc, js, tmp_path):
    site, gid = unique("tr"), unique("g")
    rx = await Receiver().start()
    settings = HubSettings(nats_url=nats_server.url, data_dir=str(tmp_path / "hub"), id_secret="s", metrics_port=-1,
                           sites={site: "https://lms.trace.example"})
    stop = asyncio.Event()
    hubs: list = []
    task = asyncio.create_task(serve(settings, stop, ready=hubs.append))
    backend = NatsBackend(nats_url=nats_server.url, spool_dir=str(tmp_path / "spool"), site=site,
                          allow_events=["play_video"])
    try:
        await wait_for(lambda: hubs, 15, "hub start")
        kv = await js.key_value(TARGETS_BUCKET)
        await kv.put(gid, msgspec.json.encode(Target(id=gid, kind="webhook", url=rx.url + "/t", secrets=[])))
        await put_grant(js, Grant(id=gid, consumer="c", protocol="xapi", sites=[site], delivery="webhook"))
        async with deliverer(nc, nats_server.url) as d:
            await wait_for(lambda: gid in d.runners, 10, "deliverer runs the integration")
            given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            backend.send(event(given, 1))  # the LMS names its trace
            backend.send(event(None, 2))  # no trace: send() starts one
            await wait_for(lambda: len(rx.requests) >= 2, 20, "both statements delivered")
            sent = {r.json()["result"]["extensions"]["https://w3id.org/xapi/video/extensions/time"]:
                    r.headers.get("traceparent") for r in rx.requests}
            assert trace.trace_id(sent[1]) == "4bf92f3577b34da6a3ce929d0e0e4736"
            assert sent[1] != given  # the hub's own span, same trace
            assert trace.valid(sent[2]) and trace.trace_id(sent[2]) != trace.trace_id(given)

            async def logged() -> bool:
                status = await d_status(js, gid)
                return {trace.trace_id(a.get("trace")) for a in status} >= {trace.trace_id(sent[1]),
                                                                             trace.trace_id(sent[2])}

            await wait_for(logged, 10, "the trace ids in the attempt log")
    finally:
        backend.close()
        stop.set()
        await asyncio.wait_for(task, 15)
        await rx.stop()


async def d_status(js, gid: str) -> list[dict]:
    from hub.deliver.state import attempt_log
    from hub.deliver.state.records import unpack

    out: list[dict] = []
    async for msg in attempt_log.scan(js, gid, 0, 1000):
        out.extend(unpack(msg.data))
    return out
