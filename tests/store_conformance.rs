//! The store conformance suite: the same cases against every backend.
//!
//! These talk to the `Store` trait directly, with no fast path in front,
//! so every race here is decided by the database's conditional writes
//! alone. A backend is correct when it passes every case.
//!
//! To add a backend, add a module at the bottom with a `make()` that
//! returns a fresh, empty store (and cleans it up on drop), and list the
//! cases with `conformance!`.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use boxoffice::demo;
use boxoffice::domain::customer::{Email, TokenHash};
use boxoffice::domain::event::{Event, EventDraft, EventPatch};
use boxoffice::domain::hold::{Hold, HoldStatus, Selection};
use boxoffice::domain::ids::{
    AreaId, AttemptId, Category, CustomerId, EventId, HoldId, OrderId, SeatId, TicketId, VenueId,
};
use boxoffice::domain::order::{HoldFate, OrderStatus};
use boxoffice::domain::time::Timestamp;
use boxoffice::domain::venue::{Venue, VenueDraft};
use boxoffice::store::checkout::{
    AttemptStatus, CheckoutRefusal, CheckoutStart, CheckoutStarted, KeyClaim, NewTicket, Order, OutboxMessage,
    OutboxProgress, Refunded, Settled, Settlement, TicketStatus,
};
use boxoffice::store::{
    Customer, DynStore, EventQuery, HoldPlacement, HoldRejection, NewSession, Placed, ReleaseOutcome, StoreError,
};
use tokio::sync::Barrier;

pub struct Harness {
    pub store: DynStore,
    _guard: Box<dyn Any + Send>,
}

const T0: Timestamp = Timestamp::from_millis(1_900_000_000_000);

fn at(secs: u32) -> Timestamp {
    T0.plus_secs(secs)
}

fn seat(s: &str) -> SeatId {
    SeatId::parse(s).unwrap()
}

fn seats(v: &[&str]) -> Selection {
    Selection::Seats(v.iter().map(|s| seat(s)).collect())
}

/// A customer with a session, as `POST /v1/sessions` would make.
async fn customer(store: &DynStore, email: &str) -> Customer {
    let c = Customer { id: CustomerId::generate(), email: Email::parse(email).unwrap() };
    let token_hash = TokenHash::of(&format!("token-for-{}", c.id));
    store
        .create_session(NewSession { customer: c.clone(), token_hash, created_at: T0, expires_at: at(86_400) })
        .await
        .unwrap();
    c
}

/// The demo hall and an event on sale at `T0`, with overrides to the
/// event's JSON.
async fn event_with(store: &DynStore, overrides: serde_json::Value) -> Event {
    let draft: VenueDraft = serde_json::from_value(demo::venue_json()).unwrap();
    let venue = Venue::from_draft(VenueId::generate(), draft).unwrap();
    store.insert_venue(&venue, T0).await.unwrap();
    let mut json = demo::event_json(venue.id.as_str(), T0);
    for (k, v) in overrides.as_object().unwrap() {
        json[k] = v.clone();
    }
    let draft: EventDraft = serde_json::from_value(json).unwrap();
    let event = Event::from_draft(EventId::generate(), draft, &venue, T0).unwrap();
    store.insert_event(&event, &venue).await.unwrap();
    event
}

async fn hold(
    store: &DynStore,
    e: &Event,
    who: &Customer,
    sel: Selection,
    now: Timestamp,
) -> Result<boxoffice::domain::hold::Hold, HoldRejection> {
    placed(store, e, who, sel, now).await.map(|p| p.hold)
}

/// [`hold`] with the lapsed holds the placement ended on the way.
async fn placed(
    store: &DynStore,
    e: &Event,
    who: &Customer,
    sel: Selection,
    now: Timestamp,
) -> Result<Placed, HoldRejection> {
    store
        .place_hold(HoldPlacement {
            hold_id: HoldId::generate(),
            event_id: e.id.clone(),
            customer: who.clone(),
            selection: sel,
            now,
        })
        .await
        .expect("store call succeeds")
}

