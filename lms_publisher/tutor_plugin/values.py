"""Tutor config values checked before they are rendered into Python settings, a Dockerfile or compose YAML.

Pure functions (no tutor import); each raises ValueError naming the config value, which the plugin turns into a
``tutor config save`` error: a typo must fail there, not become an LMS that silently drops or spools events.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

_JWT = re.compile(r"-----BEGIN NATS USER JWT-----\s*([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)\s*"
                  r"------END NATS USER JWT------")
_SEED = re.compile(r"-----BEGIN USER NKEY SEED-----\s*(SU[A-Z2-7]{56})\s*------END USER NKEY SEED------")
_URL = re.compile(r"(nats|tls|ws|wss)://[^\s,/]+")


def creds_file(text: str | None) -> str:
    """``RTHUB_NATS_CREDS`` -> a well-formed .creds file; empty for empty.

    ``tutor config save --set "RTHUB_NATS_CREDS=$(cat lms.creds)"`` stores the text through YAML, which folds its
    line breaks into spaces; nats-py reads the JWT and the seed line by line, so the file is rebuilt from them.
    """
    if not text or not str(text).strip():
        return ""
    jwt, seed = _JWT.search(str(text)), _SEED.search(str(text))
    if jwt is None or seed is None:
        raise ValueError("RTHUB_NATS_CREDS is not a NATS user .creds file (it needs the user JWT and the "
                         "NKEY seed blocks): set it to the contents of the LMS publisher's .creds file")
    return (f"-----BEGIN NATS USER JWT-----\n{jwt.group(1)}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.group(1)}\n------END USER NKEY SEED------\n")


def allow_events(value: Any) -> list[str]:
    """``RTHUB_ALLOW_EVENTS``: a YAML list of names or one comma-separated string; empty means the default."""
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"RTHUB_ALLOW_EVENTS must be a list of event names or a comma-separated string, "
                         f"not {value!r}")
    names = [i.strip() for i in items if i.strip()]
    if any(not n.isprintable() for n in names):
        raise ValueError(f"RTHUB_ALLOW_EVENTS holds a name with control characters: {value!r}")
    return names


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,200}")


def topics(value: Any) -> list[str]:
    """``RTHUB_EVENT_BUS_TOPICS``: a YAML list of event-bus topic names or one comma-separated string."""
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"RTHUB_EVENT_BUS_TOPICS must be a list of topic names or a comma-separated string, "
                         f"not {value!r}")
    names = [i.strip() for i in items if i.strip()]
    bad = [n for n in names if not _TOPIC.fullmatch(n)]
    if bad:
        raise ValueError(f"RTHUB_EVENT_BUS_TOPICS holds names that are no event-bus topic: {bad!r}")
    return names


def spool_max_bytes(value: Any) -> int:
    """``RTHUB_SPOOL_MAX_BYTES``: a positive integer (Jinja's ``int`` would turn a typo into 0: no spool)."""
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise ValueError(f"RTHUB_SPOOL_MAX_BYTES must be a positive number of bytes, not {value!r}")
    if int(value) <= 0:
        raise ValueError(f"RTHUB_SPOOL_MAX_BYTES must be a positive number of bytes, not {value!r}")
    return int(value)


def nats_url(value: Any) -> str:
    """``RTHUB_NATS_URL``: comma-separated nats://, tls://, ws:// or wss:// URLs."""
    urls = [u.strip() for u in value.split(",")] if isinstance(value, str) else []
    if not urls or not all(_URL.fullmatch(u.rstrip("/")) for u in urls):
        raise ValueError(f"RTHUB_NATS_URL must be comma-separated nats://host:port URLs, not {value!r}")
    return ",".join(urls)


def shell_word(value: Any) -> str:
    """A pip requirement as one word of a Dockerfile RUN line."""
    return shlex.quote(str(value))


def compose_string(value: Any) -> str:
    """A YAML double-quoted scalar that docker compose does not interpolate (``$`` doubled)."""
    return json.dumps(str(value)).replace("$", "$$")
