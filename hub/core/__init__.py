"""The JetStream core every service shares: protocol constants, precise errors, a continuous pull stream, a
typed KV mirror and an acked publisher. Only nats-py and msgspec: the LMS side may import it too."""
