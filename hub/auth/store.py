"""The operator-mode trust chain, kept in ``<data_dir>/nats-auth/`` (directory 0700, files 0600).

Created once, then loaded: an operator, the system account ``SYS`` (server events, account JWT updates) and
the data account ``HUB`` (streams, KV, every service and consumer user). Private keys (seeds) never leave the
directory and are never logged; the server config only carries public JWTs. Revocations are written into the
HUB account JWT, re-signed by the operator, saved here and pushed to the running servers through the system
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
    consumer_inbox,
    consumer_permissions,
    inbox_prefix_of,
    service_permissions,
)
from hub.grants import Grant

log = logging.getLogger("rthub.auth")

AUTH_DIR = "nats-auth"
CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"


class AuthError(RuntimeError):
    pass


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
        self.operator_seed = self._read("operator.nk").encode()
        self.sys_seed = self._read("SYS.nk").encode()
        self.hub_seed = self._read("HUB.nk").encode()
        self.operator_jwt = self._read("operator.jwt").strip()
        self.sys_jwt = self._read("SYS.jwt").strip()
        self.operator_pub = jwt.public_key(self.operator_seed)
        self.sys_pub = jwt.public_key(self.sys_seed)
        self.hub_pub = jwt.public_key(self.hub_seed)

    # -- creation and loading -------------------------------------------------------------------------------

    @classmethod
    def ensure(cls, data_dir: str | Path) -> AuthStore:
        """Create the operator, SYS and HUB keys and JWTs on first use; load them afterwards."""
        path = Path(data_dir) / AUTH_DIR
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        with cls._locked(path):
            if not (path / "operator.jwt").exists():
                cls._create(path)
        return cls(path)

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
        op, sys_acc, hub = jwt.new_seed("operator"), jwt.new_seed("account"), jwt.new_seed("account")
        op_pub, sys_pub, hub_pub = jwt.public_key(op), jwt.public_key(sys_acc), jwt.public_key(hub)
        for name, seed in (("HUB.nk", hub), ("SYS.nk", sys_acc), ("operator.nk", op)):
            write_private(path / name, seed.decode())
        write_private(path / "SYS.jwt", jwt.encode(jwt.account_claims("SYS", sys_pub, jetstream=False), op))
        write_private(path / "HUB.jwt", jwt.encode(jwt.account_claims("HUB", hub_pub, jetstream=True), op))
        # Written last: its presence marks a complete store.
        write_private(path / "operator.jwt", jwt.encode(jwt.operator_claims("rthub", op_pub, sys_pub), op))
        log.info("created NATS operator %s, system account %s, data account %s in %s", op_pub, sys_pub, hub_pub,
                 path)

    def _read(self, name: str) -> str:
        try:
            return (self.path / name).read_text()
        except FileNotFoundError:
            raise AuthError(f"{self.path / name} is missing: the auth store is incomplete") from None

    @property
    def hub_jwt(self) -> str:
        """The current HUB account JWT (re-read: another process may have added revocations)."""
        return self._read("HUB.jwt").strip()

    def _expiries(self) -> dict[str, int]:
        """Expiry of each consumer credential issued with one (public key -> unix time)."""
        try:
            return json.loads((self.path / "expiries.json").read_text())
        except FileNotFoundError:
            return {}

    def revocations(self) -> dict[str, int]:
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
            "}\n"
        )

    # -- users ----------------------------------------------------------------------------------------------

    def _user_creds(self, name: str, account_seed: bytes, pub: list[str] | None, sub: list[str] | None,
                    expires: float | None = None) -> tuple[str, str]:
        seed = jwt.new_seed("user")
        user_pub = jwt.public_key(seed)
        token = jwt.encode(jwt.user_claims(name, user_pub, pub, sub, expires=expires), account_seed)
        return jwt.creds(token, seed), user_pub

    def service_creds(self, service: str, hub_consumer: str = "hub") -> Path:
        """The ``.creds`` file of a service user (``publisher``, ``hub``, ``deliverer``, ``portal``, ``admin``).

        Created on first use; re-created when the permission table changed since (e.g. after an upgrade) or
        the user was revoked (``rthub auth revoke`` of a leaked service credential, then restart the service).
        """
        pub, sub = service_permissions(service, hub_consumer)
        path = self.path / f"{service}.creds"
        with self._locked(self.path):
            if path.exists():
                claims = jwt.decode(jwt.creds_jwt(path.read_text()), verify=False)
                perms = claims["nats"]
                if perms.get("pub", {}).get("allow") == pub and perms.get("sub", {}).get("allow") == sub \
                        and claims["iss"] == self.hub_pub and claims["sub"] not in self.revocations():
                    return path
            text, _ = self._user_creds(f"rthub-{service}", self.hub_seed, pub, sub)
            write_private(path, text)
        return path

    def system_creds(self) -> Path:
        """A user of the system account: pushes account JWT updates (revocations)."""
        path = self.path / "sys.creds"
        with self._locked(self.path):
            if not path.exists():
                text, _ = self._user_creds("rthub-sys", self.sys_seed, None, None)
                write_private(path, text)
        return path

    def consumer_creds(self, grant: Grant, expires_in: float | None = None) -> tuple[str, str]:
        """``(creds_text, user_public_key)`` for a direct subscriber of ``grant``; a new key every call.

        The text holds the user's seed: hand it to the consumer once (download), never log or store it; keep
        the public key to revoke it later. ``expires_in`` seconds sets the JWT ``exp``.
        """
        grant.validate()
        if not grant.active:
            raise ValueError(f"grant {grant.id} is {grant.status}: no credential for it")
        pub, sub = consumer_permissions(grant)
        expires = time.time() + expires_in if expires_in is not None else None
        text, user_pub = self._user_creds(f"consumer-{grant.consumer}-{grant.id}", self.hub_seed, pub, sub, expires)
        if expires is not None:
            with self._locked(self.path):
                expiries = self._expiries()
                expiries[user_pub] = int(expires)
                write_private(self.path / "expiries.json", json.dumps(expiries))
        log.info("issued direct-subscription credential %s for grant %s (expires %s)", user_pub, grant.id,
                 "never" if expires is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)))
        return text, user_pub

    # -- revocation -----------------------------------------------------------------------------------------

    def add_revocations(self, user_public_keys: list[str], at: float | None = None) -> str:
        """Re-sign the HUB account JWT with these users revoked (every JWT of theirs issued up to now)."""
        for key in user_public_keys:
            if not (key.startswith("U") and len(key) == 56):
                raise ValueError(f"{key!r} is not a NATS user public key")
        with self._locked(self.path):
            current = jwt.decode(self.hub_jwt, verify=False)
            revoked = dict(current["nats"].get("revocations", {}))
            when = int(at if at is not None else time.time())
            # A revoked credential that has expired is refused anyway: drop it so the JWT stays small.
            expiries = self._expiries()
            live = {k: e for k, e in expiries.items() if e > when}
            revoked = {k: t for k, t in revoked.items() if k not in expiries or k in live}
            if len(live) != len(expiries):
                write_private(self.path / "expiries.json", json.dumps(live))
            for key in user_public_keys:
                revoked[key] = when
            # iat strictly increases so the resolver always takes this JWT as the newer one.
            now = max(int(time.time()), int(current.get("iat", 0)) + 1)
            token = jwt.encode(jwt.account_claims("HUB", self.hub_pub, jetstream=True, revocations=revoked,
                                                  now=now), self.operator_seed)
            write_private(self.path / "HUB.jwt", token)
        return token

    async def revoke(self, nc: Client | None, user_public_key: str | list[str]) -> dict:
        """Revoke user(s) and push the re-signed account JWT to the servers: a connected client is cut off
        at once and reconnects are refused. ``nc`` is any connection (system or admin user) to the cluster."""
        keys = [user_public_key] if isinstance(user_public_key, str) else list(user_public_key)
        self.add_revocations(keys)
        result = await self.push_account(nc)
        log.info("revoked %s", ", ".join(keys))
        return result

    async def push_account(self, nc: Client | None, servers: list[str] | None = None) -> dict:
        """Send the current HUB account JWT through the system account; returns the server's answer.

        A short system-user connection goes to the server ``nc`` is connected to (or to ``servers``); the
        full resolver there stores the JWT and shares it with its cluster peers.
        """
        if servers is None and nc is not None and nc.connected_url is not None:
            servers = [nc.connected_url.geturl()]
        if not servers:
            raise AuthError("no NATS server to push the account JWT to")
        sys_nc = await nats.connect(servers=servers, user_credentials=str(self.system_creds()),
                                    name="rthub-auth-push", connect_timeout=5, max_reconnect_attempts=2)
        try:
            return self._check(await sys_nc.request(CLAIMS_UPDATE, self.hub_jwt.encode(), timeout=5))
        finally:
            await sys_nc.close()

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


def creds_inbox_prefix(creds: str | Path) -> str | None:
    """The private inbox prefix a ``.creds`` file's user must connect with (``None``: the default is fine).

    Reads only the JWT part (public), never the seed; lets any client connect without knowing which user
    it is, e.g. ``nats.connect(..., user_credentials=path, inbox_prefix=creds_inbox_prefix(path) or "_INBOX")``.
    """
    text = Path(creds).read_text() if not isinstance(creds, str) or "BEGIN NATS USER JWT" not in creds else creds
    claims = jwt.decode(jwt.creds_jwt(text), verify=False)["nats"]
    return inbox_prefix_of(claims.get("sub", {}).get("allow", []))


__all__ = ["AuthStore", "AuthError", "SERVICES", "creds_inbox_prefix"]
