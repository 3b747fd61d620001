//! Catalog caches: per-node moka tiers in front of the store, with
//! invalidation that reaches every node.
//!
//! | what | TTL | why |
//! |---|---|---|
//! | event details (with prices) | 10 s | prices may be at most 10 s old; also shared between nodes in Redis |
//! | venue details | 24 h | venues do not change after creation |
//! | search results | 10 s | they show prices; also shared between nodes in Redis |
//! | availability counts | 1 s | "at most about 2 s stale"; also shared between nodes in Redis for 1 s |
//!
//! Seat status, holds and locks are never cached. An admin change
//! invalidates this node at once and is published on the Redis channel
//! `<prefix>catalog` so every other node drops its copy too; a node that
//! loses its subscription drops everything when it resubscribes, and the
//! TTLs bound staleness if a message is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use moka::sync::Cache;

use super::seat_feed::{SeatChange, SeatFeed};
use crate::domain::event::Event;
use crate::domain::ids::{EventId, VenueId};
use crate::domain::time::Timestamp;
use crate::domain::venue::Venue;
use crate::store::{Availability, DynStore, EventQuery, StoreResult};

pub const EVENT_TTL: Duration = Duration::from_secs(10);
pub const VENUE_TTL: Duration = Duration::from_secs(24 * 3600);
pub const SEARCH_TTL: Duration = Duration::from_secs(10);
pub const AVAILABILITY_TTL: Duration = Duration::from_secs(1);
/// How old this node's last counts may get before
/// [`CatalogCache::availability_now`] recounts them in the background. A
/// count of a 100,000-seat event costs the embedded node about 50 ms of CPU,
/// so once a second it was about 2.5% of the machine during a queue-join
/// run; every 3 s it is a third of that, and a fan who joins just after the
/// last sale learns it at their next poll, a few seconds later.
pub const COUNTS_REFRESH: Duration = Duration::from_secs(3);
/// The longest a shared-tier (Redis) read or write may take; past it the
/// node just reads the store.
const SHARED_TIMEOUT: Duration = Duration::from_millis(100);

/// A catalog change every node must hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogChange {
    Event(EventId),
    Venue(VenueId),
    /// Load this event into every node's caches (it is about to be busy).
    Warm(EventId),
}

impl CatalogChange {
    fn encode(&self) -> String {
        match self {
            CatalogChange::Event(id) => format!("event:{id}"),
            CatalogChange::Venue(id) => format!("venue:{id}"),
            CatalogChange::Warm(id) => format!("warm:{id}"),
        }
    }

    fn decode(s: &str) -> Option<CatalogChange> {
        let (kind, id) = s.split_once(':')?;
        match kind {
            "event" => EventId::parse(id).map(CatalogChange::Event),
            "venue" => VenueId::parse(id).map(CatalogChange::Venue),
            "warm" => EventId::parse(id).map(CatalogChange::Warm),
            _ => None,
        }
    }
}

