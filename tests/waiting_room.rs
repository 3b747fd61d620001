//! The waiting-room conformance suite: the same cases against the
//! in-process rooms (embedded) and the Redis rooms (scale-out, each test
//! under its own key prefix, removed after). Time is passed in, so nothing
//! sleeps. Then the Redis ticker lease: one node advances a room at a time,
//! and the lease moves when its holder stops.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use boxoffice::accelerators::redis_conn::{RedisConn, RedisSettings};
use boxoffice::accelerators::redis_rooms::{RedisRooms, TickerSettings};
use boxoffice::accelerators::waiting_room::{fan_key, InProcessRooms, RoomSettings, RoomSpec, Status, WaitingRooms};
use boxoffice::domain::draw::DrawKey;
use boxoffice::domain::ids::EventId;
use boxoffice::domain::time::Timestamp;

#[path = "common/redis.rs"]
mod redis_support;
use redis_support::{redis_url, RedisPrefix};

const T0: Timestamp = Timestamp::from_millis(1_900_000_000_000);

fn at(secs: u64) -> Timestamp {
    T0.plus(Duration::from_secs(secs))
}

/// A fresh room going on sale at `at(100)`, with a 60 s claim window and
/// 600 s of shopping.
fn room(rate: u32, max_active: u32) -> RoomSpec {
    RoomSpec {
        event: EventId::generate(),
        settings: RoomSettings {
            rate_per_minute: rate,
            max_active,
            on_sale_at: at(100),
            claim_window: Duration::from_secs(60),
            shopping_time: Duration::from_secs(600),
        },
        key: DrawKey(boxoffice::domain::customer::random_secret()),
    }
}

fn fans(n: usize) -> Vec<u64> {
    let run = uuid::Uuid::new_v4();
    (0..n).map(|i| fan_key(&format!("fan{i}-{run}@example.com"))).collect()
}

async fn join_all(rooms: &dyn WaitingRooms, room: &RoomSpec, fans: &[u64], now: Timestamp) -> Vec<u32> {
    let mut slots = Vec::new();
    for f in fans {
        slots.push(rooms.join(room, *f, now).await.unwrap().0);
    }
    slots
}

async fn status(rooms: &dyn WaitingRooms, room: &RoomSpec, fan: u64, slot: u32, now: Timestamp) -> Status {
    rooms.status(room, fan, slot, now).await.unwrap().expect("the fan's own slot")
}

/// Brings the room to `now` and returns (serving, active).
async fn serving(rooms: &dyn WaitingRooms, room: &RoomSpec, now: Timestamp) -> (u32, u32) {
    rooms.tick(room, now).await.unwrap();
    let (counts, _) = rooms.overview(room, now).await.unwrap();
    (counts.serving, counts.active)
}

fn position(s: &Status) -> u32 {
    match *s {
        Status::Waiting { position, .. } | Status::Admitted { position, .. } | Status::Expired { position } => position,
        Status::PreQueue { .. } => panic!("not drawn yet"),
    }
}

async fn one_place_per_fan(rooms: &dyn WaitingRooms) {
    let r = room(60, 100);
    let [fan, other] = fans(2)[..] else { unreachable!() };
    let (slot, new, first) = rooms.join(&r, fan, at(0)).await.unwrap();
    assert!(new);
    assert!(matches!(first, Status::PreQueue { .. }));
    let again = rooms.join(&r, fan, at(1)).await.unwrap();
    assert_eq!((again.0, again.1), (slot, false), "joining again is the same entry");
    let (other_slot, _, _) = rooms.join(&r, other, at(1)).await.unwrap();
    assert_ne!(other_slot, slot);
    assert_eq!(rooms.status(&r, other, slot, at(2)).await.unwrap(), None, "another fan's entry reads as absent");
    assert!(matches!(status(rooms, &r, fan, slot, at(2)).await, Status::PreQueue { .. }));
    assert_eq!(rooms.overview(&r, at(2)).await.unwrap().0.joined, 2);
}

