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
-- How each message ended (protocol.RESULTS; a step's Outcome with another result is refused before it gets
-- here). Added to a database made before it without a rewrite: NOT VALID, then validated when every older row
-- passes; where one does not, that row stays as it was, and every row written from now on is checked.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'consumer_events'::regclass
                   AND conname = 'consumer_events_result_check') THEN
        ALTER TABLE consumer_events ADD CONSTRAINT consumer_events_result_check
            CHECK (result IN ('charged', 'replayed', 'recovered', 'skipped', 'dead_lettered')) NOT VALID;
        BEGIN
            ALTER TABLE consumer_events VALIDATE CONSTRAINT consumer_events_result_check;
        EXCEPTION WHEN check_violation THEN
            NULL;
        END;
    END IF;
END $$;
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

-- The PaymentIntent path's recovery point: the id of the message's PaymentIntent, stored before it is confirmed.
-- A 'pending' row with an id can always be asked about (GET /v1/payment_intents/{id}); one without an id never
-- moved money, since a PaymentIntent is confirmed only after its id is stored here.
ALTER TABLE charges ADD COLUMN IF NOT EXISTS payment_intent text;
CREATE INDEX IF NOT EXISTS charges_payment_intent_idx ON charges (payment_intent);

-- The webhook receiver's inbox: each event once, by its id. A second delivery of an event finds its row and
-- changes nothing; the row records what the event settled.
CREATE TABLE IF NOT EXISTS webhook_inbox (
    event_id    text PRIMARY KEY,
    type        text        NOT NULL,
    object_id   text        NOT NULL,
    msg_id      text,
    settled     text,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    payload     jsonb       NOT NULL
);
-- Deliveries of an event already in the inbox: what the duplicate-hit metric counts.
CREATE TABLE IF NOT EXISTS webhook_duplicates (
    id          bigserial PRIMARY KEY,
    event_id    text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- One receipt e-mail per successful payment, written with the inbox row: an effect that a duplicate event must
-- not repeat (a sent e-mail cannot be taken back, so nothing here makes a second one harmless).
CREATE TABLE IF NOT EXISTS receipts (
    id             bigserial PRIMARY KEY,
    payment_intent text        NOT NULL,
    msg_id         text,
    amount         bigint      NOT NULL,
    currency       text        NOT NULL,
    event_id       text        NOT NULL,
    sent_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
