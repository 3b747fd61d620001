//! Traffic control in front of every `/v1` route: GCRA rate limits per
//! client IP and per customer, then a global in-flight limit that sheds
//! excess load at once with 503 `overloaded`, keeping a reserve that only
//! checkout and payment traffic may use, so fans who are paying keep
//! working while browsing and queue joins are shed.
//!
//! Rate limits are governor's in-process GCRA on one node. Scaled out, they
//! are one GCRA per client across every node: a Lua script in Redis that
//! reads the time from Redis itself (`TIME`), so nodes' clocks do not
//! matter. While Redis does not answer, each node falls back to its own
//! governor limit.
//!
//! "Per customer" is per person: the limit is keyed by the buyer's email
//! (what purchase limits count by), so signing in many times buys no extra
//! budget. A token that names no session is limited by its own hash.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use redis::Script;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::AppState;
use crate::accelerators::redis_conn::RedisConn;
use crate::domain::customer::TokenHash;
use crate::store::Customer;

/// Limits; a rate of 0 turns that limit off. In-flight limits are per
/// node; rate limits are per node embedded and cluster-wide on Redis.
#[derive(Clone, Copy, Debug)]
pub struct TrafficSettings {
    pub max_in_flight: usize,
    /// Of `max_in_flight`, how many only checkout and payment requests may use.
    pub reserved_in_flight: usize,
    pub per_ip_per_second: u32,
    pub per_ip_burst: u32,
    pub per_customer_per_second: u32,
    pub per_customer_burst: u32,
    /// Take the client address from `X-Forwarded-For` (behind a proxy you trust).
    pub trust_forwarded_for: bool,
}

impl Default for TrafficSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 4096,
            reserved_in_flight: 512,
            per_ip_per_second: 0,
            per_ip_burst: 0,
            per_customer_per_second: 0,
            per_customer_burst: 0,
            trust_forwarded_for: false,
        }
    }
}

pub struct Traffic {
    general: Semaphore,
    reserved: Semaphore,
    per_ip: Option<Limit<IpAddr>>,
    per_customer: Option<Limit<CustomerKey>>,
    trust_forwarded_for: bool,
}

/// GCRA in Redis. KEYS[1]: the client's key; ARGV: the emission interval
/// and the burst tolerance, in microseconds. Returns 0 when the request may
/// go, else how many microseconds until one may. The time is Redis's own.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
if tat - tolerance > now then return tat - tolerance - now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return 0
";

/// One rate limit: cluster-wide in Redis when there is one, else (and
/// while Redis does not answer) this node's own.
struct Limit<K: std::hash::Hash + Eq + Clone> {
    scope: &'static str,
    local: DefaultKeyedRateLimiter<K>,
    shared: Option<Shared>,
}

struct Shared {
    redis: RedisConn,
    script: Script,
    prefix: String,
    interval_us: String,
    tolerance_us: String,
}

impl<K: std::hash::Hash + Eq + Clone + std::fmt::Display> Limit<K> {
    fn new(scope: &'static str, per_second: u32, burst: u32, redis: Option<&(RedisConn, String)>) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        let interval_us = 1_000_000 / u64::from(rate.get());
        let shared = redis.map(|(redis, prefix)| Shared {
            redis: redis.clone(),
            script: Script::new(GCRA),
            prefix: format!("{prefix}rl:{scope}:"),
            interval_us: interval_us.max(1).to_string(),
            tolerance_us: (interval_us * u64::from(burst.get() - 1)).to_string(),
        });
        Some(Limit { scope, local: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)), shared })
    }

    /// `Err(wait)` when the client is past its rate.
    async fn check(&self, key: &K) -> Result<(), Duration> {
        if let Some(s) = &self.shared {
            let keys = [format!("{}{key}", s.prefix)];
            let answer = s.redis.run(&s.script, &keys, &[&s.interval_us, &s.tolerance_us]).await;
            if let Ok(wait) = answer.and_then(|v| Ok(redis::from_redis_value::<i64>(&v)?)) {
                return if wait > 0 { Err(Duration::from_micros(wait as u64)) } else { Ok(()) };
            }
        }
        self.local.check_key(key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn tidy(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
    }
}

/// What the per-customer limit counts by: the buyer (see the module docs),
/// or an unknown token's hash. Hex, as a Redis key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CustomerKey([u8; 16]);

impl std::fmt::Display for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl CustomerKey {
    fn of(what: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(what);
        let mut key = [0; 16];
        key.copy_from_slice(&d[..16]);
        CustomerKey(key)
    }
}

impl Traffic {
    /// `shared`: the Redis connection and key prefix for cluster-wide rate
    /// limits, when scaled out.
    pub fn new(s: &TrafficSettings, shared: Option<(RedisConn, String)>) -> Traffic {
        let reserved = s.reserved_in_flight.min(s.max_in_flight);
        Traffic {
            general: Semaphore::new(s.max_in_flight - reserved),
            reserved: Semaphore::new(reserved),
            per_ip: Limit::new("ip", s.per_ip_per_second, s.per_ip_burst, shared.as_ref()),
            per_customer: Limit::new("customer", s.per_customer_per_second, s.per_customer_burst, shared.as_ref()),
            trust_forwarded_for: s.trust_forwarded_for,
        }
    }

    /// Forgets rate-limit state of clients not seen lately (run periodically).
    pub fn tidy(&self) {
        if let Some(l) = &self.per_ip {
            l.tidy();
        }
        if let Some(l) = &self.per_customer {
            l.tidy();
        }
    }

    fn client_ip(&self, req: &Request) -> Option<IpAddr> {
        if self.trust_forwarded_for {
            // The right-most entry is the one our proxy appended; entries to
            // its left come from the client and can be anything.
            let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
            if let Some(ip) = forwarded.and_then(|v| v.rsplit(',').next()).and_then(|ip| ip.trim().parse().ok()) {
                return Some(ip);
            }
        }
        req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
    }
}

/// Checkout and payment routes, which may use the reserve: paying
/// (`POST …/holds/{id}/checkout`), a fan's orders, and check-in. Only for
/// requests [`vouched_for`]: anonymous ones and made-up tokens never do.
fn is_payment(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    // Inside the nested `/v1` router the prefix is already stripped.
    let path = path.strip_prefix("/v1").unwrap_or(path);
    (method == Method::POST && path.starts_with("/holds/") && path.ends_with("/checkout"))
        || path.starts_with("/orders/")
        || (method == Method::POST && path == "/checkins")
}

fn rate_limited<K: std::hash::Hash + Eq + Clone>(wait: Duration, limit: &Limit<K>) -> Response {
    let scope = limit.scope;
    metrics::counter!("boxoffice_rate_limited_total", "scope" => scope).increment(1);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; slow down")
        .retry_after(secs.clamp(1, 3600) as u32)
        .into_response()
}

/// The middleware: an in-flight permit held until the response is ready,
/// then the rate limits. Shedding comes first, so an overloaded node
/// refuses at once, before any rate-limit work (a Redis round trip when
/// scaled out), and a shed request spends none of the client's budget.
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let traffic = &state.traffic;
    let permit = match traffic.general.try_acquire() {
        Ok(p) => Some(p),
        Err(_) if is_payment(req.method(), req.uri().path()) && vouched_for(&state, &mut req).await => {
            traffic.reserved.try_acquire().ok()
        }
        Err(_) => None,
    };
    let Some(_permit) = permit else {
        metrics::counter!("boxoffice_shed_total").increment(1);
        return ApiError::unavailable("overloaded", "the service is at capacity; retry shortly").into_response();
    };
    if let (Some(limit), Some(ip)) = (&traffic.per_ip, traffic.client_ip(&req)) {
        if let Err(wait) = limit.check(&ip).await {
            return rate_limited(wait, limit);
        }
    }
    if let Some(limit) = &traffic.per_customer {
        if let Some(hash) = bearer_hash(&req) {
            let admin = bool::from(hash.0.ct_eq(&state.admin_token_hash.0));
            if !admin {
                let key = match signed_in(&state, &mut req, hash).await {
                    Some(customer) => CustomerKey::of(customer.email.as_str().as_bytes()),
                    None => CustomerKey::of(&hash.0),
                };
                if let Err(wait) = limit.check(&key).await {
                    return rate_limited(wait, limit);
                }
            }
            // Hashed once: the auth extractor reuses it.
            req.extensions_mut().insert(hash);
        }
    }
    next.run(req).await
}

