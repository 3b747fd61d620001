//! Events: what is on sale, when, at what prices and under what limits.

use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::ToSchema;

use super::ids::{Category, EventId, VenueId};
use super::money::{Currency, MAX_PRICE_MINOR};
use super::time::Timestamp;
use super::venue::Venue;

pub const HOLD_TTL_RANGE: std::ops::RangeInclusive<i64> = 1..=3600;
pub const DEFAULT_HOLD_TTL_SECONDS: u32 = 300;
pub const PURCHASE_LIMIT_RANGE: std::ops::RangeInclusive<i64> = 1..=100;
pub const DEFAULT_PURCHASE_LIMIT: u32 = 10;
/// The largest purchase limit any event may set, so no hold can be larger.
pub const MAX_TICKETS_PER_HOLD: usize = *PURCHASE_LIMIT_RANGE.end() as usize;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventDraft {
    pub venue_id: Option<String>,
    pub title: Option<String>,
    /// What kind of event: `movie`, `concert`, `sport`, ...
    pub category: Option<String>,
    pub starts_at: Option<String>,
    pub on_sale_at: Option<String>,
    pub currency: Option<String>,
    /// Minor units per seat category. Every category the venue uses needs a price.
    pub prices: Option<BTreeMap<String, i64>>,
    pub max_tickets_per_customer: Option<i64>,
    pub hold_ttl_seconds: Option<i64>,
    pub waiting_room: Option<WaitingRoomDraft>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoomDraft {
    /// On a new event, off unless sent; on a `PATCH`, absent keeps it as is.
    pub enabled: Option<bool>,
    pub admission_rate_per_minute: Option<i64>,
    pub max_active_shoppers: Option<i64>,
    pub prequeue_opens_at: Option<String>,
}

/// Changes an admin may make to a live event. Absent fields stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventPatch {
    pub title: Option<String>,
    /// Replaces the price of each listed category; others keep theirs.
    pub prices: Option<BTreeMap<String, i64>>,
    pub max_tickets_per_customer: Option<i64>,
    pub hold_ttl_seconds: Option<i64>,
    pub waiting_room: Option<WaitingRoomDraft>,
    pub high_demand: Option<bool>,
    /// Only `cancelled` may be set.
    pub status: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WaitingRoom {
    pub enabled: bool,
    pub admission_rate_per_minute: u32,
    pub max_active_shoppers: u32,
    pub prequeue_opens_at: Option<Timestamp>,
}

/// Serializable so a node can share it with others through the Redis
/// catalog tier; it is never sent to clients as is (see `EventView`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub id: EventId,
    pub venue_id: VenueId,
    /// Copied from the venue so search needs no join.
    pub city: String,
    pub title: String,
    pub category: Category,
    pub starts_at: Timestamp,
    pub on_sale_at: Timestamp,
    pub currency: Currency,
    pub prices: BTreeMap<Category, i64>,
    pub max_tickets_per_customer: u32,
    pub hold_ttl_seconds: u32,
    pub waiting_room: Option<WaitingRoom>,
    pub high_demand: bool,
    pub cancelled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bumped by every change; updates are conditional on it.
    pub version: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Announced, sales not open yet.
    Scheduled,
    OnSale,
    /// The event has started; no more sales.
    Ended,
    Cancelled,
}

/// Why an event cannot take a hold right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotOnSale(pub EventStatus);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvent(pub Vec<String>);

fn required_text(field: &str, v: Option<&str>, max: usize, p: &mut Vec<String>) -> Option<String> {
    match v.map(str::trim) {
        Some(s) if !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control) => Some(s.to_owned()),
        Some(_) => {
            p.push(format!("{field} must be 1-{max} printable characters"));
            None
        }
        None => {
            p.push(format!("{field} is required"));
            None
        }
    }
}

fn time_field(field: &str, v: Option<&str>, p: &mut Vec<String>) -> Option<Timestamp> {
    match v {
        None => {
            p.push(format!("{field} is required"));
            None
        }
        Some(s) => {
            let t = Timestamp::parse_rfc3339(s);
            if t.is_none() {
                p.push(format!("{field} must be an RFC 3339 time"));
            }
            t
        }
    }
}