/// Callers waiting their turn to load an entry, per (kind, event).
type LoadTurns = parking_lot::Mutex<HashMap<(&'static str, EventId), Arc<tokio::sync::Mutex<()>>>>;

/// Availability counts as last read, and the fresh read under way, if any.
struct Counted {
    counts: Arc<Availability>,
    at: tokio::time::Instant,
    refreshing: Option<tokio::task::JoinHandle<()>>,
}

impl Counted {
    fn new(counts: Arc<Availability>) -> Counted {
        Counted { counts, at: tokio::time::Instant::now(), refreshing: None }
    }
}

pub struct CatalogCache {
    store: DynStore,
    events: Cache<EventId, Arc<Event>>,
    venues: Cache<VenueId, Arc<Venue>>,
    searches: Cache<String, Arc<Vec<Event>>>,
    availability: Cache<EventId, Arc<Availability>>,
    /// One load at a time per (kind, event): when a busy entry expires, the
    /// first caller reloads it and the others wait for that load instead of
    /// each reading the store (a joins stampede once made every expiry of
    /// an event's availability cost 64 concurrent counts of its seats).
    loads: LoadTurns,
    /// The last availability counts per event for paths that must never
    /// wait on the store (queue joins); see [`CatalogCache::availability_now`].
    counted: parking_lot::RwLock<HashMap<EventId, Counted>>,
    /// Where changes are published to other nodes; `None` when embedded.
    bus: Option<RedisBus>,
}

impl CatalogCache {
    pub fn new(store: DynStore, bus: Option<RedisBus>) -> Self {
        fn cache<K, V>(ttl: Duration, cap: u64) -> Cache<K, V>
        where
            K: std::hash::Hash + Eq + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
        {
            Cache::builder().time_to_live(ttl).max_capacity(cap).build()
        }
        CatalogCache {
            store,
            events: cache(EVENT_TTL, 100_000),
            venues: cache(VENUE_TTL, 10_000),
            searches: cache(SEARCH_TTL, 10_000),
            availability: cache(AVAILABILITY_TTL, 100_000),
            loads: parking_lot::Mutex::default(),
            counted: parking_lot::RwLock::default(),
            bus,
        }
    }

    /// This node's copy, else the copy shared in Redis, else the store's
    /// (which is then shared with the other nodes for `EVENT_TTL`).
    pub async fn event(&self, id: &EventId) -> StoreResult<Option<Arc<Event>>> {
        self.tiered("event", &self.events, id, RedisBus::event_key, EVENT_TTL, || self.store.event(id)).await
    }

    pub async fn venue(&self, id: &VenueId) -> StoreResult<Option<Arc<Venue>>> {
        if let Some(v) = self.venues.get(id) {
            return Ok(Some(v));
        }
        let v = self.store.venue(id).await?.map(Arc::new);
        if let Some(v) = &v {
            self.venues.insert(id.clone(), v.clone());
        }
        Ok(v)
    }

    /// Like [`CatalogCache::event`]: this node, then the shared tier, then
    /// the store (a read replica when there is one).
    pub async fn search(&self, q: &EventQuery) -> StoreResult<Arc<Vec<Event>>> {
        let key = format!("{q:?}");
        if let Some(r) = self.searches.get(&key) {
            return Ok(r);
        }
        let shared = match &self.bus {
            Some(bus) => bus.shared_search(&key).await,
            None => SharedSearch::Off,
        };
        if let SharedSearch::Hit(found) = shared {
            let r = Arc::new(found);
            self.searches.insert(key, r.clone());
            return Ok(r);
        }
        let r = Arc::new(self.store.search_events(q).await?);
        self.searches.insert(key, r.clone());
        if let (Some(bus), SharedSearch::Miss { slot }) = (&self.bus, shared) {
            bus.share_search(&slot, &r).await;
        }
        Ok(r)
    }

    /// Like [`CatalogCache::event`], shared for `AVAILABILITY_TTL`. Each tier
    /// keeps counts at most `AVAILABILITY_TTL` old, so what a fan sees is at
    /// most twice that.
    pub async fn availability(&self, id: &EventId, now: Timestamp) -> StoreResult<Option<Arc<Availability>>> {
        self.tiered("availability", &self.availability, id, RedisBus::availability_key, AVAILABILITY_TTL, || {
            self.store.availability(id, now)
        })
        .await
    }

    /// Availability for paths that must not wait on the store: the counts
    /// this node last read, refreshed in the background (through
    /// [`CatalogCache::availability`], so nodes still share one count a
    /// second) once they are [`COUNTS_REFRESH`] old, one refresh at a time.
    /// Only an event never counted on this node waits, once, for its first
    /// count.
    pub async fn availability_now(
        self: &Arc<Self>,
        id: &EventId,
        now: Timestamp,
    ) -> StoreResult<Option<Arc<Availability>>> {
        let usable = |c: &Counted| c.at.elapsed() < COUNTS_REFRESH || c.refreshing.is_some();
        // Nearly always fresh: a shared read, so joins do not queue here.
        if let Some(c) = self.counted.read().get(id).filter(|c| usable(c)) {
            return Ok(Some(c.counts.clone()));
        }
        {
            let mut counted = self.counted.write();
            if let Some(c) = counted.get_mut(id) {
                if !usable(c) {
                    // Spawned under the lock: the refresh cannot finish (and
                    // write) before its handle is recorded here.
                    c.refreshing = Some(tokio::spawn(self.clone().recount(id.clone(), now)));
                }
                return Ok(Some(c.counts.clone()));
            }
        }
        let fresh = self.availability(id, now).await?;
        if let Some(counts) = &fresh {
            self.counted.write().insert(id.clone(), Counted::new(counts.clone()));
        }
        Ok(fresh)
    }

    /// The background half of [`CatalogCache::availability_now`].
    async fn recount(self: Arc<Self>, id: EventId, now: Timestamp) {
        let fresh = self.availability(&id, now).await;
        let mut counted = self.counted.write();
        match fresh {
            Ok(Some(counts)) => {
                counted.insert(id, Counted::new(counts));
            }
            // Gone: forget it. Failed: keep the old counts, retry later.
            Ok(None) => {
                counted.remove(&id);
            }
            Err(e) => {
                tracing::warn!(error = %e, event.id = %id, "could not refresh availability counts");
                if let Some(c) = counted.get_mut(&id) {
                    c.refreshing = None;
                }
            }
        }
    }

    /// An event's entry from this node's `local` cache, else from the copy
    /// shared in Redis under `shared_key`, else from `load` (the store),
    /// which is then kept here and shared for `ttl`. On a miss, callers for
    /// the same `kind` and event take turns, so one of them loads.
    async fn tiered<V, Load, Fut>(
        &self,
        kind: &'static str,
        local: &Cache<EventId, Arc<V>>,
        id: &EventId,
        shared_key: fn(&RedisBus, &EventId) -> String,
        ttl: Duration,
        load: Load,
    ) -> StoreResult<Option<Arc<V>>>
    where
        V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
        Load: FnOnce() -> Fut,
        Fut: std::future::Future<Output = StoreResult<Option<V>>>,
    {
        if let Some(v) = local.get(id) {
            return Ok(Some(v));
        }
        let key = (kind, id.clone());
        let gate = self.loads.lock().entry(key.clone()).or_default().clone();
        let _turn = gate.lock().await;
        let loaded = async {
            // The caller before us in line may have loaded it.
            if let Some(v) = local.get(id) {
                return Ok(Some(v));
            }
            if let Some(bus) = &self.bus {
                if let Ok(Some(v)) = bus.get_shared::<V>(&shared_key(bus, id)).await {
                    let v = Arc::new(v);
                    local.insert(id.clone(), v.clone());
                    return Ok(Some(v));
                }
            }
            let v = load().await?.map(Arc::new);
            if let Some(v) = &v {
                local.insert(id.clone(), v.clone());
                if let Some(bus) = &self.bus {
                    bus.put_shared(&shared_key(bus, id), v.as_ref(), ttl).await;
                }
            }
            Ok(v)
        }
        .await;
        // Callers already waiting keep their handle; later ones find the
        // entry cached, or start a fresh turn if the load failed.
        self.loads.lock().remove(&key);
        loaded
    }

    /// Applies a change here, drops the shared copy, then tells every other
    /// node.
    pub async fn changed(&self, change: CatalogChange, now: Timestamp) {
        if let (Some(bus), CatalogChange::Event(id)) = (&self.bus, &change) {
            bus.unshare_event(id).await;
            bus.retire_searches().await;
        }
        self.apply(&change, now).await;
        if let Some(bus) = &self.bus {
            bus.publish(&change).await;
        }
    }

    /// Applies a change heard from any node (including this one).
    pub async fn apply(&self, change: &CatalogChange, now: Timestamp) {
        match change {
            CatalogChange::Event(id) => {
                self.events.invalidate(id);
                self.availability.invalidate(id);
                self.searches.invalidate_all();
            }
            CatalogChange::Venue(id) => self.venues.invalidate(id),
            CatalogChange::Warm(id) => {
                self.events.invalidate(id);
                self.availability.invalidate(id);
                if let Err(e) = self.event(id).await {
                    tracing::warn!(error = %e, event.id = %id, "could not pre-warm an event");
                }
                let _ = self.availability(id, now).await;
            }
        }
    }

    /// Drops everything; used after missing messages.
    pub fn clear(&self) {
        self.events.invalidate_all();
        self.venues.invalidate_all();
        self.searches.invalidate_all();
        self.availability.invalidate_all();
    }

    /// Whether an event is in this node's cache (for tests of pre-warming).
    pub fn has_event(&self, id: &EventId) -> bool {
        self.events.contains_key(id)
    }
}

/// What the shared tier knows of a search.
enum SharedSearch {
    /// No Redis, or it did not answer: use the store, share nothing.
    Off,
    Hit(Vec<Event>),
    /// Not there; after reading the store, share it in `slot`.
    Miss {
        slot: String,
    },
}

/// Catalog changes over Redis pub/sub.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    /// Made on first use, so a node starts while Redis is down.
    publisher: Arc<tokio::sync::OnceCell<redis::aio::ConnectionManager>>,
    prefix: String,
    channel: String,
    seats_channel: String,
}

