"""HTTP to endpoints: the client, one request per delivery kind, Standard Webhooks signing, SSRF rules, rate limits."""
