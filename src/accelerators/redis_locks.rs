//! The scale-out seat-lock fast path on Redis (standalone or Cluster).
//!
//! Each seat of an event is one key, `<prefix>{<event_id>}:seat:<seat_id>`,
//! whose value is the id of the hold that has it. The `{event_id}` hash tag
//! puts every key of an event in one Cluster slot, so multi-seat scripts
//! work there too.
//!
//! * `try_lock` is a Lua script: if any seat has another owner it returns
//!   their positions and writes nothing; otherwise it `SET … PX`s them all.
//! * `release` is compare-and-delete: only keys still holding our id go.
//!
//! Redis is an accelerator: while it is degraded (see [`RedisConn`]) every
//! call fails fast and the booking service goes straight to the database.

use async_trait::async_trait;
use redis::Script;

use super::redis_conn::RedisConn;
pub use super::redis_conn::RedisSettings;
use super::seat_locks::{LockOutcome, LockStatus, SeatLocks};
use crate::domain::ids::{EventId, HoldId, SeatId};
use crate::domain::time::Timestamp;

const TRY_LOCK: &str = r"
local taken = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner and owner ~= ARGV[1] then taken[#taken + 1] = i end
end
if #taken > 0 then return taken end
for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
return taken
";

const SET: &str = r"
for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
return 0
";

/// Compare-and-delete; `ARGV[i]` is the owner that `KEYS[i]` must still have.
const RELEASE: &str = r"
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then n = n + redis.call('DEL', key) end
end
return n
";

pub struct RedisSeatLocks {
    redis: RedisConn,
    prefix: String,
    try_lock: Script,
    set: Script,
    release: Script,
}

impl RedisSeatLocks {
    /// Seat locks on `redis`; `prefix` namespaces every key (tests use
    /// their own).
    pub fn new(redis: RedisConn, prefix: &str) -> RedisSeatLocks {
        RedisSeatLocks {
            redis,
            prefix: prefix.to_owned(),
            try_lock: Script::new(TRY_LOCK),
            set: Script::new(SET),
            release: Script::new(RELEASE),
        }
    }

    /// Connects to one Redis or a Cluster (see [`RedisConn::connect`]).
    pub async fn connect(urls: &[String], prefix: &str, settings: RedisSettings) -> anyhow::Result<RedisSeatLocks> {
        Ok(Self::new(RedisConn::connect(urls, settings).await?, prefix))
    }

    fn key(&self, event: &EventId, seat: &SeatId) -> String {
        format!("{}{{{event}}}:seat:{seat}", self.prefix)
    }

    /// The seats' keys, and the milliseconds from `now` to `until` (at
    /// least 1, as `PX` requires) as a script argument.
    fn keys_and_ttl(
        &self,
        event: &EventId,
        seats: &[SeatId],
        until: Timestamp,
        now: Timestamp,
    ) -> (Vec<String>, String) {
        let keys = seats.iter().map(|s| self.key(event, s)).collect();
        (keys, (until.as_millis() - now.as_millis()).max(1).to_string())
    }
}

#[async_trait]
impl SeatLocks for RedisSeatLocks {
    async fn try_lock(
        &self,
        event: &EventId,
        seats: &[SeatId],
        owner: &HoldId,
        until: Timestamp,
        now: Timestamp,
    ) -> anyhow::Result<LockOutcome> {
        let (keys, ttl) = self.keys_and_ttl(event, seats, until, now);
        let v = self.redis.run(&self.try_lock, &keys, &[owner.as_str(), &ttl]).await?;
        let taken: Vec<i64> = redis::from_redis_value(&v)?;
        if taken.is_empty() {
            return Ok(LockOutcome::Acquired);
        }
        Ok(LockOutcome::Conflict(
            taken.into_iter().filter_map(|i| seats.get(usize::try_from(i - 1).ok()?).cloned()).collect(),
        ))
    }

    async fn set(
        &self,
        event: &EventId,
        seats: &[SeatId],
        owner: &HoldId,
        until: Timestamp,
        now: Timestamp,
    ) -> anyhow::Result<()> {
        let (keys, ttl) = self.keys_and_ttl(event, seats, until, now);
        self.redis.run(&self.set, &keys, &[owner.as_str(), &ttl]).await.map(|_| ())
    }

    async fn release_each(&self, event: &EventId, locks: &[(SeatId, HoldId)]) -> anyhow::Result<()> {
        if locks.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = locks.iter().map(|(s, _)| self.key(event, s)).collect();
        let owners: Vec<&str> = locks.iter().map(|(_, o)| o.as_str()).collect();
        self.redis.run(&self.release, &keys, &owners).await.map(|_| ())
    }

    fn status(&self) -> LockStatus {
        if self.redis.is_degraded() {
            LockStatus::Degraded
        } else {
            LockStatus::Ok
        }
    }
}
