"""Secrets at rest: webhook signing secrets, LRS passwords and bearer tokens are stored encrypted (Fernet:
AES-128-CBC + HMAC-SHA256, from ``cryptography``) in the portal database and in the ``rthub_targets`` bucket.

The key is ``RTHUB_SECRETS_KEY`` (a Fernet key, ``Fernet.generate_key()``) or, when unset, the one created
once in ``<data_dir>/secrets.key`` (0600). The portal encrypts, the deliverer decrypts: both must share it.
An encrypted value is ``fernet:<token>``; a value without the prefix is taken as plaintext (targets written
by hand or before encryption), so turning encryption on needs no flag day.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec
from cryptography.fernet import Fernet, InvalidToken

from hub.core.grants import Target

PREFIX = "fernet:"
KEY_FILE = "secrets.key"


class SecretError(Exception):
    """An encrypted value that this key cannot open (wrong key or tampered)."""


def load_key(data_dir: str | Path, configured: str = "") -> bytes:
    """The configured key, else ``<data_dir>/secrets.key``, created (0600, exclusive) on first use."""
    if configured:
        return configured.strip().encode()
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
    return path.read_bytes().strip()


class SecretBox:
    """Encrypts and decrypts single string values with one Fernet key (loaded on first use, so a process that
    only ever sees plaintext targets never creates a key file)."""

    def __init__(self, key: bytes | Callable[[], bytes]):
        self._key, self._f = key, None

    @property
    def _fernet(self) -> Fernet:
        if self._f is None:
            self._f = Fernet(self._key() if callable(self._key) else self._key)
        return self._f

    @classmethod
    def from_settings(cls, settings) -> SecretBox:
        return cls(lambda: load_key(settings.data_dir, getattr(settings, "secrets_key", "") or ""))

    def seal(self, value: str | None) -> str | None:
        if value is None or value.startswith(PREFIX):
            return value
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, value: str | None) -> str | None:
        if value is None or not value.startswith(PREFIX):
            return value
        try:
            return self._fernet.decrypt(value[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise SecretError("cannot decrypt a stored secret: wrong RTHUB_SECRETS_KEY?") from None

    def seal_target(self, target: Target) -> Target:
        return msgspec.structs.replace(target, secrets=[self.seal(s) for s in target.secrets],
                                       basic_auth=self.seal(target.basic_auth), bearer=self.seal(target.bearer),
                                       custom_headers={k: self.seal(v) for k, v in target.custom_headers.items()})

    def open_target(self, target: Target) -> Target:
        return msgspec.structs.replace(target, secrets=[self.open(s) for s in target.secrets],
                                       basic_auth=self.open(target.basic_auth), bearer=self.open(target.bearer),
                                       custom_headers={k: self.open(v) for k, v in target.custom_headers.items()})
