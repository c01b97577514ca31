"""The kernel every service shares: names (subjects, streams, buckets), settings, the NATS connection, stream
creation, the protocol and delivery-kind registries, events, grants, and the JetStream core (a continuous pull
stream, a typed KV mirror, an acked publisher). Imports nothing else of the project (lint-imports checks it);
only nats-py and msgspec, so the LMS side may import it too."""
