-- A customer's live holds, for GET /v1/customers/me/holds.
CREATE INDEX holds_live_by_customer ON holds (customer_id, created_at) WHERE status IN ('held', 'checkout');
