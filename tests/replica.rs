//! Search and catalog reads go to the read replica.
//!
//! The test makes its own PostgreSQL primary (initdb on a free port) and a
//! streaming replica of it (pg_basebackup -R), so it never touches the
//! shared server. It pauses WAL replay on the replica, writes an event on
//! the primary, and shows search does not see it (the replica answered)
//! while a primary read does; after replay resumes, search sees it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxoffice::demo;
use boxoffice::domain::event::{Event, EventDraft};
use boxoffice::domain::ids::{EventId, VenueId};
use boxoffice::domain::time::{Clock, SystemClock};
use boxoffice::domain::venue::{Venue, VenueDraft};
use boxoffice::store::postgres::{PgSettings, PgStore};
use boxoffice::store::{DynStore, EventQuery};
use sqlx::Connection;

fn bindir() -> PathBuf {
    let out = Command::new("pg_config").arg("--bindir").output().expect("pg_config is installed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs a PostgreSQL tool as the `postgres` user (the server refuses root).
fn as_postgres(tool: &str, args: &[&str]) {
    let tool = bindir().join(tool);
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(&tool)
        .args(args)
        .output()
        .expect("runuser is available");
    assert!(out.status.success(), "{} {args:?}: {}", tool.display(), String::from_utf8_lossy(&out.stderr));
}

/// Stops both servers however the test ends.
struct Servers(Vec<PathBuf>);

impl Drop for Servers {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bindir().join("pg_ctl"))
                .args(["-D", d.to_str().unwrap(), "-m", "immediate", "stop"])
                .output();
        }
    }
}

fn start(data: &Path, port: u16) {
    let log = data.parent().unwrap().join(format!("{port}.log"));
    as_postgres(
        "pg_ctl",
        &[
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-o",
            &format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
                data.parent().unwrap().display()
            ),
            "start",
        ],
    );
}

async fn search_titles(store: &DynStore) -> Vec<String> {
    let q = EventQuery { limit: 100, ..Default::default() };
    store.search_events(&q).await.unwrap().into_iter().map(|e| e.title).collect()
}

/// Waits (up to 15 s) for replication to bring `title` to the replica.
/// Until the schema itself has replayed there, search fails; that is
/// "not yet" too.
async fn eventually_titles(store: &DynStore, title: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    let q = EventQuery { limit: 100, ..Default::default() };
    while Instant::now() < deadline {
        if let Ok(events) = store.search_events(&q).await {
            if events.iter().any(|e| e.title == title) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn add_event(store: &DynStore, venue: &Venue, title: &str) -> Event {
    let now = SystemClock.now();
    let mut json = demo::event_json(venue.id.as_str(), now);
    json["title"] = serde_json::json!(title);
    let draft: EventDraft = serde_json::from_value(json).unwrap();
    let e = Event::from_draft(EventId::generate(), draft, venue, now).unwrap();
    store.insert_event(&e, venue).await.unwrap();
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_is_served_by_the_read_replica() {
    let dir = tempfile::tempdir().unwrap();
    let chown = Command::new("chown").args(["postgres:postgres", dir.path().to_str().unwrap()]).status().unwrap();
    assert!(chown.success());
    let (primary, replica) = (dir.path().join("primary"), dir.path().join("replica"));
    let (pport, rport) = (free_port(), free_port());

    as_postgres("initdb", &["-D", primary.to_str().unwrap(), "-A", "trust", "-U", "postgres"]);
    let mut servers = Servers(vec![primary.clone()]);
    start(&primary, pport);
    as_postgres(
        "pg_basebackup",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &pport.to_string(),
            "-U",
            "postgres",
            "-D",
            replica.to_str().unwrap(),
            "-R",
            "-X",
            "stream",
        ],
    );
    servers.0.push(replica.clone());
    start(&replica, rport);

    let primary_url = format!("postgres://postgres@127.0.0.1:{pport}/postgres");
    let replica_url = format!("postgres://postgres@127.0.0.1:{rport}/postgres");
    let store: DynStore = Arc::new(
        PgStore::connect(&primary_url, std::slice::from_ref(&replica_url), &PgSettings::default()).await.unwrap(),
    );

    let draft: VenueDraft = serde_json::from_value(demo::venue_json()).unwrap();
    let venue = Venue::from_draft(VenueId::generate(), draft).unwrap();
    store.insert_venue(&venue, SystemClock.now()).await.unwrap();
    add_event(&store, &venue, "Before the pause").await;
    assert!(eventually_titles(&store, "Before the pause").await, "the replica caught up");

    let mut rep = sqlx::PgConnection::connect(&replica_url).await.unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()").execute(&mut rep).await.unwrap();
    let hidden = add_event(&store, &venue, "Written while paused").await;

    assert!(store.event(&hidden.id).await.unwrap().is_some(), "the primary has it");
    let titles = search_titles(&store).await;
    assert!(titles.contains(&"Before the pause".to_owned()));
    assert!(!titles.contains(&"Written while paused".to_owned()), "search was answered by the paused replica");

    sqlx::query("SELECT pg_wal_replay_resume()").execute(&mut rep).await.unwrap();
    assert!(eventually_titles(&store, "Written while paused").await, "search sees it once the replica replays");
    drop(servers);
}
