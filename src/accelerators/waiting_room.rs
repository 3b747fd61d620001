//! The in-process waiting room (embedded mode): one [`Room`] per event.
//!
//! A fan joins once (a repeat join returns the same entry) and gets a join
//! slot. At the on-sale the pre-queue is frozen: its slots are placed in a
//! uniformly random order by the keyed draw (`domain::draw`), and later fans
//! queue FIFO behind them. Position `p` is admitted once `serving >= p`.
//! `serving` advances at `rate_per_minute`, never past `max_active` fans
//! shopping at once. Admissions go in batches; a fan admitted in a batch
//! claims an admission token within `claim_window`, or loses the turn and
//! the place is given back; a claimed fan shops until `shopping_time`
//! after the claim window, or until they finish (checkout or release),
//! which frees the place at once.
//!
//! Everything is O(1) or O(log batches) per fan, with no per-fan timers: a
//! fan costs an 8-byte customer key and a 4-byte slot in a hash map, plus
//! two bits (docs/benchmarks.md has the measured bytes per fan). Time comes in as `now`, so tests drive it
//! with a fake clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use crate::domain::draw::{permute, DrawKey};
use crate::domain::ids::EventId;
use crate::domain::time::Timestamp;

/// One event's room as the service knows it: which event, its pace, and
/// the draw key. Backends get it on every call, so an admin's change of
/// pace takes effect at once on every node.
#[derive(Clone, Debug)]
pub struct RoomSpec {
    pub event: EventId,
    pub settings: RoomSettings,
    pub key: DrawKey,
}

/// Where waiting rooms live: in this process (embedded), or in Redis
/// (scale-out, shared by every node). `now` comes from the caller's clock.
/// The same conformance tests run against both (tests/waiting_room.rs).
#[async_trait]
pub trait WaitingRooms: Send + Sync {
    /// The fan's join slot, whether this call made it, and its status now
    /// (as [`WaitingRooms::status`] would say).
    async fn join(&self, room: &RoomSpec, fan: u64, now: Timestamp) -> anyhow::Result<(u32, bool, Status)>;

    /// The status of `slot` if it is the fan's (else `None`). An admitted
    /// fan who asks claims the turn.
    async fn status(&self, room: &RoomSpec, fan: u64, slot: u32, now: Timestamp) -> anyhow::Result<Option<Status>>;

    /// The fan is done shopping: their place is free at once.
    async fn finish(&self, room: &RoomSpec, fan: u64, now: Timestamp) -> anyhow::Result<()>;

    /// Whether the fan at `position` finished (their token admits no more).
    async fn is_finished(&self, room: &RoomSpec, position: u32) -> anyhow::Result<bool>;

    /// Counts and the measured admission rate, for organizers.
    async fn overview(&self, room: &RoomSpec, now: Timestamp) -> anyhow::Result<(RoomCounts, f64)>;

    /// Brings admissions up to `now`. Returns whether this caller advanced
    /// the room: always in-process; on Redis only the ticker lease's holder.
    async fn tick(&self, room: &RoomSpec, now: Timestamp) -> anyhow::Result<bool>;

    /// Advances every room this node serves that needs a ticker (the
    /// background ticker's pass). In-process rooms advance as they are
    /// asked, so there is nothing to do.
    async fn tick_all(&self, _now: Timestamp) -> anyhow::Result<()> {
        Ok(())
    }

    /// Lets go of anything this node holds (the Redis ticker leases), so
    /// another node takes over at once.
    async fn stop(&self) {}
}

/// Embedded rooms: one [`Room`] per event in this process.
#[derive(Default)]
pub struct InProcessRooms {
    rooms: RwLock<HashMap<EventId, Arc<Mutex<Room>>>>,
}

impl InProcessRooms {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the event's room (made on first use), its pace first
    /// brought in step with `spec`.
    fn with<R>(&self, spec: &RoomSpec, f: impl FnOnce(&mut Room) -> R) -> R {
        let existing = self.rooms.read().get(&spec.event).cloned();
        let room = existing.unwrap_or_else(|| {
            let fresh = || Arc::new(Mutex::new(Room::new(spec.settings, spec.key)));
            self.rooms.write().entry(spec.event.clone()).or_insert_with(fresh).clone()
        });
        let mut room = room.lock();
        let s = spec.settings;
        room.set_pace(s.rate_per_minute, s.max_active, s.on_sale_at);
        f(&mut room)
    }
}

