"""The bench's receiver: one line per event that came over the bus, ``<event time> <receive time>`` (epoch
seconds), to ``BENCH_RECEIVED``; flushed per line so the bench can count while it runs."""

import os
import time

from django.apps import AppConfig


class BenchConfig(AppConfig):
    name = "bench.event_bus_site"
    label = "event_bus_bench"

    def ready(self):
        from openedx_events.learning.signals import COURSE_ENROLLMENT_CREATED

        path = os.environ.get("BENCH_RECEIVED")
        if not path:
            return
        out = open(path, "a", buffering=1)  # noqa: SIM115 - the process's life

        def received(sender, enrollment, metadata, from_event_bus=False, **kw):
            if from_event_bus:
                out.write(f"{metadata.time.timestamp():.6f} {time.time():.6f}\n")

        COURSE_ENROLLMENT_CREATED.connect(received, weak=False)
