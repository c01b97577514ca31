"""Precise JetStream errors: what went wrong, as a type, with the server's code and description."""

from __future__ import annotations

import nats.js.errors

from hub.core.api import ErrCode


class JetStreamError(Exception):
    """Base of the core's errors: ``code`` (HTTP-like), ``err_code`` (JetStream's own) and ``description``."""

    def __init__(self, description: str = "", code: int | None = None, err_code: int | None = None):
        super().__init__(description)
        self.description, self.code, self.err_code = description, code, err_code

    def __str__(self) -> str:
        codes = ", ".join(f"{k} {v}" for k, v in (("code", self.code), ("err_code", self.err_code)) if v)
        return f"{self.description} ({codes})" if codes else self.description


class PublishRefused(JetStreamError):
    """The stream answered a publish with an error (wrong expected stream or last sequence, too large...)."""

    @classmethod
    def from_error(cls, code: int, err_code: int, description: str) -> PublishRefused:
        kind = WrongExpectedStream if err_code == ErrCode.STREAM_NOT_MATCH else cls
        return kind(description, code, err_code)


class WrongExpectedStream(PublishRefused):
    """``Nats-Expected-Stream`` named another stream than the one that stores the subject."""


class NoStream(JetStreamError, nats.js.errors.NoStreamResponseError):
    """No stream stores the subject (the publish had no responders); also a nats-py NoStreamResponseError."""


class ConsumerGone(JetStreamError):
    """The consumer a pull stream reads was deleted (or never existed)."""
