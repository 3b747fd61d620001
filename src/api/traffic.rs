//! Traffic control in front of every `/v1` route: GCRA rate limits per
//! client IP and per bearer token (governor), then a global in-flight limit
//! that sheds excess load at once with 503 `overloaded`, keeping a reserve
//! that only checkout and payment traffic may use, so fans who are paying
//! keep working while browsing and queue joins are shed.

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
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::error::ApiError;
use super::AppState;
use crate::domain::customer::TokenHash;

/// Limits, per node. A rate of 0 turns that limit off.
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
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_token: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
    trust_forwarded_for: bool,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_second: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
    Some(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
}

impl Traffic {
    pub fn new(s: &TrafficSettings) -> Traffic {
        let reserved = s.reserved_in_flight.min(s.max_in_flight);
        Traffic {
            general: Semaphore::new(s.max_in_flight - reserved),
            reserved: Semaphore::new(reserved),
            per_ip: limiter(s.per_ip_per_second, s.per_ip_burst),
            per_token: limiter(s.per_customer_per_second, s.per_customer_burst),
            trust_forwarded_for: s.trust_forwarded_for,
        }
    }

    /// Forgets rate-limit state of clients not seen lately (run periodically).
    pub fn tidy(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_token {
            l.retain_recent();
            l.shrink_to_fit();
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

/// Checkout and payment traffic, which may use the reserve: paying
/// (`POST …/holds/{id}/checkout`), a signed-in fan's orders, and check-in.
/// Anonymous requests never do.
fn is_payment(method: &axum::http::Method, path: &str, signed_in: bool) -> bool {
    use axum::http::Method;
    // Inside the nested `/v1` router the prefix is already stripped.
    let path = path.strip_prefix("/v1").unwrap_or(path);
    signed_in
        && ((method == Method::POST && path.starts_with("/holds/") && path.ends_with("/checkout"))
            || path.starts_with("/orders/")
            || (method == Method::POST && path == "/checkins"))
}

fn rate_limited(wait: Duration, scope: &'static str) -> Response {
    metrics::counter!("boxoffice_rate_limited_total", "scope" => scope).increment(1);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; slow down")
        .retry_after(secs.clamp(1, 3600) as u32)
        .into_response()
}

/// The middleware: rate limits, then an in-flight permit held until the
/// response is ready.
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let traffic = &state.traffic;
    if let (Some(limit), Some(ip)) = (&traffic.per_ip, traffic.client_ip(&req)) {
        if let Err(not_until) = limit.check_key(&ip) {
            return rate_limited(not_until.wait_time_from(DefaultClock::default().now()), "ip");
        }
    }
    if let Some(limit) = &traffic.per_token {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(super::extract::bearer_token);
        if let Some(token) = token.filter(|t| t.len() <= 256) {
            let hash = TokenHash::of(token);
            let admin = bool::from(hash.0.ct_eq(&state.admin_token_hash.0));
            if !admin {
                if let Err(not_until) = limit.check_key(&hash.0) {
                    return rate_limited(not_until.wait_time_from(DefaultClock::default().now()), "customer");
                }
            }
            // Hashed once: the auth extractor reuses it.
            req.extensions_mut().insert(hash);
        }
    }
    let permit = match traffic.general.try_acquire() {
        Ok(p) => Some(p),
        Err(_) if is_payment(req.method(), req.uri().path(), req.headers().contains_key(header::AUTHORIZATION)) => {
            traffic.reserved.try_acquire().ok()
        }
        Err(_) => None,
    };
    let Some(_permit) = permit else {
        metrics::counter!("boxoffice_shed_total").increment(1);
        return ApiError::unavailable("overloaded", "the service is at capacity; retry shortly").into_response();
    };
    next.run(req).await
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
        assert!(is_payment(&Method::POST, "/v1/holds/hld_1/checkout", true));
        assert!(is_payment(&Method::GET, "/v1/orders/ord_1", true));
        assert!(is_payment(&Method::POST, "/v1/checkins", true));
        assert!(!is_payment(&Method::GET, "/v1/orders/ord_1", false), "anonymous requests never use it");
        assert!(!is_payment(&Method::GET, "/v1/holds/hld_1/checkout", true));
        assert!(!is_payment(&Method::POST, "/v1/events/evt_1/queue", true));
        assert!(!is_payment(&Method::POST, "/v1/events/evt_1/holds", true));
        assert!(is_payment(&Method::POST, "/holds/hld_1/checkout", true), "as the nested router sees it");
    }

    #[test]
    fn the_reserve_is_part_of_the_total() {
        let t = Traffic::new(&TrafficSettings { max_in_flight: 10, reserved_in_flight: 3, ..Default::default() });
        assert_eq!((t.general.available_permits(), t.reserved.available_permits()), (7, 3));
        let t = Traffic::new(&TrafficSettings { max_in_flight: 2, reserved_in_flight: 5, ..Default::default() });
        assert_eq!((t.general.available_permits(), t.reserved.available_permits()), (0, 2));
    }
}
