"""The LMS's NATS ``.creds`` file from the ``RTHUB_NATS_CREDS`` Tutor value (pure; no tutor import).

``tutor config save --set "RTHUB_NATS_CREDS=$(cat lms.creds)"`` stores the text through YAML, which folds its
line breaks into spaces; nats-py reads the JWT and the seed line by line, so the file is rebuilt from the two
tokens. Text that holds no user JWT and seed is refused, so a wrong paste fails ``tutor config save`` instead of
an LMS that silently spools forever.
"""

from __future__ import annotations

import re

_JWT = re.compile(r"-----BEGIN NATS USER JWT-----\s*([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)\s*"
                  r"------END NATS USER JWT------")
_SEED = re.compile(r"-----BEGIN USER NKEY SEED-----\s*(SU[A-Z2-7]{56})\s*------END USER NKEY SEED------")


def creds_file(text: str | None) -> str:
    """A well-formed .creds file for ``text`` (folded or not); empty for empty; ValueError for anything else."""
    if not text or not str(text).strip():
        return ""
    jwt, seed = _JWT.search(str(text)), _SEED.search(str(text))
    if jwt is None or seed is None:
        raise ValueError("RTHUB_NATS_CREDS is not a NATS user .creds file (it needs the user JWT and the "
                         "NKEY seed blocks): set it to the contents of the LMS publisher's .creds file")
    return (f"-----BEGIN NATS USER JWT-----\n{jwt.group(1)}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.group(1)}\n------END USER NKEY SEED------\n")
