"""Push delivery of statements to webhooks, xAPI LRSs and Caliper endpoints (``rthub deliver``)."""