/// `n` customers, each with a session, race one hold each: all released
/// together by a barrier, with nothing but the store between them.
async fn race(
    store: &DynStore,
    e: &Event,
    n: usize,
    selection: impl Fn(usize) -> Selection,
) -> Vec<(usize, Result<boxoffice::domain::hold::Hold, HoldRejection>)> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (store, e, barrier, sel) = (store.clone(), e.clone(), barrier.clone(), selection(i));
            tokio::spawn(async move {
                let who = customer(&store, &format!("fan{i}@example.com")).await;
                barrier.wait().await;
                (i, hold(&store, &e, &who, sel, T0).await)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

pub mod cases {
    use super::*;

    pub async fn sessions_resolve_until_they_expire(store: &DynStore) {
        let c = Customer { id: CustomerId::generate(), email: Email::parse("fan@example.com").unwrap() };
        let token = TokenHash::of("bxs_secret");
        store
            .create_session(NewSession { customer: c.clone(), token_hash: token, created_at: T0, expires_at: at(60) })
            .await
            .unwrap();
        assert_eq!(store.session_customer(token, at(59)).await.unwrap(), Some((c, at(60))));
        assert_eq!(store.session_customer(token, at(60)).await.unwrap(), None);
        assert_eq!(store.session_customer(TokenHash::of("other"), T0).await.unwrap(), None);
    }

    pub async fn venues_and_events_round_trip(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"max_tickets_per_customer": 8})).await;
        let venue = store.venue(&e.venue_id).await.unwrap().unwrap();
        assert_eq!(venue.seat_count(), 300);
        assert_eq!(venue.ga_areas[0].capacity, 500);
        let back = store.event(&e.id).await.unwrap().unwrap();
        assert_eq!(
            (back.title.as_str(), back.max_tickets_per_customer, back.prices.clone()),
            (e.title.as_str(), 8, e.prices.clone())
        );
        assert_eq!((back.starts_at, back.on_sale_at, back.version), (e.starts_at, e.on_sale_at, 1));
        assert!(store.event(&EventId::generate()).await.unwrap().is_none());
        assert!(store.venue(&VenueId::generate()).await.unwrap().is_none());
    }

    pub async fn seat_holds_are_all_or_nothing(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let (a, b) = (customer(store, "a@example.com").await, customer(store, "b@example.com").await);
        let h = hold(store, &e, &a, seats(&["A1", "A2"]), T0).await.unwrap();
        assert_eq!((h.amount, h.status, h.expires_at), (8000, HoldStatus::Held, at(300)));
        let r = hold(store, &e, &b, seats(&["A2", "A3"]), T0).await;
        assert_eq!(r.unwrap_err(), HoldRejection::Unavailable(vec!["A2".into()]));
        // A3 was not left held by the refused request.
        assert!(hold(store, &e, &b, seats(&["A3"]), T0).await.is_ok());
        let map = store.seat_map_state(&e.id, T0).await.unwrap().unwrap();
        let held: Vec<&str> = map
            .seats
            .iter()
            .filter(|s| s.status != boxoffice::store::SeatStatus::Available)
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(held.len(), 3);
    }

    pub async fn unknown_seats_are_invalid_not_unavailable(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let a = customer(store, "a@example.com").await;
        let r = hold(store, &e, &a, seats(&["A1", "Z99"]), T0).await;
        assert_eq!(r.unwrap_err(), HoldRejection::InvalidSeats(vec!["Z99".into()]));
        let ga = hold(store, &e, &a, Selection::Ga { area: AreaId::parse("pit").unwrap(), count: 1 }, T0).await;
        assert_eq!(ga.unwrap_err(), HoldRejection::InvalidSeats(vec!["pit".into()]));
        assert!(hold(store, &e, &a, seats(&["A1"]), T0).await.is_ok(), "nothing was left behind");
        let other = HoldPlacement {
            hold_id: HoldId::generate(),
            event_id: EventId::generate(),
            customer: a,
            selection: seats(&["A1"]),
            now: T0,
        };
        assert_eq!(store.place_hold(other).await.unwrap().unwrap_err(), HoldRejection::EventNotFound);
    }

    pub async fn lapsed_holds_are_available_at_once(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"hold_ttl_seconds": 60})).await;
        let (a, b) = (customer(store, "a@example.com").await, customer(store, "b@example.com").await);
        let first = hold(store, &e, &a, seats(&["B5"]), T0).await.unwrap();
        assert!(hold(store, &e, &b, seats(&["B5"]), at(59)).await.is_err());
        let second = hold(store, &e, &b, seats(&["B5"]), at(60)).await.unwrap();
        let stale = store.hold(&first.id).await.unwrap().unwrap();
        assert_eq!(stale.effective_status(at(60)), HoldStatus::Expired);
        // The sweeper must not free the seat the second hold now has.
        let swept = store.expire_holds(at(61), 100).await.unwrap();
        assert_eq!(swept.iter().map(|h| h.id.clone()).collect::<Vec<_>>(), vec![first.id.clone()]);
        let buyer = &swept[0].buyer;
        assert_eq!((buyer.id.as_str(), buyer.email.as_str()), (a.id.as_str(), "a@example.com"), "whose hold it was");
        let c = customer(store, "c@example.com").await;
        assert_eq!(
            hold(store, &e, &c, seats(&["B5"]), at(61)).await.unwrap_err(),
            HoldRejection::Unavailable(vec!["B5".into()])
        );
        assert_eq!(store.hold(&second.id).await.unwrap().unwrap().effective_status(at(61)), HoldStatus::Held);
    }

    pub async fn purchase_limit_counts_the_buyer_across_sessions(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"max_tickets_per_customer": 3, "hold_ttl_seconds": 60})).await;
        let (phone, laptop) = (customer(store, "fan@example.com").await, customer(store, "fan@example.com").await);
        hold(store, &e, &phone, seats(&["C1", "C2"]), T0).await.unwrap();
        match hold(store, &e, &laptop, seats(&["C3", "C4"]), T0).await {
            Err(HoldRejection::LimitExceeded(l)) => assert_eq!((l.limit, l.already, l.requested), (3, 2, 2)),
            other => panic!("expected the limit, got {other:?}"),
        }
        hold(store, &e, &laptop, Selection::Ga { area: AreaId::parse("floor").unwrap(), count: 1 }, T0).await.unwrap();
        assert!(matches!(hold(store, &e, &laptop, seats(&["C5"]), T0).await, Err(HoldRejection::LimitExceeded(_))));
        // Lapsed holds stop counting.
        assert!(hold(store, &e, &laptop, seats(&["C3", "C4", "C5"]), at(60)).await.is_ok());
    }

    /// One buyer (other sessions, same email) placing `n` one-seat holds at
    /// once, released by a barrier; `selection(i)` is the i-th hold's pick.
    /// Returns (won, refused for the purchase limit); anything else fails.
    async fn limit_race(store: &DynStore, limit: u32, n: usize, selection: fn(usize) -> Selection) -> (usize, usize) {
        let e = event_with(store, serde_json::json!({"max_tickets_per_customer": limit, "hold_ttl_seconds": 60})).await;
        let barrier = Arc::new(Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (store, e, barrier) = (store.clone(), e.clone(), barrier.clone());
                tokio::spawn(async move {
                    let who = customer(&store, "greedy@example.com").await;
                    barrier.wait().await;
                    hold(&store, &e, &who, selection(i), T0).await
                })
            })
            .collect();
        let (mut won, mut limited) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => won += 1,
                Err(HoldRejection::LimitExceeded(l)) => {
                    assert_eq!(l.limit, limit);
                    limited += 1;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        (won, limited)
    }

    /// Many holds of one buyer at once on different seats: the limit is
    /// counted in turn, never all at once.
    pub async fn one_buyer_racing_many_holds_gets_exactly_the_limit(store: &DynStore) {
        assert_eq!(limit_race(store, 4, 12, |i| seats(&[&format!("E{}", i + 1)])).await, (4, 8));
    }

    /// Explicit-seat holds (batched on PostgreSQL) and best-available holds
    /// (one to a transaction) take the same purchase-limit lock, so a buyer
    /// racing both kinds still gets exactly the limit.
    pub async fn one_buyer_racing_both_hold_paths_gets_exactly_the_limit(store: &DynStore) {
        let mixed = |i: usize| {
            if i % 2 == 0 {
                seats(&[&format!("G{}", i + 1)])
            } else {
                Selection::BestAvailable { count: 1, category: None }
            }
        };
        assert_eq!(limit_race(store, 3, 16, mixed).await, (3, 13));
    }

    /// Placements settled together still get each their own answer.
    pub async fn concurrent_holds_with_different_outcomes_each_get_their_own(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"hold_ttl_seconds": 60})).await;
        let missing = Event { id: EventId::generate(), ..e.clone() };
        let wants: Vec<(Event, Vec<&str>)> = vec![
            (e.clone(), vec!["F1", "F2"]),
            (e.clone(), vec!["F2", "F3"]),
            (e.clone(), vec!["F4", "ZZ99"]),
            (missing, vec!["F5"]),
            (e.clone(), vec!["F6"]),
        ];
        let barrier = Arc::new(Barrier::new(wants.len()));
        let tasks: Vec<_> = wants
            .into_iter()
            .enumerate()
            .map(|(i, (ev, want))| {
                let (store, barrier) = (store.clone(), barrier.clone());
                let want: Vec<String> = want.into_iter().map(str::to_owned).collect();
                tokio::spawn(async move {
                    let who = customer(&store, &format!("mixed{i}@example.com")).await;
                    barrier.wait().await;
                    let refs: Vec<&str> = want.iter().map(String::as_str).collect();
                    hold(&store, &ev, &who, seats(&refs), T0).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        // F1+F2 and F2+F3 overlap: exactly one of them, whole.
        match (&results[0], &results[1]) {
            (Ok(h), Err(HoldRejection::Unavailable(u))) => {
                assert_eq!(h.seats.len(), 2);
                assert_eq!(u, &vec!["F2".to_owned()]);
            }
            (Err(HoldRejection::Unavailable(u)), Ok(h)) => {
                assert_eq!(h.seats.len(), 2);
                assert_eq!(u, &vec!["F2".to_owned()]);
            }
            other => panic!("expected one winner of F2, got {other:?}"),
        }
        assert_eq!(results[2].as_ref().err(), Some(&HoldRejection::InvalidSeats(vec!["ZZ99".into()])));
        assert_eq!(results[3].as_ref().err(), Some(&HoldRejection::EventNotFound));
        assert!(results[4].is_ok());
        let map = store.seat_map_state(&e.id, T0).await.unwrap().unwrap();
        let status = |id: &str| map.seats.iter().find(|s| s.id.as_str() == id).unwrap().status;
        assert_eq!(status("F4"), boxoffice::store::SeatStatus::Available, "the invalid hold took nothing");
        assert_eq!(status("F6"), boxoffice::store::SeatStatus::Held);
        let loser = if results[0].is_ok() { "F3" } else { "F1" };
        assert_eq!(status(loser), boxoffice::store::SeatStatus::Available, "the loser took nothing");
    }

    pub async fn one_seat_raced_by_many_has_exactly_one_winner(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let mut wins = 0;
        for (_, r) in race(store, &e, 200, |_| seats(&["A7"])).await {
            match r {
                Ok(_) => wins += 1,
                Err(r) => assert_eq!(r, HoldRejection::Unavailable(vec!["A7".into()])),
            }
        }
        assert_eq!(wins, 1);
    }

    pub async fn overlapping_multi_seat_races_leave_no_partial_hold(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"max_tickets_per_customer": 100})).await;
        // Windows of 3 consecutive seats in row D: neighbours overlap.
        let want = |i: usize| -> Vec<String> { (0..3).map(|k| format!("D{}", (i % 18) + 1 + k)).collect() };
        let results = race(store, &e, 120, |i| Selection::Seats(want(i).iter().map(|s| seat(s)).collect())).await;
        let mut owned: HashSet<String> = HashSet::new();
        for (i, r) in results {
            if let Ok(h) = r {
                assert_eq!(h.seats.iter().map(|s| s.to_string()).collect::<Vec<_>>(), want(i));
                for s in want(i) {
                    assert!(owned.insert(s.clone()), "{s} held twice");
                }
            }
        }
        let map = store.seat_map_state(&e.id, T0).await.unwrap().unwrap();
        for s in map.seats.iter().filter(|s| s.id.as_str().starts_with('D')) {
            let held = s.status != boxoffice::store::SeatStatus::Available;
            assert_eq!(held, owned.contains(s.id.as_str()), "seat {} matches the winners", s.id);
        }
    }

    pub async fn ga_capacity_holds_under_concurrency(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"max_tickets_per_customer": 100})).await;
        let floor = AreaId::parse("floor").unwrap();
        let mut wins = 0;
        for (_, r) in race(store, &e, 40, |_| Selection::Ga { area: floor.clone(), count: 30 }).await {
            match r {
                Ok(_) => wins += 1,
                Err(r) => assert_eq!(r, HoldRejection::Unavailable(vec!["floor".into()])),
            }
        }
        assert_eq!(wins, 500 / 30, "as many as fit, no more");
        let map = store.seat_map_state(&e.id, T0).await.unwrap().unwrap();
        assert_eq!(map.ga_areas[0].available, 500 - 30 * (500 / 30));
    }

    pub async fn best_available_never_hands_out_a_seat_twice(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"max_tickets_per_customer": 100})).await;
        let mut taken = HashSet::new();
        let mut wins = 0;
        for (_, r) in race(store, &e, 100, |_| Selection::BestAvailable { count: 4, category: None }).await {
            if let Ok(h) = r {
                wins += 1;
                assert_eq!(h.seats.len(), 4);
                for s in h.seats {
                    assert!(taken.insert(s.to_string()), "{s} given twice");
                }
            }
        }
        assert_eq!(wins, 75, "300 seats / 4");
        let a = store.availability(&e.id, T0).await.unwrap().unwrap();
        assert_eq!((a.all.total, a.all.held, a.all.available), (800, 300, 500));
    }

    pub async fn release_is_owner_only_and_repeatable(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let (a, b) = (customer(store, "a@example.com").await, customer(store, "b@example.com").await);
        let h = hold(store, &e, &a, seats(&["E1", "E2"]), T0).await.unwrap();
        let g =
            hold(store, &e, &a, Selection::Ga { area: AreaId::parse("floor").unwrap(), count: 4 }, T0).await.unwrap();
        assert!(matches!(store.release_hold(&h.id, &b.id, T0).await.unwrap(), ReleaseOutcome::NotFound));
        assert!(matches!(store.release_hold(&h.id, &a.id, T0).await.unwrap(), ReleaseOutcome::Released(_)));
        assert!(matches!(store.release_hold(&h.id, &a.id, T0).await.unwrap(), ReleaseOutcome::AlreadyEnded(_)));
        assert!(matches!(store.release_hold(&g.id, &a.id, T0).await.unwrap(), ReleaseOutcome::Released(_)));
        assert!(matches!(store.release_hold(&g.id, &a.id, T0).await.unwrap(), ReleaseOutcome::AlreadyEnded(_)));
        let map = store.seat_map_state(&e.id, T0).await.unwrap().unwrap();
        assert_eq!(map.ga_areas[0].available, 500, "GA places returned exactly once");
        assert!(hold(store, &e, &b, seats(&["E1", "E2"]), T0).await.is_ok());
    }

    pub async fn releasing_a_lapsed_ga_hold_again_and_again_frees_its_places_once(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"hold_ttl_seconds": 10, "max_tickets_per_customer": 100})).await;
        let (a, b) = (customer(store, "a@example.com").await, customer(store, "b@example.com").await);
        let floor = || Selection::Ga { area: AreaId::parse("floor").unwrap(), count: 50 };
        let lapsing = hold(store, &e, &a, floor(), T0).await.unwrap();
        // b holds 50 places that stay live.
        hold(store, &e, &b, floor(), at(5)).await.unwrap();
        assert_eq!(store.expire_holds(at(10), 100).await.unwrap().len(), 1);
        for _ in 0..3 {
            assert!(matches!(
                store.release_hold(&lapsing.id, &a.id, at(11)).await.unwrap(),
                ReleaseOutcome::AlreadyEnded(_)
            ));
        }
        let map = store.seat_map_state(&e.id, at(11)).await.unwrap().unwrap();
        assert_eq!(map.ga_areas[0].available, 450, "b's 50 places are still held");
        // The same without the sweeper: a lapsed hold released twice.
        let again = hold(store, &e, &a, floor(), at(11)).await.unwrap();
        for _ in 0..2 {
            store.release_hold(&again.id, &a.id, at(30)).await.unwrap();
        }
        let map = store.seat_map_state(&e.id, at(30)).await.unwrap().unwrap();
        assert_eq!(map.ga_areas[0].available, 500, "b's hold lapsed too; each hold freed its places once");
    }

    /// A GA hold hands its area's lapsed holds back before taking places,
    /// and reports each one it ended, with its buyer, so the caller can do
    /// what the sweeper would have (free that fan's waiting-room place); the
    /// sweeper then finds nothing left to end. A refused GA hold ends none.
    pub async fn a_ga_hold_reports_the_lapsed_holds_it_reclaims(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"hold_ttl_seconds": 10, "max_tickets_per_customer": 100})).await;
        let (a, b) = (customer(store, "a@example.com").await, customer(store, "b@example.com").await);
        let floor = |count| Selection::Ga { area: AreaId::parse("floor").unwrap(), count };
        let lapsing = hold(store, &e, &a, floor(2), T0).await.unwrap();
        // Five fans take 99 places each and b takes 3: with a's 2, all 500.
        for i in 0..5 {
            let fan = customer(store, &format!("filler{i}@example.com")).await;
            assert!(placed(store, &e, &fan, floor(99), at(5)).await.unwrap().reclaimed.is_empty(), "none lapsed yet");
        }
        hold(store, &e, &b, floor(3), at(5)).await.unwrap();
        // Refused (a's 2 back still leave only 2): rolled back, a's hold with it.
        let refused = placed(store, &e, &b, floor(3), at(11)).await.unwrap_err();
        assert_eq!(refused, HoldRejection::Unavailable(vec!["floor".into()]));
        let took = placed(store, &e, &b, floor(1), at(11)).await.unwrap();
        assert_eq!(took.reclaimed.len(), 1, "{:?}", took.reclaimed);
        let ended = &took.reclaimed[0];
        assert_eq!((&ended.id, &ended.buyer.id, &ended.event_id), (&lapsing.id, &a.id, &e.id));
        assert_eq!(ended.ga, lapsing.ga);
        assert!(store.expire_holds(at(12), 100).await.unwrap().is_empty(), "already ended");
        let map = store.seat_map_state(&e.id, at(12)).await.unwrap().unwrap();
        assert_eq!(map.ga_areas[0].available, 1, "499 held, a's 2 back and 1 of them taken");
    }

    pub async fn releasing_a_lapsed_hold_reports_the_seats_it_freed(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"hold_ttl_seconds": 10})).await;
        let (a, b) = (customer(store, "a@example.com").await, customer(store, "b@example.com").await);
        let h = hold(store, &e, &a, seats(&["G1", "G2"]), T0).await.unwrap();
        // After it lapses, b takes G2 over before a lets go.
        hold(store, &e, &b, seats(&["G2"]), at(10)).await.unwrap();
        match store.release_hold(&h.id, &a.id, at(11)).await.unwrap() {
            ReleaseOutcome::Lapsed { freed, .. } => assert_eq!(freed, vec![seat("G1")], "G2 is b's now"),
            other => panic!("expected Lapsed, got {other:?}"),
        }
        assert!(matches!(store.release_hold(&h.id, &a.id, at(12)).await.unwrap(), ReleaseOutcome::AlreadyEnded(_)));
        assert!(store.expire_holds(at(12), 100).await.unwrap().is_empty(), "nothing left for the sweeper");
        let map = store.seat_map_state(&e.id, at(12)).await.unwrap().unwrap();
        let status = |id: &str| map.seats.iter().find(|s| s.id.as_str() == id).unwrap().status;
        assert_eq!(status("G1"), boxoffice::store::SeatStatus::Available);
        assert_eq!(status("G2"), boxoffice::store::SeatStatus::Held);
    }

    pub async fn a_customer_lists_only_their_own_live_holds(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"hold_ttl_seconds": 60})).await;
        let (a, b) = (customer(store, "a@example.com").await, customer(store, "b@example.com").await);
        let old = hold(store, &e, &a, seats(&["J1"]), T0).await.unwrap();
        let live = hold(store, &e, &a, seats(&["J2"]), at(30)).await.unwrap();
        let released = hold(store, &e, &a, seats(&["J3"]), at(31)).await.unwrap();
        store.release_hold(&released.id, &a.id, at(32)).await.unwrap();
        hold(store, &e, &b, seats(&["J4"]), at(33)).await.unwrap();
        // Another customer (another session) with a's email: same buyer, not a's holds.
        let a_again = customer(store, "a@example.com").await;
        hold(store, &e, &a_again, seats(&["J5"]), at(34)).await.unwrap();
        let mine: Vec<HoldId> =
            store.customer_holds(&a, at(60), 100).await.unwrap().into_iter().map(|h| h.id).collect();
        assert_eq!(mine, vec![live.id], "not the lapsed one, not the released one, not b's, not a_again's");
        assert!(!mine.contains(&old.id));
    }

    pub async fn concurrent_sweeps_end_each_hold_once(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"hold_ttl_seconds": 10, "max_tickets_per_customer": 100})).await;
        let a = customer(store, "a@example.com").await;
        for row in ["F", "G", "H"] {
            for n in 1..=10 {
                hold(store, &e, &a, seats(&[&format!("{row}{n}")]), T0).await.unwrap();
            }
        }
        hold(store, &e, &a, Selection::Ga { area: AreaId::parse("floor").unwrap(), count: 7 }, T0).await.unwrap();
        let barrier = Arc::new(Barrier::new(4));
        let sweeps: Vec<_> = (0..4)
            .map(|_| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let mut n = 0;
                    loop {
                        let got = store.expire_holds(at(10), 7).await.unwrap().len();
                        n += got;
                        if got == 0 {
                            return n;
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        for s in sweeps {
            total += s.await.unwrap();
        }
        assert_eq!(total, 31, "each lapsed hold ended exactly once");
        let map = store.seat_map_state(&e.id, at(10)).await.unwrap().unwrap();
        assert_eq!(map.ga_areas[0].available, 500);
        let av = store.availability(&e.id, at(10)).await.unwrap().unwrap();
        assert_eq!((av.all.available, av.all.held), (800, 0));
    }

    pub async fn event_updates_are_version_checked(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let patch = EventPatch { high_demand: Some(true), ..Default::default() };
        let next = e.patched(&patch, at(1)).unwrap();
        store.update_event(&next).await.unwrap();
        // A writer that read the old version loses.
        let stale = e.patched(&EventPatch { title: Some("Other".into()), ..Default::default() }, at(2)).unwrap();
        assert!(matches!(store.update_event(&stale).await, Err(StoreError::Conflict)));
        let back = store.event(&e.id).await.unwrap().unwrap();
        assert!(back.high_demand);
        assert_eq!((back.title.as_str(), back.version), (e.title.as_str(), 2));
    }

    /// A hold placed after a price change is priced at the new price (the
    /// hold paths may keep events they have read; a change must reach them).
    pub async fn holds_after_a_price_change_get_the_new_price(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let a = customer(store, "a@example.com").await;
        let first = hold(store, &e, &a, seats(&["C1"]), T0).await.unwrap();
        let premium = Category::parse("premium").unwrap();
        let old = e.prices[&premium];
        // C1 is a standard seat; A1 a premium one.
        assert_eq!(first.amount, e.prices[&Category::parse("standard").unwrap()]);
        let patch = EventPatch { prices: Some([("premium".to_string(), old + 1000)].into()), ..Default::default() };
        store.update_event(&e.patched(&patch, at(1)).unwrap()).await.unwrap();
        let second = hold(store, &e, &a, seats(&["A1"]), at(2)).await.unwrap();
        assert_eq!(second.amount, old + 1000);
    }

    pub async fn holds_outside_the_sale_window_are_refused(store: &DynStore) {
        let later = at(3600).to_rfc3339();
        let e = event_with(store, serde_json::json!({"on_sale_at": later})).await;
        let a = customer(store, "a@example.com").await;
        assert!(matches!(hold(store, &e, &a, seats(&["A1"]), T0).await, Err(HoldRejection::NotOnSale(_))));
        assert!(hold(store, &e, &a, seats(&["A1"]), at(3600)).await.is_ok());
        let cancelled =
            e.patched(&EventPatch { status: Some("cancelled".into()), ..Default::default() }, at(3601)).unwrap();
        store.update_event(&cancelled).await.unwrap();
        assert!(matches!(hold(store, &e, &a, seats(&["A2"]), at(3602)).await, Err(HoldRejection::NotOnSale(_))));
    }

    pub async fn search_pages_in_start_order_with_filters(store: &DynStore) {
        let mut ids = Vec::new();
        for d in [3u32, 1, 2] {
            let e = event_with(
                store,
                serde_json::json!({"title": format!("Show {d}"), "starts_at": at(d * 86_400).to_rfc3339()}),
            )
            .await;
            ids.push((d, e.id));
        }
        ids.sort_by_key(|(d, _)| *d);
        let mut q = EventQuery { city: Some("springfield".into()), limit: 2, ..Default::default() };
        let first = store.search_events(&q).await.unwrap();
        assert_eq!(first.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![ids[0].1.clone(), ids[1].1.clone()]);
        q.after = Some((first[1].starts_at, first[1].id.clone()));
        let second = store.search_events(&q).await.unwrap();
        assert_eq!(second.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![ids[2].1.clone()]);
        let text = EventQuery { text: Some("show 2".into()), limit: 10, ..Default::default() };
        assert_eq!(store.search_events(&text).await.unwrap().len(), 1);
        let pct = EventQuery { text: Some("%".into()), limit: 10, ..Default::default() };
        assert!(store.search_events(&pct).await.unwrap().is_empty(), "LIKE wildcards are literal");
        let elsewhere = EventQuery { city: Some("Gotham".into()), limit: 10, ..Default::default() };
        assert!(store.search_events(&elsewhere).await.unwrap().is_empty());
    }

    // ---- checkout -------------------------------------------------------

    const WINDOW: u32 = 600;

    async fn start(
        store: &DynStore,
        h: &Hold,
        who: &Customer,
        now: Timestamp,
    ) -> Result<CheckoutStarted, CheckoutRefusal> {
        store
            .start_checkout(CheckoutStart {
                hold_id: h.id.clone(),
                customer_id: who.id.clone(),
                order_id: OrderId::generate(),
                attempt_id: AttemptId::generate(),
                payment_method: "pm_card_visa".into(),
                payment_window_secs: WINDOW,
                now,
            })
            .await
            .expect("store call succeeds")
    }

    fn tickets_for(h: &Hold) -> Vec<NewTicket> {
        let seats = h.seats.iter().map(|s| NewTicket {
            id: TicketId::generate(),
            seat: Some(s.clone()),
            ga_area: None,
            code: format!("code-{s}"),
        });
        let ga = h.ga.iter().flat_map(|g| {
            (0..g.count).map(|i| NewTicket {
                id: TicketId::generate(),
                seat: None,
                ga_area: Some(g.area.clone()),
                code: format!("code-{}-{i}", g.area),
            })
        });
        seats.chain(ga).collect()
    }

    /// The settlement of `started`'s attempt with `fate`.
    fn settlement(started: &CheckoutStarted, fate: HoldFate, now: Timestamp) -> Settlement {
        let (order_status, attempt_status, failure) = match fate {
            HoldFate::Sell => (OrderStatus::Confirmed, AttemptStatus::Succeeded, None),
            HoldFate::AwaitOutcome => (OrderStatus::PaymentPending, AttemptStatus::Processing, None),
            HoldFate::Keep => (OrderStatus::Failed, AttemptStatus::Failed, Some("incorrect_number".to_owned())),
            HoldFate::Release => (OrderStatus::Failed, AttemptStatus::Failed, Some("insufficient_funds".to_owned())),
        };
        Settlement {
            order_id: started.order.id.clone(),
            attempt_id: started.attempt.id.clone(),
            attempt_status,
            order_status,
            hold: fate,
            failure_code: failure,
            intent_id: Some(format!("pi_{}", started.attempt.id)),
            action_url: None,
            tickets: if fate == HoldFate::Sell { tickets_for(&started.hold) } else { vec![] },
            outbox: vec![OutboxMessage { topic: "order.confirmed".into(), payload: "{}".into() }],
            now,
        }
    }

    fn applied(s: Settled) -> Order {
        match s {
            Settled::Applied(o) => o,
            other => panic!("expected the settlement to apply, got {other:?}"),
        }
    }

    pub async fn checkout_takes_the_hold_out_of_expiry_and_extends_it_once(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"hold_ttl_seconds": 60})).await;
        let (fan, other) = (customer(store, "fan@example.com").await, customer(store, "other@example.com").await);
        let h = hold(store, &e, &fan, seats(&["A1", "A2"]), T0).await.unwrap();
        assert_eq!(start(store, &h, &other, at(1)).await.unwrap_err(), CheckoutRefusal::HoldNotFound);
        let started = start(store, &h, &fan, at(1)).await.unwrap();
        assert_eq!(started.hold.status, HoldStatus::Checkout);
        assert_eq!(started.hold.expires_at, h.expires_at.plus_secs(WINDOW));
        assert_eq!(
            (started.order.status, started.order.amount, started.order.quantity),
            (OrderStatus::Pending, h.amount, 2)
        );
        assert_eq!(started.attempt.status, AttemptStatus::Started);
        assert_eq!(store.order_attempts(&started.order.id).await.unwrap(), vec![started.attempt.clone()]);
        // Payment under way: no second checkout, no release, no expiry.
        match start(store, &h, &fan, at(2)).await.unwrap_err() {
            CheckoutRefusal::HoldNotActive { status: HoldStatus::Checkout, order: Some(o) } => {
                assert_eq!(o.id, started.order.id)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.release_hold(&h.id, &fan.id, at(2)).await.unwrap(), ReleaseOutcome::InCheckout(_)));
        let late = at(61 + WINDOW);
        assert!(store.expire_holds(late, 100).await.unwrap().is_empty(), "the sweeper never touches checkout");
        assert!(matches!(hold(store, &e, &other, seats(&["A1"]), late).await, Err(HoldRejection::Unavailable(_))));
        // A card the fan can fix: back to held, same (extended) expiry...
        let failed = applied(store.settle(settlement(&started, HoldFate::Keep, at(3))).await.unwrap());
        assert_eq!((failed.status, failed.failure_code.as_deref()), (OrderStatus::Failed, Some("incorrect_number")));
        let back = store.hold(&h.id).await.unwrap().unwrap();
        assert_eq!((back.status, back.expires_at), (HoldStatus::Held, started.hold.expires_at));
        // ...and the next attempt reopens the same order without extending again.
        let again = start(store, &h, &fan, at(4)).await.unwrap();
        assert_eq!(again.order.id, started.order.id);
        assert_eq!(again.order.status, OrderStatus::Pending);
        assert_eq!(again.hold.expires_at, started.hold.expires_at, "extended once");
        assert_eq!(store.order_attempts(&started.order.id).await.unwrap().len(), 2);
        // A lapsed hold cannot start a checkout.
        let h2 = hold(store, &e, &fan, seats(&["B1"]), T0).await.unwrap();
        assert_eq!(start(store, &h2, &fan, at(60)).await.unwrap_err(), CheckoutRefusal::HoldExpired);
    }

    pub async fn a_sale_sells_seats_and_issues_tickets_in_one_transaction(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"max_tickets_per_customer": 4})).await;
        let fan = customer(store, "fan@example.com").await;
        let h = hold(store, &e, &fan, seats(&["A1", "A2"]), T0).await.unwrap();
        let started = start(store, &h, &fan, at(1)).await.unwrap();
        let order = applied(store.settle(settlement(&started, HoldFate::Sell, at(2))).await.unwrap());
        assert_eq!(order.status, OrderStatus::Confirmed);
        assert_eq!(order.payment_intent, Some(format!("pi_{}", started.attempt.id)));
        assert_eq!(store.order(&order.id).await.unwrap(), Some(order.clone()));
        assert_eq!(store.order_for_hold(&h.id).await.unwrap().map(|o| o.id), Some(order.id.clone()));
        let tickets = store.order_tickets(&order.id).await.unwrap();
        let mut sold: Vec<String> = tickets.iter().map(|t| t.seat.as_ref().unwrap().to_string()).collect();
        sold.sort();
        assert_eq!(sold, vec!["A1", "A2"]);
        assert!(tickets.iter().all(|t| t.status == TicketStatus::Valid && t.customer_id == fan.id));
        assert_eq!(store.hold(&h.id).await.unwrap().unwrap().status, HoldStatus::Purchased);
        let counts = store.availability(&e.id, at(2)).await.unwrap().unwrap().all;
        assert_eq!((counts.sold, counts.held), (2, 0));
        assert!(matches!(store.release_hold(&h.id, &fan.id, at(3)).await.unwrap(), ReleaseOutcome::Purchased(_)));
        // Settling the same attempt again changes nothing.
        assert!(matches!(
            store.settle(settlement(&started, HoldFate::Sell, at(3))).await.unwrap(),
            Settled::AlreadySettled(_)
        ));
        assert_eq!(store.order_tickets(&order.id).await.unwrap().len(), 2);
        // Sold seats are never available, however late.
        let other = customer(store, "other@example.com").await;
        assert!(matches!(
            hold(store, &e, &other, seats(&["A1"]), at(86_400)).await,
            Err(HoldRejection::Unavailable(_))
        ));
        // The purchase limit counts what was bought.
        match hold(store, &e, &fan, seats(&["B1", "B2", "B3"]), at(4)).await {
            Err(HoldRejection::LimitExceeded(l)) => assert_eq!((l.already, l.requested), (2, 3)),
            other => panic!("expected the limit, got {other:?}"),
        }
        assert_eq!(store.customer_orders(&fan.id, 10).await.unwrap().len(), 1);
        assert!(store.customer_orders(&other.id, 10).await.unwrap().is_empty());
    }

    pub async fn a_failed_payment_that_releases_frees_seats_and_places_at_once(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let (fan, next) = (customer(store, "fan@example.com").await, customer(store, "next@example.com").await);
        let h = hold(store, &e, &fan, seats(&["A1"]), T0).await.unwrap();
        let floor = AreaId::parse("floor").unwrap();
        let g = hold(store, &e, &fan, Selection::Ga { area: floor.clone(), count: 3 }, T0).await.unwrap();
        for held in [&h, &g] {
            let started = start(store, held, &fan, at(1)).await.unwrap();
            let failed = applied(store.settle(settlement(&started, HoldFate::Release, at(2))).await.unwrap());
            assert_eq!(failed.failure_code.as_deref(), Some("insufficient_funds"));
            assert_eq!(store.hold(&held.id).await.unwrap().unwrap().status, HoldStatus::Released);
        }
        assert!(hold(store, &e, &next, seats(&["A1"]), at(3)).await.is_ok(), "the seat is free at once");
        let counts = store.availability(&e.id, at(3)).await.unwrap().unwrap().all;
        assert_eq!((counts.held, counts.sold), (1, 0), "the GA places came back");
        assert!(matches!(
            store.settle(settlement(&start_again_refused(store, &h, &fan).await, HoldFate::Sell, at(4))).await.unwrap(),
            Settled::AlreadySettled(_)
        ));
    }

    /// A started checkout of a hold that has since been released, so a late
    /// settlement of it must find the order already settled.
    async fn start_again_refused(store: &DynStore, h: &Hold, who: &Customer) -> CheckoutStarted {
        let order = store.order_for_hold(&h.id).await.unwrap().unwrap();
        let attempt = store.order_attempts(&order.id).await.unwrap().pop().unwrap();
        assert!(matches!(start(store, h, who, at(4)).await, Err(CheckoutRefusal::HoldNotActive { .. })));
        CheckoutStarted { hold: h.clone(), order, attempt }
    }

    pub async fn a_pending_payment_waits_in_checkout_then_sells(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let fan = customer(store, "fan@example.com").await;
        let floor = AreaId::parse("floor").unwrap();
        let g = hold(store, &e, &fan, Selection::Ga { area: floor, count: 2 }, T0).await.unwrap();
        let started = start(store, &g, &fan, at(1)).await.unwrap();
        let pending = applied(store.settle(settlement(&started, HoldFate::AwaitOutcome, at(2))).await.unwrap());
        assert_eq!(pending.status, OrderStatus::PaymentPending);
        assert_eq!(store.hold(&g.id).await.unwrap().unwrap().status, HoldStatus::Checkout);
        let attempts = store.order_attempts(&pending.id).await.unwrap();
        assert_eq!(attempts[0].status, AttemptStatus::Processing);
        let sold = applied(store.settle(settlement(&started, HoldFate::Sell, at(3))).await.unwrap());
        assert_eq!(sold.status, OrderStatus::Confirmed);
        let tickets = store.order_tickets(&sold.id).await.unwrap();
        assert_eq!(tickets.len(), 2);
        assert!(tickets.iter().all(|t| t.seat.is_none() && t.ga_area.is_some()));
        let floor_counts = store.availability(&e.id, at(3)).await.unwrap().unwrap().all;
        assert_eq!((floor_counts.sold, floor_counts.held), (2, 0));
    }

    pub async fn concurrent_settlements_of_one_attempt_apply_once(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let fan = customer(store, "fan@example.com").await;
        let h = hold(store, &e, &fan, seats(&["A1", "A2", "A3"]), T0).await.unwrap();
        let started = start(store, &h, &fan, at(1)).await.unwrap();
        let n = 10;
        let barrier = Arc::new(Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (store, barrier) = (store.clone(), barrier.clone());
                // Half confirm, half release: whichever lands first decides.
                let fate = if i % 2 == 0 { HoldFate::Sell } else { HoldFate::Release };
                let s = settlement(&started, fate, at(2));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.settle(s).await.unwrap()
                })
            })
            .collect();
        let mut applied_n = 0;
        for t in tasks {
            match t.await.unwrap() {
                Settled::Applied(_) => applied_n += 1,
                Settled::AlreadySettled(_) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(applied_n, 1);
        let order = store.order(&started.order.id).await.unwrap().unwrap();
        let tickets = store.order_tickets(&order.id).await.unwrap().len();
        let counts = store.availability(&e.id, at(3)).await.unwrap().unwrap().all;
        match order.status {
            OrderStatus::Confirmed => assert_eq!((tickets, counts.sold, counts.held), (3, 3, 0)),
            OrderStatus::Failed => assert_eq!((tickets, counts.sold, counts.held), (0, 0, 0)),
            other => panic!("{other:?}"),
        }
    }

    pub async fn a_second_live_ticket_for_a_seat_is_refused_and_nothing_is_written(store: &DynStore) {
        let e = event_with(store, serde_json::json!({})).await;
        let fan = customer(store, "fan@example.com").await;
        let first = hold(store, &e, &fan, seats(&["A1"]), T0).await.unwrap();
        let started = start(store, &first, &fan, at(1)).await.unwrap();
        applied(store.settle(settlement(&started, HoldFate::Sell, at(2))).await.unwrap());
        let second = hold(store, &e, &fan, seats(&["A2"]), T0).await.unwrap();
        let started2 = start(store, &second, &fan, at(3)).await.unwrap();
        // A bug that issued a ticket for A1 again: the unique index refuses it.
        let mut bad = settlement(&started2, HoldFate::Sell, at(4));
        bad.tickets[0].seat = Some(seat("A1"));
        assert!(matches!(store.settle(bad).await, Err(StoreError::Duplicate(_))));
        let order = store.order(&started2.order.id).await.unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Pending, "the whole sale was rolled back");
        assert_eq!(store.hold(&second.id).await.unwrap().unwrap().status, HoldStatus::Checkout);
        assert_eq!(store.availability(&e.id, at(4)).await.unwrap().unwrap().all.sold, 1);
    }

    pub async fn refunding_an_order_gives_back_its_seats_and_places_once(store: &DynStore) {
        let e = event_with(store, serde_json::json!({"max_tickets_per_customer": 8})).await;
        let fan = customer(store, "fan@example.com").await;
        let floor = AreaId::parse("floor").unwrap();
        let mut orders = Vec::new();
        for sel in [seats(&["A1", "A2"]), Selection::Ga { area: floor.clone(), count: 3 }] {
            let h = hold(store, &e, &fan, sel, T0).await.unwrap();
            let started = start(store, &h, &fan, at(1)).await.unwrap();
            orders.push(applied(store.settle(settlement(&started, HoldFate::Sell, at(2))).await.unwrap()));
        }
        assert_eq!(store.availability(&e.id, at(3)).await.unwrap().unwrap().all.sold, 5);
        let note = || OutboxMessage { topic: "order.refunded".into(), payload: "{}".into() };
        for o in &orders {
            let done = store.refund_order(&o.id, note(), at(3)).await.unwrap();
            assert!(matches!(&done, Refunded::Done(r) if r.status == OrderStatus::Refunded), "{done:?}");
            assert!(matches!(store.refund_order(&o.id, note(), at(4)).await.unwrap(), Refunded::Already(_)));
            let tickets = store.order_tickets(&o.id).await.unwrap();
            assert!(!tickets.is_empty() && tickets.iter().all(|t| t.status == TicketStatus::Void));
            assert_eq!(store.hold(&o.hold_id).await.unwrap().unwrap().status, HoldStatus::Released);
        }
        let counts = store.availability(&e.id, at(5)).await.unwrap().unwrap().all;
        assert_eq!((counts.sold, counts.held), (0, 0), "every seat and place came back, once");
        let refunds = store.outbox_due(at(5), 100).await.unwrap();
        assert_eq!(refunds.iter().filter(|m| m.topic == "order.refunded").count(), 2);
        // The seats sell again, and the buyer's limit no longer counts them.
        assert!(hold(store, &e, &fan, seats(&["A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8"]), at(6)).await.is_ok());
    }

    pub async fn settings_are_set_once_then_replaced_on_purpose(store: &DynStore) {
        assert_eq!(store.ensure_setting("s", b"first".to_vec()).await.unwrap(), b"first");
        assert_eq!(store.ensure_setting("s", b"second".to_vec()).await.unwrap(), b"first", "the first node decides");
        store.put_setting("s", b"third".to_vec()).await.unwrap();
        assert_eq!(store.ensure_setting("s", b"fourth".to_vec()).await.unwrap(), b"third");
    }

    pub async fn outbox_rows_are_leased_and_progress_is_fenced(store: &DynStore) {
        let m = || OutboxMessage { topic: "ops.alert".into(), payload: "{}".into() };
        assert!(store.alert_once("k:1", m(), T0).await.unwrap());
        assert!(!store.alert_once("k:1", m(), T0).await.unwrap(), "written once per key");
        assert!(store.alert_once("k:2", m(), T0).await.unwrap());
        let lease = std::time::Duration::from_secs(60);
        let first = store.claim_outbox(at(1), lease, 10).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(store.claim_outbox(at(2), lease, 10).await.unwrap().is_empty(), "leased rows are not handed out twice");
        // The lease runs out; another relay claims the rows.
        let second = store.claim_outbox(at(62), lease, 10).await.unwrap();
        assert_eq!(second.iter().map(|r| r.attempts).collect::<Vec<_>>(), vec![2, 2]);
        let progress = |delivered| OutboxProgress {
            done_channels: "webhook".into(),
            delivered,
            next_attempt_at: at(100),
            last_error: None,
        };
        assert!(!store.outbox_progress(first[0].id, first[0].attempts, progress(true), at(63)).await.unwrap(), "stale");
        assert!(store.outbox_progress(second[0].id, second[0].attempts, progress(true), at(63)).await.unwrap());
        assert!(store.outbox_progress(second[1].id, second[1].attempts, progress(false), at(63)).await.unwrap());
        let due = store.outbox_due(at(100), 10).await.unwrap();
        assert_eq!(
            due.iter().map(|r| (r.id, r.done_channels.as_str())).collect::<Vec<_>>(),
            vec![(second[1].id, "webhook")]
        );
    }

    pub async fn idempotency_keys_are_claimed_once_per_customer_and_replayed(store: &DynStore) {
        let (a, b) = (CustomerId::generate(), CustomerId::generate());
        let lease = std::time::Duration::from_secs(30);
        let hash = [1u8; 32];
        let claim = |who: CustomerId, key: &'static str, hash: [u8; 32], now: Timestamp| {
            let store = store.clone();
            async move { store.claim_idempotency_key(&who, key, hash, now, lease).await.unwrap() }
        };
        assert_eq!(claim(a.clone(), "k1", hash, T0).await, KeyClaim::Claimed);
        assert_eq!(claim(a.clone(), "k1", hash, at(1)).await, KeyClaim::InFlight);
        assert_eq!(claim(a.clone(), "k1", [2u8; 32], at(1)).await, KeyClaim::Mismatch);
        assert_eq!(claim(b.clone(), "k1", [2u8; 32], at(1)).await, KeyClaim::Claimed, "keys are per customer");
        assert_eq!(store.stored_response(&a, "k1", hash).await.unwrap(), None, "still running: nothing stored");
        store.finish_idempotency_key(&a, "k1", 200, b"{\"ok\":true}".to_vec()).await.unwrap();
        assert_eq!(store.stored_response(&a, "k1", hash).await.unwrap(), Some((200, b"{\"ok\":true}".to_vec())));
        assert_eq!(store.stored_response(&a, "k1", [2u8; 32]).await.unwrap(), None, "another request");
        assert_eq!(store.stored_response(&b, "k9", hash).await.unwrap(), None);
        assert_eq!(
            claim(a.clone(), "k1", hash, at(2)).await,
            KeyClaim::Replay { status: 200, body: b"{\"ok\":true}".to_vec() }
        );
        // A claim whose node died is taken over after its lease.
        assert_eq!(claim(a.clone(), "k2", hash, T0).await, KeyClaim::Claimed);
        assert_eq!(claim(a.clone(), "k2", hash, at(29)).await, KeyClaim::InFlight);
        assert_eq!(claim(a.clone(), "k2", hash, at(30)).await, KeyClaim::Claimed);
        // An abandoned claim frees the key.
        store.abandon_idempotency_key(&a, "k2").await.unwrap();
        assert_eq!(claim(a.clone(), "k2", [3u8; 32], at(31)).await, KeyClaim::Claimed);
        // Keys older than the horizon are reaped; younger ones stay.
        assert_eq!(claim(b.clone(), "old", hash, T0).await, KeyClaim::Claimed);
        store.finish_idempotency_key(&b, "old", 200, b"{}".to_vec()).await.unwrap();
        assert_eq!(store.reap_idempotency_keys(at(2), 100).await.unwrap(), 3, "k1 of a and b, and old");
        assert_eq!(claim(b.clone(), "old", [9u8; 32], at(3)).await, KeyClaim::Claimed, "a reaped key is new again");
        assert_eq!(claim(a.clone(), "k2", [3u8; 32], at(31)).await, KeyClaim::InFlight, "younger keys stay");
        // Many requests with one key at once: exactly one runs.
        let n = 20;
        let barrier = Arc::new(Barrier::new(n));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (store, barrier, a) = (store.clone(), barrier.clone(), a.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.claim_idempotency_key(&a, "k3", hash, at(40), lease).await.unwrap()
                })
            })
            .collect();
        let mut claimed = 0;
        for t in tasks {
            match t.await.unwrap() {
                KeyClaim::Claimed => claimed += 1,
                KeyClaim::InFlight => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(claimed, 1);
    }
}

