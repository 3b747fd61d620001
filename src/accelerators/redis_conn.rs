//! One shared Redis connection (standalone or Cluster) for every scale-out
//! accelerator: the seat-lock fast path, the waiting rooms and the rate
//! limits.
//!
//! Redis is an accelerator: any error or a call slower than the call
//! timeout marks it degraded; for the retry-after window calls then fail
//! fast and each caller takes its own fallback (the booking service goes
//! straight to the database, rate limits fall back to this node's own).
//! The next call after that window tries Redis again, and the first success
//! clears the mark, so it comes back on its own after an outage.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{RedisResult, Script, Value};

/// How patient the accelerators are with Redis.
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

/// A cheaply cloned handle on the shared connection and its health.
#[derive(Clone)]
pub struct RedisConn(Arc<Inner>);

struct Inner {
    target: Target,
    /// The shared connection once one has been made; requests never wait
    /// for it to be made (see [`RedisConn::connection`]).
    conn: Arc<parking_lot::RwLock<Option<Conn>>>,
    connecting: Arc<AtomicBool>,
    /// Wall-clock milliseconds until which Redis is skipped.
    degraded_until: AtomicI64,
    settings: RedisSettings,
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl RedisConn {
    /// Prepares a client for one Redis (`redis://…`) or, with several URLs,
    /// a Redis Cluster, and tries to connect. A bad URL is an error; an
    /// unreachable Redis is not: the node starts degraded and connects once
    /// Redis answers.
    pub async fn connect(urls: &[String], settings: RedisSettings) -> anyhow::Result<RedisConn> {
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
        let conn = RedisConn(Arc::new(Inner {
            target,
            conn: Default::default(),
            connecting: Default::default(),
            degraded_until: AtomicI64::new(0),
            settings,
        }));
        // One attempt at start, so a healthy node begins with the fast paths.
        let timeout = settings.call_timeout;
        match tokio::time::timeout(timeout * 4, conn.0.target.connect(timeout)).await {
            Ok(Ok(c)) => *conn.0.conn.write() = Some(c),
            Ok(Err(e)) => conn.mark_degraded(&e.into()),
            Err(_) => conn.mark_degraded(&anyhow::anyhow!("connecting to Redis timed out")),
        }
        Ok(conn)
    }

    /// The shared connection. Until one exists, a single background task
    /// tries to make it while calls fail fast (and take their fallback), so
    /// no request ever waits on a connection attempt.
    fn connection(&self) -> anyhow::Result<Conn> {
        if let Some(c) = self.0.conn.read().as_ref() {
            return Ok(c.clone());
        }
        if !self.0.connecting.swap(true, Ordering::SeqCst) {
            let (target, slot, connecting) = (self.0.target.clone(), self.0.conn.clone(), self.0.connecting.clone());
            let timeout = self.0.settings.call_timeout;
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
        let until = wall_ms() + (self.0.settings.retry_after.as_millis() as i64).max(1);
        if self.0.degraded_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(error = %e, "Redis failed; the accelerators fall back until it answers");
        }
        metrics::gauge!("boxoffice_redis_degraded").set(1.0);
        metrics::counter!("boxoffice_redis_errors_total").increment(1);
    }

    /// Whether Redis failed lately (and has not answered since).
    pub fn is_degraded(&self) -> bool {
        self.0.degraded_until.load(Ordering::Relaxed) != 0
    }

    /// Runs `script` within the call timeout. While Redis is degraded this
    /// fails at once.
    pub async fn run(&self, script: &Script, keys: &[String], args: &[&str]) -> anyhow::Result<Value> {
        if wall_ms() < self.0.degraded_until.load(Ordering::Relaxed) {
            anyhow::bail!("Redis is degraded; skipping it for now");
        }
        let mut inv = script.prepare_invoke();
        for k in keys {
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
                let timeout = self.0.settings.call_timeout;
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(v)) => Ok(v),
                    // Redis answered, with an error (a script's, say): it is
                    // up, so this is the caller's failure alone.
                    Ok(Err(e)) if e.kind() == redis::ErrorKind::ResponseError => {
                        return Err(anyhow::Error::new(e));
                    }
                    Ok(Err(e)) => Err(anyhow::Error::new(e)),
                    Err(_) => Err(anyhow::anyhow!("Redis did not answer within {timeout:?}")),
                }
            }
        };
        match &outcome {
            Ok(_) => {
                if self.0.degraded_until.swap(0, Ordering::Relaxed) != 0 {
                    tracing::info!("Redis answers again; the fast paths are back");
                }
                metrics::gauge!("boxoffice_redis_degraded").set(0.0);
            }
            Err(e) => self.mark_degraded(e),
        }
        outcome
    }
}
