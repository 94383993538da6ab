-- The payment provider's own database: the money it moved, and the idempotency keys it keeps.
CREATE TABLE IF NOT EXISTS ledger (
    charge_id       text PRIMARY KEY,
    msg_id          text,
    idempotency_key text,
    customer        text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    currency        text        NOT NULL,
    trace_id        text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS ledger_msg_id_idx ON ledger (msg_id);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key          text PRIMARY KEY,
    fingerprint  text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('in_flight', 'done')),
    status_code  integer,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    locked_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at timestamptz
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx ON idempotency_keys (created_at);
