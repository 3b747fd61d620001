//! The payment gateway simulator: an HTTP server that speaks the Stripe
//! subset [`StripeClient`](super::StripeClient) uses, and reproduces every
//! failure mode boxoffice handles.
//!
//! - Test payment methods and Stripe's test card numbers choose the
//!   outcome of a payment ([`cards`]).
//! - Idempotency follows Stripe: the first response to a key is stored and
//!   replayed, 5xx included; the same key with other parameters gets 400
//!   `idempotency_error`; a request whose key is still being served gets
//!   409 `idempotency_key_in_use`. Keys are kept 24 hours.
//! - Fault knobs ([`Faults`]), set at start and changed at runtime with
//!   `PATCH /sim/config`: latency, responses that come too late, an outage
//!   window (503), a share or a count of 429s, and requests that succeed
//!   but whose response is dropped.
//! - `GET /sim/ledger` lists every capture and refund, for `audit`.
//!
//! State lives in memory: a restarted simulator has forgotten everything,
//! as a real gateway never would. It is a test and demo tool.

pub mod cards;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use self::cards::Behaviour;
use super::{Intent, IntentStatus, PaymentError};
use crate::domain::time::{Clock, Timestamp};

/// How long idempotency keys are remembered.
const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// The fault knobs. Every field is optional in `PATCH /sim/config`; the
/// ones given replace the current values.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before every `/v1` request is served.
    pub latency_ms: u64,
    /// The next N `/v1` responses are held back `slow_response_ms` after the
    /// request has run, so that the caller times out.
    pub slow_responses_next: u32,
    /// Share (0–1) of `/v1` responses held back the same way.
    pub slow_response_rate: f64,
    pub slow_response_ms: u64,
    /// Until this time (epoch ms) every `/v1` request gets 503 and runs
    /// nothing. `PATCH` also takes `outage_for_ms` (from now) and
    /// `"outage": false` to end it.
    pub outage_until_ms: Option<i64>,
    /// Share (0–1) of `/v1` requests refused with 429 before they run.
    pub rate_limit_rate: f64,
    /// The next N `/v1` requests are refused with 429.
    pub rate_limit_next: u32,
    /// The next N `/v1` requests run, and then their response is dropped:
    /// the connection closes without an answer.
    pub drop_responses_next: u32,
    /// Share (0–1) of `/v1` responses dropped after the request ran.
    pub drop_response_rate: f64,
    /// The next N refund requests fail with 500 before they run (and are
    /// not stored under their key): a refund endpoint in trouble.
    pub fail_refunds_next: u32,
    /// Currencies accepted, lower case. Others get 400
    /// `currency_not_supported`.
    pub currencies: Vec<String>,
    /// A `processing` payment settles (succeeds) this long after it began.
    pub settle_after_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            slow_responses_next: 0,
            slow_response_rate: 0.0,
            slow_response_ms: 30_000,
            outage_until_ms: None,
            rate_limit_rate: 0.0,
            rate_limit_next: 0,
            drop_responses_next: 0,
            drop_response_rate: 0.0,
            fail_refunds_next: 0,
            currencies: ["usd", "eur", "gbp", "cad", "aud", "jpy", "chf", "sek", "nok", "dkk", "nzd", "sgd"]
                .map(String::from)
                .to_vec(),
            settle_after_ms: 5_000,
        }
    }
}

/// A change to [`Faults`]: `PATCH /sim/config`'s body.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    pub latency_ms: Option<u64>,
    pub slow_responses_next: Option<u32>,
    pub slow_response_rate: Option<f64>,
    pub slow_response_ms: Option<u64>,
    pub outage: Option<bool>,
    pub outage_for_ms: Option<u64>,
    pub rate_limit_rate: Option<f64>,
    pub rate_limit_next: Option<u32>,
    pub drop_responses_next: Option<u32>,
    pub drop_response_rate: Option<f64>,
    pub fail_refunds_next: Option<u32>,
    pub currencies: Option<Vec<String>>,
    pub settle_after_ms: Option<u64>,
}

