"""API keys, scopes and per-key rate limits at the front door.

- `keys`: the key format, its digest, scopes and rates.
- `directory`: the keys the server accepts, a snapshot of the key table kept in memory.
- `policy`: which routes need which scope, by route template.
- `ratelimit`: token buckets, in Redis (shared by replicas) or in the process.
- `guard`: the pure ASGI wrapper that refuses (401, 403, 429) before any body is read.
- `gatekeeper`: the above, built from the configuration and wired into the app.
- `commands`: `batchserve keys create|list|revoke`.
"""
