//! The outbox relay: delivers the notifications that state changes wrote
//! into the `outbox` table in their own transactions.
//!
//! Channels (each optional, see docs/notifications.md):
//! - **webhook**: every message, as a JSON event POSTed to `webhook_url`,
//!   signed with HMAC-SHA256 (`Boxoffice-Signature: t=…,v1=…`). Any 2xx
//!   acknowledges it.
//! - **email** over SMTP (lettre) to the customer: confirmation, refund,
//!   expiry of a checkout, and a refunded late payment.
//!
//! Delivery is at least once: a row is claimed with a lease longer than a
//! batch can take, each channel is recorded as done as soon as it succeeds
//! (a retry does not send it again), every write is fenced by the claim (a
//! relay whose lease ran out cannot undo another's progress), and failures
//! are retried with exponential backoff (jittered, up to an hour), timed by
//! the injected clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::domain::ids::CustomerId;
use crate::domain::time::Clock;
use crate::store::checkout::{OutboxProgress, OutboxRow};
use crate::store::DynStore;

const WEBHOOK: &str = "webhook";
const EMAIL: &str = "email";
/// Rows claimed at once, and how long a claim keeps other relays off: longer
/// than the slowest batch (every row timing out on both channels).
const BATCH: u32 = 10;
const LEASE: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Where notifications go.
#[derive(Clone, Debug, Default)]
pub struct RelaySettings {
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// `smtp://host:port` (plain), or `smtps://…` / `smtp://…?tls=required`.
    pub smtp_url: Option<String>,
    pub email_from: String,
    /// The deadline of each webhook POST and SMTP exchange.
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayReport {
    pub delivered: usize,
    pub retried: usize,
}

#[derive(Clone)]
pub struct Relay(Arc<Inner>);

struct Inner {
    store: DynStore,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    webhook: Option<(String, Vec<u8>)>,
    mailer: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
}

impl Relay {
    pub fn new(store: DynStore, clock: Arc<dyn Clock>, s: &RelaySettings) -> anyhow::Result<Relay> {
        let webhook = match (&s.webhook_url, &s.webhook_secret) {
            (Some(url), Some(secret)) => Some((url.clone(), secret.as_bytes().to_vec())),
            (Some(_), None) => anyhow::bail!("webhook_url needs webhook_secret"),
            _ => None,
        };
        let mailer = match &s.smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?.timeout(Some(s.timeout)).build();
                let from: Mailbox = s.email_from.parse().map_err(|e| anyhow::anyhow!("email_from: {e}"))?;
                Some((transport, from))
            }
            None => None,
        };
        let http = reqwest::Client::builder().timeout(s.timeout).connect_timeout(s.timeout).build()?;
        Ok(Relay(Arc::new(Inner { store, clock, http, webhook, mailer })))
    }

    /// Delivers every due row once (successfully or not).
    pub async fn run_once(&self) -> anyhow::Result<RelayReport> {
        let mut report = RelayReport::default();
        loop {
            let rows = self.0.store.claim_outbox(self.0.clock.now(), LEASE, BATCH).await?;
            let n = rows.len();
            for row in rows {
                if self.deliver(row).await? {
                    report.delivered += 1;
                } else {
                    report.retried += 1;
                }
            }
            if n < BATCH as usize {
                return Ok(report);
            }
        }
    }

    async fn deliver(&self, row: OutboxRow) -> anyhow::Result<bool> {
        let mut done: BTreeSet<String> =
            row.done_channels.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect();
        let mut errors = Vec::new();
        let channels = [WEBHOOK, EMAIL];
        for channel in channels {
            if done.contains(channel) {
                continue;
            }
            let sent = match channel {
                WEBHOOK => match &self.0.webhook {
                    Some((url, secret)) => self.post_webhook(url, secret, &row).await,
                    None => continue,
                },
                _ => match &self.0.mailer {
                    Some((mailer, from)) => self.send_email(mailer, from, &row).await,
                    None => continue,
                },
            };
            match sent {
                Ok(()) => {
                    done.insert(channel.into());
                    // Recorded at once, so a later failure never re-sends it.
                    let progress = OutboxProgress {
                        done_channels: join(&done),
                        delivered: false,
                        next_attempt_at: self.0.clock.now().plus(LEASE),
                        last_error: None,
                    };
                    if !self.0.store.outbox_progress(row.id, row.attempts, progress, self.0.clock.now()).await? {
                        // Another relay took the row over after our lease ran out.
                        return Ok(false);
                    }
                }
                Err(e) => errors.push(format!("{channel}: {e:#}")),
            }
        }
        let now = self.0.clock.now();
        let delivered = errors.is_empty();
        if !delivered {
            tracing::warn!(id = row.id, topic = row.topic, attempts = row.attempts, errors = ?errors, "notification not delivered; will retry");
        }
        metrics::counter!("boxoffice_outbox_deliveries_total", "outcome" => if delivered { "delivered" } else { "retry" })
            .increment(1);
        let progress = OutboxProgress {
            done_channels: join(&done),
            delivered,
            next_attempt_at: now.plus(backoff(row.attempts)),
            last_error: (!delivered).then(|| errors.join("; ")),
        };
        Ok(self.0.store.outbox_progress(row.id, row.attempts, progress, now).await? && delivered)
    }

    async fn post_webhook(&self, url: &str, secret: &[u8], row: &OutboxRow) -> anyhow::Result<()> {
        let data: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
        let body = json!({
            "id": format!("evt_{}", row.id),
            "type": row.topic,
            "created": row.created_at.as_millis() / 1000,
            "data": data,
        })
        .to_string();
        let t = self.0.clock.now().as_millis() / 1000;
        let response = self
            .0
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("boxoffice-event-id", format!("evt_{}", row.id))
            .header("boxoffice-signature", signature_header(secret, t, &body))
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "the receiver answered {}", response.status());
        Ok(())
    }

    async fn send_email(
        &self,
        mailer: &AsyncSmtpTransport<Tokio1Executor>,
        from: &Mailbox,
        row: &OutboxRow,
    ) -> anyhow::Result<()> {
        let data: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
        let Some((subject, text)) = email_text(&row.topic, &data) else { return Ok(()) };
        let Some(customer) = data["customer_id"].as_str().and_then(CustomerId::parse) else { return Ok(()) };
        let Some(to) = self.0.store.customer_email(&customer).await? else { return Ok(()) };
        let message = Message::builder()
            .from(from.clone())
            .to(to.parse()?)
            .subject(subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(text)?;
        mailer.send(message).await?;
        Ok(())
    }
}