/// The customer whose live session the request's token (hashing to `hash`)
/// names: as already resolved for this request, else through the session
/// cache and the store, and then handed on to the auth extractor so it is
/// resolved once per request.
async fn signed_in(state: &AppState, req: &mut Request, hash: TokenHash) -> Option<Customer> {
    if let Some(super::extract::SignedIn(c)) = req.extensions().get::<super::extract::SignedIn>() {
        return Some(c.clone());
    }
    let customer = super::extract::session_customer(state, hash).await.ok().flatten()?;
    req.extensions_mut().insert(super::extract::SignedIn(customer.clone()));
    Some(customer)
}

/// Whether the request's bearer token is one the reserve is kept for: a
/// live customer session, or the admin or scanner token. Asked only when
/// the general capacity is gone, so a flood of made-up tokens cannot take
/// the reserve from paying fans. The session it resolves is handed on to
/// the rate limit and the auth extractor.
async fn vouched_for(state: &AppState, req: &mut Request) -> bool {
    let Some(hash) = bearer_hash(req) else { return false };
    super::extract::is_operator(state, hash) || signed_in(state, req, hash).await.is_some()
}

/// The hash of the request's bearer token: the one the guard already made,
/// or a fresh one; `None` without a usable token (none, or over 256 bytes).
fn bearer_hash(req: &Request) -> Option<TokenHash> {
    if let Some(hash) = req.extensions().get::<TokenHash>() {
        return Some(*hash);
    }
    let token = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    super::extract::bearer_token(token).filter(|t| t.len() <= 256).map(TokenHash::of)
}

/// Keeps the rate limiters' memory bounded.
pub async fn tidy_every(traffic: Arc<Traffic>, period: Duration, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => traffic.tidy(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_routes_are_the_ones_that_may_use_the_reserve() {
        use axum::http::Method;
        assert!(is_payment(&Method::POST, "/v1/holds/hld_1/checkout"));
        assert!(is_payment(&Method::GET, "/v1/orders/ord_1"));
        assert!(is_payment(&Method::POST, "/v1/checkins"));
        assert!(!is_payment(&Method::GET, "/v1/holds/hld_1/checkout"));
        assert!(!is_payment(&Method::POST, "/v1/events/evt_1/queue"));
        assert!(!is_payment(&Method::POST, "/v1/events/evt_1/holds"));
        assert!(is_payment(&Method::POST, "/holds/hld_1/checkout"), "as the nested router sees it");
    }

    #[test]
    fn the_reserve_is_part_of_the_total() {
        let t = Traffic::new(&TrafficSettings { max_in_flight: 10, reserved_in_flight: 3, ..Default::default() }, None);
        assert_eq!((t.general.available_permits(), t.reserved.available_permits()), (7, 3));
        let t = Traffic::new(&TrafficSettings { max_in_flight: 2, reserved_in_flight: 5, ..Default::default() }, None);
        assert_eq!((t.general.available_permits(), t.reserved.available_permits()), (0, 2));
    }
}