/// A seat change on the wire between nodes.
#[derive(serde::Serialize, serde::Deserialize)]
struct SeatMessage {
    event: EventId,
    change: SeatChange,
}

impl RedisBus {
    /// A bad URL is an error; an unreachable Redis is not (see `publish`).
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<RedisBus> {
        let client = redis::Client::open(url)?;
        Ok(RedisBus {
            client,
            publisher: Default::default(),
            prefix: prefix.to_owned(),
            channel: format!("{prefix}catalog"),
            seats_channel: format!("{prefix}seats"),
        })
    }

    /// Publishes one message; false if Redis did not take it in time.
    async fn send(&self, channel: &str, payload: String) -> bool {
        let sent = tokio::time::timeout(Duration::from_millis(500), async {
            let mut c = self
                .publisher
                .get_or_try_init(|| redis::aio::ConnectionManager::new(self.client.clone()))
                .await?
                .clone();
            redis::cmd("PUBLISH").arg(channel).arg(payload).query_async::<i64>(&mut c).await
        })
        .await;
        matches!(sent, Ok(Ok(_)))
    }

    async fn publish(&self, change: &CatalogChange) {
        if !self.send(&self.channel, change.encode()).await {
            // Other nodes catch up within the TTLs.
            tracing::warn!(?change, "could not publish a catalog change; other nodes rely on TTLs");
        }
    }