#[async_trait]
impl WaitingRooms for InProcessRooms {
    async fn join(&self, room: &RoomSpec, fan: u64, now: Timestamp) -> anyhow::Result<(u32, bool, Status)> {
        Ok(self.with(room, |r| {
            let (slot, new) = r.join(fan, now);
            (slot, new, r.status(slot, now))
        }))
    }

    async fn status(&self, room: &RoomSpec, fan: u64, slot: u32, now: Timestamp) -> anyhow::Result<Option<Status>> {
        Ok(self.with(room, |r| (r.slot_of(fan) == Some(slot)).then(|| r.status(slot, now))))
    }

    async fn finish(&self, room: &RoomSpec, fan: u64, now: Timestamp) -> anyhow::Result<()> {
        self.with(room, |r| {
            if let Some(slot) = r.slot_of(fan) {
                r.finish(slot, now);
            }
        });
        Ok(())
    }

    async fn is_finished(&self, room: &RoomSpec, position: u32) -> anyhow::Result<bool> {
        Ok(self.with(room, |r| r.is_finished(position)))
    }

    async fn overview(&self, room: &RoomSpec, now: Timestamp) -> anyhow::Result<(RoomCounts, f64)> {
        Ok(self.with(room, |r| {
            r.advance(now);
            (r.counts(), r.measured_rate_per_minute())
        }))
    }

    async fn tick(&self, room: &RoomSpec, now: Timestamp) -> anyhow::Result<bool> {
        self.with(room, |r| r.advance(now));
        Ok(true)
    }
}

/// The 1-based queue position of join slot `slot`, once the pre-queue
/// (the first `prequeue` slots) has been frozen: drawn inside it, FIFO after.
pub fn position_of(key: &DrawKey, prequeue: u32, slot: u32) -> u32 {
    if slot < prequeue {
        permute(key, u64::from(prequeue), u64::from(slot)) as u32 + 1
    } else {
        slot + 1
    }
}

/// Admissions per minute between two `(time, serving)` samples at least
/// ten seconds apart, or `configured` before there is such a measurement.
pub fn measured_rate(first: Option<(Timestamp, u32)>, last: Option<(Timestamp, u32)>, configured: u32) -> f64 {
    match (first, last) {
        (Some(a), Some(b)) if b.0.as_millis() - a.0.as_millis() >= 10_000 => {
            f64::from(b.1.saturating_sub(a.1)) * 60_000.0 / (b.0.as_millis() - a.0.as_millis()) as f64
        }
        _ => f64::from(configured),
    }
}

/// `ahead` fans at the measured rate (see [`measured_rate`]), or `None`,
/// unknown, while the measurement says nobody is being let in: the room is
/// full and no shopper has left for the whole measuring window (or the
/// rate is 0). The configured rate would promise a wait the room is not
/// keeping; the fan is told it is unknown instead.
pub fn estimated_wait(ahead: u32, measured: f64) -> Option<Duration> {
    if ahead == 0 {
        return Some(Duration::ZERO);
    }
    (measured > 0.0).then(|| Duration::from_secs_f64(f64::from(ahead) * 60.0 / measured))
}

/// How admission is paced for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomSettings {
    pub rate_per_minute: u32,
    pub max_active: u32,
    pub on_sale_at: Timestamp,
    /// How long an admitted fan has to claim the turn.
    pub claim_window: Duration,
    /// How long a claimed turn lasts after the claim window.
    pub shopping_time: Duration,
}

/// One batch of admissions: positions `upto - count + 1 ..= upto`.
#[derive(Clone, Copy, Debug)]
struct Batch {
    upto: u32,
    count: u32,
    at: Timestamp,
    claimed: u32,
    finished: u32,
    /// The claim window has passed and its unclaimed places were given back.
    unclaimed_released: bool,
}