impl Faults {
    fn apply(&mut self, patch: FaultsPatch, now: Timestamp) -> Result<(), String> {
        for rate in [patch.rate_limit_rate, patch.drop_response_rate, patch.slow_response_rate].into_iter().flatten() {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("a rate must be between 0 and 1, not {rate}"));
            }
        }
        macro_rules! take {
            ($($f:ident),*) => { $(if let Some(v) = patch.$f { self.$f = v; })* };
        }
        take!(
            latency_ms,
            slow_responses_next,
            slow_response_rate,
            slow_response_ms,
            rate_limit_rate,
            rate_limit_next,
            drop_responses_next,
            drop_response_rate,
            fail_refunds_next,
            settle_after_ms
        );
        if let Some(c) = patch.currencies {
            self.currencies = c.into_iter().map(|c| c.to_ascii_lowercase()).collect();
        }
        match (patch.outage, patch.outage_for_ms) {
            (Some(false), _) => self.outage_until_ms = None,
            (_, Some(ms)) => self.outage_until_ms = Some(now.as_millis().saturating_add(ms as i64)),
            (Some(true), None) => self.outage_until_ms = Some(i64::MAX),
            (None, None) => {}
        }
        Ok(())
    }
}

/// One capture or refund, as `GET /sim/ledger` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerEntry {
    /// `capture` or `refund`.
    pub kind: String,
    /// The intent (`pi_…`) or refund (`re_…`) id.
    pub id: String,
    pub payment_intent: String,
    pub amount: i64,
    pub currency: String,
    pub metadata: BTreeMap<String, String>,
    pub at_ms: i64,
}

#[derive(Clone)]
struct Reply {
    status: StatusCode,
    body: Value,
}

enum KeyState {
    InFlight,
    Done { fingerprint: String, reply: Reply, at: Timestamp },
}

struct SimIntent {
    intent: Intent,
    refunded: i64,
    /// For `processing`: when it settles, and the amount it captures.
    settles_at: Option<Timestamp>,
}

#[derive(Default)]
struct Books {
    intents: HashMap<String, SimIntent>,
    /// `processing` intents by the time they settle, so a request looks
    /// only at the ones that are due.
    settling: std::collections::BTreeSet<(Timestamp, String)>,
    /// Creation order, for search results.
    order: Vec<String>,
    keys: HashMap<(String, String), KeyState>,
    ledger: Vec<LedgerEntry>,
    writes: u64,
}

struct Inner {
    clock: Arc<dyn Clock>,
    /// Where [`Simulator::spawn_loopback`] serves it.
    base_url: std::sync::OnceLock<String>,
    api_key: Option<String>,
    faults: Mutex<Faults>,
    books: Mutex<Books>,
}

/// A running simulator's shared state; cheap to clone.
#[derive(Clone)]
pub struct Simulator(Arc<Inner>);

fn stripe_error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Reply {
    let mut error = json!({ "type": kind, "message": message });
    if let Some(c) = code {
        error["code"] = json!(c);
    }
    Reply { status, body: json!({ "error": error }) }
}

fn invalid(code: &str, param: &str, message: &str) -> Reply {
    let mut r = stripe_error(StatusCode::BAD_REQUEST, "invalid_request_error", Some(code), message);
    r.body["error"]["param"] = json!(param);
    r
}

fn random_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{prefix}_{tail}")
}

