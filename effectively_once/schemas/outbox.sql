-- The transactional outbox and the inbox (payments/outbox.py). The shop writes an order and its
-- message in one transaction; a relay publishes the outbox at least once; the warehouse applies
-- each message once, remembered in its inbox. Both sides share one database here, for brevity.
CREATE TABLE IF NOT EXISTS orders (
    order_id   text PRIMARY KEY,
    customer   text        NOT NULL,
    amount     integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS outbox (
    id           bigserial PRIMARY KEY,
    msg_id       text UNIQUE NOT NULL,
    topic        text        NOT NULL,
    key          text        NOT NULL,
    payload      jsonb       NOT NULL,
    published_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS inbox (
    consumer    text        NOT NULL,
    msg_id      text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, msg_id)
);
CREATE TABLE IF NOT EXISTS shipments (
    order_id   text PRIMARY KEY,
    msg_id     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
