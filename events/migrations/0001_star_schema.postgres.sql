-- The star: one fact row per classification attempt, four dimensions.
-- Surrogate keys are identities; natural keys are unique.  User, image and class dimensions
-- carry their natural key as a 16-byte digest (nk) because UNIQUE treats NULLs as distinct
-- and because user agents can be longer than a btree entry should be.

CREATE TABLE time_dim (
    time_key  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    minute_ts timestamptz NOT NULL,
    hour_ts   timestamptz NOT NULL,
    day_date  date        NOT NULL,
    hour      smallint    NOT NULL,
    day       smallint    NOT NULL,
    weekday   smallint    NOT NULL,  -- ISO: Monday 1 .. Sunday 7
    month     smallint    NOT NULL,
    year      smallint    NOT NULL,
    CONSTRAINT time_dim_minute_ts_key UNIQUE (minute_ts)
);

CREATE TABLE user_dim (
    user_key   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    nk         bytea NOT NULL,
    user_name  text  NOT NULL,  -- API key id or hash, "anonymous" without one
    client_ip  text,            -- after the PII policy
    user_agent text,
    CONSTRAINT user_dim_nk_key UNIQUE (nk)
);
CREATE INDEX user_dim_user_name_idx ON user_dim (user_name);

CREATE TABLE image_dim (
    image_key    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    nk           bytea NOT NULL,
    sha256       text,
    filename     text,
    content_type text,
    width        integer,
    height       integer,
    byte_size    bigint,
    CONSTRAINT image_dim_nk_key UNIQUE (nk)
);
CREATE INDEX image_dim_sha256_idx ON image_dim (sha256);

CREATE TABLE class_dim (
    class_key  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    nk         bytea   NOT NULL,
    model_name text    NOT NULL,
    class_id   integer NOT NULL,
    class_name text,
    CONSTRAINT class_dim_nk_key UNIQUE (nk)
);

CREATE TABLE api_event_fact (
    fact_key      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid        NOT NULL,
    request_id    text        NOT NULL,
    event_ts      timestamptz NOT NULL,
    time_key      bigint      NOT NULL REFERENCES time_dim (time_key),
    user_key      bigint      NOT NULL REFERENCES user_dim (user_key),
    image_key     bigint      REFERENCES image_dim (image_key),
    class_key     bigint      REFERENCES class_dim (class_key),
    route         text        NOT NULL,
    model_name    text,
    model_version integer,
    score         double precision,
    status        smallint    NOT NULL,
    error_code    text,
    latency_ms    double precision,
    queue_ms      double precision,
    inference_ms  double precision,
    batch_size    integer,
    request_count integer     NOT NULL DEFAULT 1,
    -- Replays of the journal rely on this: ON CONFLICT (event_id) DO NOTHING.
    CONSTRAINT api_event_fact_event_id_key UNIQUE (event_id)
);
-- The analytics queries filter by time range, model and user, and group by time or class.
CREATE INDEX api_event_fact_event_ts_idx ON api_event_fact (event_ts);
CREATE INDEX api_event_fact_model_ts_idx ON api_event_fact (model_name, event_ts);
CREATE INDEX api_event_fact_user_ts_idx ON api_event_fact (user_key, event_ts);
CREATE INDEX api_event_fact_time_key_idx ON api_event_fact (time_key);
CREATE INDEX api_event_fact_class_key_idx ON api_event_fact (class_key);
CREATE INDEX api_event_fact_image_key_idx ON api_event_fact (image_key);
CREATE INDEX api_event_fact_request_id_idx ON api_event_fact (request_id);