impl Simulator {
    /// `api_key`: when set, requests must carry it as their bearer token;
    /// otherwise any bearer token is accepted.
    pub fn new(clock: Arc<dyn Clock>, api_key: Option<String>, faults: Faults) -> Self {
        Self(Arc::new(Inner {
            clock,
            base_url: std::sync::OnceLock::new(),
            api_key,
            faults: Mutex::new(faults),
            books: Mutex::new(Books::default()),
        }))
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/search", get(search_intents))
            .route("/v1/payment_intents/{id}", get(retrieve_intent))
            .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
            .route("/v1/refunds", post(create_refund))
            .route("/sim/config", get(get_config).patch(patch_config))
            .route("/sim/ledger", get(get_ledger))
            .route("/sim/intents/{id}/settle", post(settle_intent))
            .route("/sim/intents/{id}/authenticate", get(authenticate_page).post(authenticate))
            .fallback(|| async {
                reply(stripe_error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("resource_missing"),
                    "Unrecognized request URL.",
                ))
            })
            .with_state(self.clone())
    }

    /// Serves on `listener` until the task is dropped or the server fails.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Starts the simulator on an ephemeral loopback port in this process
    /// and returns its base URL.
    pub async fn spawn_loopback(&self) -> std::io::Result<String> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(self.clone().serve(listener));
        let _ = self.0.base_url.set(url.clone());
        Ok(url)
    }

    /// The address [`Self::spawn_loopback`] serves on, once started.
    pub fn base_url(&self) -> Option<&str> {
        self.0.base_url.get().map(String::as_str)
    }

    pub fn faults(&self) -> Faults {
        self.0.faults.lock().clone()
    }

    pub fn set_faults(&self, patch: FaultsPatch) -> Result<Faults, String> {
        let mut f = self.0.faults.lock();
        f.apply(patch, self.0.clock.now())?;
        Ok(f.clone())
    }

    /// Every capture and refund so far, oldest first.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        let mut books = self.0.books.lock();
        self.settle_due(&mut books);
        books.ledger.clone()
    }

    /// Ends a `processing` payment now, as its bank finally answers.
    pub fn settle(&self, intent_id: &str, success: bool) -> Result<Intent, String> {
        self.complete(intent_id, IntentStatus::Processing, success)
            .map_err(|r| r.body["error"]["message"].as_str().unwrap_or("refused").to_owned())
    }

    fn complete(&self, id: &str, from: IntentStatus, success: bool) -> Result<Intent, Reply> {
        let mut books = self.0.books.lock();
        match books.intents.get(id).map(|i| i.intent.status) {
            None => Err(missing_intent(id)),
            Some(s) if s != from => Err(invalid(
                "payment_intent_unexpected_state",
                "id",
                &format!("The PaymentIntent is {}, not {}.", s.as_str(), from.as_str()),
            )),
            Some(_) => {
                finish(&mut books, id, success, self.now());
                Ok(books.intents[id].intent.clone())
            }
        }
    }

    fn now(&self) -> Timestamp {
        self.0.clock.now()
    }

    /// Settles every `processing` intent whose time has come.
    fn settle_due(&self, books: &mut Books) {
        let now = self.now();
        while let Some((at, id)) = books.settling.first().cloned().filter(|(at, _)| *at <= now) {
            books.settling.remove(&(at, id.clone()));
            // One settled early (through /settle or 3-D Secure) is left alone.
            if books.intents.get(&id).is_some_and(|i| i.settles_at == Some(at)) {
                finish(books, &id, true, now);
            }
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> Result<String, Reply> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|k| !k.is_empty());
        match (presented, &self.0.api_key) {
            (Some(k), Some(expected)) if k != expected => Err(stripe_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("api_key_invalid"),
                "Invalid API Key provided.",
            )),
            (Some(k), _) => Ok(k.to_owned()),
            (None, _) => Err(stripe_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("api_key_missing"),
                "You did not provide an API key.",
            )),
        }
    }

    /// Outage and rate limits: answered before anything runs, never stored.
    fn refusal(&self) -> Option<Response> {
        let mut f = self.0.faults.lock();
        if f.outage_until_ms.is_some_and(|until| self.now().as_millis() < until) {
            return Some(reply(stripe_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                None,
                "The gateway is unavailable (simulated outage).",
            )));
        }
        let limited = if f.rate_limit_next > 0 {
            f.rate_limit_next -= 1;
            true
        } else {
            f.rate_limit_rate > 0.0 && rand::rng().random::<f64>() < f.rate_limit_rate
        };
        limited.then(|| {
            let mut r = reply(stripe_error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request_error",
                Some("rate_limit"),
                "Too many requests hit the API too quickly (simulated).",
            ));
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        })
    }

    /// Serves one `/v1` request: auth, refusals, latency, the request itself
    /// under its idempotency key (for writes), then the response faults.
    async fn serve_v1(
        &self,
        headers: &HeaderMap,
        fingerprint: String,
        run: impl FnOnce(&Simulator, &mut Books) -> Reply,
    ) -> Response {
        let api_key = match self.authorized(headers) {
            Ok(k) => k,
            Err(r) => return reply(r),
        };
        if let Some(r) = self.refusal() {
            return r;
        }
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty())
            .map(|k| (api_key, k.to_owned()));
        let mut replayed = false;
        let mut guard = KeyGuard { sim: self, key: None };
        if let Some(k) = key {
            let mut books = self.0.books.lock();
            match books.keys.get(&k) {
                Some(KeyState::InFlight) => {
                    return reply(stripe_error(
                        StatusCode::CONFLICT,
                        "idempotency_error",
                        Some("idempotency_key_in_use"),
                        "There is currently another in-progress request using this Idempotency Key.",
                    ))
                }
                Some(KeyState::Done { fingerprint: f, .. }) if *f != fingerprint => return reply(stripe_error(
                    StatusCode::BAD_REQUEST,
                    "idempotency_error",
                    None,
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                )),
                Some(KeyState::Done { .. }) => replayed = true,
                None => {
                    books.keys.insert(k.clone(), KeyState::InFlight);
                }
            }
            guard.key = Some(k);
        }
        let latency = self.0.faults.lock().latency_ms;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let result = {
            let mut books = self.0.books.lock();
            self.settle_due(&mut books);
            match (&guard.key, replayed) {
                (Some(k), true) => match books.keys.get(k) {
                    Some(KeyState::Done { reply, .. }) => reply.clone(),
                    _ => {
                        stripe_error(StatusCode::CONFLICT, "idempotency_error", Some("idempotency_key_in_use"), "retry")
                    }
                },
                (key, _) => {
                    // Running the request and storing its reply happen under
                    // one lock: a cancelled caller cannot leave one without
                    // the other.
                    let r = run(self, &mut books);
                    if let Some(k) = key {
                        let at = self.now();
                        books.keys.insert(k.clone(), KeyState::Done { fingerprint, reply: r.clone(), at });
                        books.writes += 1;
                        if books.writes % 1024 == 0 {
                            let horizon = at.as_millis() - KEY_TTL.as_millis() as i64;
                            books
                                .keys
                                .retain(|_, s| !matches!(s, KeyState::Done { at, .. } if at.as_millis() < horizon));
                        }
                    }
                    r
                }
            }
        };
        guard.key = None;
        let mut response = reply(result);
        if replayed {
            response.headers_mut().insert("idempotent-replayed", header::HeaderValue::from_static("true"));
        }
        self.deliver(response).await
    }

    /// Slow and dropped responses: the request has run either way.
    async fn deliver(&self, response: Response) -> Response {
        let (slow, drop) = {
            let mut f = self.0.faults.lock();
            let slow = if f.slow_responses_next > 0 {
                f.slow_responses_next -= 1;
                Some(f.slow_response_ms)
            } else {
                (f.slow_response_rate > 0.0 && rand::rng().random::<f64>() < f.slow_response_rate)
                    .then_some(f.slow_response_ms)
            };
            let drop = if f.drop_responses_next > 0 {
                f.drop_responses_next -= 1;
                true
            } else {
                f.drop_response_rate > 0.0 && rand::rng().random::<f64>() < f.drop_response_rate
            };
            (slow, drop)
        };
        if let Some(ms) = slow {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if drop {
            // A body that fails at once: the connection is torn down with no
            // complete answer, as when a response is lost on the way.
            let lost =
                futures_util::stream::once(async { Err::<Bytes, _>(std::io::Error::other("simulated lost response")) });
            return Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(lost))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        response
    }
}

