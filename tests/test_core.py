"""The JetStream core (hub/core) against a real nats-server: statuses, heartbeats, stop, KV mirror, publisher."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import msgspec
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from hub.core.api import Header, Status, consumer_lags, pull_subject, status_of
from hub.core.errors import ConsumerGone, NoStream, PublishRefused, WrongExpectedStream
from hub.core.kv import KVMirror
from hub.core.natsconn import connect
from hub.core.publish import AckBatch, AckedPublisher, parse_ack
from hub.core.pull import PullStream
from tests.helpers import ROOT, unique, wait_for


async def make_stream(js, n: int = 0, ack_wait: float = 30.0) -> tuple[str, str, str]:
    """A stream of its own with ``n`` messages and a durable pull consumer: ``(stream, subject prefix, durable)``."""
    name = unique("CORE").upper()
    prefix = name.lower()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"]))
    await js.add_consumer(name, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait))
    for i in range(n):
        await js.publish(f"{prefix}.m", str(i).encode())
    return name, prefix, "c"


async def request_status(nc, stream: str, durable: str, request: dict) -> object:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(pull_subject(stream, durable), msgspec.json.encode(request), reply=inbox)
    try:
        return await sub.next_msg(timeout=5)
    finally:
        await sub.unsubscribe()


async def test_named_status_codes(nc, js):
    stream, _, durable = await make_stream(js)
    empty = await request_status(nc, stream, durable, {"batch": 5, "no_wait": True})
    assert status_of(empty) == Status.NO_MESSAGES
    expired = await request_status(nc, stream, durable, {"batch": 5, "expires": int(0.2e9)})
    assert status_of(expired) == Status.REQUEST_TIMEOUT
    assert expired.headers[Header.PENDING_MESSAGES] == "5"  # what the ended request still owed
    beat = await request_status(nc, stream, durable, {"batch": 1, "expires": int(2e9), "idle_heartbeat": int(0.2e9)})
    assert status_of(beat) == Status.CONTROL and beat.headers[Header.DESCRIPTION] == "Idle Heartbeat"


async def test_stored_message_with_forged_status_is_data(nc, js):
    stream, prefix, durable = await make_stream(js)
    await js.publish(f"{prefix}.m", b"", headers={"Status": "408"})
    pull = await PullStream(nc, stream, durable, batch=10).start()
    msgs = await asyncio.wait_for(pull.__anext__(), 5)
    assert [m.headers["Status"] for m in msgs] == ["408"] and msgs[0].reply.startswith("$JS.ACK")
    await msgs[0].ack()
    assert await pull.drain(timeout=0) == []


async def test_stream_delivers_everything_and_refills(nc, js):
    stream, prefix, durable = await make_stream(js, 25)
    pull = await PullStream(nc, stream, durable, batch=10, threshold=3, max_batch=4).start()
    got = []
    async for msgs in pull:
        assert len(msgs) <= 4
        for m in msgs:
            got.append(int(m.data))
            await m.ack()
        if len(got) == 25:
            pull.stop()
    assert got == list(range(25))
    assert await pull.drain() == []


async def test_room_bounds_what_is_asked_for(nc, js):
    """The deliverer's use: never hold more than ``room()`` allows; ``wake()`` once room was made."""
    stream, prefix, durable = await make_stream(js, 10)
    held: list = []
    pull = await PullStream(nc, stream, durable, batch=10, room=lambda: 3 - len(held)).start()
    held += await asyncio.wait_for(pull.__anext__(), 5)
    await wait_for(lambda: pull.outstanding == 0, what="the 3 asked for delivered")
    while len(held) < 3:
        held += await asyncio.wait_for(pull.__anext__(), 5)
    assert [int(m.data) for m in held] == [0, 1, 2] and pull.outstanding == 0  # no room: nothing more asked
    step = asyncio.ensure_future(pull.__anext__())
    for m in held:
        await m.ack()
    held.clear()
    pull.wake()
    msgs = await asyncio.wait_for(step, 5)
    assert int(msgs[0].data) == 3
    for m in msgs + await pull.drain():
        await m.nak()


