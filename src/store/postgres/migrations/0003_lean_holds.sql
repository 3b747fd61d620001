-- Every hold insert paid for two foreign-key checks: an index lookup plus a
-- FOR KEY SHARE row lock on its event and on its customer. Every concurrent
-- hold batch locks the same event row, so those locks become MultiXacts.
-- Neither key can dangle: events and customers are never deleted, the hold
-- paths read the event in the hold's own transaction and refuse an unknown
-- one, and the customer comes from a live session. (seats, ga_inventory and
-- sessions keep their foreign keys; their rows are written once.)
ALTER TABLE holds DROP CONSTRAINT holds_event_id_fkey;
ALTER TABLE holds DROP CONSTRAINT holds_customer_id_fkey;

-- A customer's holds carry their email, so GET /v1/customers/me/holds goes
-- through holds_live_by_buyer; one index fewer to write per hold.
DROP INDEX holds_live_by_customer;
