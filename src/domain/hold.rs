//! Holds: a customer's short claim on seats or GA places, and the rules
//! about what a hold request may ask for.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::event::MAX_TICKETS_PER_HOLD;
use super::ids::{AreaId, Category, CustomerId, EventId, HoldId, SeatId};
use super::money::Currency;
use super::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    /// Seats are held until `expires_at`.
    Held,
    /// Payment is under way; only reconciliation or confirmation ends it.
    Checkout,
    /// The customer let go.
    Released,
    /// The hold ran out of time.
    Expired,
    /// Paid for: its seats are sold to the hold's order.
    Purchased,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Held => "held",
            HoldStatus::Checkout => "checkout",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
            HoldStatus::Purchased => "purchased",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "held" => HoldStatus::Held,
            "checkout" => HoldStatus::Checkout,
            "released" => HoldStatus::Released,
            "expired" => HoldStatus::Expired,
            "purchased" => HoldStatus::Purchased,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct GaSelection {
    #[schema(value_type = String)]
    pub area: AreaId,
    pub count: u32,
}

#[derive(Clone, Debug)]
pub struct Hold {
    pub id: HoldId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    /// As stored; see [`Hold::effective_status`] for what it means now.
    pub status: HoldStatus,
    pub seats: Vec<SeatId>,
    pub ga: Option<GaSelection>,
    pub amount: i64,
    pub currency: Currency,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub version: i64,
}

impl Hold {
    /// Lazy expiry: a `held` hold past its expiry is expired, whether or
    /// not the sweeper has written that down yet.
    pub fn effective_status(&self, now: Timestamp) -> HoldStatus {
        match self.status {
            HoldStatus::Held if self.expires_at <= now => HoldStatus::Expired,
            s => s,
        }
    }

    pub fn quantity(&self) -> u32 {
        self.seats.len() as u32 + self.ga.as_ref().map_or(0, |g| g.count)
    }
}

/// What a hold request asks for, already checked for shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    Seats(Vec<SeatId>),
    BestAvailable { count: u32, category: Option<Category> },
    Ga { area: AreaId, count: u32 },
}

impl Selection {
    pub fn quantity(&self) -> u32 {
        match self {
            Selection::Seats(s) => s.len() as u32,
            Selection::BestAvailable { count, .. } | Selection::Ga { count, .. } => *count,
        }
    }
}

