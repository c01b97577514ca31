"""A grant's durable JetStream consumer (created server-side by a privileged user) and the client snippet.

The consumer's ``filter_subjects`` are the grant's subjects, so NATS itself scopes what the consumer user
can pull; the user's permissions name this one consumer exactly (see :mod:`hub.auth.permissions`).
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hub.auth.permissions import consumer_inbox
from hub.core.grants import Grant, consumer_name
from hub.core.subjects import PROTOCOL_STREAMS


async def ensure_consumer(js: JetStreamContext, grant: Grant, deliver_policy: DeliverPolicy = DeliverPolicy.NEW,
                          ack_wait: float = 30.0, max_ack_pending: int = 1000) -> str:
    """Create the grant's durable consumer, or narrow/widen an existing one to the grant's subjects.

    A new consumer starts with statements published from now on (``DeliverPolicy.NEW``); an existing one keeps
    its position and every other setting (a deliverer may have tuned retries), only its filters change.
    """
    grant.validate()
    stream, name = PROTOCOL_STREAMS[grant.protocol], consumer_name(grant.id)
    subjects = grant.filter_subjects()
    try:
        have = (await js.consumer_info(stream, name)).config
    except NotFoundError:
        have = None
    if have is None:
        config = ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT, deliver_policy=deliver_policy,
                                ack_wait=ack_wait, max_ack_pending=max_ack_pending, filter_subjects=subjects,
                                description=f"grant {grant.id} for {grant.consumer}"[:200])
    elif sorted(have.filter_subjects or ([have.filter_subject] if have.filter_subject else [])) == sorted(subjects):
        return name
    else:
        config = have.evolve(filter_subjects=subjects, filter_subject=None)
    await js.add_consumer(stream, config)
    return name


async def delete_consumer(js: JetStreamContext, grant: Grant) -> bool:
    """Remove the grant's durable consumer (after revocation); False when it did not exist."""
    try:
        return await js.delete_consumer(PROTOCOL_STREAMS[grant.protocol], consumer_name(grant.id))
    except NotFoundError:
        return False


def example_subscriber(grant: Grant, consumer: str | None = None, servers: str = "nats://127.0.0.1:4222",
                       creds_file: str = "rthub.creds") -> str:
    """A copy-paste nats-py program that pulls the grant's statements with the downloaded ``.creds`` file."""
    stream = PROTOCOL_STREAMS[grant.protocol]
    consumer = consumer or consumer_name(grant.id)
    inbox = consumer_inbox(grant.id)
    return f'''import asyncio
import json
import sys

import nats

ENDED = ("authorization violation", "authentication revoked", "authentication expired", "user revoked")


async def main():
    ended = asyncio.Event()

    async def on_error(exc):
        # Access revoked or expired (or the grant removed): stop instead of reconnecting forever.
        if any(word in str(exc).lower() for word in ENDED):
            print(f"access ended: {{exc}}", file=sys.stderr)
            ended.set()

    async def on_closed():
        ended.set()

    # Your credential only allows this inbox prefix and this one durable consumer.
    nc = await nats.connect("{servers}", user_credentials="{creds_file}", inbox_prefix="{inbox}",
                            error_cb=on_error, closed_cb=on_closed, max_reconnect_attempts=10)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable="{consumer}", stream="{stream}")
    while not ended.is_set():
        try:
            msgs = await sub.fetch(100, timeout=5)
        except nats.errors.TimeoutError:
            continue
        except Exception as exc:  # connection closed, consumer deleted: the subscription is over
            print(f"subscription ended: {{type(exc).__name__}} {{exc}}", file=sys.stderr)
            break
        for msg in msgs:
            statement = json.loads(msg.data)
            print(msg.subject, statement.get("id"), flush=True)
            await msg.ack()
    if not nc.is_closed:
        await nc.close()


try:
    asyncio.run(main())
except KeyboardInterrupt:
    pass
except Exception as exc:  # e.g. the credential is already revoked: say so, no traceback
    sys.exit(f"cannot subscribe: {{type(exc).__name__}} {{exc}}")
'''


def example_nats_cli(grant: Grant, consumer: str | None = None, servers: str = "nats://127.0.0.1:4222",
                     creds_file: str = "rthub.creds") -> str:
    """The same with the ``nats`` CLI: pull (and ack) from the durable consumer, or watch the live feed."""
    stream = PROTOCOL_STREAMS[grant.protocol]
    consumer = consumer or consumer_name(grant.id)
    live = grant.filter_subjects()[0]
    flags = f"--server {servers} --creds {creds_file} --inbox-prefix {consumer_inbox(grant.id)}"
    return (f"# next 10 statements from your durable consumer (acknowledged, resumes where it stopped)\n"
            f"nats {flags} consumer next {stream} {consumer} --count 10\n\n"
            f"# or watch the live feed of one subject of your grant (nothing is kept while you are away)\n"
            f"nats {flags} sub '{live}'\n")