async fn prequeue_is_drawn_and_later_fans_are_fifo(rooms: &dyn WaitingRooms) {
    let r = room(60, 100);
    let early = fans(50);
    let slots = join_all(rooms, &r, &early, at(10)).await;
    let late = fans(5);
    let late_slots = join_all(rooms, &r, &late, at(100)).await;
    let mut drawn = Vec::new();
    for (f, s) in early.iter().zip(&slots) {
        drawn.push(position(&status(rooms, &r, *f, *s, at(100)).await));
    }
    assert_eq!(drawn.iter().copied().collect::<HashSet<_>>(), (1..=50).collect(), "one distinct place each in 1..=50");
    assert_ne!(drawn, (1..=50).collect::<Vec<_>>(), "drawn, not in arrival order");
    let mut after = Vec::new();
    for (f, s) in late.iter().zip(&late_slots) {
        after.push(position(&status(rooms, &r, *f, *s, at(100)).await));
    }
    assert_eq!(after, vec![51, 52, 53, 54, 55], "FIFO after the on-sale");
}

async fn admitted_at_the_rate_and_no_faster(rooms: &dyn WaitingRooms) {
    let r = room(60, 1_000); // one a second
    join_all(rooms, &r, &fans(200), at(0)).await;
    assert_eq!(serving(rooms, &r, at(100)).await.0, 0, "nobody before the first second of the sale");
    assert_eq!(serving(rooms, &r, at(110)).await.0, 10);
    // Many small steps earn no more than one big one.
    for ms in (0..10_000).step_by(250) {
        rooms.tick(&r, at(110).plus(Duration::from_millis(ms))).await.unwrap();
    }
    assert_eq!(serving(rooms, &r, at(120)).await.0, 20);
    assert_eq!(serving(rooms, &r, at(115)).await.0, 20, "an older now undoes nothing");
    let (_, measured) = rooms.overview(&r, at(120)).await.unwrap();
    assert!((measured - 60.0).abs() < 1.0, "{measured}");
}

async fn a_slow_rate_asked_often_loses_no_credit_to_rounding(rooms: &dyn WaitingRooms) {
    let r = room(30, 1_000); // one every two seconds
    join_all(rooms, &r, &fans(50), at(0)).await;
    for ms in (0..10_000u64).step_by(7) {
        rooms.tick(&r, at(100).plus(Duration::from_millis(ms))).await.unwrap();
    }
    assert_eq!(serving(rooms, &r, at(110)).await.0, 5);
}

async fn capacity_caps_admission_and_finishing_frees_a_place(rooms: &dyn WaitingRooms) {
    let r = room(600, 3);
    let fs = fans(10);
    let slots = join_all(rooms, &r, &fs, at(0)).await;
    assert_eq!(serving(rooms, &r, at(200)).await, (3, 3), "max_active shoppers at once");
    let mut admitted = Vec::new();
    for (f, s) in fs.iter().zip(&slots) {
        if let Status::Admitted { position, .. } = status(rooms, &r, *f, *s, at(200)).await {
            admitted.push((*f, position));
        }
    }
    assert_eq!(admitted.len(), 3);
    let (done, done_position) = admitted[0];
    assert!(!rooms.is_finished(&r, done_position).await.unwrap());
    rooms.finish(&r, done, at(201)).await.unwrap();
    assert!(rooms.is_finished(&r, done_position).await.unwrap(), "a finished turn's token admits no more");
    assert_eq!(serving(rooms, &r, at(201)).await, (4, 3), "the freed place went to the next fan");
    rooms.finish(&r, done, at(202)).await.unwrap();
    assert_eq!(serving(rooms, &r, at(202)).await, (4, 3), "finishing twice frees once");
    let finished_slot = slots[fs.iter().position(|f| *f == done).unwrap()];
    assert!(matches!(status(rooms, &r, done, finished_slot, at(203)).await, Status::Expired { .. }));
}

async fn an_unclaimed_turn_lapses_and_its_place_is_reclaimed(rooms: &dyn WaitingRooms) {
    let r = room(600, 2);
    let fs = fans(5);
    let slots = join_all(rooms, &r, &fs, at(0)).await;
    // Places are known (and nobody admitted) at the on-sale instant.
    let mut by_position = std::collections::HashMap::new();
    for (f, s) in fs.iter().zip(&slots) {
        by_position.insert(position(&status(rooms, &r, *f, *s, at(100)).await), (*f, *s));
    }
    assert_eq!(serving(rooms, &r, at(101)).await.0, 2);
    let (first, second) = (by_position[&1], by_position[&2]);
    assert!(matches!(status(rooms, &r, first.0, first.1, at(120)).await, Status::Admitted { .. }), "claims in time");
    // The second never asks; after the window the place is given back and
    // goes to the next fan at once.
    assert_eq!(serving(rooms, &r, at(161)).await, (3, 2), "the reclaimed place admitted the next fan");
    assert!(matches!(status(rooms, &r, second.0, second.1, at(161)).await, Status::Expired { .. }), "too late");
    // A claimed turn ends with the shopping time.
    assert!(matches!(status(rooms, &r, first.0, first.1, at(700)).await, Status::Admitted { .. }));
    serving(rooms, &r, at(762)).await;
    assert!(matches!(status(rooms, &r, first.0, first.1, at(762)).await, Status::Expired { .. }));
}

