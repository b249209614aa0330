-- API keys: who may call the server, with which scopes, at what rate (see docs/auth.md).
-- Only the SHA-256 of a key is stored (hex); the key itself is shown once, when it is created.
-- A revoked key keeps its row (and its name): events name callers by key name, so a name is
-- never handed to a second key.

CREATE TABLE api_keys (
    name       text             PRIMARY KEY,
    key_sha256 text             NOT NULL UNIQUE,
    scopes     text             NOT NULL,  -- comma-separated: classify, stats, admin
    rate_per_s double precision,           -- token refill per second; NULL: no rate limit
    burst      integer,                    -- bucket size
    created_at timestamptz      NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    -- Both or neither (a comparison with NULL would let half a limit through).
    CONSTRAINT api_keys_rate_and_burst CHECK (
        (rate_per_s IS NULL) = (burst IS NULL) AND (rate_per_s IS NULL OR (rate_per_s > 0 AND burst >= 1))
    )
);