fn ranged(field: &str, v: Option<i64>, range: std::ops::RangeInclusive<i64>, p: &mut Vec<String>) -> Option<u32> {
    let v = v?;
    if range.contains(&v) {
        Some(v as u32)
    } else {
        p.push(format!("{field} must be {}-{}", range.start(), range.end()));
        None
    }
}

fn parse_prices(
    raw: &BTreeMap<String, i64>,
    allowed: &dyn Fn(&Category) -> bool,
    p: &mut Vec<String>,
) -> BTreeMap<Category, i64> {
    let mut out = BTreeMap::new();
    for (k, v) in raw {
        match Category::parse(k) {
            Some(c) if allowed(&c) => {
                if (0..=MAX_PRICE_MINOR).contains(v) {
                    out.insert(c, *v);
                } else {
                    p.push(format!("prices.{k} must be 0-{MAX_PRICE_MINOR} minor units"));
                }
            }
            _ => p.push(format!("prices.{k}: the venue has no such category")),
        }
    }
    out
}

fn parse_waiting_room(d: &WaitingRoomDraft, previous: Option<&WaitingRoom>, p: &mut Vec<String>) -> WaitingRoom {
    let rate = ranged("waiting_room.admission_rate_per_minute", d.admission_rate_per_minute, 1..=10_000_000, p);
    let active = ranged("waiting_room.max_active_shoppers", d.max_active_shoppers, 1..=10_000_000, p);
    let opens = match &d.prequeue_opens_at {
        None => previous.and_then(|w| w.prequeue_opens_at),
        Some(s) => {
            let t = Timestamp::parse_rfc3339(s);
            if t.is_none() {
                p.push("waiting_room.prequeue_opens_at must be an RFC 3339 time".into());
            }
            t
        }
    };
    WaitingRoom {
        enabled: d.enabled.or(previous.map(|w| w.enabled)).unwrap_or(false),
        admission_rate_per_minute: rate.or(previous.map(|w| w.admission_rate_per_minute)).unwrap_or(1_000),
        max_active_shoppers: active.or(previous.map(|w| w.max_active_shoppers)).unwrap_or(1_000),
        prequeue_opens_at: opens,
    }
}

impl Event {
    pub fn from_draft(id: EventId, d: EventDraft, venue: &Venue, now: Timestamp) -> Result<Event, InvalidEvent> {
        let mut p = Vec::new();
        let title = required_text("title", d.title.as_deref(), 200, &mut p);
        let category = match d.category.as_deref() {
            None => {
                p.push("category is required".into());
                None
            }
            Some(c) => {
                let c = Category::parse(c);
                if c.is_none() {
                    p.push("category must be 1-32 of a-z 0-9 - _".into());
                }
                c
            }
        };
        let starts_at = time_field("starts_at", d.starts_at.as_deref(), &mut p);
        let on_sale_at = time_field("on_sale_at", d.on_sale_at.as_deref(), &mut p);
        if let (Some(s), Some(o)) = (starts_at, on_sale_at) {
            if o >= s {
                p.push("on_sale_at must be before starts_at".into());
            }
        }
        let currency = d.currency.as_deref().and_then(Currency::parse);
        if currency.is_none() {
            p.push("currency must be an ISO 4217 code such as USD".into());
        }
        let venue_categories = venue.categories();
        let prices = match &d.prices {
            None => {
                p.push("prices is required".into());
                BTreeMap::new()
            }
            Some(raw) => parse_prices(raw, &|c| venue_categories.contains(c), &mut p),
        };
        for c in &venue_categories {
            if !prices.contains_key(c) && d.prices.is_some() && !p.iter().any(|m| m.starts_with("prices.")) {
                p.push(format!("prices.{c} is missing: the venue sells seats in that category"));
            }
        }
        let max = ranged("max_tickets_per_customer", d.max_tickets_per_customer, PURCHASE_LIMIT_RANGE, &mut p);
        let ttl = ranged("hold_ttl_seconds", d.hold_ttl_seconds, HOLD_TTL_RANGE, &mut p);
        let waiting_room = d.waiting_room.as_ref().map(|w| parse_waiting_room(w, None, &mut p));

        match (title, category, starts_at, on_sale_at, currency) {
            (Some(title), Some(category), Some(starts_at), Some(on_sale_at), Some(currency)) if p.is_empty() => {
                Ok(Event {
                    id,
                    venue_id: venue.id.clone(),
                    city: venue.city.clone(),
                    title,
                    category,
                    starts_at,
                    on_sale_at,
                    currency,
                    prices,
                    max_tickets_per_customer: max.unwrap_or(DEFAULT_PURCHASE_LIMIT),
                    hold_ttl_seconds: ttl.unwrap_or(DEFAULT_HOLD_TTL_SECONDS),
                    waiting_room,
                    high_demand: false,
                    cancelled: false,
                    created_at: now,
                    updated_at: now,
                    version: 1,
                })
            }
            _ => Err(InvalidEvent(p)),
        }
    }