/// Forgets an in-flight key whose request was cancelled before it ran, so
/// the key can be used again.
struct KeyGuard<'a> {
    sim: &'a Simulator,
    key: Option<(String, String)>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            let mut books = self.sim.0.books.lock();
            if matches!(books.keys.get(&k), Some(KeyState::InFlight)) {
                books.keys.remove(&k);
            }
        }
    }
}

fn reply(r: Reply) -> Response {
    (r.status, Json(r.body)).into_response()
}

/// Form fields, in order; repeated keys keep the last value.
fn form(body: &Bytes) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A write's form fields, and the fingerprint its idempotency key binds:
/// method, path and the sorted form.
struct SimForm {
    fields: BTreeMap<String, String>,
    fingerprint: String,
}

impl<S: Send + Sync> FromRequest<S> for SimForm {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let body = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        let fields = form(&body);
        let fingerprint = fingerprint(&method, &uri, &fields);
        Ok(SimForm { fields, fingerprint })
    }
}

fn fingerprint(method: &Method, uri: &Uri, fields: &BTreeMap<String, String>) -> String {
    let mut s = format!("{method} {}", uri.path());
    for (k, v) in fields {
        s.push('\n');
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

fn intent_json(i: &Intent) -> Value {
    let mut v = serde_json::to_value(i).unwrap_or(Value::Null);
    v["object"] = json!("payment_intent");
    v
}

/// Moves a `processing` or `requires_action` intent to its end: captured
/// (with a ledger entry) or failed.
fn finish(books: &mut Books, id: &str, success: bool, now: Timestamp) {
    let Some(si) = books.intents.get_mut(id) else { return };
    si.settles_at = None;
    if success {
        si.intent.status = IntentStatus::Succeeded;
        si.intent.amount_received = si.intent.amount;
        si.intent.next_action = None;
        let entry = LedgerEntry {
            kind: "capture".into(),
            id: si.intent.id.clone(),
            payment_intent: si.intent.id.clone(),
            amount: si.intent.amount_received,
            currency: si.intent.currency.clone(),
            metadata: si.intent.metadata.clone(),
            at_ms: now.as_millis(),
        };
        books.ledger.push(entry);
    } else {
        si.intent.status = IntentStatus::RequiresPaymentMethod;
        si.intent.next_action = None;
        si.intent.last_payment_error = Some(PaymentError {
            kind: "card_error".into(),
            code: Some("card_declined".into()),
            decline_code: Some("generic_decline".into()),
            message: Some("The payment did not complete.".into()),
        });
    }
}

async fn create_intent(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    SimForm { fields, fingerprint: fp }: SimForm,
) -> Response {
    let base = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| format!("http://{h}"));
    sim.serve_v1(&headers, fp, move |sim, books| create(sim, books, &fields, base.as_deref().unwrap_or(""))).await
}

fn create(sim: &Simulator, books: &mut Books, fields: &BTreeMap<String, String>, base: &str) -> Reply {
    let Some(amount) = fields.get("amount") else {
        return invalid("parameter_missing", "amount", "Missing required param: amount.");
    };
    let Ok(amount) = amount.parse::<i64>() else {
        return invalid("parameter_invalid_integer", "amount", "Invalid integer: amount.");
    };
    if amount < 50 {
        return invalid("amount_too_small", "amount", "Amount must be at least 50 minor units.");
    }
    if amount > 99_999_999 {
        return invalid("amount_too_large", "amount", "Amount must be no more than 99,999,999 minor units.");
    }
    let Some(currency) = fields.get("currency").map(|c| c.to_ascii_lowercase()) else {
        return invalid("parameter_missing", "currency", "Missing required param: currency.");
    };
    if !sim.0.faults.lock().currencies.contains(&currency) {
        return invalid("currency_not_supported", "currency", &format!("The currency {currency} is not supported."));
    }
    let Some(pm) = fields.get("payment_method") else {
        return invalid("parameter_missing", "payment_method", "Missing required param: payment_method.");
    };
    let Some(behaviour) = cards::behaviour(pm) else {
        return invalid("resource_missing", "payment_method", &format!("No such PaymentMethod: '{pm}'"));
    };
    let metadata: BTreeMap<String, String> = fields
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata[")?.strip_suffix(']')?.to_owned(), v.clone())))
        .collect();
    let now = sim.now();
    let id = random_id("pi");
    let mut intent = Intent {
        id: id.clone(),
        amount,
        currency,
        status: IntentStatus::RequiresConfirmation,
        amount_received: 0,
        metadata,
        last_payment_error: None,
        next_action: None,
        created: now.as_millis() / 1000,
    };
    let confirm = fields.get("confirm").is_some_and(|c| c == "true");
    let mut settles_at = None;
    let mut outcome: Option<Reply> = None;
    let mut capture = false;
    if confirm {
        match behaviour {
            Behaviour::Succeed => capture = true,
            Behaviour::CaptureWrongAmount => {
                intent.amount += 100;
                capture = true;
            }
            Behaviour::Decline { code, decline_code, message } => {
                intent.status = IntentStatus::RequiresPaymentMethod;
                intent.last_payment_error = Some(PaymentError {
                    kind: "card_error".into(),
                    code: Some(code.into()),
                    decline_code: decline_code.map(Into::into),
                    message: Some(message.into()),
                });
                let mut r = stripe_error(StatusCode::PAYMENT_REQUIRED, "card_error", Some(code), message);
                if let Some(d) = decline_code {
                    r.body["error"]["decline_code"] = json!(d);
                }
                r.body["error"]["payment_intent"] = intent_json(&intent);
                outcome = Some(r);
            }
            Behaviour::RequiresAction => {
                intent.status = IntentStatus::RequiresAction;
                intent.next_action = Some(json!({
                    "type": "redirect_to_url",
                    "redirect_to_url": { "url": format!("{base}/sim/intents/{id}/authenticate"), "return_url": null }
                }));
            }
            Behaviour::Pending | Behaviour::BankTimeout => {
                intent.status = IntentStatus::Processing;
                settles_at = Some(now.plus(Duration::from_millis(sim.0.faults.lock().settle_after_ms)));
                if behaviour == Behaviour::BankTimeout {
                    outcome = Some(stripe_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "api_error",
                        None,
                        "The bank did not respond in time (simulated).",
                    ));
                }
            }
        }
    }
    let body = intent_json(&intent);
    books.order.push(id.clone());
    if let Some(at) = settles_at {
        books.settling.insert((at, id.clone()));
    }
    books.intents.insert(id.clone(), SimIntent { intent, refunded: 0, settles_at });
    if capture {
        finish(books, &id, true, now);
        let captured = &books.intents[&id].intent;
        return Reply { status: StatusCode::OK, body: intent_json(captured) };
    }
    outcome.unwrap_or(Reply { status: StatusCode::OK, body })
}

async fn retrieve_intent(State(sim): State<Simulator>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    sim.serve_v1(&headers, String::new(), move |_, books| match books.intents.get(&id) {
        Some(i) => Reply { status: StatusCode::OK, body: intent_json(&i.intent) },
        None => missing_intent(&id),
    })
    .await
}

fn missing_intent(id: &str) -> Reply {
    stripe_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such payment_intent: '{id}'"),
    )
}