async fn waiting_fans_see_their_place_and_an_honest_wait(rooms: &dyn WaitingRooms) {
    let r = room(60, 1_000);
    let fs = fans(100);
    let slots = join_all(rooms, &r, &fs, at(0)).await;
    for s in 100..=130 {
        rooms.tick(&r, at(s)).await.unwrap();
    }
    let mut last = None;
    for (f, s) in fs.iter().zip(&slots) {
        if let Status::Waiting { position: 100, ahead, estimated_wait } = status(rooms, &r, *f, *s, at(130)).await {
            last = Some((ahead, estimated_wait));
        }
    }
    let (ahead, wait) = last.expect("someone is last");
    assert_eq!(ahead, 70);
    let wait = wait.expect("fans are being let in: the wait is known");
    assert!((wait.as_secs_f64() - 70.0).abs() < 2.0, "{wait:?}");
}

/// `n` fans who joined in the pre-queue, as (fan, slot) by the position the
/// draw gave them at the on-sale (index 0 unused).
async fn drawn_in_order(rooms: &dyn WaitingRooms, r: &RoomSpec, n: usize) -> Vec<(u64, u32)> {
    let fs = fans(n);
    let slots = join_all(rooms, r, &fs, at(0)).await;
    let mut by_position = vec![(0, 0); n + 1];
    for (f, s) in fs.iter().zip(&slots) {
        by_position[position(&status(rooms, r, *f, *s, at(100)).await) as usize] = (*f, *s);
    }
    by_position
}

/// The room lets in 60 a minute, but it is full and shoppers leave only one
/// every 3 s: fans are really let in at about 24 a minute (40 in the 100 s
/// since the on-sale), and the wait a fan is shown follows that, not the
/// configured rate.
async fn the_wait_follows_the_measured_rate_when_shoppers_leave_slowly(rooms: &dyn WaitingRooms) {
    let r = room(60, 10);
    let by_position = drawn_in_order(rooms, &r, 100).await;
    for t in 101..=110 {
        rooms.tick(&r, at(t)).await.unwrap();
    }
    let (mut claimed, mut finished) = (0, 0);
    for step in 0..=30 {
        let now = at(110 + 3 * step);
        let (admitted, _) = serving(rooms, &r, now).await;
        while claimed < admitted {
            claimed += 1;
            let (f, s) = by_position[claimed as usize];
            assert!(matches!(status(rooms, &r, f, s, now).await, Status::Admitted { .. }), "claimed in time");
        }
        if step < 30 {
            finished += 1;
            rooms.finish(&r, by_position[finished].0, now).await.unwrap();
        }
    }
    assert_eq!(claimed, 40, "ten at the rate, then one per shopper who left");
    let (f, s) = by_position[100];
    match status(rooms, &r, f, s, at(200)).await {
        Status::Waiting { ahead, estimated_wait, .. } => {
            assert_eq!(ahead, 60);
            let per_fan = estimated_wait.expect("shoppers leave: a known wait").as_secs_f64() / f64::from(ahead);
            assert!((2.0..3.0).contains(&per_fan), "about 2.5 s a fan, not the configured 1 s: {per_fan}");
        }
        other => panic!("{other:?}"),
    }
}

