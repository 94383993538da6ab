-- The shop's database: the consumer's dedup table and its log of every message it handled.
CREATE TABLE IF NOT EXISTS charges (
    msg_id     text PRIMARY KEY,
    status     text        NOT NULL CHECK (status IN ('pending', 'done')),
    charge_id  text,
    attempts   integer     NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS consumer_events (
    id             bigserial PRIMARY KEY,
    msg_id         text,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    result         text        NOT NULL,
    dedup_hit      boolean     NOT NULL DEFAULT false,
    side_effect_ms double precision,
    retries        integer     NOT NULL DEFAULT 0,
    trace_id       text,
    error          text,
    layers         text        NOT NULL,
    consumer_pid   integer     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS consumer_events_msg_id_idx ON consumer_events (msg_id);
-- The offsets_in_db layer: where each partition's consumer goes on, written in the same transaction
-- that records the charge, and read back when a partition is assigned.
CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- The Idempotency-Key the charge was made under: usually charge-<msg_id>, a new derived one
-- (charge-<msg_id>-r1, ...) when the first key replayed a 500 and the ledger held no charge.
ALTER TABLE charges ADD COLUMN IF NOT EXISTS idempotency_key text;
