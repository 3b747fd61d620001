//! The `boxoffice` command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{open_store, shutdown_signal, Application, Role};
use crate::config::Config;
use crate::demo;
use crate::domain::customer::random_token;
use crate::domain::event::{Event, EventDraft};
use crate::domain::ids::{EventId, VenueId};
use crate::domain::time::{Clock, SystemClock};
use crate::domain::venue::{Venue, VenueDraft};
use crate::payments::sim::{Faults, FaultsPatch, Simulator};
use crate::store::DynStore;
use crate::telemetry;

#[derive(Parser, Debug)]
#[command(name = "boxoffice", version, about = "Ticket booking that sells every seat exactly once.")]
pub struct Cli {
    /// A TOML config file. Default: ./boxoffice.toml when it exists.
    #[arg(long, global = true, env = "BOXOFFICE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP API and background jobs.
    Serve {
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Run on a fresh embedded database seeded with a demo venue and event.
    Demo,
    /// Check the booking invariants against the database, and the money
    /// against the gateway's ledger; exits non-zero on any violation.
    Audit {
        /// The gateway whose ledger (`/sim/ledger`) to compare with. Default:
        /// `stripe_url` when `payments = "stripe"`; otherwise money is not checked.
        #[arg(long)]
        ledger_url: Option<String>,
    },
    /// Run the payment gateway simulator: a Stripe-compatible test gateway
    /// with test cards for every failure mode and runtime fault knobs.
    GatewaySim(GatewaySimArgs),
}

/// `boxoffice gateway-sim`'s options; every fault can also be changed while
/// it runs with `PATCH /sim/config` (see docs/payments.md).
#[derive(clap::Args, Debug)]
pub struct GatewaySimArgs {
    /// The address to listen on.
    #[arg(long, env = "BOXOFFICE_GATEWAY_SIM_LISTEN", default_value = "127.0.0.1:12111")]
    pub listen: std::net::SocketAddr,
    /// Require this secret key as the bearer token. Unset: any key is accepted.
    #[arg(long, env = "BOXOFFICE_GATEWAY_SIM_API_KEY")]
    pub api_key: Option<String>,
    /// Latency added to every API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share (0-1) of API requests refused with 429.
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_rate: f64,
    /// Share (0-1) of API requests that run and then lose their response.
    #[arg(long, default_value_t = 0.0)]
    pub drop_response_rate: f64,
    /// Share (0-1) of API requests that run and then answer only after
    /// --slow-response-ms, so that callers time out.
    #[arg(long, default_value_t = 0.0)]
    pub timeout_rate: f64,
    /// How late a slow answer comes, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub slow_response_ms: u64,
    /// Start in an outage (every API request gets 503) lasting this long.
    #[arg(long)]
    pub outage_for_ms: Option<u64>,
    /// How long a `processing` payment takes to settle, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub settle_after_ms: u64,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    telemetry::init_logging(&config.log);
    match cli.command {
        Command::GatewaySim(args) => gateway_sim(args).await,
        Command::Audit { ledger_url } => audit(&config, ledger_url).await,
        Command::Migrate => {
            let store = open_store(&config).await?;
            println!("migrated the {} database; it is up to date", store.backend());
            Ok(())
        }
        Command::Serve { role } => {
            let admin_token = admin_token(&config);
            let app = Application::build(&config, role, Arc::new(SystemClock), &admin_token).await?;
            tracing::info!(addr = %app.local_addr(), ?role, "boxoffice is serving");
            app.run_until(shutdown_signal()).await
        }
        Command::Demo => {
            let path = config.data_dir.join("demo.db");
            reset_demo_database(&path)?;
            config.database_url = Some(format!("sqlite://{}", path.display()));
            let admin_token = admin_token(&config);
            let store = open_store(&config).await?;
            let event = seed_demo(&store).await?;
            let app = Application::build_with_store(
                &config,
                Role::All,
                Arc::new(SystemClock),
                &admin_token,
                store,
                Default::default(),
            )
            .await?;
            print_demo_banner(&format!("http://{}", app.local_addr()), &admin_token, &event, &path);
            app.run_until(shutdown_signal()).await
        }
    }
}

async fn audit(config: &Config, ledger_url: Option<String>) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    let ledger_url = ledger_url
        .or_else(|| (config.payments == crate::config::Payments::Stripe).then(|| config.stripe_url.clone()).flatten());
    let ledger = match &ledger_url {
        Some(url) => {
            let ledger =
                crate::audit::fetch_ledger(url).await.with_context(|| format!("reading the ledger at {url}"))?;
            if ledger.is_none() {
                println!("the gateway at {url} has no ledger endpoint; payments are not checked");
            }
            ledger
        }
        None => {
            println!("no gateway ledger given (--ledger-url); payments are not checked");
            None
        }
    };
    let grace = crate::audit::Grace {
        sweep: std::time::Duration::from_secs(config.sweep_interval_seconds * 2 + 5),
        reconcile: std::time::Duration::from_secs(config.reconcile_interval_seconds * 4 + 60),
    };
    let found = crate::audit::run(&store, ledger.as_deref(), SystemClock.now(), grace).await?;
    for v in &found {
        println!("{v}");
    }
    if found.is_empty() {
        println!(
            "audit: clean ({} database{})",
            store.backend(),
            if ledger.is_some() { " and gateway ledger" } else { "" }
        );
        Ok(())
    } else {
        anyhow::bail!("audit: {} violation(s)", found.len())
    }
}

