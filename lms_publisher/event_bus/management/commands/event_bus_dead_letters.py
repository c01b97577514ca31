"""``manage.py event_bus_dead_letters list|replay|purge [-g GROUP] [-t TOPIC] [--seq N ...]``.

Needs ``lms_publisher.event_bus`` in INSTALLED_APPS (the consumer itself does not)."""

from __future__ import annotations

import asyncio
import json

from django.core.management.base import BaseCommand, CommandError

from hub.core.natsconn import connect
from hub.core.settings import NatsSettings
from lms_publisher.event_bus import deadletters
from lms_publisher.event_bus.config import load


class Command(BaseCommand):
    help = "List, replay or purge the event bus's dead letters (events whose receivers kept failing)."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=("list", "replay", "purge"))
        parser.add_argument("-g", "--group_id", help="only this consumer group")
        parser.add_argument("-t", "--topic", help="only this topic (without the environment prefix)")
        parser.add_argument("--seq", type=int, nargs="*", help="only these dead-letter sequence numbers")
        parser.add_argument("--limit", type=int, default=1000)

    def handle(self, *args, **options):
        s = load()
        topic = s.full_topic(options["topic"]) if options.get("topic") else None

        async def run() -> list[str]:
            nc = await connect(NatsSettings(nats_url=s.url, nats_creds=s.creds), "event-bus-dead-letters")
            try:
                js = s.jetstream(nc, 10)
                letters = await deadletters.dead_letters(js, options.get("group_id"), topic, options["limit"])
                if options.get("seq"):
                    letters = [d for d in letters if d.seq in set(options["seq"])]
                if options["action"] == "list":
                    return [
                        json.dumps(
                            {
                                "seq": d.seq,
                                "subject": d.subject,
                                "id": d.headers.get("ce_id"),
                                "type": d.headers.get("ce_type"),
                                "time": d.headers.get("ce_time"),
                                "deliveries": d.headers.get("Rthub-Deliveries"),
                                "error": d.error,
                            }
                        )
                        for d in letters
                    ]
                if options["action"] == "replay":
                    return [f"replayed {await deadletters.replay(js, letters)}"]
                return [f"purged {await deadletters.purge(js, letters)}"]
            finally:
                await nc.close()

        try:
            lines = asyncio.run(run())
        except OSError as exc:
            raise CommandError(f"cannot reach NATS at {s.url}: {exc}") from exc
        for line in lines:
            self.stdout.write(line)