async def test_heartbeats_keep_an_idle_request_alive(nc, js):
    stream, prefix, durable = await make_stream(js)
    pull = await PullStream(nc, stream, durable, batch=5, expires=4.0, heartbeat=0.5).start()
    step = asyncio.ensure_future(pull.__anext__())
    await wait_for(lambda: pull.outstanding == 5, what="a request outstanding")
    asked = pull.asked_at
    await wait_for(lambda: pull.last_seen > asked + 0.7, what="idle heartbeats")
    assert pull.asked_at == asked and pull.exact  # heartbeats: no request written off, none re-sent
    await js.publish(f"{prefix}.m", b"late")
    msgs = await asyncio.wait_for(step, 5)
    assert [m.data for m in msgs] == [b"late"]
    await msgs[0].ack()
    started = time.monotonic()
    assert await pull.drain() == []  # the 4 still owed never come: the server drops requests without interest
    assert time.monotonic() - started < 2
    await js.publish(f"{prefix}.m", b"after")
    info = await js.consumer_info(stream, durable)
    assert (info.num_pending, info.num_ack_pending, info.num_waiting) == (1, 0, 0)  # nothing sent into the void


async def test_an_expired_request_is_replaced_at_once(nc, js):
    """No gap without an open request: the 408 itself triggers the next request, not the next idle tick."""
    stream, prefix, durable = await make_stream(js)
    pull = await PullStream(nc, stream, durable, batch=5, expires=2.0, heartbeat=1.0).start()
    step = asyncio.ensure_future(pull.__anext__())
    await wait_for(lambda: pull.outstanding == 5, what="a request outstanding")
    first = pull.asked_at
    await wait_for(lambda: pull.asked_at > first, 5, "the next request")
    assert pull.asked_at - first < 2.0 + 0.5 and pull.outstanding == 5 and pull.exact
    step.cancel()
    await pull.drain()


async def test_stop_hands_back_held_messages_in_order(nc, js):
    stream, prefix, durable = await make_stream(js, 10)
    pull = await PullStream(nc, stream, durable, batch=10, max_batch=1).start()
    first = await asyncio.wait_for(pull.__anext__(), 5)
    await wait_for(lambda: pull.outstanding == 0, what="all 10 delivered")
    started = time.monotonic()
    held = await pull.drain()
    assert time.monotonic() - started < 2  # exact count: nothing more can arrive, no wait for the expiry
    assert [int(m.data) for m in first] == [0] and [int(m.data) for m in held] == list(range(1, 10))
    for m in held:
        await m.nak()
    with pytest.raises(StopAsyncIteration):
        await pull.__anext__()
    again = await PullStream(nc, stream, durable, batch=20, max_batch=20).start()
    redelivered = []
    while len(redelivered) < 9:
        redelivered += [int(m.data) for m in await asyncio.wait_for(again.__anext__(), 5)]
    assert redelivered == list(range(1, 10))  # handed back at once, not after the 30 s ack wait
    await again.drain(timeout=0)


async def test_until_empty_ends_when_everything_is_acked(nc, js):
    stream, prefix, durable = await make_stream(js, 3)
    pull = await PullStream(nc, stream, durable, batch=10, expires=1.0, until_empty=True).start()
    got = []

    async def consume():
        async for msgs in pull:
            for m in msgs:
                got.append(m.data)
                await m.ack()

    await asyncio.wait_for(consume(), 10)
    assert got == [b"0", b"1", b"2"]
    await pull.drain()


