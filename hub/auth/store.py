"""The operator-mode trust chain, kept in ``<data_dir>/nats-auth/`` (directory 0700, files 0600).

Created once, then loaded: an operator with a signing key, the system account ``SYS`` (server events, account
JWT updates), the data account ``HUB`` (streams, KV, every service user) and one account per direct
subscriber (``tenants/``), which imports from HUB exactly its consumer and granted subjects. Private keys
(seeds) never leave the directory and are never logged; the server config only carries public JWTs.
Account JWTs are signed by the operator's signing key (the operator seed is needed only to create the store or
add that key, so it can be moved offline), saved here and pushed to the running servers through the system
account, so no config file is edited and every server of a cluster gets them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path

import nats
from nats.aio.client import Client, RawCredentials

from hub.auth import jwt
from hub.auth.permissions import (
    SERVICES,
    bus_imports,
    consumer_inbox,
    consumer_permissions,
    hub_exports,
    service_permissions,
    tenant_imports,
)
from hub.core.creds import creds_jwt
from hub.core.events import MAX_EVENT_BYTES
from hub.core.grants import GRANT_ID, Grant
from hub.core.subjects import encode_token

log = logging.getLogger("rthub.auth")

AUTH_DIR = "nats-auth"
CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
TENANTS = "tenants"
# What one direct subscriber's account may hold: a few connections, no JetStream, no exports.
# A subscriber only publishes pull requests and acks (tens of bytes): 4 KB per message is plenty, and bounds what
# its users can make the server carry (the server's own limit is 1 MB).
TENANT_MAX_PAYLOAD = 4096
TENANT_LIMITS = {"conn": 16, "subs": 1000, "leaf": 0, "exports": 0, "payload": TENANT_MAX_PAYLOAD}
# Largest account JWT written or loaded: it travels as one message ($SYS.REQ.CLAIMS.UPDATE, max_payload 1 MB)
# and sits in every server's config; a direct subscription within MAX_FILTERS_DIRECT stays far below it.
MAX_ACCOUNT_JWT_BYTES = 256 * 1024
REFUSED = ".refused"  # tenants/<grant>.refused: why its stored JWT was not loaded at start
SITES = "sites"
# An LMS site's account: publishers' connections and inboxes only; no JetStream, no exports; no message larger
# than the largest raw event the hub takes (the publisher refuses bigger ones before sending).
SITE_LIMITS = {"subs": 10000, "leaf": 0, "exports": 0, "payload": MAX_EVENT_BYTES}
ALL_SITES = "_all"  # file stem of the account of a publisher not bound to one site (lms.>)
BUS = "_bus"  # file stem (in sites/) of the Open edX event bus's account LMS-BUS (permissions.bus_imports)


class AuthError(RuntimeError):
    pass


def account_seed(seed_path: Path) -> tuple[bytes, str]:
    """An LMS-side account's seed (created on first use, private) and its public key."""
    if not seed_path.exists():
        seed_path.parent.mkdir(mode=0o700, exist_ok=True)
        write_private(seed_path, jwt.new_seed("account").decode())
    seed = seed_path.read_text().encode()
    return seed, jwt.public_key(seed)


