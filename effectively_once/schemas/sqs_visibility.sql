-- The SQS visibility-timeout replay: a queue in PostgreSQL, the workers' side effects, and the dedup table of the fix.
CREATE TABLE IF NOT EXISTS sqs_messages (
    id             bigserial PRIMARY KEY,
    body           text NOT NULL,
    visible_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    receive_count  integer NOT NULL DEFAULT 0,
    receipt_handle uuid UNIQUE
);
CREATE INDEX IF NOT EXISTS sqs_messages_visible_at ON sqs_messages (visible_at);
CREATE TABLE IF NOT EXISTS side_effects (
    id         bigserial PRIMARY KEY,
    message_id bigint NOT NULL,
    worker     text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz
);
CREATE TABLE IF NOT EXISTS processed_messages (
    message_id   bigint PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