async def test_consumer_deleted_raises_consumer_gone(nc, js):
    stream, prefix, durable = await make_stream(js)
    pull = await PullStream(nc, stream, durable, batch=5).start()
    step = asyncio.ensure_future(pull.__anext__())
    await wait_for(lambda: pull.outstanding == 5, what="a request outstanding")
    await js.delete_consumer(stream, durable)
    with pytest.raises(ConsumerGone):
        await asyncio.wait_for(step, 5)
    await pull.drain(timeout=0)


async def test_pulling_a_missing_consumer_raises_consumer_gone(nc, js):
    stream, _, _ = await make_stream(js)
    pull = await PullStream(nc, stream, "nobody", batch=5).start()
    with pytest.raises(ConsumerGone) as gone:  # no responders (503), then the consumer is looked up: absent
        await asyncio.wait_for(pull.__anext__(), 5)
    assert gone.value.code == 503
    await pull.drain(timeout=0)


async def test_iteration_ends_when_the_connection_closes(hub_settings, js):
    stream, prefix, durable = await make_stream(js)
    own = await connect(hub_settings, "core-test")
    pull = await PullStream(own, stream, durable, batch=5, heartbeat=0.2, expires=1.0).start()

    async def consume():
        return [m async for m in pull]

    task = asyncio.ensure_future(consume())
    await wait_for(lambda: pull.outstanding == 5, what="a request outstanding")
    await own.close()
    assert await asyncio.wait_for(task, 5) == []
    assert await pull.drain() == []


async def test_consumer_lags_pages_through_every_consumer(nc, js):
    """The deliverer's lag poll: pending + unacknowledged of each consumer, past the server's 256 per page."""
    name, prefix, _ = await make_stream(js, n=5)
    for start in range(0, 300, 50):
        await asyncio.gather(*(js.add_consumer(name, ConsumerConfig(durable_name=f"d{i}", ack_policy=AckPolicy.EXPLICIT))
                               for i in range(start, start + 50)))
    held = await js.pull_subscribe_bind("d7", stream=name)
    unacked = await held.fetch(2, timeout=5)  # delivered, not acknowledged: still lag
    done = await js.pull_subscribe_bind("d8", stream=name)
    for msg in await done.fetch(2, timeout=5):
        await msg.ack_sync()
    lags = await consumer_lags(nc, name)
    assert len(lags) == 301 and len(unacked) == 2
    assert (lags["c"], lags["d7"], lags["d8"], lags["d299"]) == (5, 5, 3, 5)
    with pytest.raises(RuntimeError, match="stream not found"):
        await consumer_lags(nc, unique("NOSTREAM").upper())


async def test_kv_mirror_ready_changes_and_deletes(js):
    bucket = unique("core_kv")
    kv = await js.create_key_value(bucket=bucket, history=1)
    await kv.put("a", b'{"n": 1}')
    await kv.put("b", b'{"n": 2}')
    await kv.put("bad", b"not json")
    await kv.put("gone", b'{"n": 3}')
    await kv.delete("gone")
    changes = []
    mirror = await KVMirror(js, bucket, msgspec.json.decode, on_change=lambda k, v: changes.append((k, v)),
                            key=str.upper).start()
    assert mirror.ready.done()
    assert mirror.values == {"A": {"n": 1}, "B": {"n": 2}}  # loaded before start() returns; "bad" skipped
    await kv.put("c", b'{"n": 4}')
    await kv.delete("a")
    await kv.purge("b")
    await wait_for(lambda: mirror.values == {"C": {"n": 4}}, what="puts, deletes and purges mirrored")
    assert changes[-3:] == [("C", {"n": 4}), ("A", None), ("B", None)]
    await mirror.stop()


async def test_kv_mirror_of_an_empty_bucket_is_ready(js):
    bucket = unique("core_kv")
    await js.create_key_value(bucket=bucket)
    mirror = await asyncio.wait_for(KVMirror(js, bucket, bytes).start(), 5)
    assert mirror.values == {}
    await mirror.stop()


