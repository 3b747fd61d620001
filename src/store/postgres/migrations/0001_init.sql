-- boxoffice schema v1 for PostgreSQL: the same tables and rules as the
-- SQLite schema. Times are BIGINT milliseconds since the Unix epoch (UTC).

CREATE TABLE customers (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash  BYTEA PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE venues (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    city        TEXT NOT NULL,
    doc         TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    venue_id    TEXT NOT NULL REFERENCES venues(id),
    city        TEXT NOT NULL,
    title       TEXT NOT NULL,
    category    TEXT NOT NULL,
    starts_at   BIGINT NOT NULL,
    on_sale_at  BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    prices      TEXT NOT NULL,
    max_tickets_per_customer INTEGER NOT NULL,
    hold_ttl_seconds INTEGER NOT NULL,
    waiting_room TEXT,
    high_demand BOOLEAN NOT NULL DEFAULT FALSE,
    cancelled   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL
);
CREATE INDEX events_by_start ON events (starts_at, id);
CREATE INDEX events_by_city ON events (lower(city), starts_at, id);

CREATE TABLE seats (
    event_id    TEXT NOT NULL REFERENCES events(id),
    seat_id     TEXT NOT NULL,
    section     TEXT NOT NULL,
    row_label   TEXT NOT NULL,
    number      INTEGER NOT NULL,
    category    TEXT NOT NULL,
    x           DOUBLE PRECISION NOT NULL,
    y           DOUBLE PRECISION NOT NULL,
    status      TEXT NOT NULL DEFAULT 'available'
                CHECK (status IN ('available', 'held', 'checkout', 'sold')),
    hold_id     TEXT,
    hold_expires_at BIGINT,
    order_id    TEXT,
    version     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, seat_id),
    CHECK (status = 'available' OR hold_id IS NOT NULL OR order_id IS NOT NULL),
    CHECK (status <> 'held' OR hold_expires_at IS NOT NULL)
);
CREATE INDEX seats_by_position ON seats (event_id, y, x);

CREATE TABLE ga_inventory (
    event_id    TEXT NOT NULL REFERENCES events(id),
    area_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    category    TEXT NOT NULL,
    capacity    INTEGER NOT NULL,
    held        INTEGER NOT NULL DEFAULT 0,
    sold        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, area_id),
    CHECK (held >= 0 AND sold >= 0 AND held + sold <= capacity)
);

CREATE TABLE holds (
    id          TEXT PRIMARY KEY,
    event_id    TEXT NOT NULL REFERENCES events(id),
    customer_id TEXT NOT NULL REFERENCES customers(id),
    buyer       TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('held', 'checkout', 'released', 'expired')),
    seats       TEXT NOT NULL,
    ga_area     TEXT,
    ga_count    INTEGER NOT NULL DEFAULT 0,
    quantity    INTEGER NOT NULL,
    amount      BIGINT NOT NULL,
    currency    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    version     BIGINT NOT NULL
);
CREATE INDEX holds_live_by_buyer ON holds (buyer, event_id) WHERE status IN ('held', 'checkout');
CREATE INDEX holds_held_by_expiry ON holds (expires_at) WHERE status = 'held';
CREATE INDEX holds_ga_by_expiry ON holds (event_id, ga_area, expires_at)
    WHERE status = 'held' AND ga_area IS NOT NULL;
