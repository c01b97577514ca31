"""Real-time Open edX events hub: NATS JetStream in, xAPI and IMS Caliper out."""

__version__ = "0.1.0"
