//! The test harness: one fresh app per test, on port 0, on its own SQLite
//! file in a temporary directory, with a fake clock the test controls.

use std::sync::Arc;
use std::time::Duration;

use boxoffice::api::AppState;
use boxoffice::app::{Application, Role};
use boxoffice::config::Config;
use boxoffice::demo;
use boxoffice::domain::time::{Clock, FakeClock};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::redis_support::RedisPrefix;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub clock: FakeClock,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
    /// Dropped after the server stops: removes a PostgreSQL test database.
    _database: Option<TestDatabase>,
    /// Removes this test's Redis keys.
    _redis_keys: Option<RedisPrefix>,
}

/// What a test app runs on.
#[derive(Clone, Debug)]
pub struct Setup {
    pub backend: Backend,
    /// Redis for the seat-lock fast path; in-process locks when `None`.
    pub redis_url: Option<String>,
}

/// Which store a test app runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

fn pg_admin_url() -> String {
    std::env::var("BOXOFFICE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A PostgreSQL database made for one test and dropped after it.
pub struct TestDatabase {
    name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        use sqlx::Connection;
        let name = format!("boxoffice_api_{}", uuid::Uuid::new_v4().simple());
        let mut admin =
            sqlx::PgConnection::connect(&pg_admin_url()).await.expect("PostgreSQL is reachable (see .ci/run)");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let url = format!("{}/{name}", pg_admin_url().rsplit_once('/').unwrap().0);
        TestDatabase { name, url }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
                }
            });
        })
        .join();
    }
}

/// A response with its status and body, whatever the body's type.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn id(&self) -> String {
        self.body["id"].as_str().expect("body has an id").to_owned()
    }

    /// Asserts this is a problem document with the given status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.content_type, "application/problem+json", "body: {}", self.body);
        assert_eq!(self.code(), code, "body: {}", self.body);
        assert_eq!(self.body["status"].as_u64(), Some(u64::from(status)));
        assert!(self.body["type"].is_string() && self.body["title"].is_string() && self.body["detail"].is_string());
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_on(Backend::Sqlite).await
}

pub async fn spawn_app_on(backend: Backend) -> TestApp {
    spawn_app_with(Setup { backend, redis_url: None }).await
}

/// A SQLite app with `tune` applied to its configuration.
pub async fn spawn_app_tuned(tune: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with_tuned(Setup { backend: Backend::Sqlite, redis_url: None }, tune).await
}

pub async fn spawn_app_with(setup: Setup) -> TestApp {
    spawn_app_with_tuned(setup, |_| {}).await
}

/// An app on `setup` with `tune` applied to its configuration.
pub async fn spawn_app_with_tuned(setup: Setup, tune: impl FnOnce(&mut Config)) -> TestApp {
    let redis_keys = setup.redis_url.as_ref().map(|_| RedisPrefix::new());
    let database = match setup.backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestDatabase::create().await),
    };
    let mut config = node_config(&setup, database.as_ref(), redis_keys.as_ref());
    tune(&mut config);
    let mut app = spawn_node(&config, FakeClock::starting_now()).await;
    app._database = database;
    app._redis_keys = redis_keys;
    app
}

/// Several stateless nodes on one PostgreSQL database and one Redis key
/// space, as behind a load balancer. They share one fake clock.
pub struct Cluster {
    pub nodes: Vec<Arc<TestApp>>,
    // Dropped after the nodes (fields drop in order).
    _database: TestDatabase,
    _redis_keys: Option<RedisPrefix>,
}

impl Cluster {
    /// The cluster's PostgreSQL database, for tests that look behind the API.
    pub fn database_url(&self) -> &str {
        &self._database.url
    }

    /// The cluster's Redis key prefix, for tests that look behind the API.
    pub fn redis_prefix(&self) -> &str {
        self._redis_keys.as_ref().map_or("", |p| p.0.as_str())
    }
}

pub async fn spawn_cluster(n: usize, redis_url: Option<String>) -> Cluster {
    spawn_cluster_tuned(n, redis_url, |_| {}).await
}