    /// Applies an admin's patch, returning the changed event. Nothing is
    /// changed when any field is invalid.
    pub fn patched(&self, patch: &EventPatch, now: Timestamp) -> Result<Event, InvalidEvent> {
        let mut p = Vec::new();
        let mut e = self.clone();
        if let Some(t) = &patch.title {
            if let Some(t) = required_text("title", Some(t), 200, &mut p) {
                e.title = t;
            }
        }
        if let Some(raw) = &patch.prices {
            let known = &self.prices;
            e.prices.extend(parse_prices(raw, &|c| known.contains_key(c), &mut p));
        }
        if let Some(m) =
            ranged("max_tickets_per_customer", patch.max_tickets_per_customer, PURCHASE_LIMIT_RANGE, &mut p)
        {
            e.max_tickets_per_customer = m;
        }
        if let Some(t) = ranged("hold_ttl_seconds", patch.hold_ttl_seconds, HOLD_TTL_RANGE, &mut p) {
            e.hold_ttl_seconds = t;
        }
        if let Some(w) = &patch.waiting_room {
            e.waiting_room = Some(parse_waiting_room(w, self.waiting_room.as_ref(), &mut p));
        }
        if let Some(h) = patch.high_demand {
            e.high_demand = h;
        }
        match patch.status.as_deref() {
            None => {}
            Some("cancelled") => e.cancelled = true,
            Some(other) => p.push(format!("status {other:?} cannot be set; only \"cancelled\"")),
        }
        if !p.is_empty() {
            return Err(InvalidEvent(p));
        }
        e.updated_at = now;
        e.version += 1;
        Ok(e)
    }

    pub fn status(&self, now: Timestamp) -> EventStatus {
        if self.cancelled {
            EventStatus::Cancelled
        } else if now >= self.starts_at {
            EventStatus::Ended
        } else if now >= self.on_sale_at {
            EventStatus::OnSale
        } else {
            EventStatus::Scheduled
        }
    }

    /// Holds are taken only while the event is on sale.
    /// Whether fans queue in a waiting room for this event.
    pub fn has_waiting_room(&self) -> bool {
        self.waiting_room.as_ref().is_some_and(|w| w.enabled)
    }

    pub fn check_on_sale(&self, now: Timestamp) -> Result<(), NotOnSale> {
        match self.status(now) {
            EventStatus::OnSale => Ok(()),
            other => Err(NotOnSale(other)),
        }
    }

    pub fn price_of(&self, c: &Category) -> Option<i64> {
        self.prices.get(c).copied()
    }

    /// The price of one ticket in each of `categories`, summed. `None` if a
    /// category has no price (creation forbids that) or the sum overflows.
    pub fn amount_for(&self, categories: &[Category]) -> Option<i64> {
        categories.iter().try_fold(0i64, |sum, c| sum.checked_add(self.price_of(c)?))
    }

