-- The result cache and fallback models (docs/cache-and-fallback.md): whether an answer came from
-- the cache (never decoded nor batched), and the model a request asked for when its fallback
-- answered instead (model_name then names the fallback). A constant default keeps the ALTER a
-- catalogue change: existing rows are not rewritten.

ALTER TABLE api_event_fact ADD COLUMN cache_hit boolean NOT NULL DEFAULT false;
ALTER TABLE api_event_fact ADD COLUMN fallback_for text;