/// A cluster whose nodes share the configuration `tune` makes.
pub async fn spawn_cluster_tuned(n: usize, redis_url: Option<String>, tune: impl FnOnce(&mut Config)) -> Cluster {
    let setup = Setup { backend: Backend::Postgres, redis_url };
    let redis_keys = setup.redis_url.as_ref().map(|_| RedisPrefix::new());
    let database = TestDatabase::create().await;
    let mut config = node_config(&setup, Some(&database), redis_keys.as_ref());
    tune(&mut config);
    let clock = FakeClock::starting_now();
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(Arc::new(spawn_node(&config, clock.clone()).await));
    }
    Cluster { nodes, _database: database, _redis_keys: redis_keys }
}

fn node_config(setup: &Setup, database: Option<&TestDatabase>, redis_keys: Option<&RedisPrefix>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database.map(|d| d.url.clone()),
        // Tests run in parallel against one server (max_connections 100).
        database_max_connections: 8,
        redis_url: setup.redis_url.clone(),
        redis_prefix: redis_keys.map(|p| p.0.clone()).unwrap_or_default(),
        // Tests never wait out a degraded window: every call retries Redis.
        redis_retry_after_ms: 1,
        // Two cores shared by a thousand requests: a starved call is not a
        // Redis failure, so give calls time.
        redis_timeout_ms: 5_000,
        sqlite_synchronous: boxoffice::store::sqlite::Synchronous::Normal,
        // Races put a thousand requests through one loopback address and a
        // few tokens; the rate-limit tests turn limits on themselves.
        rate_limit_customer_per_second: 0,
        rate_limit_ip_per_second: 0,
        ..Config::default()
    }
}

async fn spawn_node(config: &Config, clock: FakeClock) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config { data_dir: dir.path().to_owned(), ..config.clone() };
    let app = Application::build(&config, Role::Api, Arc::new(clock.clone()) as Arc<dyn Clock>, ADMIN_TOKEN)
        .await
        .expect("app builds");
    let base = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let client = Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(1100).build().unwrap();
    TestApp {
        base,
        client,
        clock,
        state,
        stop: Some(stop),
        server: Some(server),
        _dir: dir,
        _database: None,
        _redis_keys: None,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

pub async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let bytes = resp.bytes().await.expect("body");
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    Reply { status, content_type, body, headers }
}