#[derive(Deserialize)]
struct SearchParams {
    #[serde(default)]
    query: String,
}

/// Parses `metadata['key']:'value'`, Stripe's search clause for metadata.
fn parse_metadata_query(q: &str) -> Option<(String, String)> {
    fn quoted(s: &str) -> Option<(String, &str)> {
        let mut out = String::new();
        let mut chars = s.strip_prefix('\'')?.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?.1),
                '\'' => return Some((out, &s[i + 2..])),
                c => out.push(c),
            }
        }
        None
    }
    let rest = q.trim().strip_prefix("metadata[")?;
    let (key, rest) = quoted(rest)?;
    let rest = rest.strip_prefix("]:")?;
    let (value, rest) = quoted(rest)?;
    rest.trim().is_empty().then_some((key, value))
}

async fn search_intents(
    State(sim): State<Simulator>,
    Query(params): Query<SearchParams>,
    headers: HeaderMap,
) -> Response {
    sim.serve_v1(&headers, String::new(), move |_, books| {
        let Some((key, value)) = parse_metadata_query(&params.query) else {
            return invalid(
                "parameter_invalid_string",
                "query",
                "The simulator searches by one clause: metadata['key']:'value'.",
            );
        };
        let data: Vec<Value> = books
            .order
            .iter()
            .filter_map(|id| books.intents.get(id))
            .filter(|i| i.intent.metadata.get(&key) == Some(&value))
            .map(|i| intent_json(&i.intent))
            .collect();
        Reply {
            status: StatusCode::OK,
            body: json!({ "object": "search_result", "data": data, "has_more": false, "url": "/v1/payment_intents/search" }),
        }
    })
    .await
}