/// The room is full (ten shoppers, all claimed) and nobody leaves: once
/// the measuring window holds no admission at all, a waiting fan's wait is
/// unknown (`None`), not the configured rate's 1 s a fan that the room is
/// not keeping. While the window still holds the first admissions, the
/// estimate follows them.
async fn the_wait_is_unknown_while_nobody_is_let_in(rooms: &dyn WaitingRooms) {
    let r = room(60, 10);
    let by_position = drawn_in_order(rooms, &r, 20).await;
    for t in 101..=115 {
        rooms.tick(&r, at(t)).await.unwrap();
    }
    for &(f, s) in &by_position[1..=10] {
        assert!(matches!(status(rooms, &r, f, s, at(115)).await, Status::Admitted { .. }), "claimed in time");
    }
    let (last, last_slot) = by_position[20];
    match status(rooms, &r, last, last_slot, at(130)).await {
        Status::Waiting { ahead: 10, estimated_wait: Some(_), .. } => {}
        other => panic!("the first admissions are still measured: {other:?}"),
    }
    // Shopping lasts 600 s after the 60 s claim window: nobody leaves
    // before 760, and the five-minute window ends empty well before that.
    for t in (120..=500).step_by(10) {
        rooms.tick(&r, at(t)).await.unwrap();
    }
    assert_eq!(serving(rooms, &r, at(500)).await, (10, 10), "full, and nobody has left");
    match status(rooms, &r, last, last_slot, at(500)).await {
        Status::Waiting { ahead: 10, estimated_wait: None, .. } => {}
        other => panic!("no admissions in the window: the wait is unknown, {other:?}"),
    }
}

async fn a_quiet_stretch_does_not_let_a_later_crowd_in_faster(rooms: &dyn WaitingRooms) {
    let r = room(60, 1_000);
    serving(rooms, &r, at(700)).await; // ten minutes of sale with nobody waiting
    join_all(rooms, &r, &fans(100), at(700)).await;
    let (n, _) = serving(rooms, &r, at(705)).await;
    assert!(n <= 6, "{n}");
}

/// Runs every case against one backend.
async fn conformance(rooms: &dyn WaitingRooms) {
    one_place_per_fan(rooms).await;
    prequeue_is_drawn_and_later_fans_are_fifo(rooms).await;
    admitted_at_the_rate_and_no_faster(rooms).await;
    a_slow_rate_asked_often_loses_no_credit_to_rounding(rooms).await;
    capacity_caps_admission_and_finishing_frees_a_place(rooms).await;
    an_unclaimed_turn_lapses_and_its_place_is_reclaimed(rooms).await;
    waiting_fans_see_their_place_and_an_honest_wait(rooms).await;
    the_wait_follows_the_measured_rate_when_shoppers_leave_slowly(rooms).await;
    a_quiet_stretch_does_not_let_a_later_crowd_in_faster(rooms).await;
    the_wait_is_unknown_while_nobody_is_let_in(rooms).await;
}

#[tokio::test]
async fn in_process_rooms() {
    conformance(&InProcessRooms::new()).await;
}

async fn redis_node(prefix: &RedisPrefix) -> RedisRooms {
    let conn = RedisConn::connect(&[redis_url()], RedisSettings::default()).await.unwrap();
    RedisRooms::new(conn, &prefix.0, TickerSettings::default())
}

#[tokio::test]
async fn redis_rooms() {
    let prefix = RedisPrefix::new();
    conformance(&redis_node(&prefix).await).await;
}

/// Two nodes share one queue: one place per fan whichever node they ask.
#[tokio::test]
async fn redis_nodes_share_one_queue() {
    let prefix = RedisPrefix::new();
    let (a, b) = (redis_node(&prefix).await, redis_node(&prefix).await);
    let r = room(60, 100);
    let fs = fans(10);
    let mut slots = Vec::new();
    for (i, f) in fs.iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        slots.push(node.join(&r, *f, at(0)).await.unwrap().0);
    }
    let again = b.join(&r, fs[0], at(1)).await.unwrap();
    assert_eq!((again.0, again.1), (slots[0], false), "the other node knows the fan");
    let mut positions = HashSet::new();
    for (i, (f, s)) in fs.iter().zip(&slots).enumerate() {
        let node = if i % 2 == 0 { &b } else { &a };
        positions.insert(position(&status(node, &r, *f, *s, at(100)).await));
    }
    assert_eq!(positions, (1..=10).collect(), "one draw, seen alike from both nodes");
}