impl TestApp {
    /// The embedded database file of a SQLite test app.
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        self._dir.path().join("boxoffice.db")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        reply(req.send().await.expect("request sent")).await
    }

    /// Sends raw bytes with a JSON content type.
    pub async fn send_raw(&self, method: Method, path: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = self.client.request(method, self.url(path)).header("content-type", "application/json").body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        reply(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send(Method::POST, path, token, Some(body)).await
    }

    /// A Prometheus counter from `/metrics`, summed over its labels; 0 while
    /// nothing has counted it. The registry is the process's, shared by
    /// every test running in it, so compare a before and an after: the
    /// after is at least the before plus what this test did.
    pub async fn counter(&self, name: &str) -> f64 {
        let text = self.client.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// A new customer session; returns its bearer token.
    pub async fn customer(&self, email: &str) -> String {
        let r = self.post("/v1/sessions", None, json!({ "email": email })).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["session_token"].as_str().unwrap().to_owned()
    }

    /// `n` customers, created concurrently.
    pub async fn customers(&self, n: usize) -> Vec<String> {
        let mut tokens = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let futs = chunk.iter().map(|i| self.customer_owned(format!("fan{i}@example.com")));
            tokens.extend(futures::future::join_all(futs).await);
        }
        tokens
    }

    async fn customer_owned(&self, email: String) -> String {
        self.customer(&email).await
    }

    pub async fn create_venue(&self, venue: Value) -> String {
        let r = self.post("/v1/venues", Some(ADMIN_TOKEN), venue).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.id()
    }

    /// Creates an event from `demo::event_json` with `overrides` merged in.
    pub async fn create_event(&self, venue_id: &str, overrides: Value) -> String {
        let mut e = demo::event_json(venue_id, self.clock.now());
        if let (Some(e), Some(o)) = (e.as_object_mut(), overrides.as_object()) {
            for (k, v) in o {
                e.insert(k.clone(), v.clone());
            }
        }
        let r = self.post("/v1/events", Some(ADMIN_TOKEN), e).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.id()
    }

    /// The demo hall (300 seats + 500 GA) with an event on sale now.
    pub async fn demo_event(&self, overrides: Value) -> String {
        let venue = self.create_venue(demo::venue_json()).await;
        self.create_event(&venue, overrides).await
    }

    pub async fn hold(&self, token: &str, event: &str, body: Value) -> Reply {
        self.post(&format!("/v1/events/{event}/holds"), Some(token), body).await
    }

    /// `POST /v1/holds/{hold}/checkout` with an Idempotency-Key.
    pub async fn checkout(&self, token: &str, hold: &str, key: &str, payment_method: &str) -> Reply {
        let req = self
            .client
            .post(self.url(&format!("/v1/holds/{hold}/checkout")))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({ "payment_method": payment_method }));
        reply(req.send().await.expect("request sent")).await
    }

    /// The in-process gateway simulator every test app pays through.
    pub fn gateway(&self) -> &boxoffice::payments::sim::Simulator {
        self.state.simulator.as_ref().expect("test apps run the in-process simulator")
    }

    /// Seat id → status from the live seat map.
    pub async fn seat_statuses(&self, event: &str) -> std::collections::BTreeMap<String, String> {
        let r = self.get(&format!("/v1/events/{event}/seats"), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["seats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_str().unwrap().to_owned(), s["status"].as_str().unwrap().to_owned()))
            .collect()
    }
}

/// One POST per token, all released together by one barrier and spread
/// round-robin over `nodes`. Each task first opens its connection, so the
/// barrier releases requests, not handshakes.
pub async fn race<F>(nodes: &[Arc<TestApp>], tokens: &[String], body_for: F) -> Vec<(usize, Reply)>
where
    F: Fn(usize) -> (String, Value),
{
    let barrier = Arc::new(tokio::sync::Barrier::new(tokens.len()));
    let mut tasks = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        let (path, body) = body_for(i);
        let (node, barrier, token) = (nodes[i % nodes.len()].clone(), barrier.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let warm = node.get("/healthz", None).await;
            assert_eq!(warm.status, StatusCode::OK);
            barrier.wait().await;
            (i, node.post(&path, Some(&token), body).await)
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// How many of `results` won (201); asserts every other one is a 409
/// `seat_unavailable`.
pub fn winners(results: &[(usize, Reply)]) -> usize {
    let mut wins = 0;
    for (_, r) in results {
        if r.status == StatusCode::CREATED {
            wins += 1;
        } else {
            r.assert_problem(409, "seat_unavailable");
        }
    }
    wins
}

/// Every token's fan, released together, buys best-available holds of 1–4
/// seats (seeded per fan) through `nodes` round-robin, stepping the count
/// down on 409 until not even one seat is left. Returns seat → hold id,
/// asserting each hold has exactly the seats asked for and no seat is in
/// two holds.
pub async fn sell_out(
    nodes: &[Arc<TestApp>],
    tokens: &[String],
    event: &str,
) -> std::collections::BTreeMap<String, String> {
    use rand::{Rng, SeedableRng};
    let barrier = Arc::new(tokio::sync::Barrier::new(tokens.len()));
    let mut tasks = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().cloned().enumerate() {
        let (node, barrier, event) = (nodes[i % nodes.len()].clone(), barrier.clone(), event.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            let mut want: u32 = rng.random_range(1..=4);
            let mut held: Vec<(String, Vec<String>)> = Vec::new();
            barrier.wait().await;
            while want > 0 {
                let r = node.hold(&token, &event, json!({"best_available": {"count": want}})).await;
                match r.status {
                    StatusCode::CREATED => {
                        let seats: Vec<String> = r.body["seats"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|s| s.as_str().unwrap().to_owned())
                            .collect();
                        assert_eq!(seats.len() as u32, want, "a hold has exactly the seats asked for");
                        held.push((r.id(), seats));
                        want = rng.random_range(1..=4);
                    }
                    StatusCode::CONFLICT => {
                        r.assert_problem(409, "seat_unavailable");
                        want -= 1;
                    }
                    other => panic!("unexpected {other}: {}", r.body),
                }
            }
            held
        }));
    }
    let mut owner = std::collections::BTreeMap::new();
    for t in tasks {
        for (hold, seats) in t.await.unwrap() {
            for s in seats {
                if let Some(prev) = owner.insert(s.clone(), hold.clone()) {
                    panic!("seat {s} is in two holds: {prev} and {hold}");
                }
            }
        }
    }
    owner
}

/// Polls `check` until it holds or `within` passes: for changes that
/// travel between nodes over pub/sub.
pub async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