def write_private(path: Path, data: str) -> None:
    """Atomically write a 0600 file (created with that mode, never world-readable for an instant)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class AuthStore:
    """Keys and JWTs of one deployment; use :meth:`ensure` to create or load them."""

    def __init__(self, path: Path):
        self.path = path
        self.signing_seed = self._read("operator-signing.nk").encode()
        self.sys_seed = self._read("SYS.nk").encode()
        self.hub_seed = self._read("HUB.nk").encode()
        self.operator_jwt = self._read("operator.jwt").strip()
        self.sys_jwt = self._read("SYS.jwt").strip()
        self.operator_pub = jwt.decode(self.operator_jwt, verify=False)["sub"]
        self.signing_pub = jwt.public_key(self.signing_seed)
        self.sys_pub = jwt.public_key(self.sys_seed)
        self.hub_pub = jwt.public_key(self.hub_seed)

    # -- creation and loading -------------------------------------------------------------------------------

    @classmethod
    def ensure(cls, data_dir: str | Path) -> AuthStore:
        """Create the keys and JWTs on first use, upgrade an older store (see :meth:`_upgrade`), then load."""
        path = Path(data_dir) / AUTH_DIR
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        with cls._locked(path):
            if not (path / "operator.jwt").exists():
                cls._create(path)
            cls._upgrade(path)
            store = cls(path)
            # The account of publishers of every site exists from the start, so a server configured now knows
            # it; a site's own account is added with its first publisher (then pushed: rthub auth push).
            store._site_account(None)
            store._bus_account()  # the event bus runs in the LMS too: its own account, in the config from the start
        return store

    @staticmethod
    @contextlib.contextmanager
    def _locked(path: Path):
        """Serialise changes between processes (portal, CLI, ``rthub up``) sharing the data directory."""
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @staticmethod
    def _create(path: Path) -> None:
        op, signing = jwt.new_seed("operator"), jwt.new_seed("operator")
        sys_acc, hub = jwt.new_seed("account"), jwt.new_seed("account")
        op_pub, sys_pub, hub_pub = jwt.public_key(op), jwt.public_key(sys_acc), jwt.public_key(hub)
        for name, seed in (("HUB.nk", hub), ("SYS.nk", sys_acc), ("operator-signing.nk", signing),
                           ("operator.nk", op)):
            write_private(path / name, seed.decode())
        write_private(path / "SYS.jwt", jwt.encode(jwt.account_claims("SYS", sys_pub, jetstream=False), signing))
        write_private(path / "HUB.jwt", jwt.encode(_hub_claims(hub_pub, {}), signing))
        # Written last: its presence marks a complete store.
        write_private(path / "operator.jwt", jwt.encode(
            jwt.operator_claims("rthub", op_pub, sys_pub, signing_keys=[jwt.public_key(signing)]), op))
        log.info("created NATS operator %s, system account %s, data account %s in %s", op_pub, sys_pub, hub_pub,
                 path)

    @staticmethod
    def _upgrade(path: Path) -> None:
        """Bring a store made by an earlier version up to date (idempotent, under the lock).

        - an operator signing key (needs ``operator.nk`` once): account JWTs are signed with it from now on;
          the servers must be restarted with the new ``server_config`` to trust it;
        - the data account's exports for direct subscribers (:func:`hub.auth.permissions.hub_exports`);
        - direct-subscription users that earlier versions issued inside the data account are revoked: their
          reply subjects could make the server act in that account. Their owners download new ``.creds``.
        """
        for name in ("HUB.nk", "HUB.jwt", "SYS.nk", "SYS.jwt"):
            if not (path / name).exists():
                raise AuthError(f"{path / name} is missing: the auth store is incomplete")
        signing_path = path / "operator-signing.nk"
        if not signing_path.exists():
            try:
                op = (path / "operator.nk").read_text().encode()
            except FileNotFoundError:
                raise AuthError(f"{path} has no operator signing key and no operator seed to create one") from None
            signing = jwt.new_seed("operator")
            write_private(signing_path, signing.decode())
            claims = jwt.decode((path / "operator.jwt").read_text(), verify=False)
            claims["nats"]["signing_keys"] = [jwt.public_key(signing)]
            claims["iat"] = max(int(time.time()), int(claims.get("iat", 0)) + 1)
            claims.pop("jti", None)
            write_private(path / "operator.jwt", jwt.encode(claims, op))
            log.warning("added an operator signing key to %s: restart nats-server with the new config", path)
        signing = signing_path.read_text().encode()
        hub_pub = jwt.public_key((path / "HUB.nk").read_text().encode())
        current = jwt.decode((path / "HUB.jwt").read_text(), verify=False)
        revoked = dict(current["nats"].get("revocations", {}))
        legacy_path = path / "expiries.json"
        legacy = json.loads(legacy_path.read_text()) if legacy_path.exists() else {}
        now = int(time.time())
        revoked.update({key: now for key, exp in legacy.items() if exp > now and key not in revoked})
        # Publishers (and the event bus) issued inside the data account by earlier versions: the server wrote their
        # PubAcks (to any reply subject they named) on the data account's behalf. Revoked; re-issued in their own
        # account (a site's, LMS-BUS).
        legacy_publishers = []
        for creds_path in sorted([*path.glob("publisher*.creds"), *path.glob("event-bus.creds")]):
            claims = jwt.decode(creds_jwt(creds_path.read_text()), verify=False)
            if claims.get("iss") == hub_pub:
                revoked.setdefault(claims["sub"], now)
                legacy_publishers.append(creds_path)
        want = _hub_claims(hub_pub, revoked)
        if current["nats"].get("exports") != want["nats"]["exports"] or revoked != current["nats"].get(
                "revocations", {}) or current["iss"] != jwt.public_key(signing):
            iat = max(now, int(current.get("iat", 0)) + 1)
            write_private(path / "HUB.jwt", jwt.encode(_hub_claims(hub_pub, revoked, iat), signing))
            log.info("data account %s: exports for direct subscribers, %d legacy consumer user(s) revoked",
                     hub_pub, len(legacy))
        if legacy:
            legacy_path.unlink()
        for creds_path in legacy_publishers:
            creds_path.unlink()
            log.warning("revoked %s (a publisher in the data account); a new one is issued in its site's account:"
                        " give the LMS the new file", creds_path.name)

    def _read(self, name: str) -> str:
        try:
            return (self.path / name).read_text()
        except FileNotFoundError:
            raise AuthError(f"{self.path / name} is missing: the auth store is incomplete") from None

    @property
    def hub_jwt(self) -> str:
        """The current HUB account JWT (re-read: another process may have added revocations)."""
        return self._read("HUB.jwt").strip()

    @property
    def operator_seed(self) -> bytes:
        """Only for re-signing the operator JWT; everything else uses the signing key."""
        return self._read("operator.nk").encode()

    def revocations(self) -> dict[str, int]:
        """Revoked users of the data account (service users; publisher keys are revoked in site accounts too)."""
        return dict(jwt.decode(self.hub_jwt, verify=False)["nats"].get("revocations", {}))

    # -- server side ----------------------------------------------------------------------------------------

    def server_config(self, resolver_dir: str | Path) -> str:
        """nats-server config text for operator mode with a ``full`` resolver.

        The full resolver stores account JWTs in ``resolver_dir`` and accepts operator-signed updates pushed
        through the system account (``$SYS.REQ.CLAIMS.UPDATE``), which cluster peers share: revocation needs no
        config edit. The preload seeds a fresh directory; a newer JWT already stored there is kept.
        """
        resolver_dir = Path(resolver_dir)
        resolver_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return (
            f'operator: "{self.operator_jwt}"\n'
            f"system_account: {self.sys_pub}\n"
            "# service users carry long allow lists in their JWT, sent in CONNECT (default limit 4 KB)\n"
            "max_control_line: 65536\n"
            "resolver: {\n"
            "  type: full\n"
            f'  dir: "{resolver_dir.resolve()}"\n'
            "  allow_delete: false\n"
            '  interval: "2m"\n'
            '  timeout: "5s"\n'
            "}\n"
            "resolver_preload: {\n"
            f'  {self.sys_pub}: "{self.sys_jwt}"\n'
            f'  {self.hub_pub}: "{self.hub_jwt}"\n'
            + "".join(f'  {pub}: "{token}"\n' for pub, token in {**self.site_jwts(), **self.tenant_jwts()}.items())
            + "}\n"
        )

    # -- users ----------------------------------------------------------------------------------------------

    def _user_creds(self, name: str, account_seed: bytes, pub: list[str] | None, sub: list[str] | None,
                    expires: float | None = None, now: float | None = None) -> tuple[str, str]:
        seed = jwt.new_seed("user")
        user_pub = jwt.public_key(seed)
        token = jwt.encode(jwt.user_claims(name, user_pub, pub, sub, expires=expires, now=now), account_seed)
        return jwt.creds(token, seed), user_pub

    def service_creds(self, service: str, hub_consumer: str = "hub", site: str | None = None) -> Path:
        """The ``.creds`` file of a service user (``publisher``, ``hub``, ``deliverer``, ``portal``, ``admin``);
        a publisher's is per LMS ``site`` (``publisher-<site>.creds``: ``lms.<site>.>`` only).

        Created on first use; re-created when the permission table changed since (e.g. after an upgrade) or
        the user was revoked (``rthub auth revoke`` of a leaked service credential, then restart the service).
        """
        pub, sub = service_permissions(service, hub_consumer, site=site if service == "publisher" else None)
        name = f"{service}-{encode_token(site)}" if service == "publisher" and site is not None else service
        path = self.path / f"{name}.creds"
        with self._locked(self.path):
            if service in ("publisher", "event-bus"):  # users of their own account, never of the data account
                account_seed = self._site_account(site) if service == "publisher" else self._bus_account()
                account_pub = jwt.public_key(account_seed)
                jwt_path = self._site_file(site, ".jwt") if service == "publisher" else self.path / SITES / f"{BUS}.jwt"
                revoked = jwt.decode(jwt_path.read_text(), verify=False)["nats"].get("revocations", {})
            else:
                account_seed, account_pub, revoked = self.hub_seed, self.hub_pub, self.revocations()
            if path.exists():
                claims = jwt.decode(creds_jwt(path.read_text()), verify=False)
                perms = claims["nats"]
                if perms.get("pub", {}).get("allow") == pub and perms.get("sub", {}).get("allow") == sub \
                        and claims["iss"] == account_pub and claims["sub"] not in revoked:
                    return path
            text, _ = self._user_creds(f"rthub-{service}", account_seed, pub, sub)
            write_private(path, text)
        return path

    # -- LMS sites: one account each --------------------------------------------------------------------------

    def _site_file(self, site: str | None, suffix: str) -> Path:
        return self.path / SITES / f"{encode_token(site) if site is not None else ALL_SITES}{suffix}"

    def _site_account(self, site: str | None) -> bytes:
        """The account key of an LMS site's publishers, its JWT written on first use (call under the lock).

        The account exports nothing and imports one service from the data account: ``lms.<site>.>`` (``lms.>``
        for a publisher of every site). A publish crosses into the data account with a reply subject the server
        makes up (``_R_...``), so the PubAck comes back into the site's account: whatever reply subject a
        publisher names, of a publish, a request or an ack, the server answers it in the site's account, where
        there is nothing but the publishers' own inboxes."""
        seed_path, jwt_path = self._site_file(site, ".nk"), self._site_file(site, ".jwt")
        seed, pub = account_seed(seed_path)
        current = jwt.decode(jwt_path.read_text(), verify=False) if jwt_path.exists() else None
        subj = site_subject(site)
        if current and current["iss"] == self.signing_pub and [i["subject"] for i in current["nats"].get(
                "imports", [])] == [subj] and current["nats"]["imports"][0]["account"] == self.hub_pub \
                and all(current["nats"]["limits"].get(k) == v for k, v in SITE_LIMITS.items()):
            return seed
        activation = jwt.encode(jwt.activation_claims(f"LMS {site or 'all sites'}", pub, subj, "service"),
                                self.hub_seed)
        now = max(int(time.time()), int(current["iat"]) + 1) if current else int(time.time())
        claims = jwt.account_claims(f"LMS-{site or 'all'}", pub, jetstream=False, now=now, limits=SITE_LIMITS,
                                    revocations=current["nats"].get("revocations") if current else None,
                                    imports=[jwt.import_("raw events", subj, "service", self.hub_pub, activation)])
        write_private(jwt_path, jwt.encode(claims, self.signing_seed))
        log.info("LMS site account %s for %s (imports %s from the data account)", pub, site or "all sites", subj)
        return seed

    def _bus_account(self) -> bytes:
        """The account key of the Open edX event bus (``LMS-BUS``), its JWT (re)written when its imports changed
        (call under the lock). Like a site's account it runs in the LMS, exports nothing, has no JetStream, and
        imports from the data account only :func:`hub.auth.permissions.bus_imports`: whatever reply subject its
        users name, of a publish, an API request, a pull request or an ack, is answered in this account."""
        seed_path, jwt_path = self.path / SITES / f"{BUS}.nk", self.path / SITES / f"{BUS}.jwt"
        seed, pub = account_seed(seed_path)
        current = jwt.decode(jwt_path.read_text(), verify=False) if jwt_path.exists() else None
        want = [(subj, local) for _, subj, local, _, _ in bus_imports()]
        if current and current["iss"] == self.signing_pub and [
            (i["subject"], i.get("local_subject", i["subject"])) for i in current["nats"].get("imports", [])
        ] == want and all(i["account"] == self.hub_pub for i in current["nats"]["imports"]) \
                and all(current["nats"]["limits"].get(k) == v for k, v in SITE_LIMITS.items()):
            return seed
        imports = [jwt.import_(name, subj, kind, self.hub_pub,
                               jwt.encode(jwt.activation_claims(f"LMS-BUS {name}", pub, subj, kind), self.hub_seed),
                               local=local)
                   for name, subj, local, kind, _ in bus_imports()]
        now = max(int(time.time()), int(current["iat"]) + 1) if current else int(time.time())
        claims = jwt.account_claims("LMS-BUS", pub, jetstream=False, now=now, limits=SITE_LIMITS, imports=imports,
                                    revocations=current["nats"].get("revocations") if current else None)
        write_private(jwt_path, jwt.encode(claims, self.signing_seed))
        log.info("event bus account %s (imports %d subjects from the data account)", pub, len(imports))
        return seed

    def site_jwts(self) -> dict[str, str]:
        """Account public key -> JWT of every LMS site account (preloaded into servers, pushed with HUB)."""
        folder = self.path / SITES
        out = {}
        for path in sorted(folder.glob("*.jwt")) if folder.exists() else ():
            token = path.read_text().strip()
            reason = tenant_jwt_problem(token, self.signing_pub)
            if reason:
                log.error("LMS site account %s: stored JWT not loaded (%s)", path.stem, reason)
                continue
            out[jwt.decode(token, verify=False)["sub"]] = token
        return out

    def site_jwt(self, site: str | None) -> str:
        """The JWT of ``site``'s account (created with the account); push it to running servers."""
        with self._locked(self.path):
            self._site_account(site)
        return self._site_file(site, ".jwt").read_text().strip()

    def system_creds(self) -> Path:
        """A user of the system account: pushes account JWT updates (revocations)."""
        path = self.path / "sys.creds"
        with self._locked(self.path):
            if not path.exists():
                text, _ = self._user_creds("rthub-sys", self.sys_seed, None, None)
                write_private(path, text)
        return path

    # -- direct subscribers: one account each -----------------------------------------------------------------

    def _tenant_file(self, grant_id: str, suffix: str) -> Path:
        if not GRANT_ID.fullmatch(grant_id):
            raise ValueError(f"{grant_id!r} is no grant id")
        return self.path / TENANTS / f"{grant_id}{suffix}"

    def _tenant_seed(self, grant_id: str) -> bytes:
        """The account key of ``grant_id``'s subscriber, created on first use (under the lock)."""
        path = self._tenant_file(grant_id, ".nk")
        if not path.exists():
            path.parent.mkdir(mode=0o700, exist_ok=True)
            write_private(path, jwt.new_seed("account").decode())
        return path.read_text().encode()

    def tenant_claims(self, grant_id: str) -> dict | None:
        """The current account claims of ``grant_id``'s subscriber (``None``: never opened)."""
        path = self._tenant_file(grant_id, ".jwt")
        return jwt.decode(path.read_text(), verify=False) if path.exists() else None

    def tenant_jwts(self) -> dict[str, str]:
        """Account public key -> JWT of every direct subscriber (preloaded into servers, pushed by ``rthub auth
        push``). A stored JWT the server would refuse (too large, unreadable, not signed by the operator's
        signing key) is skipped, logged and noted in ``tenants/<grant>.refused``: one bad tenant must not keep
        the server from starting."""
        folder = self.path / TENANTS
        out = {}
        for path in sorted(folder.glob("*.jwt")) if folder.exists() else ():
            token = path.read_text().strip()
            reason = tenant_jwt_problem(token, self.signing_pub)
            refused = path.with_suffix(REFUSED)
            if reason:
                log.error("direct subscription %s: stored account JWT not loaded (%s); the integration is failing "
                          "until it is re-approved or re-scoped", path.stem, reason)
                write_private(refused, reason + "\n")
                continue
            refused.unlink(missing_ok=True)
            out[jwt.decode(token, verify=False)["sub"]] = token
        return out

    def refused_tenants(self) -> dict[str, str]:
        """Grant id -> why its account JWT was not loaded (see :meth:`tenant_jwts`)."""
        folder = self.path / TENANTS
        return {p.stem: p.read_text().strip() for p in sorted(folder.glob(f"*{REFUSED}"))} if folder.exists() else {}

    def _write_tenant(self, grant_id: str, imports: list[dict], revocations: dict[str, int], final: bool) -> str:
        seed = self._tenant_seed(grant_id)
        pub = jwt.public_key(seed)
        current = self.tenant_claims(grant_id)
        now = max(int(time.time()), int(current["iat"]) + 1) if current else int(time.time())
        claims = jwt.account_claims(f"consumer-{grant_id}", pub, jetstream=False, revocations=revocations,
                                    now=now, imports=imports, limits=TENANT_LIMITS)
        claims["nats"]["tags"] = [f"rthub-grant:{grant_id.lower()}"] + (["rthub-closed"] if final else [])
        token = jwt.encode(claims, self.signing_seed)
        if len(token) > MAX_ACCOUNT_JWT_BYTES:
            raise AuthError(f"the account JWT of {grant_id} would be {len(token)} bytes; at most "
                            f"{MAX_ACCOUNT_JWT_BYTES} are allowed: narrow the scope")
        write_private(self._tenant_file(grant_id, ".jwt"), token)
        self._tenant_file(grant_id, REFUSED).unlink(missing_ok=True)
        return token

    def open_tenant(self, grant: Grant) -> str:
        """Write (or re-scope) the account of ``grant``'s direct subscriber: it imports from the data account its
        consumer's pull and ack subjects and the granted subjects (live feed), each with an activation
        signed for this account only. Returns the JWT to push. A tenant closed for good stays closed."""
        grant.validate()
        if not grant.active:
            raise ValueError(f"grant {grant.id} is {grant.status}: its account stays closed")
        with self._locked(self.path):
            current = self.tenant_claims(grant.id)
            if current and "rthub-closed" in current["nats"].get("tags", []):
                raise AuthError(f"direct access of {grant.id} was revoked for good")
            pub = jwt.public_key(self._tenant_seed(grant.id))
            imports = [jwt.import_(name, subj, kind, self.hub_pub,
                                   jwt.encode(jwt.activation_claims(f"{grant.id} {name}", pub, subj, kind),
                                              self.hub_seed), local)
                       for name, subj, kind, local in tenant_imports(grant)]
            revoked = dict(current["nats"].get("revocations", {})) if current else {}
            return self._write_tenant(grant.id, imports, revoked, final=False)

    def close_tenant(self, grant_id: str, final: bool = True) -> str:
        """Drop every import of ``grant_id``'s subscriber account and revoke every user issued until now;
        ``final`` (revocation) also refuses any later :meth:`open_tenant` (suspension does not). An account that
        never existed is written closed, so nothing racing with this can open it. Returns the JWT to push."""
        with self._locked(self.path):
            current = self.tenant_claims(grant_id) or {"nats": {}}
            revoked = dict(current["nats"].get("revocations", {}))
            # Users are issued no earlier than the last "*" + 1 (consumer_creds), so this covers all of them.
            revoked["*"] = max(int(time.time()), revoked.get("*", 0) + 1)
            final = final or "rthub-closed" in current["nats"].get("tags", [])
            return self._write_tenant(grant_id, [], revoked, final=final)

    def tenant_is_open(self, grant_id: str) -> bool:
        current = self.tenant_claims(grant_id)
        return bool(current and current["nats"].get("imports"))

    def consumer_creds(self, grant: Grant, expires_in: float | None = None) -> tuple[str, str]:
        """``(creds_text, user_public_key)`` for a direct subscriber of ``grant``; a new key every call.

        The user lives in the grant's own account, which must be open (:meth:`open_tenant`, pushed); a closed
        account gets no new user, and a user signed in the second of a closing is revoked with it. The text holds
        the user's seed: hand it to the consumer once (download), never log or store it.
        """
        grant.validate()
        if not grant.active:
            raise ValueError(f"grant {grant.id} is {grant.status}: no credential for it")
        pub, sub = consumer_permissions(grant)
        expires = time.time() + expires_in if expires_in is not None else None
        with self._locked(self.path):
            current = self.tenant_claims(grant.id)
            if current and "rthub-closed" in current["nats"].get("tags", []):
                raise AuthError(f"direct access of {grant.id} was revoked for good: no credential for it")
            if not (current and current["nats"].get("imports")):
                raise AuthError(f"direct access of {grant.id} is not open: no credential for it")
            # A "*" revocation covers users issued in its own second: a reopened account's users start later.
            issued = max(time.time(), current["nats"].get("revocations", {}).get("*", 0) + 1)
            text, user_pub = self._user_creds(f"consumer-{grant.consumer}-{grant.id}", self._tenant_seed(grant.id),
                                              pub, sub, expires, now=issued)
        log.info("issued direct-subscription credential %s for grant %s (expires %s)", user_pub, grant.id,
                 "never" if expires is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)))
        return text, user_pub

    def revoke_tenant_users(self, grant_id: str, user_public_keys: list[str]) -> str | None:
        """Revoke single users of one subscriber account (others of the same grant keep working)."""
        _check_user_keys(user_public_keys)
        with self._locked(self.path):
            current = self.tenant_claims(grant_id)
            if current is None:
                return None
            revoked = dict(current["nats"].get("revocations", {}))
            when = max(int(time.time()), revoked.get("*", 0) + 1)  # see close_tenant
            revoked.update({key: when for key in user_public_keys})
            return self._write_tenant(grant_id, current["nats"].get("imports", []), revoked,
                                      final="rthub-closed" in current["nats"].get("tags", []))

    # -- revocation -----------------------------------------------------------------------------------------

    def add_revocations(self, user_public_keys: list[str], at: float | None = None) -> str:
        """Re-sign the HUB account JWT with these service users revoked (every JWT of theirs issued up to now)."""
        _check_user_keys(user_public_keys)
        with self._locked(self.path):
            current = jwt.decode(self.hub_jwt, verify=False)
            revoked = dict(current["nats"].get("revocations", {}))
            when = int(at if at is not None else time.time())
            for key in user_public_keys:
                revoked[key] = when
            # iat strictly increases so the resolver always takes this JWT as the newer one.
            now = max(int(time.time()), int(current.get("iat", 0)) + 1)
            token = jwt.encode(_hub_claims(self.hub_pub, revoked, now), self.signing_seed)
            write_private(self.path / "HUB.jwt", token)
            # A leaked publisher credential is a user of its site's account: revoke the keys there too.
            for path in sorted((self.path / SITES).glob("*.jwt")) if (self.path / SITES).exists() else ():
                claims = jwt.decode(path.read_text(), verify=False)
                revs = dict(claims["nats"].get("revocations", {}))
                revs.update({key: when for key in user_public_keys})
                claims["nats"]["revocations"] = dict(sorted(revs.items()))
                claims["iat"] = max(int(time.time()), int(claims.get("iat", 0)) + 1)
                claims.pop("jti", None)
                claims.pop("iss", None)
                write_private(path, jwt.encode(claims, self.signing_seed))
        return token

    async def revoke(self, nc: Client | None, user_public_key: str | list[str]) -> dict:
        """Revoke service user(s) and push the re-signed account JWT to the servers: a connected client is cut
        off at once and reconnects are refused. ``nc`` is any connection (system or admin user) to the cluster."""
        keys = [user_public_key] if isinstance(user_public_key, str) else list(user_public_key)
        self.add_revocations(keys)
        result = await self.push_account(nc)
        log.info("revoked %s", ", ".join(keys))
        return result

    async def push_account(self, nc: Client | None, servers: list[str] | None = None,
                           tenants: bool = False) -> dict:
        """Send the current HUB account JWT (and with ``tenants`` every subscriber account) through the system
        account; returns the server's answer for HUB."""
        tokens = [self.hub_jwt, *self.site_jwts().values(), *(self.tenant_jwts().values() if tenants else ())]
        return (await self.push(nc, tokens, servers))[0]

    async def push(self, nc: Client | None, tokens: list[str], servers: list[str] | None = None) -> list[dict]:
        """Send account JWTs through one short system-account connection to the server ``nc`` is connected to
        (or ``servers``); the full resolver there stores them and shares them with its cluster peers."""
        if servers is None and nc is not None and nc.connected_url is not None:
            servers = [nc.connected_url.geturl()]
        if not servers:
            raise AuthError("no NATS server to push the account JWT to")
        sys_nc = await nats.connect(servers=servers, user_credentials=str(self.system_creds()),
                                    name="rthub-auth-push", connect_timeout=5, max_reconnect_attempts=2)
        try:
            return [self._check(await sys_nc.request(CLAIMS_UPDATE, token.encode(), timeout=5)) for token in tokens]
        finally:
            await sys_nc.close()

    async def activate_consumer(self, nc: Client | None, grant: Grant) -> str:
        """Open (or re-scope) ``grant``'s subscriber account and push it with the data account; returns the
        account's public key."""
        token = self.open_tenant(grant)
        await self.push(nc, [self.hub_jwt, token])
        return jwt.decode(token, verify=False)["sub"]

    async def close_consumer(self, nc: Client | None, grant_id: str, final: bool = True) -> bool:
        """Cut ``grant_id``'s subscriber off: every user revoked, no import left, pushed."""
        await self.push(nc, [self.close_tenant(grant_id, final)])
        log.info("closed direct access of %s%s", grant_id, " for good" if final else "")
        return True

    async def revoke_consumer_users(self, nc: Client | None, grant_id: str, user_public_keys: list[str]) -> dict:
        """Revoke single credentials of one direct subscriber (its other credentials keep working), pushed."""
        token = self.revoke_tenant_users(grant_id, user_public_keys)
        if token is None:
            raise AuthError(f"grant {grant_id} has no direct-subscription account")
        answer = (await self.push(nc, [token]))[0]
        log.info("revoked %s of %s", ", ".join(user_public_keys), grant_id)
        return answer

    async def issue_consumer_creds(self, nc: Client | None, grant: Grant,
                                   expires_in: float | None = None) -> tuple[str, str]:
        """:meth:`consumer_creds` after opening the grant's account when it never was (a grant made by
        ``rthub grant add``); a suspended or revoked account is never reopened here."""
        if self.tenant_claims(grant.id) is None:
            await self.activate_consumer(nc, grant)
        return self.consumer_creds(grant, expires_in)

    @staticmethod
    def _check(msg) -> dict:
        answer = json.loads(msg.data or b"{}")
        if "error" in answer:
            raise AuthError(f"account JWT update refused: {answer['error']}")
        return answer.get("data", answer)

    # -- client helpers -------------------------------------------------------------------------------------

    @staticmethod
    def consumer_connect_options(grant: Grant, creds_text: str) -> dict:
        """nats-py ``connect`` keyword arguments for a direct subscriber holding ``creds_text``."""
        return {"user_credentials": RawCredentials(creds_text), "inbox_prefix": consumer_inbox(grant.id)}


