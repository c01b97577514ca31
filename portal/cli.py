"""``rthub portal serve|create-admin`` and ``rthub integration add|list|approve|deny|suspend|resume|revoke|creds|
pause|attempts`` (``resume`` also ends an owner's pause):
the administrator's page actions, scriptable against the same database."""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import getpass
import io
import json
import logging
import os
import sys
from pathlib import Path

import msgspec

from hub.core.delivery_kinds import is_push
from hub.core.groups import IDENTITY_FIELDS
from hub.core.protocols import NAMES
from hub.core.settings import from_env
from portal import db
from portal.services import Portal, PortalError, public_view
from portal.services.integrations import requested_scope
from portal.settings import PortalSettings
from portal.tables import Account
from portal.validation import check_scope, validate_request

log = logging.getLogger("rthub.portal")


def settings_from(args: argparse.Namespace) -> PortalSettings:
    return from_env(PortalSettings, nats_url=getattr(args, "nats_url", None), data_dir=getattr(args, "data_dir", None),
                    database_url=getattr(args, "database_url", None), portal_host=getattr(args, "host", None),
                    portal_port=getattr(args, "port", None))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (RTHUB_DATA_DIR)")
    p.add_argument("--database-url", help="postgresql://... (RTHUB_DATABASE_URL or DATABASE_URL); default SQLite")
    p.add_argument("--nats-url", help="NATS server URL(s) (RTHUB_NATS_URL)")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from portal.app import create_app

    settings = settings_from(args)
    log.info("portal on http://%s:%s/ (data in %s)", settings.portal_host, settings.portal_port, settings.data_dir)
    # Proxy headers (client address, https) are believed only from the proxies named in
    # RTHUB_FORWARDED_ALLOW_IPS; empty (default) believes none, whatever FORWARDED_ALLOW_IPS says.
    trusted = settings.forwarded_allow_ips.strip()
    uvicorn.run(create_app(settings), host=settings.portal_host, port=settings.portal_port,
                log_level="warning", access_log=False, log_config=None,  # uvicorn's lines go to our handler proxy_headers=bool(trusted),
                forwarded_allow_ips=trusted or "")
    return 0


async def _with_portal(settings: PortalSettings, work):
    engine = await db.migrate(settings)
    portal = Portal(settings)
    try:
        return await work(portal)
    finally:
        await portal.close()
        await db.close(engine)


def _run(settings: PortalSettings, work) -> int:
    try:
        result = asyncio.run(_with_portal(settings, work))
    except PortalError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for field, message in exc.errors.items():
            print(f"  {field}: {message}", file=sys.stderr)
        return 2
    return 0 if result is None else int(result)