async fn cancel_intent(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
    SimForm { fingerprint: fp, .. }: SimForm,
) -> Response {
    sim.serve_v1(&headers, fp, move |_, books| {
        let Some(si) = books.intents.get_mut(&id) else { return missing_intent(&id) };
        match si.intent.status {
            IntentStatus::Succeeded | IntentStatus::Processing | IntentStatus::Canceled => stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("payment_intent_unexpected_state"),
                &format!(
                    "You cannot cancel this PaymentIntent because it has a status of {}.",
                    si.intent.status.as_str()
                ),
            ),
            _ => {
                si.intent.status = IntentStatus::Canceled;
                si.intent.next_action = None;
                Reply { status: StatusCode::OK, body: intent_json(&si.intent) }
            }
        }
    })
    .await
}

async fn create_refund(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    SimForm { fields, fingerprint: fp }: SimForm,
) -> Response {
    {
        let mut f = sim.0.faults.lock();
        if f.fail_refunds_next > 0 {
            f.fail_refunds_next -= 1;
            let e =
                stripe_error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", None, "Refunds are failing (simulated).");
            return reply(e);
        }
    }
    sim.serve_v1(&headers, fp, move |sim, books| {
        let Some(pi) = fields.get("payment_intent") else {
            return invalid("parameter_missing", "payment_intent", "Missing required param: payment_intent.");
        };
        let Some(si) = books.intents.get_mut(pi) else {
            return invalid("resource_missing", "payment_intent", &format!("No such payment_intent: '{pi}'"));
        };
        if si.intent.status != IntentStatus::Succeeded {
            return invalid("charge_not_captured", "payment_intent", "This PaymentIntent has no captured charge.");
        }
        let left = si.intent.amount_received - si.refunded;
        if left <= 0 {
            return invalid("charge_already_refunded", "payment_intent", "This charge has already been refunded.");
        }
        let amount = match fields.get("amount").map(|a| a.parse::<i64>()) {
            None => left,
            Some(Ok(a)) if a > 0 && a <= left => a,
            Some(_) => return invalid("amount_too_large", "amount", &format!("Refund amount must be 1 to {left}.")),
        };
        si.refunded += amount;
        let refund = json!({
            "id": random_id("re"), "object": "refund", "amount": amount, "currency": si.intent.currency,
            "payment_intent": pi, "status": "succeeded",
        });
        let entry = LedgerEntry {
            kind: "refund".into(),
            id: refund["id"].as_str().unwrap_or_default().to_owned(),
            payment_intent: pi.clone(),
            amount,
            currency: si.intent.currency.clone(),
            metadata: si.intent.metadata.clone(),
            at_ms: sim.now().as_millis(),
        };
        books.ledger.push(entry);
        Reply { status: StatusCode::OK, body: refund }
    })
    .await
}