async fn gateway_sim(args: GatewaySimArgs) -> anyhow::Result<()> {
    let sim = Simulator::new(Arc::new(SystemClock), args.api_key, Faults::default());
    let patch = FaultsPatch {
        latency_ms: Some(args.latency_ms),
        rate_limit_rate: Some(args.rate_limit_rate),
        drop_response_rate: Some(args.drop_response_rate),
        slow_response_rate: Some(args.timeout_rate),
        slow_response_ms: Some(args.slow_response_ms),
        outage_for_ms: args.outage_for_ms,
        settle_after_ms: Some(args.settle_after_ms),
        ..Default::default()
    };
    sim.set_faults(patch).map_err(|e| anyhow::anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the gateway simulator to {}", args.listen))?;
    let base = format!("http://{}", listener.local_addr()?);
    println!("gateway simulator listening on {base}");
    println!("  test payment methods: {}", crate::payments::sim::cards::method_ids().collect::<Vec<_>>().join(", "));
    println!("  faults: GET/PATCH {base}/sim/config   ledger: GET {base}/sim/ledger");
    tokio::select! {
        r = sim.serve(listener) => r.context("gateway simulator server"),
        () = shutdown_signal() => Ok(()),
    }
}

/// The configured admin token, or a fresh one printed once.
fn admin_token(config: &Config) -> String {
    match &config.admin_token {
        Some(t) => t.clone(),
        None => {
            let t = random_token("bxa");
            println!("BOXOFFICE_ADMIN_TOKEN was not set; this run's admin token is:\n  {t}");
            t
        }
    }
}

/// The demo starts from nothing every time; it never touches the
/// database `serve` uses.
fn reset_demo_database(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing old demo database {}", p.display())),
        }
    }
    Ok(())
}

async fn seed_demo(store: &DynStore) -> anyhow::Result<Event> {
    let now = SystemClock.now();
    let draft: VenueDraft = serde_json::from_value(demo::venue_json())?;
    let venue = Venue::from_draft(VenueId::generate(), draft).map_err(|e| anyhow::anyhow!("demo venue: {:?}", e.0))?;
    store.insert_venue(&venue, now).await?;
    let draft: EventDraft = serde_json::from_value(demo::event_json(venue.id.as_str(), now))?;
    let event = Event::from_draft(EventId::generate(), draft, &venue, now)
        .map_err(|e| anyhow::anyhow!("demo event: {:?}", e.0))?;
    store.insert_event(&event, &venue).await?;
    Ok(event)
}

fn print_demo_banner(base: &str, admin: &str, event: &Event, path: &Path) {
    let id = &event.id;
    println!(
        r#"
boxoffice demo is running at {base}
  admin token : {admin}
  event       : {id}  "{title}" — 300 seats (A1..O20; rows A-B premium) and a 500-place GA area "floor"
  database    : {db} (reset on every demo start)
  payments    : the in-process gateway simulator (test cards: docs/payments.md)

Try it:
  curl -s {base}/v1/events/{id}/availability
  TOKEN=$(curl -s -X POST {base}/v1/sessions -H 'content-type: application/json' \
            -d '{{"email":"fan@example.com"}}' | sed -E 's/.*"session_token":"([^"]+)".*/\1/')
  HOLD=$(curl -s -X POST {base}/v1/events/{id}/holds -H "authorization: Bearer $TOKEN" \
       -H 'content-type: application/json' -d '{{"seats":["A7","A8"]}}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
  curl -s -X POST {base}/v1/holds/$HOLD/checkout -H "authorization: Bearer $TOKEN" \
       -H "Idempotency-Key: demo-$HOLD" -H 'content-type: application/json' \
       -d '{{"payment_method":"pm_card_visa"}}'
  curl -s {base}/openapi.json | head -c 300

Press Ctrl-C to stop.
"#,
        title = event.title,
        db = path.display(),
    );
}
