//! Scale-out waiting rooms in Redis: every node sees one queue per event.
//!
//! An event's room is a handful of keys under one hash tag,
//! `<prefix>{q:<event_id>}:…`, so each Lua script touches one Cluster slot:
//!
//! | key | what |
//! |---|---|
//! | `state` | hash: `joined`, `prequeue` (frozen at the on-sale), `serving`, `active`, `credit`, `last_tick`, batch cursors, `fence` |
//! | `fans` | hash: fan key → join slot (one place per person) |
//! | `bz`, `bh` | the live admission batches: sorted by last position, and their counts |
//! | `claimed`, `finished` | bitmaps by position |
//! | `samples` | `(time, serving)` at most once a second, for the measured rate |
//! | `lease` | the ticker lease: owner node, fencing token, until |
//!
//! The logic is the in-process [`Room`](super::waiting_room::Room)'s, in
//! Lua: joins take the next slot, the draw (computed on the node from the
//! draw key) places the pre-queue, and `serving` advances with exact
//! credit, capped by `max_active`.
//!
//! **One ticker.** Only the holder of the event's ticker lease advances
//! `serving`. Taking the lease hands out a new fencing token (a counter
//! that only grows); the advance script runs only with the token the lease
//! holds now, and never with one older than the last token that advanced.
//! So two nodes never both advance, even if a paused node wakes up still
//! believing it holds the lease. Leases expire by the callers' clocks
//! (`now` is an argument, so tests drive it with a fake clock), and a node
//! that stops lets its leases go at once.
//!
//! Reads are O(1) per fan: a waiting fan's poll reads a few fields; only a
//! fan whose turn has come touches the batch index (O(log batches)).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::{Script, Value};

use super::redis_conn::RedisConn;
use super::waiting_room::{estimated_wait, measured_rate, position_of, RoomCounts, RoomSpec, Status, WaitingRooms};
use crate::domain::ids::EventId;
use crate::domain::time::Timestamp;

/// Shared by every script: the keys, number helpers, batches, and the
/// pre-queue freeze.
const PRELUDE: &str = r"
local st, fans, bz, bh, claimed, finished, samples, lease =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local function s(x) return string.format('%.0f', x) end
local function get(f) return tonumber(redis.call('HGET', st, f) or '0') end
local function batch(seq)
  local v = redis.call('HGET', bh, s(seq))
  if not v then return nil end
  local t = {}
  for x in string.gmatch(v, '[^:]+') do t[#t + 1] = tonumber(x) end
  return {upto = t[1], count = t[2], at = t[3], claimed = t[4], finished = t[5], released = t[6]}
end
local function put(seq, b)
  redis.call('HSET', bh, s(seq), table.concat({s(b.upto), s(b.count), s(b.at), s(b.claimed), s(b.finished), s(b.released)}, ':'))
end
-- The pre-queue is frozen by the first call at or after the on-sale.
local function freeze(now, on_sale)
  local pre = redis.call('HGET', st, 'prequeue')
  if pre then return tonumber(pre) end
  if now < on_sale then return nil end
  local joined = get('joined')
  redis.call('HSET', st, 'prequeue', s(joined), 'last_tick', s(on_sale))
  return joined
end
-- The batch a position was admitted in, while its turn lasts (the ticker
-- prunes ended batches, but a request may come before it does).
local function batch_of(position, now, turn_ms)
  local r = redis.call('ZRANGEBYSCORE', bz, position, '+inf', 'LIMIT', 0, 1)
  if #r == 0 then return nil end
  local b = batch(r[1])
  if not b or position <= b.upto - b.count or b.at + turn_ms <= now then return nil end
  return r[1], b
end
";

/// ARGV: fan, now, on_sale. Returns {slot, new (0/1), prequeue or -1,
/// serving, first sample, last sample}: enough for the node to tell a
/// waiting fan's status without a second call.
const JOIN: &str = r"
local pre = freeze(tonumber(ARGV[2]), tonumber(ARGV[3]))
local slot = redis.call('HGET', fans, ARGV[1])
local new = 0
if slot then
  slot = tonumber(slot)
else
  slot = redis.call('HINCRBY', st, 'joined', 1) - 1
  redis.call('HSET', fans, ARGV[1], s(slot))
  new = 1
end
return {slot, new, pre or -1, get('serving'), redis.call('LINDEX', samples, 0) or '', redis.call('LINDEX', samples, -1) or ''}
";

/// ARGV: fan, slot, position (0 while the node does not know the draw),
/// now, on_sale, claim_ms, claim_ms + shop_ms, the pre-queue size the
/// position was computed with (-1 if none). A pre-queue that differs (the
/// room was lost and drawn afresh) is sent back, as when none was known.
const STATUS: &str = r"
local now, claim_ms, turn_ms = tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[7])
if redis.call('HGET', fans, ARGV[1]) ~= ARGV[2] then return {'none'} end
local pre = freeze(now, tonumber(ARGV[5]))
if not pre then return {'prequeue'} end
local position = tonumber(ARGV[3])
if position <= 0 or tonumber(ARGV[8]) ~= pre then return {'drawn', s(pre)} end
local serving = get('serving')
if position > serving then
  return {'waiting', s(serving), redis.call('LINDEX', samples, 0) or '', redis.call('LINDEX', samples, -1) or ''}