fn join(channels: &BTreeSet<String>) -> String {
    channels.iter().map(String::as_str).collect::<Vec<_>>().join(",")
}

/// The subject and text of the email a topic sends, if it sends one.
fn email_text(topic: &str, data: &Value) -> Option<(String, String)> {
    let order = data["order_id"].as_str().unwrap_or("?");
    let money = format!("{} {}", data["amount"].as_i64().unwrap_or(0), data["currency"].as_str().unwrap_or(""));
    match topic {
        "order.confirmed" => Some((
            "Your tickets".into(),
            format!(
                "Your order {order} is confirmed ({money} in minor units).\n\
                 Your {} ticket(s) are in the order: GET /v1/orders/{order}\n",
                data["tickets"].as_array().map_or(0, Vec::len)
            ),
        )),
        "order.refunded" => {
            Some(("Your refund".into(), format!("Order {order} was refunded ({money} in minor units).\n")))
        }
        "order.expired" => Some((
            "Your checkout expired".into(),
            format!("The payment for order {order} did not complete in time, so the seats were released.\n"),
        )),
        "order.late_payment_refunded" => Some((
            "We refunded your payment".into(),
            format!("A payment for order {order} arrived after the order had ended; it was refunded in full.\n"),
        )),
        _ => None,
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn signature_header(secret: &[u8], t: i64, body: &str) -> String {
    format!("t={t},v1={}", hex::encode(mac(secret, t, body)))
}

fn mac(secret: &[u8], t: i64, body: &str) -> Vec<u8> {
    keyed(secret, t, body).finalize().into_bytes().to_vec()
}

/// HMAC-SHA256 over `"<t>.<body>"`.
fn keyed(secret: &[u8], t: i64, body: &str) -> Hmac<Sha256> {
    // HMAC accepts a key of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(format!("{t}.{body}").as_bytes());
    m
}

/// Checks a webhook's signature header against its body, as a receiver
/// should: the MAC in constant time, and the timestamp within `tolerance`
/// of `now` (epoch seconds) against replays.
pub fn verify_signature(secret: &[u8], header: &str, body: &str, now: i64, tolerance: Duration) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (now - t).unsigned_abs() > tolerance.as_secs() {
        return false;
    }
    keyed(secret, t, body).verify_slice(&v1).is_ok()
}

/// 2^attempts seconds, capped at an hour, with up to 50% jitter.
fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.min(12)).min(MAX_BACKOFF);
    base.mul_f64(0.5 + rand::rng().random::<f64>() * 0.5)
}

/// Runs [`Relay::run_once`] every `period` until `stop` is cancelled.
pub async fn run(relay: Relay, period: Duration, stop: CancellationToken) {
    super::every("outbox relay", period, stop, || relay.run_once()).await
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("webhook", &self.0.webhook.as_ref().map(|w| &w.0))
            .field("email", &self.0.mailer.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_does_not() {
        let header = signature_header(b"secret", 1_000, "{\"a\":1}");
        assert!(verify_signature(b"secret", &header, "{\"a\":1}", 1_010, Duration::from_secs(300)));
        assert!(!verify_signature(b"secret", &header, "{\"a\":2}", 1_010, Duration::from_secs(300)), "body");
        assert!(!verify_signature(b"other", &header, "{\"a\":1}", 1_010, Duration::from_secs(300)), "key");
        assert!(!verify_signature(b"secret", &header, "{\"a\":1}", 2_000, Duration::from_secs(300)), "replayed late");
        assert!(!verify_signature(b"secret", "nonsense", "{}", 1_000, Duration::from_secs(300)));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) <= Duration::from_secs(1));
        assert!(backoff(5) >= Duration::from_secs(16) && backoff(5) <= Duration::from_secs(32));
        assert!(backoff(40) <= MAX_BACKOFF);
    }

    #[test]
    fn only_fan_facing_topics_send_email() {
        let data = json!({"order_id": "ord_1", "amount": 3000, "currency": "USD", "tickets": ["t1", "t2"]});
        assert!(email_text("order.confirmed", &data).unwrap().1.contains("2 ticket(s)"));
        assert!(email_text("order.refunded", &data).is_some());
        assert!(email_text("ops.alert", &data).is_none());
    }
}