/// The body of `POST /v1/events/{id}/holds`: exactly one of the three.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldDraft {
    #[schema(example = json!(["A7", "A8"]))]
    pub seats: Option<Vec<String>>,
    pub best_available: Option<BestAvailableDraft>,
    pub ga: Option<GaDraft>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BestAvailableDraft {
    pub count: i64,
    /// Without one, the most expensive category with room comes first.
    pub category: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GaDraft {
    pub area: String,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadHoldRequest {
    /// Nothing asked for: zero seats or a count of zero.
    Empty,
    /// More than any event allows in one hold.
    TooMany { requested: u64 },
    /// Seat ids that are malformed or repeated.
    InvalidSeats(Vec<String>),
    /// Not exactly one kind of selection, a negative count, a bad name.
    Malformed(String),
}

fn count(v: i64) -> Result<u32, BadHoldRequest> {
    match v {
        0 => Err(BadHoldRequest::Empty),
        v if v < 0 => Err(BadHoldRequest::Malformed("count must be positive".into())),
        v if v as u64 > MAX_TICKETS_PER_HOLD as u64 => Err(BadHoldRequest::TooMany { requested: v as u64 }),
        v => Ok(v as u32),
    }
}

impl Selection {
    pub fn parse(d: HoldDraft) -> Result<Selection, BadHoldRequest> {
        match (d.seats, d.best_available, d.ga) {
            (Some(seats), None, None) => {
                if seats.is_empty() {
                    return Err(BadHoldRequest::Empty);
                }
                if seats.len() > MAX_TICKETS_PER_HOLD {
                    return Err(BadHoldRequest::TooMany { requested: seats.len() as u64 });
                }
                let mut seen = HashSet::with_capacity(seats.len());
                let mut bad = Vec::new();
                let mut ok = Vec::with_capacity(seats.len());
                for s in seats {
                    match SeatId::parse(&s) {
                        Some(id) if seen.insert(id.clone()) => ok.push(id),
                        _ => bad.push(s),
                    }
                }
                if bad.is_empty() {
                    Ok(Selection::Seats(ok))
                } else {
                    Err(BadHoldRequest::InvalidSeats(bad))
                }
            }
            (None, Some(b), None) => {
                let category = match b.category {
                    None => None,
                    Some(c) => Some(
                        Category::parse(&c).ok_or_else(|| BadHoldRequest::Malformed(format!("no category {c:?}")))?,
                    ),
                };
                Ok(Selection::BestAvailable { count: count(b.count)?, category })
            }
            (None, None, Some(g)) => {
                let area = AreaId::parse(&g.area)
                    .ok_or_else(|| BadHoldRequest::Malformed(format!("no GA area {:?}", g.area)))?;
                Ok(Selection::Ga { area, count: count(g.count)? })
            }
            (None, None, None) => Err(BadHoldRequest::Empty),
            _ => Err(BadHoldRequest::Malformed("give exactly one of seats, best_available or ga".into())),
        }
    }
}

/// A hold would take the buyer past the event's per-customer limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitExceeded {
    pub limit: u32,
    pub already: u32,
    pub requested: u32,
}

/// The purchase limit counts everything the buyer already holds (and,
/// once checkout exists, has bought) for this event.
pub fn check_purchase_limit(already: u32, requested: u32, limit: u32) -> Result<(), LimitExceeded> {
    if already.saturating_add(requested) > limit {
        Err(LimitExceeded { limit, already, requested })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seats(v: &[&str]) -> HoldDraft {
        HoldDraft { seats: Some(v.iter().map(|s| s.to_string()).collect()), ..Default::default() }
    }

    #[test]
    fn seat_lists_are_checked_for_emptiness_duplicates_and_shape() {
        assert_eq!(Selection::parse(seats(&[])), Err(BadHoldRequest::Empty));
        assert_eq!(Selection::parse(seats(&["A1", "A1"])), Err(BadHoldRequest::InvalidSeats(vec!["A1".into()])));
        assert_eq!(
            Selection::parse(seats(&["A1", "not a seat"])),
            Err(BadHoldRequest::InvalidSeats(vec!["not a seat".into()]))
        );
        let many: Vec<String> = (0..10_000).map(|i| format!("S{i}")).collect();
        let d = HoldDraft { seats: Some(many), ..Default::default() };
        assert_eq!(Selection::parse(d), Err(BadHoldRequest::TooMany { requested: 10_000 }));
    }

    #[test]
    fn counts_must_be_positive_and_bounded() {
        let best = |n| HoldDraft {
            best_available: Some(BestAvailableDraft { count: n, category: None }),
            ..Default::default()
        };
        assert_eq!(Selection::parse(best(0)), Err(BadHoldRequest::Empty));
        assert!(matches!(Selection::parse(best(-3)), Err(BadHoldRequest::Malformed(_))));
        assert!(matches!(Selection::parse(best(i64::MAX)), Err(BadHoldRequest::TooMany { .. })));
        assert_eq!(Selection::parse(best(2)), Ok(Selection::BestAvailable { count: 2, category: None }));
    }

    #[test]
    fn exactly_one_selection_kind() {
        let both = HoldDraft {
            seats: Some(vec!["A1".into()]),
            ga: Some(GaDraft { area: "floor".into(), count: 1 }),
            ..Default::default()
        };
        assert!(matches!(Selection::parse(both), Err(BadHoldRequest::Malformed(_))));
        assert_eq!(Selection::parse(HoldDraft::default()), Err(BadHoldRequest::Empty));
    }

    #[test]
    fn limit_counts_what_is_already_held() {
        assert!(check_purchase_limit(4, 2, 6).is_ok());
        assert!(check_purchase_limit(5, 2, 6).is_err());
        assert!(check_purchase_limit(u32::MAX, 1, 6).is_err());
    }

    #[test]
    fn a_held_hold_past_its_expiry_reads_as_expired() {
        let h = Hold {
            id: HoldId::generate(),
            event_id: EventId::generate(),
            customer_id: CustomerId::generate(),
            status: HoldStatus::Held,
            seats: vec![SeatId::parse("A1").unwrap()],
            ga: None,
            amount: 100,
            currency: Currency::parse("USD").unwrap(),
            created_at: Timestamp::from_millis(0),
            expires_at: Timestamp::from_millis(1_000),
            version: 1,
        };
        assert_eq!(h.effective_status(Timestamp::from_millis(999)), HoldStatus::Held);
        assert_eq!(h.effective_status(Timestamp::from_millis(1_000)), HoldStatus::Expired);
    }
}
