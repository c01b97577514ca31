"""``rthub grant add|list|revoke``: manage access grants in the grants bucket from the command line."""

from __future__ import annotations

import asyncio
import sys
import uuid

import msgspec

from hub.core.delivery_kinds import DIRECT
from hub.core.grants import Grant, delete_grant, list_grants, put_grant
from hub.core.protocols import NAMES as PROTOCOLS
from hub.ops.nats_cli import add_nats_options, with_js


async def _with_js(args, fn):
    return await with_js(args, fn, "rthub-cli")


def _add(args) -> int:
    grant = Grant(
        id=args.id or "g" + uuid.uuid4().hex[:12], consumer=args.consumer, protocol=args.protocol,
        sites=args.site, orgs=args.org, courses=args.course, event_types=args.event_type, delivery=DIRECT.name,
    )
    try:
        grant.validate()
    except ValueError as exc:
        print(f"rthub grant add: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_with_js(args, lambda js: put_grant(js, grant)))
    print(msgspec.json.encode(grant).decode())
    return 0


def _list(args) -> int:
    for grant in asyncio.run(_with_js(args, list_grants)):
        if args.json:
            print(msgspec.json.encode(grant).decode())
        else:
            scope = " ".join(f"{k}={','.join(getattr(grant, k))}" for k in ("sites", "orgs", "courses", "event_types")
                             if getattr(grant, k))
            print(f"{grant.id}\t{grant.status}\t{grant.protocol}\t{grant.consumer}\t{scope}")
    return 0


def _revoke(args) -> int:
    async def revoke(js):
        known = {g.id for g in await list_grants(js)}
        if args.id not in known:
            return False
        await delete_grant(js, args.id)
        return True

    if not asyncio.run(_with_js(args, revoke)):
        print(f"rthub grant revoke: no grant {args.id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.id}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("grant", help="manage access grants (who may receive what)")
    add_nats_options(p)
    gsub = p.add_subparsers(dest="grant_command", required=True)
    add = gsub.add_parser("add", help="grant a consumer a protocol for sites, orgs and/or courses")
    add.add_argument("--consumer", required=True, help="who receives (name or e-mail)")
    add.add_argument("--protocol", required=True, choices=PROTOCOLS)
    add.add_argument("--id", help="grant id (default: generated)")
    for dim in ("site", "org", "course", "event-type"):
        add.add_argument(f"--{dim}", action="append", default=[], help=f"{dim} covered (repeatable)")
    add.set_defaults(func=_add)
    ls = gsub.add_parser("list", help="list grants")
    ls.add_argument("--json", action="store_true", help="one JSON grant per line")
    ls.set_defaults(func=_list)
    rv = gsub.add_parser("revoke", help="remove a grant; takes effect within a second")
    rv.add_argument("id")
    rv.set_defaults(func=_revoke)