/// The ticker lease: one holder advances; when it stops, another node takes
/// over at once; when it dies, another takes over once the lease lapses,
/// and the old holder can no longer advance.
#[tokio::test]
async fn the_ticker_lease_moves_when_its_holder_stops() {
    let prefix = RedisPrefix::new();
    let (a, b, c) = (redis_node(&prefix).await, redis_node(&prefix).await, redis_node(&prefix).await);
    let r = room(60, 1_000);
    join_all(&a, &r, &fans(100), at(0)).await;
    assert!(a.tick(&r, at(100)).await.unwrap(), "the first to ask takes the lease");
    assert!(!b.tick(&r, at(101)).await.unwrap(), "held by a");
    assert!(a.tick(&r, at(102)).await.unwrap(), "the holder renews");
    a.stop().await; // a graceful stop lets the lease go
    assert!(b.tick(&r, at(103)).await.unwrap(), "b takes over at once");
    assert!(!c.tick(&r, at(104)).await.unwrap());
    // b dies without letting go: c takes over once the lease lapses.
    let lapsed = at(103).plus(TickerSettings::default().lease).plus(Duration::from_millis(1));
    assert!(c.tick(&r, lapsed).await.unwrap(), "c takes over after the lease");
    assert!(!b.tick(&r, lapsed).await.unwrap(), "the old holder cannot advance any more");
    let (counts, _) = c.overview(&r, lapsed).await.unwrap();
    assert_eq!(counts.serving as u64, (lapsed.as_millis() - at(100).as_millis()) as u64 / 1000, "paced as one");
}

/// Four nodes tick one room at once, over and over, while the clock runs
/// past several lease periods: at every instant exactly one of them
/// advances, and admissions keep the configured pace (four tickers would
/// not make it faster).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_never_both_advance_serving() {
    let prefix = RedisPrefix::new();
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(Arc::new(redis_node(&prefix).await));
    }
    let r = room(60, 100_000);
    join_all(nodes[0].as_ref(), &r, &fans(500), at(0)).await;
    let mut holders = HashSet::new();
    let mut last_holder = None;
    let mut paused = None;
    for step in 0..60u64 {
        // Now and then the holder pauses for three steps (6 s, longer than
        // the 5 s lease): another node must take over, and the paused one
        // must not advance when it wakes up.
        if step % 15 == 10 {
            paused = last_holder;
        }
        if step % 15 == 13 {
            paused = None;
        }
        let now = at(100 + step * 2);
        let barrier = Arc::new(tokio::sync::Barrier::new(nodes.len()));
        let tasks: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (n, r, barrier) = (n.clone(), r.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    if Some(i) == paused {
                        return false;
                    }
                    n.tick(&r, now).await.unwrap()
                })
            })
            .collect();
        let mut advanced = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            if t.await.unwrap() {
                advanced.push(i);
            }
        }
        assert!(advanced.len() <= 1, "step {step}: nodes {advanced:?} all advanced");
        if let Some(i) = advanced.first() {
            last_holder = Some(*i);
            holders.insert(*i);
        }
    }
    let end = at(100 + 59 * 2);
    let (counts, _) = nodes[0].overview(&r, end).await.unwrap();
    assert_eq!(counts.serving, 118, "one admission a second, whoever ticked");
    assert!(holders.len() >= 2, "the lease moved when its holder paused: {holders:?}");
}

/// Redis loses a room (a restart without persistence, say): the next call
/// draws it afresh, and a node that knew the old draw follows the new one
/// rather than placing fans by the old pre-queue.
#[tokio::test]
async fn a_lost_room_starts_afresh_and_nodes_follow_it() {
    let prefix = RedisPrefix::new();
    let (node, other) = (redis_node(&prefix).await, redis_node(&prefix).await);
    let r = room(60, 100);
    let early = fans(10);
    let slots = join_all(&node, &r, &early, at(0)).await;
    assert!(position(&status(&other, &r, early[0], slots[0], at(100)).await) <= 10, "drawn among ten");
    let mut c = redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}*", prefix.0)).query(&mut c).unwrap();
    let _: () = redis::cmd("DEL").arg(keys).query(&mut c).unwrap();
    // After the loss, three fans join a sale that is already on: FIFO. The
    // other node, which knew the old draw, reads their places.
    let late = fans(3);
    let late_slots = join_all(&node, &r, &late, at(101)).await;
    let mut positions = Vec::new();
    for (f, s) in late.iter().zip(&late_slots) {
        positions.push(position(&status(&other, &r, *f, *s, at(101)).await));
    }
    assert_eq!(positions, vec![1, 2, 3]);
}
