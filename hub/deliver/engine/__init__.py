"""What to send when: one runner per integration (or per partition), lanes, retries and schedules, the circuit."""
