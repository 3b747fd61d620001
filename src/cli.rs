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
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    telemetry::init_logging(&config.log);
    match cli.command {
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

Try it:
  curl -s {base}/v1/events/{id}/availability
  TOKEN=$(curl -s -X POST {base}/v1/sessions -H 'content-type: application/json' \
            -d '{{"email":"fan@example.com"}}' | sed -E 's/.*"session_token":"([^"]+)".*/\1/')
  curl -s -X POST {base}/v1/events/{id}/holds -H "authorization: Bearer $TOKEN" \
       -H 'content-type: application/json' -d '{{"seats":["A7","A8"]}}'
  curl -s {base}/openapi.json | head -c 300

Press Ctrl-C to stop.
"#,
        title = event.title,
        db = path.display(),
    );
}
