//! Hold throughput, in-process and over HTTP, against a no-op baseline
//! measured in the same run on the same server stack.
//!
//!     cargo bench --bench holds             # 5 s per phase
//!     BENCH_SECS=10 cargo bench --bench holds
//!
//! This is a benchmark, not a test: it asserts nothing about speed. It
//! prints figures and ratios; docs/benchmarks.md records them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Json;
use boxoffice::api::AppState;
use boxoffice::app::{Application, Role};
use boxoffice::config::Config;
use boxoffice::demo;
use boxoffice::domain::customer::{Email, TokenHash};
use boxoffice::domain::event::{Event, EventDraft};
use boxoffice::domain::hold::Selection;
use boxoffice::domain::ids::{CustomerId, EventId, SeatId, VenueId};
use boxoffice::domain::time::{Clock, SystemClock};
use boxoffice::domain::venue::{Venue, VenueDraft};
use boxoffice::store::postgres::{PgSettings, PgStore};
use boxoffice::store::sqlite::SqliteStore;
use boxoffice::store::{Customer, DynStore, NewSession};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde_json::{json, Value};
use sqlx::Connection;

/// The allocator the `boxoffice` binary ships with (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTIONS: usize = 64;
const ROWS: usize = 400;
const PER_ROW: usize = 250; // 100,000 seats
const CUSTOMERS: usize = 20_000;
/// The demo event's purchase limit is 6; a fan rarely holds more at once.
const LIMIT: u32 = 8;
const ADMIN: &str = "bench-admin-token-0123456789";

struct Outcome {
    label: String,
    ok: u64,
    /// Successes including the warm-up, for per-success ratios of counters
    /// that cover the whole phase.
    ok_with_warmup: u64,
    rejected: u64,
    errors: u64,
    secs: f64,
    latency: Histogram<u64>,
    /// CPU time this process (client and server) used in the measured window.
    cpu_secs: f64,
    /// The same window by thread kind, from the scheduler's own counts.
    threads: ThreadTimes,
}

impl Outcome {
    fn rate(&self) -> f64 {
        (self.ok + self.rejected) as f64 / self.secs
    }

    /// CPU microseconds per request, client and server together: on a
    /// CPU-bound machine, throughput is its inverse, and it moves less
    /// than req/s when other work shares the machine.
    fn cpu_us(&self) -> f64 {
        self.cpu_secs * 1e6 / (self.ok + self.rejected).max(1) as f64
    }

    fn print(&self, baseline: Option<f64>) {
        let ratio = baseline.map(|b| format!("{:.2}x", self.rate() / b)).unwrap_or_else(|| "-".into());
        println!(
            "| {:<38} | {:>9.0} | {:>8} | {:>8} | {:>6} | {:>7.2} | {:>7.2} | {:>6} | {:>7.1} |",
            self.label,
            self.rate(),
            self.ok,
            self.rejected,
            self.errors,
            self.latency.value_at_quantile(0.5) as f64 / 1000.0,
            self.latency.value_at_quantile(0.99) as f64 / 1000.0,
            ratio,
            self.cpu_us(),
        );
    }

    /// Where an embedded hold phase's time went, per request: the SQLite
    /// writer's CPU next to everything else's, and how many cores' worth of
    /// threads stood in the run queue. Against a baseline it also prints a
    /// ceiling: if a hold's HTTP side cost no more than a whole no-op request
    /// and the machine is CPU-bound, holds reach at most
    /// `no-op / (no-op + writer)` of the baseline's rate.
    fn print_threads(&self, baseline: Option<&Outcome>) {
        let n = (self.ok + self.rejected).max(1) as f64;
        let t = &self.threads;
        let writer_us = t.writer_cpu * 1e6 / n;
        let ceiling = baseline
            .map(|b| {
                let noop = b.cpu_us();
                format!("; no-op {noop:.1} µs in all, so a ceiling of {:.2}x", noop / (noop + writer_us))
            })
            .unwrap_or_default();
        println!(
            "  per request: {writer_us:.1} µs on the SQLite writer, {:.1} µs on other threads; \
             waiting for a CPU: writer {:.2}, others {:.2} cores' worth{ceiling}",
            t.other_cpu * 1e6 / n,
            t.writer_wait / self.secs,
            t.other_wait / self.secs,
        );
    }
}