macro_rules! conformance {
    ($make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let h = $make().await;
                crate::cases::$case(&h.store).await;
            }
        )*
    };
}

macro_rules! all_cases {
    ($make:path) => {
        conformance!($make;
            sessions_resolve_until_they_expire,
            venues_and_events_round_trip,
            seat_holds_are_all_or_nothing,
            unknown_seats_are_invalid_not_unavailable,
            lapsed_holds_are_available_at_once,
            purchase_limit_counts_the_buyer_across_sessions,
            one_buyer_racing_many_holds_gets_exactly_the_limit,
            one_buyer_racing_both_hold_paths_gets_exactly_the_limit,
            concurrent_holds_with_different_outcomes_each_get_their_own,
            one_seat_raced_by_many_has_exactly_one_winner,
            overlapping_multi_seat_races_leave_no_partial_hold,
            ga_capacity_holds_under_concurrency,
            best_available_never_hands_out_a_seat_twice,
            release_is_owner_only_and_repeatable,
            concurrent_sweeps_end_each_hold_once,
            releasing_a_lapsed_ga_hold_again_and_again_frees_its_places_once,
            releasing_a_lapsed_hold_reports_the_seats_it_freed,
            a_ga_hold_reports_the_lapsed_holds_it_reclaims,
            a_customer_lists_only_their_own_live_holds,
            event_updates_are_version_checked,
            holds_outside_the_sale_window_are_refused,
            holds_after_a_price_change_get_the_new_price,
            search_pages_in_start_order_with_filters,
            checkout_takes_the_hold_out_of_expiry_and_extends_it_once,
            a_sale_sells_seats_and_issues_tickets_in_one_transaction,
            a_failed_payment_that_releases_frees_seats_and_places_at_once,
            a_pending_payment_waits_in_checkout_then_sells,
            concurrent_settlements_of_one_attempt_apply_once,
            a_second_live_ticket_for_a_seat_is_refused_and_nothing_is_written,
            idempotency_keys_are_claimed_once_per_customer_and_replayed,
            refunding_an_order_gives_back_its_seats_and_places_once,
            outbox_rows_are_leased_and_progress_is_fenced,
            settings_are_set_once_then_replaced_on_purpose,
        );
    };
}

