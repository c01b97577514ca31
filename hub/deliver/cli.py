"""``rthub deliver`` (the service) and the delivery operator tools."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

import msgspec

from hub.core.delivery_kinds import is_push
from hub.core.settings import from_env
from hub.deliver.settings import DeliverSettings

log = logging.getLogger("rthub.deliver")


def add_parser(sub) -> None:
    p = sub.add_parser("deliver", help="push statements to webhooks, xAPI LRSs and Caliper endpoints")
    p.add_argument("--nats-url", help="NATS URL(s), comma-separated (default RTHUB_NATS_URL)")
    p.add_argument("--metrics-port", type=int, help="serve /metrics and /health here; 0 picks a free port, -1 none")
    p.set_defaults(func=run_deliver)

    p = sub.add_parser("deadletters", help="list or redrive an integration's dead letters")
    dl = p.add_subparsers(dest="action", required=True)
    q = dl.add_parser("list", help="dead letters of an integration with their reasons")
    q.add_argument("integration")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.set_defaults(func=lambda a: _run(_list_dead(a)))
    q = dl.add_parser("redrive", help="send dead letters back for delivery")
    q.add_argument("integration")
    q.add_argument("--seq", type=int, action="append", help="only this dead letter (repeatable)")
    q.add_argument("--since", help="only those failed since (ISO time or age such as 2h)")
    q.add_argument("--until", help="only those failed until (ISO time or age)")
    q.set_defaults(func=lambda a: _run(_redrive(a)))

    p = sub.add_parser("replay", help="deliver an integration's statements again since a time (same ids)")
    p.add_argument("--integration", required=True)
    p.add_argument("--since", required=True, help="ISO time (2024-05-01T10:00:00Z) or age (2h, 3d)")
    p.set_defaults(func=lambda a: _run(_replay(a)))

    p = sub.add_parser("test-event", help="send a test statement to an integration's endpoint")
    p.add_argument("integration")
    p.set_defaults(func=lambda a: _run(_test_event(a)))

    p = sub.add_parser("delivery-status", help="delivery counters, lag, errors and recent attempts")
    p.add_argument("integration")
    p.set_defaults(func=lambda a: _run(_status(a)))


def _settings(args) -> DeliverSettings:
    return from_env(DeliverSettings, nats_url=getattr(args, "nats_url", None),
                    metrics_port=getattr(args, "metrics_port", None))


def _run(coro) -> int:
    return asyncio.run(coro)


async def _js(settings: DeliverSettings):
    from hub.core.natsconn import connect
    from hub.core.streams import ensure_streams
    from hub.deliver.state.setup import ensure_delivery

    nc = await connect(settings, "rthub-deliver-cli", max_reconnect_attempts=2)
    js = nc.jetstream()
    await ensure_streams(js, settings)
    await ensure_delivery(js, settings)
    return nc, js


async def _on_js(args, work):
    """``(work(js), 0)`` on a fresh connection; what the integration cannot do (``LookupError``: unknown, nothing
    to replay) is printed and answered with exit code 2."""
    nc, js = await _js(_settings(args))
    try:
        return await work(js), 0
    except LookupError as exc:
        print(f"error: {exc}")
        return None, 2
    finally:
        await nc.close()


async def _list_dead(args) -> int:
    from hub.deliver.actions import list_dead_letters

    nc, js = await _js(_settings(args))
    try:
        rows = await list_dead_letters(js, args.integration)
    finally:
        await nc.close()
    for row in rows:
        if args.json:
            print(msgspec.json.encode(row).decode())
        else:
            print(f"seq={row.seq} failed_at={row.failed_at} id={row.statement_id} status={row.last_status} "
                  f"reason={row.reason!r} response={row.response[:80]!r}")
    if not args.json:
        print(f"{len(rows)} dead letter(s) for {args.integration}")
    return 0


async def _redrive(args) -> int:
    from hub.deliver.actions import parse_time, redrive

    nc, js = await _js(_settings(args))
    try:
        n = await redrive(js, args.integration, seqs=args.seq,
                          since=parse_time(args.since) if args.since else None,
                          until=parse_time(args.until) if args.until else None)
    finally:
        await nc.close()
    print(f"redriven {n} dead letter(s) of {args.integration}")
    return 0


async def _replay(args) -> int:
    from hub.deliver.actions import parse_time, request_replay

    info, rc = await _on_js(args, lambda js: request_replay(js, args.integration, parse_time(args.since)))
    if rc:
        return rc
    how = ("the deliverer sends them now" if is_push(info["delivery"])
           else f"bind a pull subscription to durable {info['consumer']} on stream {info['stream']}")
    print(f"replaying {info['statements']} statement(s) of {args.integration} since {info['since']}: {how}")
    return 0


async def _test_event(args) -> int:
    from hub.deliver.actions import send_test_event

    sid, rc = await _on_js(args, lambda js: send_test_event(js, args.integration))
    if rc:
        return rc
    print(f"test event {sid} queued for {args.integration}; see `rthub delivery-status {args.integration}`")
    return 0


async def _status(args) -> int:
    from hub.deliver.state.integration_status import integration_status

    nc, js = await _js(_settings(args))
    try:
        print(json.dumps(await integration_status(js, args.integration), indent=2))
    finally:
        await nc.close()
    return 0


def run_deliver(args) -> int:
    return asyncio.run(serve(_settings(args)))


async def serve(settings: DeliverSettings, stop: asyncio.Event | None = None) -> int:
    """Run the deliverer until SIGTERM/SIGINT (or ``stop``); unsettled messages are handed back on exit."""
    from hub.core.metrics import Metrics
    from hub.core.natsconn import connect
    from hub.core.streams import ensure_streams
    from hub.deliver.service import Deliverer
    from hub.deliver.state.setup import ensure_delivery

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect(settings, "rthub-deliver")
    js = nc.jetstream()
    await ensure_streams(js, settings)
    await ensure_delivery(js, settings)
    metrics = Metrics("deliver")
    metrics.healthy = lambda: False  # until the deliverer has read its integrations
    port = await metrics.serve(settings.metrics_port, settings.metrics_host) if settings.metrics_port >= 0 else None
    deliverer = await Deliverer(nc, settings, metrics).start()
    metrics.healthy = deliverer.healthy
    log.info("deliverer running (%d integration(s))%s", len(deliverer.runners),
             f", metrics on http://{settings.metrics_host}:{port}/metrics" if port else "")
    await stop.wait()
    log.info("stopping deliverer")
    await deliverer.stop()
    await metrics.close()
    await nc.drain()
    return 0
