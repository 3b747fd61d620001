//! The binary itself, as a newcomer runs it: `migrate`, and `demo`
//! answering over HTTP with its seeded event.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_boxoffice");

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn migrate_creates_the_embedded_database_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).arg("migrate").env("BOXOFFICE_DATA_DIR", dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("boxoffice.db").exists());
    // Running it again is a no-op.
    let again = Command::new(BIN).arg("migrate").env("BOXOFFICE_DATA_DIR", dir.path()).output().unwrap();
    assert!(again.status.success());
}

#[test]
fn a_bad_setting_stops_the_process_with_its_name() {
    let out = Command::new(BIN).arg("migrate").env("BOXOFFICE_DATABASE_URL", "mysql://x").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database_url"));
}

#[tokio::test]
async fn demo_serves_a_seeded_event_and_prints_how_to_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .arg("demo")
        .env("BOXOFFICE_DATA_DIR", dir.path())
        .env("BOXOFFICE_LISTEN", "127.0.0.1:0")
        .env_remove("BOXOFFICE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let stdout = child.0.stdout.take().unwrap();
    // Read the banner on a thread; give up after 60 s rather than hang.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        let _ = tx.send(banner);
    });
    let banner = rx.recv_timeout(Duration::from_secs(60)).expect("demo printed its banner");
    let base = banner.split_whitespace().find(|w| w.starts_with("http://")).expect("a base URL").to_owned();
    let event = banner.split_whitespace().find(|w| w.starts_with("evt_")).expect("an event id").to_owned();
    assert!(banner.contains("admin token : bxa_"), "{banner}");
    assert!(banner.contains("curl"), "{banner}");

    let seats: serde_json::Value =
        reqwest::get(format!("{base}/v1/events/{event}/seats")).await.unwrap().json().await.unwrap();
    assert_eq!(seats["seats"].as_array().unwrap().len(), 300);
    assert_eq!(seats["ga_areas"][0]["capacity"], 500);
    let a7 = seats["seats"].as_array().unwrap().iter().find(|s| s["id"] == "A7").unwrap().clone();
    assert_eq!(a7["category"], "premium");
    let detail: serde_json::Value =
        reqwest::get(format!("{base}/v1/events/{event}")).await.unwrap().json().await.unwrap();
    assert_eq!(detail["status"], "on_sale");
}

/// `migrate` against PostgreSQL, on a database made for this test.
#[tokio::test]
async fn migrate_also_runs_against_postgres() {
    use sqlx::Connection;
    let admin =
        std::env::var("BOXOFFICE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("boxoffice_cli_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL is reachable (see .ci/run)");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let out = Command::new(BIN).arg("migrate").env("BOXOFFICE_DATABASE_URL", &url).output().unwrap();
    let tables: i64 = {
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('seats', 'holds', 'events')",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        db.close().await.unwrap();
        n
    };
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut c).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("postgres"));
    assert_eq!(tables, 3);
}
