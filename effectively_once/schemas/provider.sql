-- The payment provider's own database: the money it moved, its objects, its events and their webhook
-- deliveries, and the idempotency keys it keeps.

-- Every time money moved: one succeeded charge each (a Charges API call, or a PaymentIntent's confirm).
CREATE TABLE IF NOT EXISTS ledger (
    charge_id       text PRIMARY KEY,
    msg_id          text,
    idempotency_key text,
    customer        text,
    amount          bigint      NOT NULL CHECK (amount > 0),
    currency        text        NOT NULL,
    trace_id        text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    metadata        jsonb       NOT NULL DEFAULT '{}',
    description     text,
    payment_intent  text,
    payment_method  text
);
CREATE INDEX IF NOT EXISTS ledger_msg_id_idx ON ledger (msg_id);
CREATE INDEX IF NOT EXISTS ledger_payment_intent_idx ON ledger (payment_intent);

-- Charges a card declined: no money moved, so they are not in the ledger.
CREATE TABLE IF NOT EXISTS declined_charges (
    charge_id       text PRIMARY KEY,
    customer        text,
    amount          bigint      NOT NULL,
    currency        text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    description     text,
    payment_intent  text,
    payment_method  text,
    decline_code    text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- PaymentIntents: created first (no money moves), confirmed later (the charge).
CREATE TABLE IF NOT EXISTS payment_intents (
    id                 text PRIMARY KEY,
    amount             bigint      NOT NULL CHECK (amount > 0),
    currency           text        NOT NULL,
    customer           text,
    description        text,
    metadata           jsonb       NOT NULL DEFAULT '{}',
    status             text        NOT NULL CHECK (status IN ('requires_payment_method', 'requires_confirmation',
                                                              'succeeded')),
    payment_method     text,
    latest_charge      text,
    last_payment_error jsonb,
    client_secret      text        NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Events, written in the statement of the change they describe. Each holds a snapshot of its object, which is
-- also what Search finds once the event is search_delay_ms old.
CREATE TABLE IF NOT EXISTS events (
    seq         bigserial   UNIQUE,
    id          text        PRIMARY KEY,
    type        text        NOT NULL,
    object_type text        NOT NULL,
    object_id   text        NOT NULL,
    body        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS events_object_idx ON events (object_type, object_id, seq);

-- Webhook deliveries, one per event sent to the endpoint, written with the event: a restart resumes them.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    event_id        text        PRIMARY KEY REFERENCES events (id),
    url             text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'given_up')),
    attempts        integer     NOT NULL DEFAULT 0,
    refused         integer     NOT NULL DEFAULT 0,
    timed_out       integer     NOT NULL DEFAULT 0,
    dropped         integer     NOT NULL DEFAULT 0,
    duplicates      integer     NOT NULL DEFAULT 0,
    last_status     integer,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';

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