/// `BENCH_SYNC=auto|full|normal`; the default is the product's default.
fn sync_policy() -> boxoffice::store::sqlite::Synchronous {
    use boxoffice::store::sqlite::Synchronous;
    match std::env::var("BENCH_SYNC").as_deref() {
        Ok("full") => Synchronous::Full,
        Ok("normal") => Synchronous::Normal,
        _ => Synchronous::Auto,
    }
}

fn secs() -> Duration {
    Duration::from_secs(std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5))
}

/// `BENCH_WARMUP_SECS` (default 1) of load before each phase's clock
/// starts, so first-touch work (sessions read into the cache, pools
/// filled) is not in the steady-state figure.
fn warmup() -> Duration {
    Duration::from_secs(std::env::var("BENCH_WARMUP_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1))
}

fn bar(label: &str, d: Duration) -> ProgressBar {
    let pb = ProgressBar::new(d.as_secs());
    pb.set_style(ProgressStyle::with_template("{msg:<40} [{bar:30}] {pos}/{len}s").unwrap());
    pb.set_message(label.to_owned());
    pb
}

async fn seed(store: &DynStore) -> (Event, Vec<Customer>) {
    let now = SystemClock.now();
    let draft: VenueDraft =
        serde_json::from_value(demo::sized_venue_json("Bench Arena", "Benchville", ROWS, PER_ROW, 0)).unwrap();
    let venue = Venue::from_draft(VenueId::generate(), draft).unwrap();
    store.insert_venue(&venue, now).await.unwrap();
    let mut ev = demo::event_json(venue.id.as_str(), now);
    ev["max_tickets_per_customer"] = json!(LIMIT);
    // Short holds that lapse on the real clock keep the hall from selling
    // out, so every phase measures a steady state.
    ev["hold_ttl_seconds"] = json!(2);
    let draft: EventDraft = serde_json::from_value(ev).unwrap();
    let event = Event::from_draft(EventId::generate(), draft, &venue, now).unwrap();
    store.insert_event(&event, &venue).await.unwrap();
    let customers: Vec<Customer> = (0..CUSTOMERS)
        .map(|i| Customer {
            id: CustomerId::generate(),
            email: Email::parse(&format!("bench{i}@example.com")).unwrap(),
        })
        .collect();
    futures::stream::iter(customers.iter().enumerate())
        .for_each_concurrent(8, |(i, c)| async move {
            store
                .create_session(NewSession {
                    customer: c.clone(),
                    token_hash: TokenHash::of(&format!("bench-token-{i}")),
                    created_at: now,
                    expires_at: now.plus_secs(86_400),
                })
                .await
                .unwrap();
        })
        .await;
    (event, customers)
}

/// Each worker has its own customers and takes them in turn, as fans
/// arriving one after another would: at 40k holds/s a customer has about
/// 2 s x 40k / 20k = 4 live holds, under the limit, so every request is a
/// genuine hold attempt, and the limit check sees a fan's real handful of
/// holds rather than an ever-growing pile.
fn customer_index(worker: usize, i: u64) -> usize {
    let per_worker = CUSTOMERS / CONNECTIONS;
    worker * per_worker + i as usize % per_worker
}

fn random_seat(rng: &mut impl Rng) -> String {
    format!("{}{}", demo::row_label(rng.random_range(0..ROWS)), rng.random_range(1..=PER_ROW))
}

/// Runs `CONNECTIONS` workers calling `op` until the deadline.
async fn drive<F, Fut>(label: &str, op: F) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<bool, ()>> + Send,
{
    let d = secs();
    let op = Arc::new(op);
    let (ok, rejected, errors, ok_all) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let start = Instant::now() + warmup();
    let deadline = start + d;
    let pb = bar(label, d + warmup());
    let ticker = {
        let pb = pb.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                pb.inc(1);
            }
        })
    };
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let (before, threads_before) = (cpu_seconds(), ThreadTimes::now());
        tokio::time::sleep_until(deadline.into()).await;
        (cpu_seconds() - before, ThreadTimes::now().since(&threads_before))
    });
    let mut tasks = Vec::new();
    for w in 0..CONNECTIONS {
        let (op, ok, rejected, errors, ok_all) =
            (op.clone(), ok.clone(), rejected.clone(), errors.clone(), ok_all.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let outcome = op(w, i).await;
                // Errors count whenever they happen. Otherwise only requests
                // wholly inside the measured window count, so a straggler
                // cannot stretch the window.
                match outcome {
                    Err(()) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(won) => {
                        if won {
                            ok_all.fetch_add(1, Ordering::Relaxed);
                        }
                        if t >= start && Instant::now() <= deadline {
                            if won { &ok } else { &rejected }.fetch_add(1, Ordering::Relaxed);
                            let _ = h.record(t.elapsed().as_micros() as u64);
                        }
                    }
                }
                i += 1;
            }
            h
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        latency.add(t.await.unwrap()).unwrap();
    }
    let secs = d.as_secs_f64();
    ticker.abort();
    pb.finish_and_clear();
    let (cpu_secs, threads) = cpu.await.unwrap_or_default();
    Outcome {
        label: label.to_owned(),
        ok: ok.load(Ordering::Relaxed),
        ok_with_warmup: ok_all.load(Ordering::Relaxed),
        rejected: rejected.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        secs,
        latency,
        cpu_secs,
        threads,
    }
}

