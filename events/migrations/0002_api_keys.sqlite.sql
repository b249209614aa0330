-- The same table as the Postgres migration, in SQLite's types (timestamps as fixed-width UTC
-- ISO 8601 text, as in the star schema).

CREATE TABLE api_keys (
    name       TEXT    PRIMARY KEY,
    key_sha256 TEXT    NOT NULL UNIQUE,
    scopes     TEXT    NOT NULL,
    rate_per_s REAL,
    burst      INTEGER,
    created_at TEXT    NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    CHECK ((rate_per_s IS NULL) = (burst IS NULL) AND (rate_per_s IS NULL OR (rate_per_s > 0 AND burst >= 1)))
);