    /// Carries the event's hash tag like every other key of an event.
    fn event_key(&self, id: &EventId) -> String {
        format!("{}{{{id}}}:event", self.prefix)
    }

    /// Carries the event's hash tag like every other key of an event.
    fn availability_key(&self, id: &EventId) -> String {
        format!("{}{{{id}}}:availability", self.prefix)
    }

    /// A shared copy under `key`: `Ok(Some)` found, `Ok(None)` not there (or
    /// unreadable, so the caller's fresh copy replaces it), `Err(())` when
    /// Redis did not answer in time.
    async fn get_shared<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ()> {
        let mut c = self.connection().await.ok_or(())?;
        let mut get = redis::cmd("GET");
        get.arg(key);
        match tokio::time::timeout(SHARED_TIMEOUT, get.query_async::<Option<String>>(&mut c)).await {
            Ok(Ok(Some(json))) => Ok(serde_json::from_str(&json).ok()),
            Ok(Ok(None)) => Ok(None),
            _ => Err(()),
        }
    }

    /// Shares `value` under `key` for `ttl`; a failure only costs a later
    /// store read.
    async fn put_shared<T: serde::Serialize + ?Sized>(&self, key: &str, value: &T, ttl: Duration) {
        let (Some(mut c), Ok(json)) = (self.connection().await, serde_json::to_string(value)) else { return };
        let mut set = redis::cmd("SET");
        set.arg(key).arg(json).arg("PX").arg(ttl.as_millis() as u64);
        let _ = tokio::time::timeout(SHARED_TIMEOUT, set.query_async::<()>(&mut c)).await;
    }

    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        let conn = tokio::time::timeout(
            SHARED_TIMEOUT,
            self.publisher.get_or_try_init(|| redis::aio::ConnectionManager::new(self.client.clone())),
        )
        .await;
        match conn {
            Ok(Ok(c)) => Some(c.clone()),
            _ => None,
        }
    }

    async fn unshare_event(&self, id: &EventId) {
        let Some(mut c) = self.connection().await else { return };
        let mut del = redis::cmd("DEL");
        del.arg(self.event_key(id));
        let _ = tokio::time::timeout(SHARED_TIMEOUT, del.query_async::<()>(&mut c)).await;
    }

    fn search_version_key(&self) -> String {
        format!("{}search:version", self.prefix)
    }

    /// Looks a search up in the shared tier. Search keys carry a version
    /// that every event change bumps, so one change retires them all.
    async fn shared_search(&self, query: &str) -> SharedSearch {
        let Some(mut c) = self.connection().await else { return SharedSearch::Off };
        let mut get = redis::cmd("GET");
        get.arg(self.search_version_key());
        let version = match tokio::time::timeout(SHARED_TIMEOUT, get.query_async::<Option<u64>>(&mut c)).await {
            Ok(Ok(v)) => v.unwrap_or(0),
            _ => return SharedSearch::Off,
        };
        use sha2::Digest;
        let digest = sha2::Sha256::digest(query.as_bytes());
        let slot = format!(
            "{}search:{version}:{}",
            self.prefix,
            digest.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        match self.get_shared(&slot).await {
            Ok(Some(found)) => SharedSearch::Hit(found),
            Ok(None) => SharedSearch::Miss { slot },
            Err(()) => SharedSearch::Off,
        }
    }

    async fn share_search(&self, slot: &str, found: &[Event]) {
        self.put_shared(slot, found, SEARCH_TTL).await;
    }

    async fn retire_searches(&self) {
        let Some(mut c) = self.connection().await else { return };
        let mut incr = redis::cmd("INCR");
        incr.arg(self.search_version_key());
        let _ = tokio::time::timeout(SHARED_TIMEOUT, incr.query_async::<i64>(&mut c)).await;
    }

    /// Sends a seat change to every node's seat feed.
    pub async fn publish_seats(&self, event: &EventId, change: &SeatChange) -> bool {
        let msg = SeatMessage { event: event.clone(), change: change.clone() };
        match serde_json::to_string(&msg) {
            Ok(payload) => self.send(&self.seats_channel, payload).await,
            Err(_) => false,
        }
    }

    /// Listens until `stop`, applying every change to `cache`. Reconnects
    /// after errors, clearing the cache each time it (re)subscribes since
    /// messages may have been missed meanwhile.
    pub async fn listen(
        self,
        cache: Arc<CatalogCache>,
        feed: Arc<SeatFeed>,
        clock: Arc<dyn crate::domain::time::Clock>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let session = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                pubsub.subscribe(&self.seats_channel).await?;
                cache.clear();
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let payload: String = msg.get_payload()?;
                    if msg.get_channel_name() == self.seats_channel {
                        if let Ok(m) = serde_json::from_str::<SeatMessage>(&payload) {
                            feed.deliver(&m.event, m.change);
                        }
                    } else if let Some(change) = CatalogChange::decode(&payload) {
                        cache.apply(&change, clock.now()).await;
                    }
                }
                anyhow::Ok(())
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = session => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "catalog subscription lost; retrying");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_junk_is_ignored() {
        let e = EventId::generate();
        for c in [CatalogChange::Event(e.clone()), CatalogChange::Warm(e), CatalogChange::Venue(VenueId::generate())] {
            assert_eq!(CatalogChange::decode(&c.encode()), Some(c));
        }
        assert_eq!(CatalogChange::decode("event:nope"), None);
        assert_eq!(CatalogChange::decode("garbage"), None);
    }

    fn sqlite_store(dir: &std::path::Path) -> DynStore {
        use crate::store::sqlite::{SqliteStore, Synchronous};
        Arc::new(SqliteStore::open(&dir.join("t.db"), Synchronous::Auto).unwrap())
    }

    /// Many callers miss the same entry at once (it just expired under
    /// load): one loads it from the store, the rest wait and share it. The
    /// load takes a second of tokio's paused clock, so every caller has
    /// arrived before it ends.
    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_load_an_entry_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(dir.path());
        let cache = Arc::new(CatalogCache::new(store, None));
        let (id, loads) = (EventId::generate(), Arc::new(AtomicUsize::new(0)));
        let barrier = Arc::new(tokio::sync::Barrier::new(32));
        let callers: Vec<_> = (0..32)
            .map(|_| {
                let (cache, id, loads, barrier) = (cache.clone(), id.clone(), loads.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let load = || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok(Some(Availability::from_categories(Default::default())))
                    };
                    let got = cache.tiered(
                        "availability",
                        &cache.availability,
                        &id,
                        RedisBus::availability_key,
                        AVAILABILITY_TTL,
                        load,
                    );
                    got.await.unwrap().is_some()
                })
            })
            .collect();
        for c in callers {
            assert!(c.await.unwrap(), "every caller gets the entry");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for 32 callers");
        assert!(cache.loads.lock().is_empty(), "no turn is left behind");
    }

    /// Joins read availability without waiting on the store: a second after
    /// its count, the next caller gets the old counts at once while a fresh
    /// count runs in the background, and callers after it see the new ones.
    #[tokio::test(start_paused = true)]
    async fn availability_now_answers_at_once_and_refreshes_behind() {
        use crate::domain::customer::{Email, TokenHash};
        use crate::domain::event::EventDraft;
        use crate::domain::hold::Selection;
        use crate::domain::ids::{CustomerId, HoldId, SeatId};
        use crate::domain::time::{Clock, SystemClock};
        use crate::domain::venue::VenueDraft;
        use crate::store::{Customer, HoldPlacement, NewSession};

        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(dir.path());
        let now = SystemClock.now();
        let draft: VenueDraft = serde_json::from_value(crate::demo::venue_json()).unwrap();
        let venue = Venue::from_draft(VenueId::generate(), draft).unwrap();
        store.insert_venue(&venue, now).await.unwrap();
        let draft: EventDraft = serde_json::from_value(crate::demo::event_json(venue.id.as_str(), now)).unwrap();
        let event = Event::from_draft(EventId::generate(), draft, &venue, now).unwrap();
        store.insert_event(&event, &venue).await.unwrap();
        let cache = Arc::new(CatalogCache::new(store.clone(), None));

        let first = cache.availability_now(&event.id, now).await.unwrap().unwrap();
        let fan = Customer { id: CustomerId::generate(), email: Email::parse("fan@example.com").unwrap() };
        let session = NewSession {
            customer: fan.clone(),
            token_hash: TokenHash::of("t"),
            created_at: now,
            expires_at: now.plus_secs(3600),
        };
        store.create_session(session).await.unwrap();
        let seats = Selection::Seats(vec![SeatId::parse("A7").unwrap()]);
        let p = HoldPlacement {
            hold_id: HoldId::generate(),
            event_id: event.id.clone(),
            customer: fan,
            selection: seats,
            now,
        };
        store.place_hold(p).await.unwrap().unwrap();

        assert_eq!(cache.availability_now(&event.id, now).await.unwrap().unwrap().all, first.all, "fresh enough");
        tokio::time::advance(COUNTS_REFRESH).await;
        // moka times its entries by the real clock, which did not move: drop
        // the copy its own expiry would have dropped by now.
        cache.availability.invalidate(&event.id);
        let stale = cache.availability_now(&event.id, now).await.unwrap().unwrap();
        assert_eq!(stale.all, first.all, "the old counts, at once");
        let refresh = cache.counted.write().get_mut(&event.id).unwrap().refreshing.take();
        refresh.expect("a background count is under way").await.unwrap();
        let fresh = cache.availability_now(&event.id, now).await.unwrap().unwrap();
        assert_eq!(fresh.all.held, first.all.held + 1, "the background count saw the new hold");
    }
}
