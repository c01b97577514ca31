"""What the deliverer keeps in NATS and others read: attempt records and log, counters, leases, status, its streams."""