/// CPU seconds this process has used, user and system (Linux; the kernel
/// counts in ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Seconds on a CPU and seconds runnable but waiting for one, summed over
/// this process's threads by kind: the SQLite writer, and everything else
/// (tokio workers with the client and the server, checkpoints, the blocking
/// pool). From `/proc/self/task/*/schedstat` (Linux; zeros elsewhere).
#[derive(Default, Clone, Copy)]
struct ThreadTimes {
    writer_cpu: f64,
    writer_wait: f64,
    other_cpu: f64,
    other_wait: f64,
}

impl ThreadTimes {
    fn now() -> ThreadTimes {
        let mut t = ThreadTimes::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return t };
        for task in tasks.flatten() {
            let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
            let stat = read("schedstat");
            let mut fields = stat.split_whitespace().map(|f| f.parse::<f64>().unwrap_or(0.0) / 1e9);
            let (cpu, wait) = (fields.next().unwrap_or(0.0), fields.next().unwrap_or(0.0));
            if read("comm").trim() == "sqlite-writer" {
                t.writer_cpu += cpu;
                t.writer_wait += wait;
            } else {
                t.other_cpu += cpu;
                t.other_wait += wait;
            }
        }
        t
    }

    /// The window from `before` to `self`. Threads that ended inside it
    /// drop out, so a figure can only be too low, never too high.
    fn since(&self, before: &ThreadTimes) -> ThreadTimes {
        let d = |a: f64, b: f64| (a - b).max(0.0);
        ThreadTimes {
            writer_cpu: d(self.writer_cpu, before.writer_cpu),
            writer_wait: d(self.writer_wait, before.writer_wait),
            other_cpu: d(self.other_cpu, before.other_cpu),
            other_wait: d(self.other_wait, before.other_wait),
        }
    }
}

/// A request's outcome as `drive` counts it: a success status with its body
/// read is a win; anything else an error.
async fn succeeded(req: reqwest::RequestBuilder) -> Result<bool, ()> {
    match req.send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.map(|_| true).map_err(|_| ()),
        _ => Err(()),
    }
}

/// The no-op baseline on `base`: the same stack answering an echo POST.
async fn noop_baseline(client: &reqwest::Client, base: &str, body: Value) -> Outcome {
    let (client, url) = (client.clone(), format!("{base}/bench/noop"));
    drive("HTTP no-op JSON POST (baseline)", move |_, _| succeeded(client.post(&url).json(&body))).await
}

/// `BENCH_PHASES=inproc,noop,random,hot` runs a subset (the baseline
/// always runs when an HTTP phase does, since ratios need it).
fn phase(name: &str) -> bool {
    match std::env::var("BENCH_PHASES") {
        Ok(list) => list.split(',').any(|p| p.trim() == name),
        Err(_) => true,
    }
}

