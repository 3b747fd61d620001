-- Fewer B-trees written per hold (every page a hold touches is written to
-- the WAL at commit, and that is most of a hold's cost):
-- * holds is keyed by its id directly (WITHOUT ROWID). Ids are UUIDv7, so
--   new holds append to the end of the one B-tree instead of writing a
--   rowid table plus a separate index on id.
-- * a customer's live holds are found through holds_live_by_buyer (a
--   customer's holds all carry the customer's email as buyer), so
--   holds_live_by_customer goes.
-- * holds_live_by_buyer covers the purchase-limit sum (status, expires_at,
--   quantity), so the check reads one index range and no hold rows, and
--   skips lapsed holds the sweeper has not reached yet.
DROP INDEX holds_live_by_customer;

CREATE TABLE holds_v3 (
    id          TEXT PRIMARY KEY,
    event_id    TEXT NOT NULL REFERENCES events(id),
    customer_id TEXT NOT NULL REFERENCES customers(id),
    buyer       TEXT NOT NULL,             -- normalised email: the purchase-limit key
    status      TEXT NOT NULL CHECK (status IN ('held', 'checkout', 'released', 'expired')),
    seats       TEXT NOT NULL,             -- JSON array of seat ids, for display
    ga_area     TEXT,
    ga_count    INTEGER NOT NULL DEFAULT 0,
    quantity    INTEGER NOT NULL,
    amount      INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO holds_v3 (id, event_id, customer_id, buyer, status, seats, ga_area, ga_count, quantity, amount,
                      currency, created_at, expires_at, version)
    SELECT id, event_id, customer_id, buyer, status, seats, ga_area, ga_count, quantity, amount,
           currency, created_at, expires_at, version FROM holds;
DROP TABLE holds;
ALTER TABLE holds_v3 RENAME TO holds;
CREATE INDEX holds_live_by_buyer ON holds (buyer, event_id, status, expires_at, quantity)
    WHERE status IN ('held', 'checkout');
CREATE INDEX holds_held_by_expiry ON holds (expires_at) WHERE status = 'held';
CREATE INDEX holds_ga_by_expiry ON holds (event_id, ga_area, expires_at)
    WHERE status = 'held' AND ga_area IS NOT NULL;