def create_admin(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = os.environ.get("RTHUB_ADMIN_PASSWORD") or getpass.getpass("Administrator password: ")
    if len(password) < 10:
        print("error: the password needs at least 10 characters", file=sys.stderr)
        return 2

    async def work(portal: Portal):
        account = await portal.set_admin(args.email, password, args.name)
        print(f"administrator {account.email} ready")

    return _run(settings_from(args), work)


def login_name() -> str:
    """Who runs the command: the login name, else ``uid<N>``. Container images run as a uid without a passwd
    entry (the shipped one runs as 10001), where ``getpass.getuser()`` raises KeyError (OSError since 3.13)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def operator() -> Account:
    """The actor recorded in the audit log for command-line changes."""
    return Account(email=f"cli:{login_name()}", name="command line", is_admin=True)


async def _owner(email: str, allow_unverified: bool) -> Account:
    account = await Account.objects().get(Account.email == email.lower())
    if account is None:
        # Owned by operators, not a person: no usable password until one is set with create-admin; the
        # operator creating it vouches for the address.
        account = Account(email=email.lower(), name="operator-managed", password_hash="!disabled", email_verified=True)
        await account.save()
    elif not account.email_verified and not allow_unverified:
        raise PortalError(f"{account.email} has not confirmed its e-mail address; pass --allow-unverified-owner "
                          "to give it an integration anyway.", 409)
    return account


LIST_FIELDS = ("sites", "orgs", "courses", "event_types", "learner_groups", "identity")


def read_integrations(path: Path) -> list[dict]:
    """Rows of ``rthub integration add --from``: a JSON list of objects, or a CSV with a header row (list fields
    separated by ``;`` or spaces). Keys: name, protocol, delivery (webhook, lrs, caliper, direct), url,
    basic_auth, bearer, sites, orgs, courses, event_types, learner_groups, identity, reason, owner."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        rows = json.loads(text)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("a JSON file holds a list of objects")
    else:
        rows = [{k.strip(): (v or "").strip() or None for k, v in r.items() if k}
                for r in csv.DictReader(io.StringIO(text))]
    out = []
    for row in rows:
        row = dict(row)
        for field in LIST_FIELDS:
            value = row.get(field) or []
            row[field] = value.replace(";", " ").split() if isinstance(value, str) else list(value)
        out.append(row)
    return out


def integration_add_many(args: argparse.Namespace) -> int:
    """Many integrations in one process (one database migration check, one NATS connection): a CLI call per
    integration cost ~0.75 s of start-up each (issue 20). Every row is checked before any is created."""
    settings = settings_from(args)
    try:
        rows = read_integrations(Path(args.from_file))
    except (OSError, ValueError, csv.Error) as exc:
        print(f"error: cannot read {args.from_file}: {exc}", file=sys.stderr)
        return 2
    specs, failed = [], False
    for n, row in enumerate(rows, 1):
        raw = {"reason": args.reason, **{k: v for k, v in row.items() if k != "owner"}}
        spec, errors = validate_request(raw, set(settings.sites), settings.max_text, settings.allowed(),
                                        max_rate=settings.max_rate_limit)
        if errors:
            failed = True
            print(f"error: row {n} ({row.get('name') or 'no name'}): invalid integration", file=sys.stderr)
            for field, message in errors.items():
                print(f"  {field}: {message}", file=sys.stderr)
        specs.append((row.get("owner") or args.owner, spec))
    if failed:
        print("nothing created", file=sys.stderr)
        return 2
    creds_dir = Path(args.creds_dir or ".")

    async def work(portal: Portal):
        owners: dict[str, Account] = {}
        for email, spec in specs:
            if email not in owners:
                owners[email] = await _owner(email, args.allow_unverified_owner)
            row = await portal.create_integration(owners[email], spec, approved_by=operator(),
                                                  allow_unverified=args.allow_unverified_owner)
            line = f"integration {row.key} approved ({row.protocol} via {row.delivery}) {row.name}"
            secret = await portal.take_pending_secret(row)
            if secret:
                line += f" secret={secret}"
            if not is_push(row.delivery):
                path = creds_dir / f"{row.key}.creds"
                _write_creds(path, await portal.issue_creds(operator(), row))
                line += f" creds={path}"
            print(line, flush=True)
        print(f"{len(specs)} integration(s) added")

    return _run(settings, work)


def integration_add(args: argparse.Namespace) -> int:
    if args.from_file:
        return integration_add_many(args)
    settings = settings_from(args)
    if not args.name or not args.protocol:
        print("error: --name and --protocol are needed (or --from FILE)", file=sys.stderr)
        return 2
    deliveries = [d for d, v in (("lrs", args.lrs_url), ("webhook", args.webhook_url), ("caliper", args.caliper_url),
                                 ("direct", args.direct)) if v]
    if len(deliveries) != 1:
        print("error: give exactly one of --lrs-url, --webhook-url, --caliper-url, --direct", file=sys.stderr)
        return 2
    raw = {"name": args.name, "protocol": args.protocol, "delivery": deliveries[0],
           "url": args.lrs_url or args.webhook_url or args.caliper_url, "basic_auth": args.basic_auth,
           "bearer": args.bearer, "sites": args.site, "orgs": args.org, "courses": args.course,
           "event_types": args.event_type, "learner_groups": args.group, "identity": args.identity,
           "reason": args.reason}
    spec, errors = validate_request(raw, set(settings.sites), settings.max_text, settings.allowed(),
                                    max_rate=settings.max_rate_limit)
    if errors:
        print("error: invalid integration", file=sys.stderr)
        for field, message in errors.items():
            print(f"  {field}: {message}", file=sys.stderr)
        return 2

    async def work(portal: Portal):
        row = await portal.create_integration(await _owner(args.owner, args.allow_unverified_owner), spec,
                                              approved_by=operator(), allow_unverified=args.allow_unverified_owner)
        print(f"integration {row.key} approved ({row.protocol} via {row.delivery})")
        secret = await portal.take_pending_secret(row)
        if secret:
            print(f"webhook signing secret (shown once): {secret}")
        if not is_push(row.delivery):
            creds = await portal.issue_creds(operator(), row)
            _write_creds(Path(args.creds_out or f"{row.key}.creds"), creds)
            print(f"credentials written to {args.creds_out or row.key + '.creds'}")
            print(portal.example(row, creds_file=Path(args.creds_out or f"{row.key}.creds").name))

    return _run(settings, work)


def _write_creds(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def integration_list(args: argparse.Namespace) -> int:
    async def work(portal: Portal):
        owners = await portal.owner_emails()
        rows = [public_view(r, owners.get(r.owner)) for r in await portal.list_all(args.status)]
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        for r in rows:
            scope = r["granted"] or r["requested"]
            dims = "; ".join(f"{k}={','.join(v)}" for k, v in scope.items() if v)
            print(f"{r['id']}\t{r['status']}\t{r['protocol']}\t{r['delivery']}\t{r['owner']}\t{r['name']}\t{dims}")

    return _run(settings_from(args), work)


def integration_decide(args: argparse.Namespace) -> int:
    settings = settings_from(args)

    async def work(portal: Portal):
        narrowed = None
        if args.action == "approve" and (args.site or args.org or args.course or args.event_type or args.group
                                         or args.identity):
            # a dimension not given on the command line stays as requested
            asked = msgspec.to_builtins(requested_scope(await portal.get(args.key)))
            given = {"sites": args.site, "orgs": args.org, "courses": args.course, "event_types": args.event_type,
                     "learner_groups": args.group, "identity": args.identity}
            errors: dict[str, str] = {}
            narrowed = check_scope({k: v or (asked.get(k, []) if k != "identity" else []) for k, v in given.items()},
                                   set(settings.sites), errors)
            if errors:
                raise PortalError("invalid scope", 400, errors)
        # The same call as the admin page and the JSON API (on a waiting scope change, approve/deny answer it).
        row = await portal.decide(operator(), args.key, args.action, getattr(args, "reason", None) or "", narrowed)
        print(f"integration {row.key} {row.status}")

    return _run(settings, work)


def integration_pause(args: argparse.Namespace) -> int:
    """Pause a push integration (events kept); ``resume`` undoes it (see :func:`integration_resume`)."""
    from portal.services import endpoints

    async def work(portal: Portal):
        row = await portal.get(args.key)
        await endpoints.pause(portal, operator(), row)
        until = await endpoints.kept_until(portal, row)
        print(f"integration {row.key} paused; events kept" + (f" until {until.isoformat()}" if until else ""))

    return _run(settings_from(args), work)


def integration_resume(args: argparse.Namespace) -> int:
    """``resume``: a paused integration delivers again; a suspended one is resumed (the administrator's
    decision), as before."""
    from portal.services import endpoints

    async def work(portal: Portal):
        row = await portal.get(args.key)
        if row.paused_at is not None and row.status == "approved":
            await endpoints.resume(portal, operator(), row)
            print(f"integration {row.key} resumed: the events kept while paused are delivered now")
            return
        row = await portal.decide(operator(), args.key, "resume", "")
        print(f"integration {row.key} {row.status}")

    return _run(settings_from(args), work)


def integration_attempts(args: argparse.Namespace) -> int:
    """The delivery log (newest first) or, with ``--attempt``, one attempt's detail, as the portal shows them."""
    from portal.deliveries import parse_filter, read_attempts
    from portal.views import attempt_detail

    async def work(portal: Portal):
        row = await portal.get(args.key)
        if args.attempt:
            detail = await attempt_detail(portal, row, args.attempt)
            print(json.dumps(msgspec.to_builtins(detail), indent=2))
            return
        f, errors = parse_filter(args.outcome, args.status, args.since, None, None, str(args.limit))
        if errors:
            raise PortalError("invalid filter", 400, errors)
        page = await read_attempts(await portal.js(), row.key, f)
        if args.json:
            print(json.dumps(msgspec.to_builtins(page), indent=2))
            return
        for a in page.items:
            when = dt.datetime.fromtimestamp(a.t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            print(f"{a.id}\t{when}\t{a.outcome}\t{a.status or '-'}\t{a.latency_ms or 0:.0f}ms\t"
                  f"{len(a.ids)} statement(s)\t{a.error or ''}")

    return _run(settings_from(args), work)


def integration_creds(args: argparse.Namespace) -> int:
    async def work(portal: Portal):
        row = await portal.get(args.key)
        _write_creds(Path(args.out or f"{row.key}.creds"), await portal.issue_creds(operator(), row))
        print(f"credentials written to {args.out or row.key + '.creds'}")

    return _run(settings_from(args), work)


def add_parser(sub) -> None:
    portal = sub.add_parser("portal", help="the self-service portal web app")
    psub = portal.add_subparsers(dest="portal_command", metavar="ACTION", required=True)
    p = psub.add_parser("serve", help="serve the portal (pages, JSON API, OpenAPI at /schema)")
    _common(p)
    p.add_argument("--host", help="listen address (RTHUB_PORTAL_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (RTHUB_PORTAL_PORT, default 8080)")
    p.set_defaults(func=serve)
    p = psub.add_parser("create-admin", help="create (or promote) an administrator account")
    _common(p)
    p.add_argument("--email", required=True)
    p.add_argument("--name", default="Administrator")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input (else RTHUB_ADMIN_PASSWORD, else a prompt)")
    p.set_defaults(func=create_admin)

    integ = sub.add_parser("integration", help="manage integrations (what administrators do in the portal)")
    isub = integ.add_subparsers(dest="integration_command", metavar="ACTION", required=True)
    p = isub.add_parser("add", help="create an approved integration directly (or many: --from FILE)")
    _common(p)
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="create every integration of a CSV (header row) or JSON (list of objects) file in one run; "
                        "columns: name, protocol, delivery (webhook|lrs|caliper|direct), url, basic_auth, bearer, "
                        "sites, orgs, courses, event_types, learner_groups, identity (lists: ';'-separated), reason, "
                        "owner; one line per integration (webhook secrets shown once)")
    p.add_argument("--creds-dir", help="where --from writes the .creds of direct integrations (default .)")
    p.add_argument("--name")
    p.add_argument("--protocol", choices=NAMES)
    p.add_argument("--owner", default="operator@rthub.local", help="owning account e-mail (created if missing)")
    p.add_argument("--allow-unverified-owner", action="store_true",
                   help="let an existing account that has not confirmed its e-mail own the integration")
    p.add_argument("--site", action="append", default=[])
    p.add_argument("--org", action="append", default=[])
    p.add_argument("--course", action="append", default=[])
    p.add_argument("--event-type", action="append", default=[])
    p.add_argument("--group", action="append", default=[], help="restrict to a learner group's members (repeatable)")
    p.add_argument("--identity", action="append", default=[], choices=IDENTITY_FIELDS,
                   help="identity field to add to statements (approved by adding it here; repeatable)")
    p.add_argument("--reason", default="added from the command line")
    p.add_argument("--lrs-url", help="xAPI LRS endpoint (statements are POSTed to URL/statements)")
    p.add_argument("--webhook-url", help="webhook endpoint (Standard Webhooks signatures)")
    p.add_argument("--caliper-url", help="Caliper endpoint (needs --bearer)")
    p.add_argument("--direct", action="store_true", help="direct NATS subscription: writes a .creds file")
    p.add_argument("--basic-auth", metavar="USER:PASS")
    p.add_argument("--bearer", metavar="TOKEN")
    p.add_argument("--creds-out", help="where --direct writes the credentials (default <id>.creds)")
    p.set_defaults(func=integration_add)
    p = isub.add_parser("list", help="list integrations")
    _common(p)
    p.add_argument("--status", choices=("pending", "approved", "denied", "suspended", "revoked"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=integration_list)
    p = isub.add_parser("pause", help="pause a push integration's delivery (events are kept)")
    _common(p)
    p.add_argument("key", help="integration id (i...)")
    p.set_defaults(func=integration_pause)
    p = isub.add_parser("attempts", help="the delivery log, or one attempt's detail (--attempt ID)")
    _common(p)
    p.add_argument("key", help="integration id (i...)")
    p.add_argument("--attempt", help="an attempt id from the log: its headers, body and payload as JSON")
    p.add_argument("--outcome")
    p.add_argument("--status")
    p.add_argument("--since", help="ISO time or an age such as 2h")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=integration_attempts)
    for action in ("approve", "deny", "suspend", "resume", "revoke"):
        p = isub.add_parser(action, help=f"{action} an integration")
        _common(p)
        p.add_argument("key", help="integration id (i...)")
        p.add_argument("--reason", default="", required=action == "deny")
        if action == "approve":
            for opt in ("--site", "--org", "--course", "--event-type", "--group"):
                p.add_argument(opt, action="append", default=[], help="narrow the granted scope")
            p.add_argument("--identity", action="append", default=[], choices=IDENTITY_FIELDS,
                           help="approve this requested identity field (explicit, audited; repeatable)")
        else:
            p.set_defaults(site=[], org=[], course=[], event_type=[], group=[], identity=[])
        p.set_defaults(func=integration_resume if action == "resume" else integration_decide, action=action)
    p = isub.add_parser("creds", help="issue a fresh .creds file for a direct integration")
    _common(p)
    p.add_argument("key")
    p.add_argument("--out")
    p.set_defaults(func=integration_creds)