fn header() {
    println!(
        "| {:<38} | {:>9} | {:>8} | {:>8} | {:>6} | {:>7} | {:>7} | {:>6} | {:>7} |",
        "scenario", "req/s", "201/ok", "409", "errors", "p50 ms", "p99 ms", "ratio", "cpu µs"
    );
    println!(
        "|{:-<40}|{:->11}|{:->10}|{:->10}|{:->8}|{:->9}|{:->9}|{:->8}|{:->9}|",
        "", "", "", "", "", "", "", "", ""
    );
}

/// Where a phase's app keeps its data.
enum Backing<'a> {
    Sqlite(&'a std::path::Path),
    /// PostgreSQL plus Redis (with its own key prefix).
    Scaleout {
        database_url: &'a str,
        redis_prefix: &'a str,
    },
}

async fn new_app(backing: Backing<'_>) -> (Application, Event, Vec<Customer>) {
    let mut config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    let store: DynStore = match backing {
        Backing::Sqlite(dir) => {
            config.data_dir = dir.to_owned();
            config.sqlite_synchronous = sync_policy();
            Arc::new(SqliteStore::open(&dir.join("bench.db"), config.sqlite_synchronous).unwrap())
        }
        Backing::Scaleout { database_url, redis_prefix } => {
            config.database_url = Some(database_url.to_owned());
            config.redis_url = Some(redis_url());
            config.redis_prefix = redis_prefix.to_owned();
            let settings = PgSettings { max_connections: CONNECTIONS as u32, ..PgSettings::default() };
            Arc::new(PgStore::connect(database_url, &[], &settings).await.unwrap())
        }
    };
    let (event, customers) = seed(&store).await;
    let noop =
        axum::Router::<AppState>::new().route("/bench/noop", post(|Json(v): Json<Value>| async move { Json(v) }));
    let app =
        Application::build_with_store(&config, Role::Api, Arc::new(SystemClock), ADMIN, store, noop).await.unwrap();
    (app, event, customers)
}

fn serve(app: Application) -> String {
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until(std::future::pending()));
    base
}

/// `CONNECTIONS` HTTP clients holding one random seat (or one of 10 hot
/// seats) per request.
async fn http_holds(label: &str, client: &reqwest::Client, base: &str, event: &Event, hot: bool) -> Outcome {
    let (client, url) = (client.clone(), format!("{base}/v1/events/{}/holds", event.id));
    drive(label, move |w, i| {
        let token = format!("bench-token-{}", customer_index(w, i));
        let seat = if hot { format!("A{}", rand::rng().random_range(1..=10)) } else { random_seat(&mut rand::rng()) };
        let req = client.post(&url).bearer_auth(token).json(&json!({ "seats": [seat] }));
        async move {
            match req.send().await {
                Ok(r) => {
                    let s = r.status();
                    let _ = r.bytes().await;
                    match s.as_u16() {
                        201 => Ok(true),
                        409 => Ok(false),
                        _ => Err(()),
                    }
                }
                Err(_) => Err(()),
            }
        }
    })
    .await
}

fn pg_admin_url() -> String {
    std::env::var("BOXOFFICE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn redis_url() -> String {
    std::env::var("BOXOFFICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database for one phase, dropped afterwards; and its Redis prefix.
struct BenchDb {
    name: String,
    url: String,
    prefix: String,
}

impl BenchDb {
    async fn create() -> BenchDb {
        let name = format!("boxoffice_bench_{}", uuid::Uuid::new_v4().simple());
        let mut c = sqlx::PgConnection::connect(&pg_admin_url()).await.expect("PostgreSQL is reachable");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.unwrap();
        let url = format!("{}/{name}", pg_admin_url().rsplit_once('/').unwrap().0);
        BenchDb { prefix: format!("bxbench:{name}:"), name, url }
    }

    async fn drop_now(self) {
        if let Ok(mut c) = sqlx::PgConnection::connect(&pg_admin_url()).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&mut c).await;
        }
        if let Ok(mut r) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) {
            let keys: Vec<String> =
                redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query(&mut r).unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut r);
            }
        }
    }
}