mod sqlite {
    use super::*;
    use boxoffice::store::sqlite::{SqliteStore, Synchronous};

    async fn make() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("conformance.db"), Synchronous::Normal).unwrap();
        Harness { store: Arc::new(store), _guard: Box::new(dir) }
    }

    all_cases!(make);

    /// Another process writing the same file (here: a second store) is
    /// seen by the next hold, though the writer keeps the events it read.
    #[tokio::test]
    async fn an_event_changed_by_another_connection_reaches_the_next_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let a: DynStore = Arc::new(SqliteStore::open(&path, Synchronous::Normal).unwrap());
        let b: DynStore = Arc::new(SqliteStore::open(&path, Synchronous::Normal).unwrap());
        let e = event_with(&a, serde_json::json!({})).await;
        let fan = customer(&a, "fan@example.com").await;
        assert!(hold(&a, &e, &fan, seats(&["A1"]), T0).await.is_ok());
        let cancelled =
            e.patched(&EventPatch { status: Some("cancelled".into()), ..Default::default() }, at(1)).unwrap();
        b.update_event(&cancelled).await.unwrap();
        assert!(matches!(hold(&a, &e, &fan, seats(&["A2"]), at(2)).await, Err(HoldRejection::NotOnSale(_))));
    }
}

mod postgres {
    use super::*;
    use boxoffice::store::postgres::{PgSettings, PgStore};
    use sqlx::Connection;

    /// The server the tests may create databases on.
    fn admin_url() -> String {
        std::env::var("BOXOFFICE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// Drops the test's database when the test ends, pass or fail.
    struct DropDatabase(String);

    impl Drop for DropDatabase {
        fn drop(&mut self) {
            let name = self.0.clone();
            // Drop runs outside any runtime we may block, so use a thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url()).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
                    }
                });
            })
            .join();
        }
    }

    async fn make() -> Harness {
        let name = format!("boxoffice_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url()).await.expect("PostgreSQL is reachable (see .ci/run)");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let guard = DropDatabase(name.clone());
        let base = admin_url();
        let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
        // Tests run in parallel against one server (max_connections 100).
        let settings = PgSettings { max_connections: 10, ..PgSettings::default() };
        let store = PgStore::connect(&url, &[], &settings).await.unwrap();
        Harness { store: Arc::new(store), _guard: Box::new(guard) }
    }

    all_cases!(make);
}