end
local seq, b = batch_of(position, now, turn_ms)
if not b or redis.call('GETBIT', finished, ARGV[3]) == 1 then return {'expired'} end
if redis.call('GETBIT', claimed, ARGV[3]) == 1 then return {'admitted', s(b.at)} end
if b.released == 1 or b.at + claim_ms <= now then return {'expired'} end
redis.call('SETBIT', claimed, ARGV[3], 1)
b.claimed = b.claimed + 1
put(seq, b)
return {'admitted', s(b.at)}
";

/// ARGV: fan. Returns {slot or -1, prequeue or -1}.
const SLOT: &str = r"
local slot = redis.call('HGET', fans, ARGV[1])
local pre = redis.call('HGET', st, 'prequeue')
return {tonumber(slot or '-1'), tonumber(pre or '-1')}
";

/// ARGV: position, now, claim_ms + shop_ms. Frees a claimed turn once,
/// while it lasts.
const FINISH: &str = r"
local seq, b = batch_of(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
if not b or redis.call('GETBIT', claimed, ARGV[1]) == 0 or redis.call('GETBIT', finished, ARGV[1]) == 1 then
  return 0
end
redis.call('SETBIT', finished, ARGV[1], 1)
b.finished = b.finished + 1
put(seq, b)
redis.call('HINCRBY', st, 'active', -1)
return 1
";

/// ARGV: position.
const IS_FINISHED: &str = r"
return redis.call('GETBIT', finished, ARGV[1])
";

/// Returns {joined, serving, active, first sample, last sample}.
const OVERVIEW: &str = r"
return {s(get('joined')), s(get('serving')), s(get('active')),
  redis.call('LINDEX', samples, 0) or '', redis.call('LINDEX', samples, -1) or '',
  redis.call('HGET', st, 'prequeue') or ''}
";

/// ARGV: node, now, ttl_ms. Returns the fencing token, or '' while another
/// node's lease lasts. The lease lasts by the callers' clocks, and also
/// expires in Redis after twice its time unrenewed, so a holder whose clock
/// ran ahead cannot keep it for longer than that after it dies.
const LEASE: &str = r"
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local owner = redis.call('HGET', lease, 'owner')
local held_until = tonumber(redis.call('HGET', lease, 'until') or '0')
if owner and held_until > now then
  if owner ~= ARGV[1] then return '' end
  redis.call('HSET', lease, 'until', s(now + ttl))
  redis.call('PEXPIRE', lease, s(2 * ttl))
  return redis.call('HGET', lease, 'token')
end
local token = redis.call('HINCRBY', st, 'token_seq', 1)
redis.call('HSET', lease, 'owner', ARGV[1], 'token', s(token), 'until', s(now + ttl))
redis.call('PEXPIRE', lease, s(2 * ttl))
return s(token)
";

/// ARGV: node.
const LET_GO: &str = r"
if redis.call('HGET', lease, 'owner') == ARGV[1] then redis.call('DEL', lease) end
return 0
";

/// ARGV: token, now, rate_per_minute, max_active, on_sale, claim_ms,
/// shop_ms. Returns -1 for a token that is not the lease's, else how many
/// fans it admitted.
const ADVANCE: &str = r"
local token, now, rate, max_active = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local claim_ms, shop_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
if redis.call('HGET', lease, 'token') ~= token or tonumber(token) < get('fence') then return -1 end
redis.call('HSET', st, 'fence', token)
if not freeze(now, tonumber(ARGV[5])) then return 0 end
local active, unreleased, head, nxt = get('active'), get('unreleased'), get('head'), get('next')
-- Batches whose claim window passed give back their unclaimed places;
-- batches whose shopping time passed give back the rest.
-- A batch whose record is missing (lost keys) is passed over.
while unreleased < nxt do
  local b = batch(unreleased)
  if b and b.at + claim_ms > now then break end
  if b then
    b.released = 1
    put(unreleased, b)
    active = active - (b.count - b.claimed)
  end
  unreleased = unreleased + 1
end
while head < unreleased do
  local b = batch(head)
  if b and b.at + claim_ms + shop_ms > now then break end
  if b then active = active - (b.claimed - b.finished) end
  redis.call('HDEL', bh, s(head))
  redis.call('ZREM', bz, s(head))
  head = head + 1
end
-- Only fans of live batches are active: with none, nobody is (this also
-- heals a count left behind by lost batch records).
if head >= nxt then active = 0 end
-- Exact credit in 1/60,000ths of an admission; see Room::advance.
local last = get('last_tick')
local elapsed = math.max(now - last, 0)
if now > last then redis.call('HSET', st, 'last_tick', s(now)) end
local credit = get('credit') + elapsed * rate
local earned = math.floor(credit / 60000)
local serving, joined = get('serving'), get('joined')
local waiting = joined - serving
local admit = math.min(earned, math.max(max_active - active, 0), waiting)
local rest = credit - admit * 60000
if admit == waiting and admit < earned then credit = rest % 60000 else credit = math.min(rest, max_active * 60000) end
if admit > 0 then
  serving = serving + admit
  active = active + admit
  put(nxt, {upto = serving, count = admit, at = now, claimed = 0, finished = 0, released = 0})
  redis.call('ZADD', bz, serving, s(nxt))
  nxt = nxt + 1
end
local newest = redis.call('LINDEX', samples, -1)
if not newest or now - tonumber(string.match(newest, '^(%d+)')) >= 1000 then
  redis.call('RPUSH', samples, s(now) .. ':' .. s(serving))
end
while redis.call('LLEN', samples) > 2 do
  local second = redis.call('LINDEX', samples, 1)
  if tonumber(string.match(second, '^(%d+)')) > now - 300000 then break end
  redis.call('LPOP', samples)
end
redis.call('HSET', st, 'serving', s(serving), 'active', s(active), 'credit', s(credit),
  'unreleased', s(unreleased), 'head', s(head), 'next', s(nxt))
return admit
";

/// How the Redis rooms share the ticking.
#[derive(Clone, Copy, Debug)]
pub struct TickerSettings {
    /// How long a ticker lease lasts without renewal: how soon another node
    /// takes over from one that died.
    pub lease: Duration,
    /// Requests advance a room at most this often per node (by the clock
    /// they are given); the background ticker covers quiet times.
    pub min_interval: Duration,
}

impl Default for TickerSettings {
    fn default() -> Self {
        TickerSettings { lease: Duration::from_secs(5), min_interval: Duration::from_millis(100) }
    }
}

/// What this node remembers of a room: the frozen pre-queue size (it never
/// changes), when it last ticked it, and the spec for the background ticker.
struct Local {
    prequeue: Option<u32>,
    last_tick: Option<Timestamp>,
    /// When a request last asked about the room.
    seen: Timestamp,
    spec: RoomSpec,
}

/// A room nobody on this node asked about for this long is forgotten (and
/// its lease let go); the next request brings it back.
const FORGET_AFTER: Duration = Duration::from_secs(600);

pub struct RedisRooms {
    redis: RedisConn,
    prefix: String,
    /// This node's name in leases: random per process.
    node: String,
    settings: TickerSettings,
    local: Mutex<HashMap<EventId, Local>>,
    join: Script,
    status: Script,
    slot: Script,
    finish: Script,
    is_finished: Script,
    overview: Script,
    lease: Script,
    let_go: Script,
    advance: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

fn int(v: &Value) -> anyhow::Result<i64> {
    Ok(redis::from_redis_value(v)?)
}

/// A `"<millis>:<serving>"` sample, if there is one.
fn sample(v: Option<&Value>) -> Option<(Timestamp, u32)> {
    let text: String = redis::from_redis_value(v?).ok()?;
    let (t, n) = text.split_once(':')?;
    Some((Timestamp::from_millis(t.parse().ok()?), n.parse().ok()?))
}

/// A waiting fan's status, from `serving` and the rate samples.
fn waiting(
    room: &RoomSpec,
    position: u32,
    serving: u32,
    first: Option<(Timestamp, u32)>,
    last: Option<(Timestamp, u32)>,
) -> Status {
    let configured = room.settings.rate_per_minute;
    let ahead = position.saturating_sub(serving);
    let estimated_wait = estimated_wait(ahead, measured_rate(first, last, configured));
    Status::Waiting { position, ahead, estimated_wait }
}

impl RedisRooms {
    pub fn new(redis: RedisConn, prefix: &str, settings: TickerSettings) -> RedisRooms {
        RedisRooms {
            redis,
            prefix: prefix.to_owned(),
            node: hex::encode(&crate::domain::customer::random_secret()[..12]),
            settings,
            local: Mutex::new(HashMap::new()),
            join: script(JOIN),
            status: script(STATUS),
            slot: script(SLOT),
            finish: script(FINISH),
            is_finished: script(IS_FINISHED),
            overview: script(OVERVIEW),
            lease: script(LEASE),
            let_go: script(LET_GO),
            advance: script(ADVANCE),
        }
    }

    fn keys(&self, event: &EventId) -> Vec<String> {
        ["state", "fans", "bz", "bh", "claimed", "finished", "samples", "lease"]
            .iter()
            .map(|k| format!("{}{{q:{event}}}:{k}", self.prefix))
            .collect()
    }

    async fn run(&self, script: &Script, room: &RoomSpec, args: &[&str]) -> anyhow::Result<Value> {
        self.redis.run(script, &self.keys(&room.event), args).await
    }

    /// Remembers the room (for the background ticker) and returns what this
    /// node knows of its pre-queue.
    fn remember(&self, room: &RoomSpec, now: Timestamp) -> Option<u32> {
        let mut local = self.local.lock();
        let l = local.entry(room.event.clone()).or_insert(Local {
            prequeue: None,
            last_tick: None,
            seen: now,
            spec: room.clone(),
        });
        l.spec = room.clone();
        l.seen = l.seen.max(now);
        l.prequeue
    }

    fn learn_prequeue(&self, room: &RoomSpec, prequeue: i64) {
        if let (Ok(p), Some(l)) = (u32::try_from(prequeue), self.local.lock().get_mut(&room.event)) {
            l.prequeue = Some(p);
        }
    }

    /// Advances the room if this node has not in the last `min_interval`.
    /// A failure is logged, not passed on: the request reads the room as
    /// it is, and the next tick tries again.
    async fn tick_now_and_then(&self, room: &RoomSpec, now: Timestamp) {
        {
            let mut local = self.local.lock();
            let Some(l) = local.get_mut(&room.event) else { return };
            let due = l
                .last_tick
                .is_none_or(|t| now.as_millis() - t.as_millis() >= self.settings.min_interval.as_millis() as i64);
            if !due {
                return;
            }
            l.last_tick = Some(now);
        }
        if let Err(e) = self.tick(room, now).await {
            tracing::warn!(event = %room.event, error = format!("{e:#}"), "could not advance a waiting room");
        }
    }

    /// Forgets a room (its sale is over), letting go of its lease.
    pub async fn forget(&self, event: &EventId) {
        let spec = self.local.lock().remove(event).map(|l| l.spec);
        if let Some(spec) = spec {
            let _ = self.run(&self.let_go, &spec, &[&self.node]).await;
        }
    }
}

#[async_trait]
impl WaitingRooms for RedisRooms {
    async fn join(&self, room: &RoomSpec, fan: u64, now: Timestamp) -> anyhow::Result<(u32, bool, Status)> {
        self.remember(room, now);
        self.tick_now_and_then(room, now).await;
        let (fan_s, now_ms, on_sale) =
            (fan.to_string(), now.as_millis().to_string(), room.settings.on_sale_at.as_millis().to_string());
        let v: Vec<Value> = redis::from_redis_value(&self.run(&self.join, room, &[&fan_s, &now_ms, &on_sale]).await?)?;
        let [slot, new, pre, serving, first, last] = v.as_slice() else { anyhow::bail!("unexpected join reply {v:?}") };
        let (slot, new, pre, serving) = (u32::try_from(int(slot)?)?, int(new)? == 1, int(pre)?, int(serving)?);
        self.learn_prequeue(room, pre);
        // Before the draw, or queued FIFO behind the fans being served, the
        // reply says it all; anything else (a drawn place, a turn that may
        // have come) asks the status script.
        let status = match u32::try_from(pre) {
            Err(_) => Status::PreQueue { on_sale_at: room.settings.on_sale_at },
            Ok(pre) if slot >= pre && i64::from(slot) + 1 > serving => {
                waiting(room, slot + 1, u32::try_from(serving)?, sample(Some(first)), sample(Some(last)))
            }
            Ok(_) => {
                let status = self.status(room, fan, slot, now).await?;
                status.ok_or_else(|| anyhow::anyhow!("a joined fan has no entry"))?
            }
        };
        Ok((slot, new, status))
    }

    async fn status(&self, room: &RoomSpec, fan: u64, slot: u32, now: Timestamp) -> anyhow::Result<Option<Status>> {
        let mut prequeue = self.remember(room, now);
        self.tick_now_and_then(room, now).await;
        let s = room.settings;
        let (fan, slot_s, now_ms) = (fan.to_string(), slot.to_string(), now.as_millis().to_string());
        let (on_sale, claim_ms) = (s.on_sale_at.as_millis().to_string(), s.claim_window.as_millis().to_string());
        let turn_ms = (s.claim_window + s.shopping_time).as_millis().to_string();
        // At most two rounds: the second once this node learns the draw.
        for _ in 0..2 {
            let position = prequeue.map_or(0, |p| position_of(&room.key, p, slot));
            let (pos, pre) = (position.to_string(), prequeue.map_or(-1, i64::from).to_string());
            let args = [fan.as_str(), &slot_s, &pos, &now_ms, &on_sale, &claim_ms, &turn_ms, &pre];
            let v: Vec<Value> = redis::from_redis_value(&self.run(&self.status, room, &args).await?)?;
            let what: String = redis::from_redis_value(v.first().unwrap_or(&Value::Nil))?;
            return Ok(Some(match what.as_str() {
                "none" => return Ok(None),
                "prequeue" => Status::PreQueue { on_sale_at: s.on_sale_at },
                "drawn" => {
                    let p: String = redis::from_redis_value(v.get(1).unwrap_or(&Value::Nil))?;
                    self.learn_prequeue(room, p.parse()?);
                    prequeue = Some(p.parse()?);
                    continue;
                }
                "waiting" => {
                    let serving: String = redis::from_redis_value(v.get(1).unwrap_or(&Value::Nil))?;
                    waiting(room, position, serving.parse()?, sample(v.get(2)), sample(v.get(3)))
                }
                "admitted" => {
                    let at: String = redis::from_redis_value(v.get(1).unwrap_or(&Value::Nil))?;
                    let until = Timestamp::from_millis(at.parse()?).plus(s.claim_window).plus(s.shopping_time);
                    Status::Admitted { position, until }
                }
                "expired" => Status::Expired { position },
                other => anyhow::bail!("unexpected status reply {other:?}"),
            }));
        }
        anyhow::bail!("the room's draw could not be read")
    }

    async fn finish(&self, room: &RoomSpec, fan: u64, now: Timestamp) -> anyhow::Result<()> {
        let v: Vec<i64> = redis::from_redis_value(&self.run(&self.slot, room, &[&fan.to_string()]).await?)?;
        let (Some(slot), Some(pre)) =
            (v.first().and_then(|s| u32::try_from(*s).ok()), v.get(1).and_then(|p| u32::try_from(*p).ok()))
        else {
            return Ok(());
        };
        let position = position_of(&room.key, pre, slot).to_string();
        let turn_ms = (room.settings.claim_window + room.settings.shopping_time).as_millis().to_string();
        self.run(&self.finish, room, &[&position, &now.as_millis().to_string(), &turn_ms]).await.map(|_| ())
    }

    async fn is_finished(&self, room: &RoomSpec, position: u32) -> anyhow::Result<bool> {
        Ok(int(&self.run(&self.is_finished, room, &[&position.to_string()]).await?)? == 1)
    }

    async fn overview(&self, room: &RoomSpec, now: Timestamp) -> anyhow::Result<(RoomCounts, f64)> {
        self.remember(room, now);
        self.tick_now_and_then(room, now).await;
        let v: Vec<Value> = redis::from_redis_value(&self.run(&self.overview, room, &[]).await?)?;
        let n = |i: usize| -> anyhow::Result<u32> {
            let text: String = redis::from_redis_value(v.get(i).unwrap_or(&Value::Nil))?;
            Ok(text.parse()?)
        };
        let (joined, serving, active) = (n(0)?, n(1)?, n(2)?);
        let drawn = n(5).ok(); // '' until the on-sale froze the pre-queue
        let rate = measured_rate(sample(v.get(3)), sample(v.get(4)), room.settings.rate_per_minute);
        Ok((RoomCounts { joined, drawn, serving, active, waiting: joined.saturating_sub(serving) }, rate))
    }

    async fn tick(&self, room: &RoomSpec, now: Timestamp) -> anyhow::Result<bool> {
        // Known to this node from now on, so stopping lets the lease go.
        self.local.lock().entry(room.event.clone()).or_insert_with(|| Local {
            prequeue: None,
            last_tick: None,
            seen: now,
            spec: room.clone(),
        });
        let (now_ms, ttl) = (now.as_millis().to_string(), self.settings.lease.as_millis().to_string());
        let token: String = redis::from_redis_value(&self.run(&self.lease, room, &[&self.node, &now_ms, &ttl]).await?)?;
        if token.is_empty() {
            return Ok(false); // another node ticks this room
        }
        let s = room.settings;
        let args = [
            token,
            now_ms,
            s.rate_per_minute.to_string(),
            s.max_active.to_string(),
            s.on_sale_at.as_millis().to_string(),
            s.claim_window.as_millis().to_string(),
            s.shopping_time.as_millis().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let admitted = int(&self.run(&self.advance, room, &args).await?)?;
        if admitted < 0 {
            return Ok(false);
        }
        metrics::counter!("boxoffice_queue_ticks_total").increment(1);
        metrics::counter!("boxoffice_queue_admitted_total").increment(admitted as u64);
        Ok(true)
    }

    async fn tick_all(&self, now: Timestamp) -> anyhow::Result<()> {
        let forget_before = now.as_millis() - FORGET_AFTER.as_millis() as i64;
        let (live, stale): (Vec<_>, Vec<_>) = self
            .local
            .lock()
            .values()
            .map(|l| (l.spec.clone(), l.seen))
            .partition(|(_, seen)| seen.as_millis() >= forget_before);
        for (spec, _) in stale {
            self.forget(&spec.event).await;
        }
        // One room failing does not hold up the others.
        let mut failed = Vec::new();
        for (spec, _) in live {
            if let Err(e) = self.tick(&spec, now).await {
                failed.push(format!("{}: {e:#}", spec.event));
            }
        }
        match failed.as_slice() {
            [] => Ok(()),
            _ => anyhow::bail!("could not advance {} room(s): {}", failed.len(), failed.join("; ")),
        }
    }

    async fn stop(&self) {
        let events: Vec<EventId> = self.local.lock().keys().cloned().collect();
        for event in events {
            self.forget(&event).await;
        }
    }
}
