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
//! Redis is an accelerator: any error or a call slower than the call
//! timeout marks it degraded; for the retry-after window calls then fail
//! fast and the booking service goes straight to the database. The next
//! call after that window tries Redis again, and the first success clears
//! the mark, so it comes back on its own after an outage.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Script, Value};

use super::seat_locks::{LockOutcome, LockStatus, SeatLocks};
use crate::domain::ids::{EventId, HoldId, SeatId};
use crate::domain::time::Timestamp;

/// How patient the fast path is with Redis.
#[derive(Clone, Copy, Debug)]
pub struct RedisSettings {
    /// The longest a call may take before Redis counts as degraded.
    pub call_timeout: Duration,
    /// After a failure, how long Redis is skipped before it is tried again.
    pub retry_after: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings { call_timeout: Duration::from_millis(250), retry_after: Duration::from_secs(1) }
    }
}

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

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How to (re)connect; the connection itself is made on first use, so a
/// node starts (degraded) even while Redis is down.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

impl Target {
    async fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1);
                Ok(Conn::Single(ConnectionManager::new_with_config(client.clone(), config).await?))
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}

pub struct RedisSeatLocks {
    target: Target,
    /// The shared connection once one has been made; requests never wait
    /// for it to be made (see [`RedisSeatLocks::connection`]).
    conn: Arc<parking_lot::RwLock<Option<Conn>>>,
    connecting: Arc<AtomicBool>,
    prefix: String,
    try_lock: Script,
    set: Script,
    release: Script,
    /// Wall-clock milliseconds until which Redis is skipped.
    degraded_until: AtomicI64,
    settings: RedisSettings,
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl RedisSeatLocks {
    /// Prepares a client for one Redis (`redis://…`) or, with several URLs,
    /// a Redis Cluster, and tries to connect. A bad URL is an error; an
    /// unreachable Redis is not: the node starts degraded and connects once
    /// Redis answers. `prefix` namespaces every key (tests use their own).
    pub async fn connect(urls: &[String], prefix: &str, settings: RedisSettings) -> anyhow::Result<RedisSeatLocks> {
        let target = match urls {
            [] => anyhow::bail!("no Redis URL"),
            [one] => Target::Single(redis::Client::open(one.as_str())?),
            many => Target::Cluster(
                redis::cluster::ClusterClientBuilder::new(many.to_vec())
                    .connection_timeout(settings.call_timeout)
                    .response_timeout(settings.call_timeout)
                    .build()?,
            ),
        };
        let locks = RedisSeatLocks {
            target,
            conn: Default::default(),
            connecting: Default::default(),
            prefix: prefix.to_owned(),
            try_lock: Script::new(TRY_LOCK),
            set: Script::new(SET),
            release: Script::new(RELEASE),
            degraded_until: AtomicI64::new(0),
            settings,
        };
        // One attempt at start, so a healthy node begins with the fast path.
        let timeout = locks.settings.call_timeout;
        match tokio::time::timeout(timeout * 4, locks.target.connect(timeout)).await {
            Ok(Ok(conn)) => *locks.conn.write() = Some(conn),
            Ok(Err(e)) => locks.mark_degraded(&e.into()),
            Err(_) => locks.mark_degraded(&anyhow::anyhow!("connecting to Redis timed out")),
        }
        Ok(locks)
    }

    /// The shared connection. Until one exists, a single background task
    /// tries to make it while calls fail fast (and go to the database), so
    /// no request ever waits on a connection attempt.
    fn connection(&self) -> anyhow::Result<Conn> {
        if let Some(c) = self.conn.read().as_ref() {
            return Ok(c.clone());
        }
        if !self.connecting.swap(true, Ordering::SeqCst) {
            let (target, slot, connecting) = (self.target.clone(), self.conn.clone(), self.connecting.clone());
            let timeout = self.settings.call_timeout;
            tokio::spawn(async move {
                if let Ok(Ok(conn)) = tokio::time::timeout(timeout * 4, target.connect(timeout)).await {
                    *slot.write() = Some(conn);
                }
                connecting.store(false, Ordering::SeqCst);
            });
        }
        anyhow::bail!("not connected to Redis yet")
    }

    fn mark_degraded(&self, e: &anyhow::Error) {
        let until = wall_ms() + (self.settings.retry_after.as_millis() as i64).max(1);
        if self.degraded_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(error = %e, "Redis failed; selling from the database alone until it answers");
        }
        metrics::gauge!("boxoffice_redis_degraded").set(1.0);
        metrics::counter!("boxoffice_redis_errors_total").increment(1);
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

    async fn run(&self, script: &Script, keys: Vec<String>, args: &[&str]) -> anyhow::Result<Value> {
        if wall_ms() < self.degraded_until.load(Ordering::Relaxed) {
            anyhow::bail!("Redis is degraded; skipping it for now");
        }
        let mut inv = script.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        let outcome = match self.connection() {
            Err(e) => Err(e),
            Ok(conn) => {
                let call = async {
                    let r: RedisResult<Value> = match conn {
                        Conn::Single(mut c) => inv.invoke_async(&mut c).await,
                        Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
                    };
                    r
                };
                let timeout = self.settings.call_timeout;
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(anyhow::Error::new(e)),
                    Err(_) => Err(anyhow::anyhow!("Redis did not answer within {timeout:?}")),
                }
            }
        };
        match &outcome {
            Ok(_) => {
                if self.degraded_until.swap(0, Ordering::Relaxed) != 0 {
                    tracing::info!("Redis answers again; the seat-lock fast path is back");
                }
                metrics::gauge!("boxoffice_redis_degraded").set(0.0);
            }
            Err(e) => self.mark_degraded(e),
        }
        outcome
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
        let v = self.run(&self.try_lock, keys, &[owner.as_str(), &ttl]).await?;
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
        self.run(&self.set, keys, &[owner.as_str(), &ttl]).await.map(|_| ())
    }

    async fn release_each(&self, event: &EventId, locks: &[(SeatId, HoldId)]) -> anyhow::Result<()> {
        if locks.is_empty() {
            return Ok(());
        }
        let keys = locks.iter().map(|(s, _)| self.key(event, s)).collect();
        let owners: Vec<&str> = locks.iter().map(|(_, o)| o.as_str()).collect();
        self.run(&self.release, keys, &owners).await.map(|_| ())
    }

    fn status(&self) -> LockStatus {
        if self.degraded_until.load(Ordering::Relaxed) != 0 {
            LockStatus::Degraded
        } else {
            LockStatus::Ok
        }
    }
}