async fn get_config(State(sim): State<Simulator>) -> Json<Faults> {
    Json(sim.faults())
}

async fn patch_config(State(sim): State<Simulator>, body: Bytes) -> Response {
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return reply(invalid("parameter_invalid", "body", &e.to_string())),
    };
    match sim.set_faults(patch) {
        Ok(f) => Json(f).into_response(),
        Err(e) => reply(invalid("parameter_invalid", "body", &e)),
    }
}

async fn get_ledger(State(sim): State<Simulator>) -> Json<Value> {
    Json(json!({ "entries": sim.ledger() }))
}

/// The outcome a test or a fan chooses for a pending or 3-D Secure payment.
fn chosen_outcome(body: &Bytes) -> Option<bool> {
    match form(body).get("outcome").map(String::as_str) {
        Some("succeeded") => Some(true),
        Some("failed") => Some(false),
        _ => None,
    }
}

/// Completes an intent waiting in `from` with the outcome in the form body.
fn complete(sim: &Simulator, id: &str, body: &Bytes, from: IntentStatus) -> Response {
    let Some(success) = chosen_outcome(body) else {
        return reply(invalid("parameter_invalid", "outcome", "outcome must be succeeded or failed"));
    };
    match sim.complete(id, from, success) {
        Ok(intent) => reply(Reply { status: StatusCode::OK, body: intent_json(&intent) }),
        Err(r) => reply(r),
    }
}