def refused_reason(data_dir: str | Path, grant_id: str) -> str | None:
    """Why ``grant_id``'s stored account JWT was left out at the last start (``None``: it was not), read
    without opening the store: cheap enough for every view of the integration."""
    if not GRANT_ID.fullmatch(grant_id):
        return None
    path = Path(data_dir) / AUTH_DIR / TENANTS / f"{grant_id}{REFUSED}"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def site_subject(site: str | None) -> str:
    """What an LMS site's account imports (and its publishers may publish): its raw events."""
    return f"lms.{encode_token(site)}.>" if site is not None else "lms.>"


def tenant_jwt_problem(token: str, signing_pub: str) -> str | None:
    """Why a stored subscriber account JWT must not be given to a server (``None``: it is fine)."""
    if len(token) > MAX_ACCOUNT_JWT_BYTES:
        return f"{len(token)} bytes, more than the {MAX_ACCOUNT_JWT_BYTES} allowed"
    try:
        claims = jwt.decode(token)
    except (ValueError, KeyError) as exc:
        return f"unreadable: {exc}"
    if claims.get("iss") != signing_pub or claims.get("nats", {}).get("type") != "account":
        return "not an account JWT signed by this operator's signing key"
    return None


def _check_user_keys(keys: list[str]) -> None:
    for key in keys:
        if not (key.startswith("U") and len(key) == 56):
            raise ValueError(f"{key!r} is not a NATS user public key")


def _hub_claims(hub_pub: str, revocations: dict[str, int], now: float | None = None) -> dict:
    """The data account: JetStream, the service users' revocations, the private exports for subscribers."""
    exports = [jwt.export(name, subj, kind, stream_response) for name, subj, kind, stream_response in hub_exports()]
    return jwt.account_claims("HUB", hub_pub, jetstream=True, revocations=revocations, now=now, exports=exports)


__all__ = ["AuthStore", "AuthError", "SERVICES"]
