-- Checkout: orders, payment attempts, tickets, stored idempotent responses,
-- the notification outbox, and settings (the ticket signing key).

-- A paid hold ends as 'purchased'; a hold's expiry is extended by the
-- payment window only once ('extended'). Purchased holds count towards the
-- purchase limit, so holds_live_by_buyer covers them too.
ALTER TABLE holds DROP CONSTRAINT holds_status_check;
ALTER TABLE holds ADD CONSTRAINT holds_status_check
    CHECK (status IN ('held', 'checkout', 'released', 'expired', 'purchased'));
ALTER TABLE holds ADD COLUMN extended BOOLEAN NOT NULL DEFAULT false;
DROP INDEX holds_live_by_buyer;
CREATE INDEX holds_live_by_buyer ON holds (buyer, event_id) WHERE status IN ('held', 'checkout', 'purchased');

-- One order per hold; a declined card leaves the order 'failed' and the
-- fan's next checkout of the same hold reopens it with a new attempt.
CREATE TABLE orders (
    id          TEXT PRIMARY KEY,
    hold_id     TEXT NOT NULL UNIQUE,
    event_id    TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'requires_action', 'payment_pending', 'confirmed',
                                                'failed', 'refunded')),
    amount      BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    quantity    INTEGER NOT NULL,
    failure_code TEXT,
    action_url  TEXT,
    payment_intent TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL
);
CREATE INDEX orders_by_customer ON orders (customer_id, created_at);
CREATE INDEX orders_unsettled ON orders (updated_at)
    WHERE status IN ('pending', 'requires_action', 'payment_pending');
-- Reconciliation looks at each order once, shortly after it is confirmed.
CREATE INDEX orders_confirmed_by_update ON orders (updated_at) WHERE status = 'confirmed';

-- Written before the gateway is called; the gateway key derives from id.
CREATE TABLE payment_attempts (
    id          TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL REFERENCES orders(id),
    payment_method TEXT NOT NULL,
    amount      BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('started', 'requires_action', 'processing', 'succeeded', 'failed')),
    intent_id   TEXT,
    failure_code TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX attempts_by_order ON payment_attempts (order_id, created_at);

CREATE TABLE tickets (
    id          TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL REFERENCES orders(id),
    event_id    TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    seat_id     TEXT,                      -- NULL for a GA place
    ga_area     TEXT,
    code        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('valid', 'used', 'void')),
    used_at     BIGINT,
    created_at  BIGINT NOT NULL,
    CHECK ((seat_id IS NULL) <> (ga_area IS NULL))
);
-- The backstop of invariant 1: at most one live ticket per (event, seat).
CREATE UNIQUE INDEX tickets_live_seat ON tickets (event_id, seat_id) WHERE status <> 'void' AND seat_id IS NOT NULL;
CREATE INDEX tickets_by_order ON tickets (order_id);

-- Stripe-style idempotency for our own API, kept 24 h.
CREATE TABLE idempotency_keys (
    customer_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    request_hash BYTEA NOT NULL,
    status      INTEGER,                   -- the stored response's status; NULL while running
    body        BYTEA,
    locked_until BIGINT NOT NULL,          -- a running request's lease
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (customer_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    topic       TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    delivered_at BIGINT,
    last_error  TEXT,
    dedup_key   TEXT,                      -- set for messages written at most once
    done_channels TEXT NOT NULL DEFAULT '' -- channels (webhook, email) that have it, comma-separated
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE UNIQUE INDEX outbox_dedup ON outbox (dedup_key) WHERE dedup_key IS NOT NULL;

CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       BYTEA NOT NULL
);