async fn settle_intent(State(sim): State<Simulator>, Path(id): Path<String>, body: Bytes) -> Response {
    complete(&sim, &id, &body, IntentStatus::Processing)
}

async fn authenticate(State(sim): State<Simulator>, Path(id): Path<String>, body: Bytes) -> Response {
    complete(&sim, &id, &body, IntentStatus::RequiresAction)
}

/// The 3-D Secure page a fan is sent to.
async fn authenticate_page(Path(id): Path<String>) -> Html<String> {
    let id: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>Authenticate payment</title>\
         <h1>Simulated 3-D Secure</h1><p>Payment {id}</p>\
         <form method=post><button name=outcome value=succeeded>Complete authentication</button>\
         <button name=outcome value=failed>Fail authentication</button></form>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_queries_parse_with_escapes() {
        assert_eq!(parse_metadata_query("metadata['order_id']:'ord_1'"), Some(("order_id".into(), "ord_1".into())));
        assert_eq!(parse_metadata_query(r"metadata['k']:'it\'s'"), Some(("k".into(), "it's".into())));
        for bad in ["", "metadata['k']", "amount>1", "metadata['k']:'v' AND status:'x'", "metadata['k']:'v"] {
            assert_eq!(parse_metadata_query(bad), None, "{bad}");
        }
    }

    #[test]
    fn fault_patches_validate_rates_and_set_windows() {
        let mut f = Faults::default();
        let now = Timestamp::from_millis(1_000);
        assert!(f.apply(FaultsPatch { rate_limit_rate: Some(1.5), ..Default::default() }, now).is_err());
        assert!(f.apply(FaultsPatch { slow_response_rate: Some(-0.1), ..Default::default() }, now).is_err());
        f.apply(FaultsPatch { outage_for_ms: Some(500), ..Default::default() }, now).unwrap();
        assert_eq!(f.outage_until_ms, Some(1_500));
        f.apply(FaultsPatch { outage: Some(false), ..Default::default() }, now).unwrap();
        assert_eq!(f.outage_until_ms, None);
        f.apply(FaultsPatch { currencies: Some(vec!["USD".into()]), ..Default::default() }, now).unwrap();
        assert_eq!(f.currencies, vec!["usd".to_string()]);
    }
}