/// The raw single-statement conditional UPDATE, from the benchmark itself
/// with the same connection count: what one hold's fence costs alone.
async fn pg_raw_updates(db: &BenchDb, event: &Event) -> Outcome {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(CONNECTIONS as u32).connect(&db.url).await.unwrap();
    let event_id = event.id.to_string();
    drive("PG raw conditional UPDATE (baseline)", move |_, _| {
        let (pool, event_id) = (pool.clone(), event_id.clone());
        let seat = random_seat(&mut rand::rng());
        async move {
            let now = SystemClock.now();
            let r = sqlx::query(
                "UPDATE seats SET status = 'held', hold_id = $1, hold_expires_at = $2, version = version + 1 \
                 WHERE event_id = $3 AND seat_id = $4 \
                   AND (status = 'available' OR (status = 'held' AND hold_expires_at <= $5))",
            )
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(now.plus_secs(2).as_millis())
            .bind(&event_id)
            .bind(seat)
            .bind(now.as_millis())
            .execute(&pool)
            .await;
            match r {
                Ok(done) => Ok(done.rows_affected() == 1),
                Err(_) => Err(()),
            }
        }
    })
    .await
}

/// 1,000 holds on one seat released together: how many reach the database.
async fn pg_stampede(base: &str, event: &Event, app_state: &AppState) -> (usize, u64) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(1000).build().unwrap();
    let url = format!("{base}/v1/events/{}/holds", event.id);
    let before = app_state.booking.store_hold_attempts();
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let (client, url, barrier) = (client.clone(), url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = client
                    .post(&url)
                    .bearer_auth(format!("bench-token-{i}"))
                    .json(&json!({"seats": ["O20"]}))
                    .send()
                    .await;
                r.map(|r| r.status().as_u16() == 201).unwrap_or(false)
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap() {
            wins += 1;
        }
    }
    (wins, app_state.booking.store_hold_attempts() - before)
}

fn main() {
    // As the `boxoffice` binary does.
    boxoffice::store::sqlite::configure_process();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        eprintln!("seeding {} seats and {CUSTOMERS} customers per phase...", ROWS * PER_ROW);
        println!(
            "\n{CONNECTIONS} concurrent workers, {} s per phase, SQLite synchronous={:?}, {} cores\n",
            secs().as_secs(),
            sync_policy(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
        header();

        // In-process: the booking service, no HTTP.
        if phase("inproc") {
            let dir = tempfile::tempdir().unwrap();
            let (app, event, customers) = new_app(Backing::Sqlite(dir.path())).await;
            let booking = app.state().booking.clone();
            let customers = Arc::new(customers);
            let inproc = {
                let (event_id, customers) = (event.id.clone(), customers.clone());
                drive("in-process holds, random seats", move |w, i| {
                    let booking = booking.clone();
                    let event_id = event_id.clone();
                    let c = customers[customer_index(w, i)].clone();
                    async move {
                        let seat = SeatId::parse(&random_seat(&mut rand::rng())).unwrap();
                        match booking.place_hold(&c, &event_id, Selection::Seats(vec![seat])).await {
                            Ok(_) => Ok(true),
                            Err(boxoffice::booking::HoldError::Rejected(_)) => Ok(false),
                            Err(_) => Err(()),
                        }
                    }
                })
                .await
            };
            inproc.print(None);
            inproc.print_threads(None);
            drop(app);
        }

        // Over HTTP: a fresh database per phase so each starts empty.
        let client = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build().unwrap();
        if ["noop", "random", "hot"].iter().any(|p| phase(p)) {
            embedded_http(&client).await;
        }
        if phase("queue-inproc") {
            queue_in_process();
        }
        if ["queue-join", "queue-poll"].iter().any(|p| phase(p)) {
            let dir = tempfile::tempdir().unwrap();
            queue_http(&client, Backing::Sqlite(dir.path())).await;
        }
        if phase("queue-redis") {
            let db = BenchDb::create().await;
            queue_http(&client, Backing::Scaleout { database_url: &db.url, redis_prefix: &db.prefix }).await;
            db.drop_now().await;
        }

        // Scale-out: PostgreSQL plus Redis, one node, same client.
        if !["pg-raw", "pg-random", "pg-hot", "pg-stampede"].iter().any(|p| phase(p)) {
            return;
        }
        println!("\nPostgreSQL + Redis (one node); ratio = req/s over the raw UPDATE baseline's\n");
        header();
        let db = BenchDb::create().await;
        let (app, event, _) = new_app(Backing::Scaleout { database_url: &db.url, redis_prefix: &db.prefix }).await;
        let raw = pg_raw_updates(&db, &event).await;
        raw.print(Some(raw.rate()));
        drop(app);
        db.drop_now().await;
        for (label, hot) in [("HTTP holds on PG, random seats", false), ("HTTP holds on PG, 10 hot seats", true)] {
            if !phase(if hot { "pg-hot" } else { "pg-random" }) {
                continue;
            }
            let db = BenchDb::create().await;
            let (app, event, _) = new_app(Backing::Scaleout { database_url: &db.url, redis_prefix: &db.prefix }).await;
            let state = app.state().clone();
            let base = serve(app);
            let r = http_holds(label, &client, &base, &event, hot).await;
            r.print(Some(raw.rate()));
            if hot {
                let writes = state.booking.store_hold_attempts();
                println!(
                    "  database writes per winning hold under contention: {:.2} ({writes} writes, {} wins)",
                    writes as f64 / r.ok_with_warmup.max(1) as f64,
                    r.ok_with_warmup
                );
            }
            db.drop_now().await;
        }
        if phase("pg-stampede") {
            let db = BenchDb::create().await;
            let (app, event, _) = new_app(Backing::Scaleout { database_url: &db.url, redis_prefix: &db.prefix }).await;
            let state = app.state().clone();
            let base = serve(app);
            let (wins, writes) = pg_stampede(&base, &event, &state).await;
            println!("\n1,000 simultaneous holds on one seat: {wins} winner, {writes} database write(s)");
            db.drop_now().await;
        }
    });
}

