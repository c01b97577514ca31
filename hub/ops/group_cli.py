"""``rthub group add|add-users|remove-users|show|list|delete|import|retire``: learner groups from the command line.

Writes the ``rthub_groups`` and ``rthub_learners`` buckets (:mod:`hub.core.groups`); the hub and the deliverers
follow them live, so a change applies to the next event within a second or two.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from hub.core.groups import (
    Group,
    change_members,
    check_group_name,
    delete_group,
    get_group,
    list_groups,
    load_membership,
    parse_csv,
    parse_users,
    put_group,
    retire_learner,
)
from hub.ops.nats_cli import add_nats_options, with_js


def _run(args, work) -> int:
    try:
        return int(asyncio.run(with_js(args, work, "rthub-group", ensure_streams_first=True)) or 0)
    except ValueError as exc:
        print(f"rthub group: {exc}", file=sys.stderr)
        return 2


async def _existing(js, name: str) -> Group:
    group = await get_group(js, name)
    if group is None:
        raise ValueError(f"no group {name!r} (create it with: rthub group add {name} --site SITE)")
    return group


def _add(args) -> int:
    async def work(js):
        check_group_name(args.name)
        users = parse_users(args.users)
        have = await get_group(js, args.name)
        if have is not None and have.site != args.site:
            raise ValueError(f"group {args.name!r} exists on site {have.site!r}")
        group = Group(name=args.name, site=args.site, description=args.description or "")
        await put_group(js, group)
        await change_members(js, group, add=users)
        print(f"group {group.name} on site {group.site}: {len(users)} member(s) added")

    return _run(args, work)


def _members(args, add: bool) -> int:
    async def work(js):
        group = await _existing(js, args.name)
        users = parse_users(args.users)
        await change_members(js, group, add=users if add else (), remove=() if add else users)
        print(f"group {group.name}: {len(users)} member(s) {'added' if add else 'removed'}")

    return _run(args, work)


def _import(args) -> int:
    async def work(js):
        group = await _existing(js, args.name)
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        rows = parse_csv(text)
        identities = {uid: (username, email) for uid, username, email in rows if username or email}
        await change_members(js, group, add=[uid for uid, _, _ in rows], identities=identities)
        print(f"group {group.name}: {len(rows)} member(s) imported")

    return _run(args, work)


def _show(args) -> int:
    async def work(js):
        group = await _existing(js, args.name)
        members = [uid for site, uid in (await load_membership(js)).members(group.name) if site == group.site]
        if args.json:
            print(
                json.dumps(
                    {
                        "name": group.name,
                        "site": group.site,
                        "description": group.description,
                        "size": len(members),
                        "members": members,
                    }
                )
            )
        else:
            print(f"{group.name}\tsite={group.site}\tsize={len(members)}")
            for uid in members:
                print(uid)

    return _run(args, work)


def _list(args) -> int:
    async def work(js):
        sizes = (await load_membership(js)).sizes()
        for group in await list_groups(js):
            if args.json:
                print(json.dumps({"name": group.name, "site": group.site, "size": sizes.get(group.name, 0)}))
            else:
                print(f"{group.name}\t{group.site}\t{sizes.get(group.name, 0)}")

    return _run(args, work)


def _delete(args) -> int:
    async def work(js):
        await _existing(js, args.name)
        n = await delete_group(js, args.name)
        print(f"group {args.name} deleted ({n} membership(s) removed)")

    return _run(args, work)


def _retire(args) -> int:
    async def work(js):
        known = await retire_learner(js, args.site, args.user)
        print(f"learner {args.user} of {args.site}: {'retired' if known else 'not known; nothing stored'}")

    return _run(args, work)


def add_parser(sub) -> None:
    p = sub.add_parser("group", help="learner groups: who a group-restricted grant covers")
    add_nats_options(p)
    gsub = p.add_subparsers(dest="group_command", required=True)
    add = gsub.add_parser("add", help="create a group (or add members to it)")
    add.add_argument("name")
    add.add_argument("--site", required=True, help="the LMS site its members belong to")
    add.add_argument(
        "--users", action="append", default=[], help="LMS user ids, comma-separated (repeatable)"
    )
    add.add_argument("--description")
    add.set_defaults(func=_add)
    for action, doing in (("add-users", True), ("remove-users", False)):
        m = gsub.add_parser(action, help=f"{'add' if doing else 'remove'} members (live: the next event)")
        m.add_argument("name")
        m.add_argument("--users", action="append", required=True, help="LMS user ids, comma-separated")
        m.set_defaults(func=lambda a, doing=doing: _members(a, doing))
    imp = gsub.add_parser(
        "import", help="add members from a CSV (header user_id[,username,email]; or one id a line)"
    )
    imp.add_argument("name")
    imp.add_argument("file", help="CSV file, - for stdin")
    imp.set_defaults(func=_import)
    show = gsub.add_parser("show", help="a group and its members")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)
    ls = gsub.add_parser("list", help="groups with their site and size")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)
    rm = gsub.add_parser("delete", help="remove a group and its memberships")
    rm.add_argument("name")
    rm.set_defaults(func=_delete)
    ret = gsub.add_parser(
        "retire", help="Open edX retirement: forget a learner (groups and identity) everywhere"
    )
    ret.add_argument("user", help="LMS user id")
    ret.add_argument("--site", required=True)
    ret.set_defaults(func=_retire)