    /// Categories from the most to the least expensive: "best first".
    pub fn categories_best_first(&self) -> Vec<Category> {
        let mut cats: Vec<(&Category, &i64)> = self.prices.iter().collect();
        cats.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        cats.into_iter().map(|(c, _)| c.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::venue::{GaAreaDraft, SeatDraft, SectionDraft, VenueDraft};

    fn venue() -> Venue {
        let seat = |id: &str, cat: &str| SeatDraft {
            id: Some(id.into()),
            row: Some("A".into()),
            number: Some(1),
            category: Some(cat.into()),
            x: Some(0.0),
            y: Some(0.0),
        };
        Venue::from_draft(
            VenueId::generate(),
            VenueDraft {
                name: Some("Hall".into()),
                city: Some("Pune".into()),
                sections: vec![SectionDraft {
                    name: Some("Main".into()),
                    seats: vec![seat("A1", "premium"), seat("B1", "standard")],
                }],
                ga_areas: vec![GaAreaDraft {
                    id: Some("floor".into()),
                    name: Some("Floor".into()),
                    category: Some("standard".into()),
                    capacity: Some(10),
                }],
            },
        )
        .unwrap()
    }

    fn draft() -> EventDraft {
        EventDraft {
            title: Some("Opening Night".into()),
            category: Some("movie".into()),
            starts_at: Some("2027-01-02T20:00:00Z".into()),
            on_sale_at: Some("2027-01-01T10:00:00Z".into()),
            currency: Some("USD".into()),
            prices: Some([("standard".to_string(), 1500), ("premium".to_string(), 4000)].into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply_and_status_follows_the_clock() {
        let e = Event::from_draft(EventId::generate(), draft(), &venue(), Timestamp::from_millis(0)).unwrap();
        assert_eq!(e.hold_ttl_seconds, DEFAULT_HOLD_TTL_SECONDS);
        assert_eq!(e.max_tickets_per_customer, DEFAULT_PURCHASE_LIMIT);
        assert_eq!(e.status(Timestamp::parse_rfc3339("2027-01-01T09:59:59Z").unwrap()), EventStatus::Scheduled);
        assert!(e.check_on_sale(Timestamp::parse_rfc3339("2027-01-01T10:00:00Z").unwrap()).is_ok());
        assert_eq!(e.status(Timestamp::parse_rfc3339("2027-01-02T20:00:00Z").unwrap()), EventStatus::Ended);
        assert_eq!(e.categories_best_first()[0].as_str(), "premium");
    }

    #[test]
    fn a_missing_category_price_and_out_of_range_limits_are_rejected() {
        let mut d = draft();
        d.prices = Some([("standard".to_string(), 1500)].into());
        d.hold_ttl_seconds = Some(0);
        d.max_tickets_per_customer = Some(101);
        let err = Event::from_draft(EventId::generate(), d, &venue(), Timestamp::from_millis(0)).unwrap_err();
        let all = err.0.join("\n");
        assert!(all.contains("prices.premium is missing"), "{all}");
        assert!(all.contains("hold_ttl_seconds"), "{all}");
        assert!(all.contains("max_tickets_per_customer"), "{all}");
    }

    #[test]
    fn patches_change_only_known_categories_and_only_to_cancelled() {
        let e = Event::from_draft(EventId::generate(), draft(), &venue(), Timestamp::from_millis(0)).unwrap();
        let ok = e
            .patched(
                &EventPatch { prices: Some([("premium".to_string(), 5000)].into()), ..Default::default() },
                Timestamp::from_millis(5),
            )
            .unwrap();
        assert_eq!(ok.price_of(&Category::parse("premium").unwrap()), Some(5000));
        assert_eq!(ok.version, e.version + 1);
        let unknown = EventPatch { prices: Some([("balcony".to_string(), 1)].into()), ..Default::default() };
        assert!(e.patched(&unknown, Timestamp::from_millis(5)).is_err());
        let reopen = EventPatch { status: Some("on_sale".into()), ..Default::default() };
        assert!(e.patched(&reopen, Timestamp::from_millis(5)).is_err());
    }
}
