"""``rthub auth``: operator tools for the NATS trust chain kept in ``<data_dir>/nats-auth``.

Never prints a seed: commands that issue credentials write them to a 0600 file and print its path and the
user's public key (what ``revoke`` needs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from hub.auth.consumers import ensure_consumer, example_subscriber
from hub.auth.permissions import SERVICES
from hub.auth.store import AuthError, AuthStore, write_private
from hub.core.settings import NatsSettings, from_env


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("auth", help="NATS operator-mode credentials: init, service/consumer creds, revoke")
    p.add_argument("--data-dir", help="data directory (default RTHUB_DATA_DIR or .rthub)")
    p.add_argument("--nats-url", help="NATS server(s) for commands that talk to NATS (default RTHUB_NATS_URL)")
    auth_sub = p.add_subparsers(dest="auth_command", metavar="ACTION", required=True)

    a = auth_sub.add_parser("init", help="create (once) or load the operator, SYS and HUB accounts; show keys")
    a.set_defaults(func=_init)

    a = auth_sub.add_parser("server-config", help="print the nats-server config for operator mode")
    a.add_argument("--resolver-dir", help="account JWT directory (default <data-dir>/nats/resolver)")
    a.set_defaults(func=_server_config)

    a = auth_sub.add_parser("creds", help="path of a service's .creds file (created on demand)")
    a.add_argument("service", choices=SERVICES)
    a.add_argument("--hub-consumer", default="hub", help="the hub's durable consumer name (RTHUB_HUB_CONSUMER)")
    a.add_argument("--site", help="publisher only: the LMS site it publishes for (lms.<site>.> only)")
    a.set_defaults(func=_service_creds)

    a = auth_sub.add_parser("consumer-creds", help="issue a direct-subscription credential for a grant")
    a.add_argument("grant_id")
    a.add_argument("--out", required=True, help="file to write the .creds to (mode 0600)")
    a.add_argument("--expires-days", type=float, default=90.0, help="validity in days; 0 = no expiry")
    a.set_defaults(func=_consumer_creds)

    a = auth_sub.add_parser("revoke", help="revoke user public keys (U...) and push the account JWT")
    a.add_argument("user_keys", nargs="+", metavar="USER_KEY")
    a.add_argument("--grant", help="the keys are direct-subscription users of this grant (default: service users)")
    a.set_defaults(func=_revoke)

    a = auth_sub.add_parser("close", help="cut a direct subscriber off: every credential of the grant revoked, "
                                          "its account emptied (for good unless --suspend)")
    a.add_argument("grant_id")
    a.add_argument("--suspend", action="store_true", help="allow reopening later (consumer-creds reopens)")
    a.set_defaults(func=_close)

    a = auth_sub.add_parser("push", help="push the current account JWTs (data account and every direct "
                                         "subscriber's) to the servers (after a restore)")
    a.set_defaults(func=_push)

    a = auth_sub.add_parser("revocations", help="list revoked user keys")
    a.set_defaults(func=_revocations)


def _settings(args) -> NatsSettings:
    return from_env(NatsSettings, data_dir=args.data_dir, nats_url=args.nats_url)


def _store(args) -> AuthStore:
    return AuthStore.ensure(_settings(args).data_path)


def _init(args) -> int:
    auth = _store(args)
    print(f"auth store   {auth.path}")
    print(f"operator     {auth.operator_pub}")
    print(f"system acct  {auth.sys_pub}")
    print(f"data acct    {auth.hub_pub}")
    return 0


def _server_config(args) -> int:
    s = _settings(args)
    auth = AuthStore.ensure(s.data_path)
    print(auth.server_config(args.resolver_dir or s.data_path / "nats" / "resolver"), end="")
    return 0


def _service_creds(args) -> int:
    auth = _store(args)
    known = set(auth.site_jwts())
    print(auth.service_creds(args.service, hub_consumer=args.hub_consumer, site=args.site))
    if args.service == "publisher" and set(auth.site_jwts()) - known:
        print(f"rthub auth: new account for LMS site {args.site}: run `rthub auth push` so running servers know "
              "it (a server configured afterwards has it already)", file=sys.stderr)
    if args.service == "event-bus":
        print("rthub auth: the event bus is a user of its own account LMS-BUS: a server started by an earlier "
              "version learns it with `rthub auth push`", file=sys.stderr)
    return 0


async def _admin_connect(s: NatsSettings, auth: AuthStore):
    from hub.core.natsconn import connect

    if not s.nats_creds:
        s = from_env(NatsSettings, env={}, nats_url=s.nats_url, data_dir=s.data_dir,
                     nats_creds=str(auth.service_creds("admin")))
    return await connect(s, "rthub-auth", max_reconnect_attempts=3)


def _consumer_creds(args) -> int:
    from hub.core.grants import decode_grant
    from hub.core.subjects import GRANTS_BUCKET

    s = _settings(args)
    auth = AuthStore.ensure(s.data_path)

    async def run() -> tuple[str, str, str]:
        nc = await _admin_connect(s, auth)
        try:
            js = nc.jetstream()
            kv = await js.key_value(GRANTS_BUCKET)
            try:
                entry = await kv.get(args.grant_id)
            except Exception:  # noqa: BLE001 - KeyNotFoundError / KeyDeletedError
                raise SystemExit(f"no grant {args.grant_id!r} in {GRANTS_BUCKET}") from None
            grant = decode_grant(entry.value)
            if not grant.active:
                raise SystemExit(f"grant {grant.id} is {grant.status}: no credential issued")
            consumer = await ensure_consumer(js, grant)
            claims = auth.tenant_claims(grant.id)
            if claims is None or (not claims["nats"].get("imports")
                                  and "rthub-closed" not in claims["nats"].get("tags", [])):
                await auth.activate_consumer(nc, grant)  # new, or suspended: the grant is active again
            text, user_pub = auth.consumer_creds(grant, args.expires_days * 86400 if args.expires_days else None)
            return text, user_pub, example_subscriber(grant, consumer, s.nats_url, os.path.basename(args.out))
        finally:
            await nc.close()

    try:
        text, user_pub, example = asyncio.run(run())
    except AuthError as exc:
        print(f"rthub auth consumer-creds: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out)
    write_private(out, text)
    print(f"wrote {out} (user {user_pub}; revoke with: rthub auth revoke {user_pub})")
    print("example subscriber:\n" + example, end="")
    return 0


def _push_with(args, keys: list[str] | None) -> int:
    s = _settings(args)
    auth = AuthStore.ensure(s.data_path)
    grant = getattr(args, "grant", None)

    async def run() -> dict:
        if keys and grant:
            token = auth.revoke_tenant_users(grant, keys)
            if token is None:
                raise ValueError(f"grant {grant} has no direct-subscription account")
            return (await auth.push(None, [token], servers=s.servers))[0]
        if keys:
            auth.add_revocations(keys)
        return await auth.push_account(None, servers=s.servers, tenants=not keys)

    try:
        answer = asyncio.run(run())
    except (OSError, TimeoutError, RuntimeError) as exc:
        print(f"rthub auth: could not push the account JWT to {s.nats_url}: {exc}", file=sys.stderr)
        if keys:
            print("the revocation is saved and is applied when the servers next load the account "
                  "(rthub auth push, or restart)", file=sys.stderr)
        return 1
    print(f"{'revoked ' + ', '.join(keys) + '; ' if keys else ''}account JWT pushed: "
          f"{answer.get('message', answer)}")
    return 0


def _revoke(args) -> int:
    try:
        return _push_with(args, list(args.user_keys))
    except ValueError as exc:
        print(f"rthub auth revoke: {exc}", file=sys.stderr)
        return 2


def _close(args) -> int:
    s = _settings(args)
    auth = AuthStore.ensure(s.data_path)
    token = auth.close_tenant(args.grant_id, final=not args.suspend)
    try:
        asyncio.run(auth.push(None, [token], servers=s.servers))
    except (OSError, TimeoutError, RuntimeError) as exc:
        print(f"rthub auth close: saved, but could not push to {s.nats_url}: {exc} (rthub auth push)", file=sys.stderr)
        return 1
    print(f"closed direct access of {args.grant_id}{'' if args.suspend else ' for good'}")
    return 0


def _push(args) -> int:
    return _push_with(args, None)


def _revocations(args) -> int:
    for key, when in sorted(_store(args).revocations().items()):
        print(f"{key}\t{when}")
    return 0