async def test_publisher_acks_and_precise_errors(nc, js):
    stream, prefix, _ = await make_stream(js)
    pub = await AckedPublisher(nc).start()
    ack = await pub.publish_acked(f"{prefix}.x", b"1", {Header.MSG_ID: "one"})
    assert ack.stream == stream and ack.seq == 1 and not ack.duplicate
    dup = await pub.publish_acked(f"{prefix}.x", b"1", {Header.MSG_ID: "one"})
    assert dup.duplicate and dup.seq == 1
    with pytest.raises(NoStream) as no_stream:
        await pub.publish_acked(unique("nostream") + ".x", b"1")
    assert no_stream.value.code == 503
    with pytest.raises(WrongExpectedStream) as wrong:
        await pub.publish_acked(f"{prefix}.x", b"2", {Header.EXPECTED_STREAM: "ELSEWHERE"})
    assert wrong.value.err_code == 10060 and "expected stream does not match" in wrong.value.description
    await pub.close()


async def test_ack_batch_files_each_result_in_its_slot(nc, js):
    stream, prefix, _ = await make_stream(js)
    pub = await AckedPublisher(nc).start()
    batch = AckBatch()
    for subject in (f"{prefix}.a", unique("nostream") + ".x", f"{prefix}.b"):
        assert await pub.publish(subject, b"1", None, batch) is None
    first, missing, last = await batch.wait(5)
    assert (first.stream, first.seq, last.seq) == (stream, 1, 2)
    assert isinstance(missing, NoStream) and missing.code == 503
    assert not pub.waiting  # every ack was filed
    await pub.close()


async def test_ack_batch_times_out_what_never_came(nc, js):
    stream, prefix, _ = await make_stream(js)
    pub = await AckedPublisher(nc).start()
    await js.delete_stream(stream)
    batch = AckBatch()
    silent = await nc.subscribe(f"{prefix}.>")  # a responder that never answers: no 503, no ack
    await pub.publish(f"{prefix}.a", b"1", None, batch)
    [result] = await batch.wait(0.3)
    assert isinstance(result, TimeoutError)
    pub.forget()
    assert not pub.waiting
    await silent.unsubscribe()
    await pub.close()