/// What a fan's entry says now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Joined before the on-sale; the draw places them at `on_sale_at`.
    PreQueue { on_sale_at: Timestamp },
    /// `ahead` fans are before them; at the measured rate, about
    /// `estimated_wait` until their turn (`None`: unknown, nobody is being
    /// let in).
    Waiting { position: u32, ahead: u32, estimated_wait: Option<Duration> },
    /// Their turn: they may shop until `until` with an admission token.
    Admitted { position: u32, until: Timestamp },
    /// The turn was not claimed in time, ran out, or was finished.
    Expired { position: u32 },
}

/// The waiting room of one event.
pub struct Room {
    settings: RoomSettings,
    key: DrawKey,
    slots: HashMap<u64, u32>,
    joined: u32,
    /// Frozen at the on-sale: slots below it joined before and are drawn.
    prequeue: Option<u32>,
    serving: u32,
    active: u32,
    /// Admission credit, in 1/60,000ths of an admission.
    credit: u64,
    last_tick: Option<Timestamp>,
    batches: VecDeque<Batch>,
    /// Positions before this one have batches that fully ended.
    claimed: BitSet,
    finished: BitSet,
    /// (time, serving) samples for the measured admission rate.
    samples: VecDeque<(Timestamp, u32)>,
}

/// Credit units per admission: a rate per minute earns this many units a
/// minute for each admission, one per millisecond.
const UNIT: u64 = 60_000;

/// How far back the measured admission rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(300);

impl Room {
    pub fn new(settings: RoomSettings, key: DrawKey) -> Room {
        Room {
            settings,
            key,
            slots: HashMap::new(),
            joined: 0,
            prequeue: None,
            serving: 0,
            active: 0,
            credit: 0,
            last_tick: None,
            batches: VecDeque::new(),
            claimed: BitSet::default(),
            finished: BitSet::default(),
            samples: VecDeque::new(),
        }
    }

    pub fn settings(&self) -> RoomSettings {
        self.settings
    }

    /// Changes the pace while the room is live (admin `PATCH`), and the
    /// on-sale time while the pre-queue has not been drawn yet.
    pub fn set_pace(&mut self, rate_per_minute: u32, max_active: u32, on_sale_at: Timestamp) {
        self.settings.rate_per_minute = rate_per_minute;
        self.settings.max_active = max_active;
        if self.prequeue.is_none() {
            self.settings.on_sale_at = on_sale_at;
        }
    }

    /// Whether the fan at `position` has finished shopping (their token no
    /// longer admits them).
    pub fn is_finished(&self, position: u32) -> bool {
        self.finished.get(position)
    }

    /// The fan's join slot, and whether this call made it. `fan` is the
    /// fan's key (see [`fan_key`]).
    pub fn join(&mut self, fan: u64, now: Timestamp) -> (u32, bool) {
        self.advance(now);
        let key = fan;
        if let Some(slot) = self.slots.get(&key) {
            return (*slot, false);
        }
        let slot = self.joined;
        self.slots.insert(key, slot);
        self.joined += 1;
        (slot, true)
    }

    /// The join slot of a fan who joined.
    pub fn slot_of(&self, fan: u64) -> Option<u32> {
        self.slots.get(&fan).copied()
    }

    /// The 1-based queue position of a slot, once the draw has placed it.
    pub fn position(&self, slot: u32) -> Option<u32> {
        Some(position_of(&self.key, self.prequeue?, slot))
    }

