"""Self-service portal: consumers request access to event streams, administrators approve, the hub obeys."""
