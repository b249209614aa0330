-- The same star as the Postgres migration, in SQLite's types.
-- Timestamps are fixed-width ISO 8601 text in UTC ("2024-05-01T12:34:56.123456Z"), so they sort
-- and compare as text and SQLite's date functions read them.  AUTOINCREMENT keeps surrogate
-- keys from being reused after deletes (a cached key must never name another row).

CREATE TABLE time_dim (
    time_key  INTEGER PRIMARY KEY AUTOINCREMENT,
    minute_ts TEXT    NOT NULL UNIQUE,
    hour_ts   TEXT    NOT NULL,
    day_date  TEXT    NOT NULL,
    hour      INTEGER NOT NULL,
    day       INTEGER NOT NULL,
    weekday   INTEGER NOT NULL,  -- ISO: Monday 1 .. Sunday 7
    month     INTEGER NOT NULL,
    year      INTEGER NOT NULL
);

CREATE TABLE user_dim (
    user_key   INTEGER PRIMARY KEY AUTOINCREMENT,
    nk         BLOB NOT NULL UNIQUE,
    user_name  TEXT NOT NULL,
    client_ip  TEXT,
    user_agent TEXT
);
CREATE INDEX user_dim_user_name_idx ON user_dim (user_name);

CREATE TABLE image_dim (
    image_key    INTEGER PRIMARY KEY AUTOINCREMENT,
    nk           BLOB NOT NULL UNIQUE,
    sha256       TEXT,
    filename     TEXT,
    content_type TEXT,
    width        INTEGER,
    height       INTEGER,
    byte_size    INTEGER
);
CREATE INDEX image_dim_sha256_idx ON image_dim (sha256);

CREATE TABLE class_dim (
    class_key  INTEGER PRIMARY KEY AUTOINCREMENT,
    nk         BLOB    NOT NULL UNIQUE,
    model_name TEXT    NOT NULL,
    class_id   INTEGER NOT NULL,
    class_name TEXT
);

CREATE TABLE api_event_fact (
    fact_key      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL UNIQUE,  -- canonical hyphenated UUID
    request_id    TEXT    NOT NULL,
    event_ts      TEXT    NOT NULL,
    time_key      INTEGER NOT NULL REFERENCES time_dim (time_key),
    user_key      INTEGER NOT NULL REFERENCES user_dim (user_key),
    image_key     INTEGER REFERENCES image_dim (image_key),
    class_key     INTEGER REFERENCES class_dim (class_key),
    route         TEXT    NOT NULL,
    model_name    TEXT,
    model_version INTEGER,
    score         REAL,
    status        INTEGER NOT NULL,
    error_code    TEXT,
    latency_ms    REAL,
    queue_ms      REAL,
    inference_ms  REAL,
    batch_size    INTEGER,
    request_count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX api_event_fact_event_ts_idx ON api_event_fact (event_ts);
CREATE INDEX api_event_fact_model_ts_idx ON api_event_fact (model_name, event_ts);
CREATE INDEX api_event_fact_user_ts_idx ON api_event_fact (user_key, event_ts);
CREATE INDEX api_event_fact_time_key_idx ON api_event_fact (time_key);
CREATE INDEX api_event_fact_class_key_idx ON api_event_fact (class_key);
CREATE INDEX api_event_fact_image_key_idx ON api_event_fact (image_key);
CREATE INDEX api_event_fact_request_id_idx ON api_event_fact (request_id);
