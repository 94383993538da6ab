-- The Stripe 2023 replay: every answer the rate-limited provider gave a consumer.
CREATE TABLE IF NOT EXISTS provider_answers (
    id          bigserial PRIMARY KEY,
    at          double precision NOT NULL,   -- seconds since the epoch, as time.time() gives them
    status      integer NOT NULL,
    consumer_pid integer NOT NULL
)