def test_parse_ack_never_guesses():
    assert parse_ack(b'{"stream":"S","seq":3}').seq == 3
    # a stream whose name contains "error" is a good ack (the old check searched the bytes for "error")
    assert parse_ack(b'{"stream":"error","seq":1}').stream == "error"
    with pytest.raises(PublishRefused) as refused:
        parse_ack(b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"}}')
    assert (refused.value.code, refused.value.err_code) == (400, 10071)
    with pytest.raises(PublishRefused):
        parse_ack(b"")
    with pytest.raises(NoStream):
        parse_ack(b"", Status.NO_RESPONDERS)


def test_one_protocol_registry():
    from hub.core.protocols import NAMES, PROTOCOLS
    from hub.core.settings import StreamSettings
    from hub.core.streams import stream_configs
    from hub.core.subjects import PROTOCOL_STREAMS
    from hub.translate import openedx, supported

    assert NAMES == ("xapi", "caliper", "cloudevents")
    # a translator for each protocol, under the same name: tracking events, Open edX Events, or both
    assert all(supported(name) or openedx.supported(name) for name in NAMES)
    assert not supported("cloudevents") and openedx.supported("cloudevents")
    configs = {c.name: c.subjects for c in stream_configs(StreamSettings())}
    for p in PROTOCOLS.values():
        assert PROTOCOL_STREAMS[p.name] == p.stream and configs[p.stream] == [f"{p.prefix}.>"]


def _modules_after(code: str) -> set[str]:
    """Top-level packages imported by ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_the_hub_imports_no_portal_packages():
    """`rthub hub` loads only its own module: no Litestar, no piccolo (commands load lazily)."""
    for code in ("import hub.route.service",
                 "from hub.cli import build_parser\nbuild_parser('hub').parse_args(['hub', '--batch-size', '7'])"):
        loaded = _modules_after(code)
        assert "hub" in loaded and not loaded & {"litestar", "piccolo", "portal", "jinja2"}, (code, loaded)


def test_layering_contracts_hold():
    """The import-linter contracts of pyproject.toml (the kernel imports nothing of the project, hub layers, pure
    translation, no portal in the hub, portal layers), so the test command alone catches a wrong import; sees
    imports inside functions too, which the checks below (modules loaded) cannot."""
    from pathlib import Path

    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "import-linter is missing: pip install -e '.[test]'"
    done = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and " 0 broken" in done.stdout, done.stdout[-3000:]


def test_translate_is_pure():
    loaded = _modules_after("import hub.translate")
    assert "hub" in loaded and not loaded & {"nats", "asyncio"}, loaded


def test_lazy_commands_table_matches_the_parsers():
    """``hub.cli.COMMANDS`` names exactly the subcommands each module registers (else a command would not load)."""
    import argparse

    from hub.cli import COMMANDS, build_parser

    def names(parser: argparse.ArgumentParser) -> set[str]:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return set(action.choices)

    assert names(build_parser()) == {n for ns in COMMANDS.values() for n in ns}
    for module, commands in COMMANDS.items():
        for command in commands:
            assert names(build_parser(command)) == set(commands), module


async def test_a_timed_out_flush_does_not_end_the_read_loop(tmp_path):
    """nats-py 2.16 leaves a timed-out flush's future behind; the late PONG killed the read loop, silently (the
    connection said "connected" and never read again). A server stopped with SIGSTOP makes the flush time out."""
    import os
    import signal

    import nats.errors

    from hub.core.settings import HubSettings
    from hub.ops.natsserver import NatsServer, free_port

    server = NatsServer(free_port(), tmp_path / "nats", name="flush").start()
    try:
        nc = await connect(HubSettings(nats_url=server.url), "flush-test")
        got = []

        async def on_msg(msg) -> None:
            got.append(msg.data)

        await nc.subscribe("echo", cb=on_msg)
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(nats.errors.TimeoutError):
                await nc.flush(timeout=0.3)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await nc.flush(timeout=5)  # the late PONG of the first flush arrives first: the read loop must survive it
        assert not nc._reading_task.done(), "the read loop ended"
        await nc.publish("echo", b"still reading")
        await wait_for(lambda: got == [b"still reading"], 5, "a message after the timed-out flush")
        await nc.close()
    finally:
        server.stop()


def test_commands_run_on_uvloop():
    """``rthub`` (hub.cli.main) sets uvloop's policy before running a command (server extra; measured faster)."""
    code = "import asyncio, hub.cli; print(hub.cli.use_uvloop(), type(asyncio.new_event_loop()).__module__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "uvloop"], out.stderr


async def test_inline_subscription_still_finds_the_nats_py_internals_it_replaces(nc):
    """hub/core/inline.py swaps a subscription's private ``_pending_queue`` (an ``asyncio.Queue``) and resets
    ``_pending_size``; without them it silently falls back to a slower callback subscription. This fails when
    a nats-py release renames them (pyproject pins nats-py below 2.17 for that reason)."""
    from hub.core.inline import _Inline, subscribe_inline

    plain = await nc.subscribe(unique("plain"))
    assert isinstance(plain._pending_queue, asyncio.Queue) and isinstance(plain._pending_size, int)
    await plain.unsubscribe()
    got: list[bytes] = []
    subject = unique("inline")
    sub = await subscribe_inline(nc, subject, lambda msg: got.append(msg.data))
    assert isinstance(sub._pending_queue, _Inline)  # the fast path, not the fallback
    await nc.publish(subject, b"one")
    await nc.flush()
    await wait_for(lambda: got == [b"one"], what="the inline handler called")
    assert sub._pending_size == 0
    await sub.unsubscribe()
