-- Checkout: orders, payment attempts, tickets, stored idempotent responses,
-- the notification outbox, and settings (the ticket signing key).

-- A paid hold ends as 'purchased', and a hold's expiry is extended by the
-- payment window only once ('extended'). SQLite cannot alter a CHECK, so
-- holds is rebuilt; purchased holds count towards the purchase limit, so
-- holds_live_by_buyer covers them too.
CREATE TABLE holds_v4 (
    id          TEXT PRIMARY KEY,
    event_id    TEXT NOT NULL REFERENCES events(id),
    customer_id TEXT NOT NULL REFERENCES customers(id),
    buyer       TEXT NOT NULL,             -- normalised email: the purchase-limit key
    status      TEXT NOT NULL CHECK (status IN ('held', 'checkout', 'released', 'expired', 'purchased')),
    seats       TEXT NOT NULL,             -- JSON array of seat ids, for display
    ga_area     TEXT,
    ga_count    INTEGER NOT NULL DEFAULT 0,
    quantity    INTEGER NOT NULL,
    amount      INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    extended    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO holds_v4 (id, event_id, customer_id, buyer, status, seats, ga_area, ga_count, quantity, amount,
                      currency, created_at, expires_at, version)
    SELECT id, event_id, customer_id, buyer, status, seats, ga_area, ga_count, quantity, amount,
           currency, created_at, expires_at, version FROM holds;
DROP TABLE holds;
ALTER TABLE holds_v4 RENAME TO holds;
CREATE INDEX holds_live_by_buyer ON holds (buyer, event_id, status, expires_at, quantity)
    WHERE status IN ('held', 'checkout', 'purchased');
CREATE INDEX holds_held_by_expiry ON holds (expires_at) WHERE status = 'held';
CREATE INDEX holds_ga_by_expiry ON holds (event_id, ga_area, expires_at)
    WHERE status = 'held' AND ga_area IS NOT NULL;

-- One order per hold; a declined card leaves the order 'failed' and the
-- fan's next checkout of the same hold reopens it with a new attempt.
CREATE TABLE orders (
    id          TEXT PRIMARY KEY,
    hold_id     TEXT NOT NULL UNIQUE,
    event_id    TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'requires_action', 'payment_pending', 'confirmed',
                                                'failed', 'refunded')),
    amount      INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    quantity    INTEGER NOT NULL,
    failure_code TEXT,
    action_url  TEXT,
    payment_intent TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL
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
    amount      INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('started', 'requires_action', 'processing', 'succeeded', 'failed')),
    intent_id   TEXT,
    failure_code TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
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
    used_at     INTEGER,
    created_at  INTEGER NOT NULL,
    CHECK ((seat_id IS NULL) <> (ga_area IS NULL))
);
-- The backstop of invariant 1: at most one live ticket per (event, seat).
CREATE UNIQUE INDEX tickets_live_seat ON tickets (event_id, seat_id) WHERE status <> 'void' AND seat_id IS NOT NULL;
CREATE INDEX tickets_by_order ON tickets (order_id);

-- Stripe-style idempotency for our own API, kept 24 h.
CREATE TABLE idempotency_keys (
    customer_id TEXT NOT NULL,
    key         TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    status      INTEGER,                   -- the stored response's status; NULL while running
    body        BLOB,
    locked_until INTEGER NOT NULL,         -- a running request's lease
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (customer_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    delivered_at INTEGER,
    last_error  TEXT,
    dedup_key   TEXT,                      -- set for messages written at most once
    done_channels TEXT NOT NULL DEFAULT '' -- channels (webhook, email) that have it, comma-separated
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE UNIQUE INDEX outbox_dedup ON outbox (dedup_key) WHERE dedup_key IS NOT NULL;

CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       BLOB NOT NULL
);
