-- The same columns as the Postgres migration, in SQLite's types (cache_hit: 0 or 1).

ALTER TABLE api_event_fact ADD COLUMN cache_hit INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_event_fact ADD COLUMN fallback_for TEXT;
