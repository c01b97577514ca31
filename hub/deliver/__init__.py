"""Push delivery of statements to webhooks, xAPI LRSs and Caliper endpoints (``rthub deliver``).

Three rooms: :mod:`.transport` talks HTTP (client, request per kind, signing, SSRF rules, rate limit),
:mod:`.engine` decides what to send when (runners, lanes, retries, schedules, circuit, partitions), :mod:`.state`
is what it keeps in NATS and others read (records, leases, status, attempt log, its streams). :mod:`.service`
is the process, :mod:`.actions` the operations on an integration."""