/// The embedded phases over HTTP: the no-op baseline, then holds, each on a
/// fresh database so each starts empty.
async fn embedded_http(client: &reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let (app, _, _) = new_app(Backing::Sqlite(dir.path())).await;
    let base = serve(app);
    let baseline = noop_baseline(client, &base, json!({"seats": ["A7"]})).await;
    baseline.print(Some(baseline.rate()));

    for (label, hot) in [("HTTP holds, random seats", false), ("HTTP holds, 10 hot seats", true)] {
        if !phase(if hot { "hot" } else { "random" }) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let (app, event, _) = new_app(Backing::Sqlite(dir.path())).await;
        let base = serve(app);
        let holds = http_holds(label, client, &base, &event, hot).await;
        holds.print(Some(baseline.rate()));
        holds.print_threads(Some(&baseline));
    }
    println!("\nratio = req/s over the no-op baseline's req/s; target for embedded HTTP holds: >= 0.50x");
}

/// Resident memory of this process, in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// The in-process waiting room alone: a million joins, then status reads,
/// and the memory a waiting fan costs.
fn queue_in_process() {
    use boxoffice::accelerators::waiting_room::{Room, RoomSettings};
    use boxoffice::domain::draw::DrawKey;
    const FANS: u32 = 1_000_000;
    let on_sale = SystemClock.now();
    let settings = RoomSettings {
        rate_per_minute: 60_000,
        max_active: 10_000,
        on_sale_at: on_sale.plus_secs(3_600),
        claim_window: Duration::from_secs(120),
        shopping_time: Duration::from_secs(900),
    };
    let ids: Vec<u64> =
        (0..FANS).map(|i| boxoffice::accelerators::waiting_room::fan_key(&format!("fan{i}@example.com"))).collect();
    let before = resident_bytes();
    let mut room = Room::new(settings, DrawKey([3; 32]));
    let t = Instant::now();
    for id in &ids {
        room.join(*id, on_sale);
    }
    let joins = t.elapsed();
    let per_fan = resident_bytes().saturating_sub(before) as f64 / f64::from(FANS);
    // The draw at the on-sale, then every fan asking for their place.
    let t = Instant::now();
    let mut admitted = 0u32;
    for slot in 0..FANS {
        if let boxoffice::accelerators::waiting_room::Status::Admitted { .. } =
            room.status(slot, on_sale.plus_secs(3_601))
        {
            admitted += 1;
        }
    }
    let polls = t.elapsed();
    println!(
        "\nwaiting room, in-process: {FANS} joins in {:.2} s ({:.0}/s; target < 5 s); {FANS} status reads in {:.2} s ({:.0}/s, {admitted} admitted); about {per_fan:.0} bytes of memory per waiting fan (target <= 100)",
        joins.as_secs_f64(),
        f64::from(FANS) / joins.as_secs_f64(),
        polls.as_secs_f64(),
        f64::from(FANS) / polls.as_secs_f64(),
    );
}