    /// Brings admissions up to `now`: freezes the pre-queue at the on-sale,
    /// gives back turns that were not claimed or ran out, and admits as many
    /// as the rate has earned and capacity allows.
    pub fn advance(&mut self, now: Timestamp) {
        if now < self.settings.on_sale_at {
            return;
        }
        if self.prequeue.is_none() {
            self.prequeue = Some(self.joined);
            self.last_tick = Some(self.settings.on_sale_at);
        }
        self.release_lapsed(now);
        // Time only moves on: a caller with an older "now" earns nothing (and
        // undoes nothing), but a place freed meanwhile is still filled.
        let last = self.last_tick.unwrap_or(now);
        let elapsed = (now.as_millis() - last.as_millis()).max(0) as u64;
        self.last_tick = Some(last.max(now));
        // Credit is kept exactly, in 1/60,000ths of an admission (one
        // admission per minute earns one unit per millisecond).
        self.credit = self.credit.saturating_add(elapsed.saturating_mul(u64::from(self.settings.rate_per_minute)));
        let earned = (self.credit / UNIT).min(u64::from(u32::MAX)) as u32;
        let room_left = self.settings.max_active.saturating_sub(self.active);
        let waiting = self.joined - self.serving;
        let admit = earned.min(room_left).min(waiting);
        // Credit left unused because the room is full is kept (up to a
        // roomful), so a place that frees up is filled at once. Credit left
        // unused because nobody is waiting is dropped, so a quiet stretch
        // cannot admit a later crowd faster than the rate.
        let rest = self.credit - u64::from(admit) * UNIT;
        self.credit = if admit == waiting && admit < earned {
            rest % UNIT
        } else {
            rest.min(u64::from(self.settings.max_active) * UNIT)
        };
        if admit > 0 {
            metrics::counter!("boxoffice_queue_admitted_total").increment(u64::from(admit));
            self.serving += admit;
            self.active += admit;
            self.batches.push_back(Batch {
                upto: self.serving,
                count: admit,
                at: now,
                claimed: 0,
                finished: 0,
                unclaimed_released: false,
            });
        }
        // At most one sample a second, however many fans are polling.
        if self.samples.back().is_none_or(|(t, _)| now.as_millis() - t.as_millis() >= 1_000) {
            self.samples.push_back((now, self.serving));
        }
        while self.samples.len() > 2
            && self.samples[1].0.as_millis() <= now.as_millis() - RATE_WINDOW.as_millis() as i64
        {
            self.samples.pop_front();
        }
    }

    fn release_lapsed(&mut self, now: Timestamp) {
        let claim_ms = self.settings.claim_window.as_millis() as i64;
        let shop_ms = self.settings.shopping_time.as_millis() as i64;
        for b in self.batches.iter_mut() {
            if b.unclaimed_released {
                continue;
            }
            if b.at.as_millis() + claim_ms > now.as_millis() {
                break;
            }
            b.unclaimed_released = true;
            self.active -= b.count - b.claimed;
        }
        while let Some(b) = self.batches.front() {
            if !b.unclaimed_released || b.at.as_millis() + claim_ms + shop_ms > now.as_millis() {
                break;
            }
            self.active -= b.claimed - b.finished;
            self.batches.pop_front();
        }
    }

    /// The batch a position was admitted in, while its turn lasts.
    fn batch_index(&self, position: u32) -> Option<usize> {
        let i = self.batches.partition_point(|b| b.upto < position);
        let b = self.batches.get(i)?;
        (position > b.upto - b.count).then_some(i)
    }

    /// The entry's status now. An admitted fan who asks claims the turn.
    pub fn status(&mut self, slot: u32, now: Timestamp) -> Status {
        self.advance(now);
        let Some(position) = self.position(slot) else {
            return Status::PreQueue { on_sale_at: self.settings.on_sale_at };
        };
        if position > self.serving {
            let ahead = position - self.serving;
            return Status::Waiting { position, ahead, estimated_wait: self.estimated_wait(ahead) };
        }
        let claim_ms = self.settings.claim_window.as_millis() as i64;
        let until_of = |b: &Batch| b.at.plus(self.settings.claim_window).plus(self.settings.shopping_time);
        let Some(i) = self.batch_index(position) else { return Status::Expired { position } };
        if self.finished.get(position) {
            return Status::Expired { position };
        }
        if self.claimed.get(position) {
            return Status::Admitted { position, until: until_of(&self.batches[i]) };
        }
        if self.batches[i].unclaimed_released || self.batches[i].at.as_millis() + claim_ms <= now.as_millis() {
            return Status::Expired { position };
        }
        self.claimed.set(position);
        self.batches[i].claimed += 1;
        Status::Admitted { position, until: until_of(&self.batches[i]) }
    }