/// `BENCH_ROUNDS` (default 9): rounds of baseline-then-joins in the queue
/// phases. This machine has slow spells of a few seconds; with more, shorter
/// rounds (`BENCH_SECS=2`) a spell spoils a pair or two, not the median.
fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).filter(|&n| n > 0).unwrap_or(9)
}

/// Queue joins and status polls over HTTP, next to the no-op baseline on
/// the same stack.
async fn queue_http(client: &reqwest::Client, backing: Backing<'_>) {
    let (rooms, polls_too) = match backing {
        Backing::Sqlite(_) => ("in-process rooms", phase("queue-poll")),
        Backing::Scaleout { .. } => ("rooms in Redis, PostgreSQL store, one node", true),
    };
    let (app, event, _) = new_app(backing).await;
    let store = app.state().store.clone();
    let venue = store.venue(&event.venue_id).await.unwrap().unwrap();
    let now = SystemClock.now();
    let mut ev = demo::event_json(venue.id.as_str(), now);
    ev["waiting_room"] = json!({"enabled": true, "admission_rate_per_minute": 600, "max_active_shoppers": 1000});
    let draft: EventDraft = serde_json::from_value(ev).unwrap();
    let queued = Event::from_draft(EventId::generate(), draft, &venue, now).unwrap();
    store.insert_event(&queued, &venue).await.unwrap();
    let base = serve(app);
    println!("\nwaiting room over HTTP, {rooms} ({CUSTOMERS} customers; after each has joined once, joins repeat and return the same entry)\n");
    header();
    // The machine's speed drifts over a run, so baseline and joins take
    // turns, and each joins phase is compared with the baseline just
    // before it; the median of the rounds is the figure.
    let join_url = format!("{base}/v1/events/{}/queue", queued.id);
    let mut ratios = Vec::new();
    let mut baseline = None;
    for _ in 0..rounds() {
        let b = noop_baseline(client, &base, json!({})).await;
        b.print(Some(b.rate()));
        let joins = {
            let (client, url) = (client.clone(), join_url.clone());
            drive("HTTP queue joins", move |w, i| {
                succeeded(client.post(&url).bearer_auth(format!("bench-token-{}", customer_index(w, i))))
            })
            .await
        };
        joins.print(Some(b.rate()));
        ratios.push((joins.rate() / b.rate(), b.cpu_us() / joins.cpu_us()));
        baseline = Some(b);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let shown: Vec<String> = v.iter().map(|r| format!("{r:.2}x")).collect();
        format!("{} (median {:.2}x)", shown.join(", "), v[v.len() / 2])
    };
    println!(
        "HTTP joins / no-op by round, req/s: {}; by CPU per request: {}",
        median(ratios.iter().map(|r| r.0).collect()),
        median(ratios.iter().map(|r| r.1).collect())
    );
    let baseline = baseline.expect("at least one round");
    if polls_too {
        // Every customer has joined (above); poll their entries.
        let entries: Arc<Vec<String>> = Arc::new(
            futures::stream::iter(0..CUSTOMERS)
                .map(|c| {
                    let req = client.post(&join_url).bearer_auth(format!("bench-token-{c}"));
                    async move {
                        let v: Value = req.send().await.unwrap().json().await.unwrap();
                        v["entry_id"].as_str().unwrap().to_owned()
                    }
                })
                .buffered(CONNECTIONS)
                .collect()
                .await,
        );
        let polls = {
            let (client, url) = (client.clone(), join_url);
            drive("HTTP queue status polls", move |w, i| {
                let c = customer_index(w, i);
                succeeded(client.get(format!("{url}/{}", entries[c])).bearer_auth(format!("bench-token-{c}")))
            })
            .await
        };
        polls.print(Some(baseline.rate()));
    }
    println!("\nratio = req/s over the no-op baseline's req/s; target for HTTP joins: >= 0.80x");
}