    /// A shopper is done (checked out or released): the place is free at once.
    pub fn finish(&mut self, slot: u32, now: Timestamp) {
        self.advance(now);
        let Some(position) = self.position(slot) else { return };
        let Some(i) = self.batch_index(position) else { return };
        if self.claimed.get(position) && !self.finished.get(position) {
            self.finished.set(position);
            self.batches[i].finished += 1;
            self.active -= 1;
        }
    }

    /// Waiting fans, admitted fans shopping or yet to claim, and serving.
    pub fn counts(&self) -> RoomCounts {
        RoomCounts {
            joined: self.joined,
            drawn: self.prequeue,
            serving: self.serving,
            active: self.active,
            waiting: self.joined - self.serving,
        }
    }

    /// Admissions per minute over the last few minutes, or the configured
    /// rate before there is a measurement.
    pub fn measured_rate_per_minute(&self) -> f64 {
        measured_rate(self.samples.front().copied(), self.samples.back().copied(), self.settings.rate_per_minute)
    }

    fn estimated_wait(&self, ahead: u32) -> Option<Duration> {
        estimated_wait(ahead, self.measured_rate_per_minute())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomCounts {
    pub joined: u32,
    /// How many joined before the on-sale and were drawn; `None` until the
    /// draw. With the draw key, it is all an auditor needs.
    pub drawn: Option<u32>,
    pub serving: u32,
    pub active: u32,
    pub waiting: u32,
}

/// A fan's key in a room: the first 8 bytes of SHA-256 of their buyer key
/// (the normalised email purchase limits count by), so one person signed in
/// twice has one place. Two of a million fans share a key with odds of
/// about 1 in 10^7; the worst that could do is give one of them the other's
/// place in line (every token still names its own customer).
pub fn fan_key(buyer: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(buyer.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// A growable bit set indexed by queue position.
#[derive(Default)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn get(&self, i: u32) -> bool {
        self.0.get(i as usize / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u32) {
        let w = i as usize / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_millis(1_900_000_000_000);

    fn at(secs: u64) -> Timestamp {
        T0.plus(Duration::from_secs(secs))
    }

    fn room(rate: u32, max_active: u32) -> Room {
        Room::new(
            RoomSettings {
                rate_per_minute: rate,
                max_active,
                on_sale_at: at(100),
                claim_window: Duration::from_secs(60),
                shopping_time: Duration::from_secs(600),
            },
            DrawKey([7; 32]),
        )
    }

    fn fans(n: usize) -> Vec<u64> {
        (0..n).map(|i| fan_key(&format!("fan{i}@example.com"))).collect()
    }

    #[test]
    fn every_batch_gives_back_its_unclaimed_places_after_its_own_window() {
        let mut r = room(60, 10);
        let slots: Vec<u32> = fans(20).iter().map(|f| r.join(*f, at(0)).0).collect();
        r.advance(at(101)); // batch 1: position 1
        let first = *slots.iter().find(|s| r.position(**s) == Some(1)).unwrap();
        assert!(matches!(r.status(first, at(101)), Status::Admitted { .. }), "claimed: shopping for a while");
        r.advance(at(103)); // batch 2: positions 2 and 3, never claimed
        assert_eq!(r.counts().active, 3);
        r.advance(at(164)); // batch 2's window is over; batch 1 is still shopping
        assert_eq!(r.counts().active - (r.counts().serving - 3), 1, "batch 2's places came back: {:?}", r.counts());
    }

    #[test]
    fn a_million_fans_fit_in_memory_and_each_has_one_place() {
        let mut r = room(6_000, 10_000);
        let n = 1_000_000u32;
        for i in 0..n {
            r.join(u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15), at(0));
        }
        r.advance(at(100));
        assert_eq!(r.counts().joined, n);
        let mut seen = BitSet::default();
        for s in (0..n).step_by(97) {
            let p = r.position(s).unwrap();
            assert!(!seen.get(p) && (1..=n).contains(&p));
            seen.set(p);
        }
    }
}
