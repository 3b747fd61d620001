//! Configuration: built-in defaults, then an optional TOML file, then
//! `BOXOFFICE_*` environment variables, each overriding the one before.
//! Every option and its default is listed in `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::store::sqlite::Synchronous;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `BOXOFFICE_LISTEN`: the address the HTTP server binds.
    pub listen: SocketAddr,
    /// `BOXOFFICE_DATA_DIR`: home of the embedded SQLite database.
    pub data_dir: PathBuf,
    /// `BOXOFFICE_DATABASE_URL`: overrides `data_dir`: `sqlite://PATH` or
    /// `postgres://…` (the scale-out primary).
    pub database_url: Option<String>,
    /// `BOXOFFICE_DATABASE_READ_URL`: PostgreSQL read replicas for search and
    /// catalog reads, comma-separated. Unset: the primary serves them.
    pub database_read_url: Option<String>,
    /// `BOXOFFICE_DATABASE_MAX_CONNECTIONS`: PostgreSQL pool size per node.
    pub database_max_connections: u32,
    /// `BOXOFFICE_DATABASE_STATEMENT_TIMEOUT_MS`: PostgreSQL's
    /// `statement_timeout`, and the pool's acquire timeout.
    pub database_statement_timeout_ms: u64,
    /// `BOXOFFICE_REDIS_URL`: Redis for the seat-lock fast path; several
    /// comma-separated URLs mean a Redis Cluster. Unset: in-process locks.
    pub redis_url: Option<String>,
    /// `BOXOFFICE_REDIS_PREFIX`: namespace for every key boxoffice writes.
    pub redis_prefix: String,
    /// `BOXOFFICE_REDIS_RETRY_AFTER_MS`: after a Redis failure, how long
    /// holds skip Redis (going to the database alone) before trying again.
    pub redis_retry_after_ms: u64,
    /// `BOXOFFICE_REDIS_TIMEOUT_MS`: the longest a seat-lock call to Redis may
    /// take before Redis counts as degraded.
    pub redis_timeout_ms: u64,
    /// `BOXOFFICE_ADMIN_TOKEN`: bearer token for admin endpoints. When
    /// unset, `serve` and `demo` generate one and print it once.
    #[serde(skip_serializing)]
    pub admin_token: Option<String>,
    /// `BOXOFFICE_SCANNER_TOKEN`: bearer token for door staff; it opens
    /// `POST /v1/checkins` and nothing else. Unset: only the admin token scans.
    #[serde(skip_serializing)]
    pub scanner_token: Option<String>,
    /// `BOXOFFICE_SQLITE_SYNCHRONOUS`: `auto` (default), `full` or `normal`.
    pub sqlite_synchronous: Synchronous,
    /// `BOXOFFICE_SWEEP_INTERVAL_SECONDS`: how often lapsed holds are tidied.
    pub sweep_interval_seconds: u64,
    /// `BOXOFFICE_RECONCILE_INTERVAL_SECONDS`: how often payments whose
    /// outcome was not known are settled with the gateway.
    pub reconcile_interval_seconds: u64,
    /// `BOXOFFICE_SESSION_TTL_HOURS`: how long a customer session lasts.
    pub session_ttl_hours: u64,
    /// `BOXOFFICE_MAX_BODY_BYTES`: request body limit (venues get 32 MiB).
    pub max_body_bytes: usize,
    /// `BOXOFFICE_REQUEST_TIMEOUT_SECONDS`: every request's deadline.
    pub request_timeout_seconds: u64,
    /// `BOXOFFICE_MAX_IN_FLIGHT`: requests served at once per node; more are
    /// shed at once with 503 `overloaded`.
    pub max_in_flight: usize,
    /// `BOXOFFICE_RESERVED_IN_FLIGHT`: of those, how many only checkout and
    /// payment requests may use.
    pub reserved_in_flight: usize,
    /// `BOXOFFICE_RATE_LIMIT_IP_PER_SECOND` / `…_BURST`: GCRA limit per client
    /// address (0: off).
    pub rate_limit_ip_per_second: u32,
    pub rate_limit_ip_burst: u32,
    /// `BOXOFFICE_RATE_LIMIT_CUSTOMER_PER_SECOND` / `…_BURST`: GCRA limit per
    /// bearer token, the admin's excepted (0: off).
    pub rate_limit_customer_per_second: u32,
    pub rate_limit_customer_burst: u32,
    /// `BOXOFFICE_TRUST_FORWARDED_FOR`: take the client address from
    /// `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_forwarded_for: bool,
    /// `BOXOFFICE_MAX_SEAT_STREAMS`: open seat-map streams per node; more
    /// are refused with 503 `overloaded`.
    pub max_seat_streams: usize,
    /// `BOXOFFICE_LOG`: a tracing filter such as `info` or `boxoffice=debug`.
    pub log: String,
    /// `BOXOFFICE_PAYMENTS`: `simulator` (default: the bundled gateway
    /// simulator, in-process) or `stripe` (a Stripe-compatible gateway at
    /// `stripe_url`).
    pub payments: Payments,
    /// `BOXOFFICE_STRIPE_URL`: the gateway's base URL, such as
    /// `https://api.stripe.com` or a `gateway-sim` address.
    pub stripe_url: Option<String>,
    /// `BOXOFFICE_STRIPE_KEY`: the gateway's secret key.
    #[serde(skip_serializing)]
    pub stripe_key: Option<String>,
    /// `BOXOFFICE_GATEWAY_TIMEOUT_MS`: the deadline of each gateway call.
    pub gateway_timeout_ms: u64,
    /// `BOXOFFICE_GATEWAY_MAX_RETRIES`: retries (same idempotency key) after
    /// a gateway call that failed in a way a retry may cure.
    pub gateway_max_retries: u32,
    /// `BOXOFFICE_PAYMENT_WINDOW_SECONDS`: how much longer a hold lives once
    /// its checkout starts (added once per hold).
    pub payment_window_seconds: u32,
    /// `BOXOFFICE_WEBHOOK_URL`: where every notification is POSTed as a
    /// signed JSON event. Unset: no webhooks.
    pub webhook_url: Option<String>,
    /// `BOXOFFICE_WEBHOOK_SECRET`: the HMAC-SHA256 key that signs webhooks.
    #[serde(skip_serializing)]
    pub webhook_secret: Option<String>,
    /// `BOXOFFICE_SMTP_URL`: the mail server for fan emails, such as
    /// `smtp://127.0.0.1:25` or `smtps://user:pass@mail.example.com`. Unset: no email.
    #[serde(skip_serializing)]
    pub smtp_url: Option<String>,
    /// `BOXOFFICE_EMAIL_FROM`: the sender of fan emails.
    pub email_from: String,
    /// `BOXOFFICE_OUTBOX_INTERVAL_SECONDS`: how often the relay delivers
    /// notifications.
    pub outbox_interval_seconds: u64,
    /// `BOXOFFICE_QUEUE_CLAIM_WINDOW_SECONDS`: how long a fan let out of a
    /// waiting room has to claim the turn before it passes on.
    pub queue_claim_window_seconds: u64,
    /// `BOXOFFICE_QUEUE_SHOPPING_SECONDS`: how long a claimed turn (its
    /// admission token) lasts after the claim window.
    pub queue_shopping_seconds: u64,
    /// `BOXOFFICE_TICKET_SIGNING_KEY`: the Ed25519 seed (32 bytes,
    /// base64url) that signs ticket codes. Unset: one is generated and kept
    /// in the database, shared by every node.
    #[serde(skip_serializing)]
    pub ticket_signing_key: Option<String>,
}

/// Which payment gateway checkout talks to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payments {
    #[default]
    Simulator,
    Stripe,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            database_read_url: None,
            database_max_connections: 16,
            database_statement_timeout_ms: 5_000,
            redis_url: None,
            redis_prefix: "boxoffice:".into(),
            redis_retry_after_ms: 1_000,
            redis_timeout_ms: 250,
            admin_token: None,
            scanner_token: None,
            sqlite_synchronous: Synchronous::Auto,
            sweep_interval_seconds: 5,
            reconcile_interval_seconds: 15,
            session_ttl_hours: 24 * 30,
            max_body_bytes: 256 * 1024,
            request_timeout_seconds: 30,
            max_seat_streams: 10_000,
            max_in_flight: 4096,
            reserved_in_flight: 512,
            rate_limit_ip_per_second: 0,
            rate_limit_ip_burst: 0,
            rate_limit_customer_per_second: 20,
            rate_limit_customer_burst: 40,
            trust_forwarded_for: false,
            log: "info".into(),
            payments: Payments::Simulator,
            stripe_url: None,
            stripe_key: None,
            gateway_timeout_ms: 10_000,
            gateway_max_retries: 3,
            payment_window_seconds: 600,
            ticket_signing_key: None,
            webhook_url: None,
            webhook_secret: None,
            smtp_url: None,
            email_from: "boxoffice <tickets@localhost>".into(),
            outbox_interval_seconds: 2,
            queue_claim_window_seconds: 120,
            queue_shopping_seconds: 900,
        }
    }
}

/// Where the source of truth lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres { primary: String, replicas: Vec<String> },
}

impl Config {
    /// The Redis URLs, if any are configured.
    pub fn redis_urls(&self) -> Vec<String> {
        url_list(self.redis_url.as_deref())
    }

    /// Loads defaults, then `file` (if given, it must exist; otherwise
    /// `./boxoffice.toml` if present), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) => {
                if !f.exists() {
                    bail!("config file {} does not exist", f.display());
                }
                fig = fig.merge(Toml::file(f));
            }
            None if Path::new("boxoffice.toml").exists() => fig = fig.merge(Toml::file("boxoffice.toml")),
            None => {}
        }
        fig = fig.merge(Env::prefixed("BOXOFFICE_").ignore(&["config"]));
        let c: Config = fig.extract().context("reading configuration")?;
        if c.max_body_bytes < 1024 {
            bail!("max_body_bytes must be at least 1024");
        }
        if c.request_timeout_seconds == 0 {
            bail!("request_timeout_seconds must be at least 1");
        }
        if c.database_max_connections == 0 || c.database_statement_timeout_ms == 0 {
            bail!("database_max_connections and database_statement_timeout_ms must be at least 1");
        }
        if c.sweep_interval_seconds == 0 || c.reconcile_interval_seconds == 0 {
            bail!("sweep_interval_seconds and reconcile_interval_seconds must be at least 1");
        }
        if c.payments == Payments::Stripe && (c.stripe_url.is_none() || c.stripe_key.is_none()) {
            bail!("payments = \"stripe\" needs stripe_url and stripe_key (BOXOFFICE_STRIPE_URL, BOXOFFICE_STRIPE_KEY)");
        }
        if c.webhook_url.is_some() && c.webhook_secret.as_ref().is_none_or(|s| s.len() < 16) {
            bail!("webhook_url needs a webhook_secret of at least 16 characters");
        }
        if c.max_in_flight == 0 || c.reserved_in_flight >= c.max_in_flight {
            bail!("max_in_flight must be at least 1 and more than reserved_in_flight");
        }
        if c.outbox_interval_seconds == 0 {
            bail!("outbox_interval_seconds must be at least 1");
        }
        if c.redis_prefix.contains(['{', '}']) {
            // Keys carry their own hash tags (one Cluster slot per event).
            bail!("redis_prefix must not contain braces");
        }
        if c.gateway_timeout_ms == 0 || c.payment_window_seconds == 0 {
            bail!("gateway_timeout_ms and payment_window_seconds must be at least 1");
        }
        if let Some(k) = &c.ticket_signing_key {
            if crate::domain::ticket::TicketSigner::from_base64_seed(k).is_none() {
                bail!("ticket_signing_key must be 32 bytes in base64url");
            }
        }
        if let Some(t) = &c.admin_token {
            if t.len() < 16 {
                bail!("admin_token must be at least 16 characters");
            }
        }
        if let Some(t) = &c.scanner_token {
            if t.len() < 16 || Some(t) == c.admin_token.as_ref() {
                bail!("scanner_token must be at least 16 characters and differ from admin_token");
            }
        }
        Ok(c)
    }

    pub fn database(&self) -> anyhow::Result<Database> {
        let Some(url) = self.database_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(Database::Sqlite(self.data_dir.join("boxoffice.db")));
        };
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                bail!("database_url {url:?} names no file");
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let replicas = url_list(self.database_read_url.as_deref());
            return Ok(Database::Postgres { primary: url.to_owned(), replicas });
        }
        bail!("database_url {url:?}: expected sqlite://PATH or postgres://…")
    }
}

/// A comma-separated list of URLs; blanks are skipped.
fn url_list(setting: Option<&str>) -> Vec<String> {
    setting.unwrap_or("").split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_understood_or_refused_by_name() {
        let mut c = Config::default();
        assert_eq!(c.database().unwrap(), Database::Sqlite(PathBuf::from("./data/boxoffice.db")));
        c.database_url = Some("sqlite:///tmp/x.db".into());
        assert_eq!(c.database().unwrap(), Database::Sqlite(PathBuf::from("/tmp/x.db")));
        c.database_url = Some("postgres://db1/box".into());
        c.database_read_url = Some("postgres://r1/box, postgres://r2/box".into());
        assert_eq!(
            c.database().unwrap(),
            Database::Postgres {
                primary: "postgres://db1/box".into(),
                replicas: vec!["postgres://r1/box".into(), "postgres://r2/box".into()]
            }
        );
        c.database_url = Some("mysql://x".into());
        assert!(c.database().unwrap_err().to_string().contains("database_url"));
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod layering_tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("boxoffice.toml", "listen = \"0.0.0.0:9000\"\ndata_dir = \"/srv/box\"\nlog = \"debug\"")?;
            jail.set_env("BOXOFFICE_DATA_DIR", "/env/box");
            jail.set_env("BOXOFFICE_ADMIN_TOKEN", "an-admin-token-of-length");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.to_string(), "0.0.0.0:9000", "from the file");
            assert_eq!(c.data_dir, PathBuf::from("/env/box"), "env beats file");
            assert_eq!(c.log, "debug");
            assert_eq!(c.admin_token.as_deref(), Some("an-admin-token-of-length"));
            assert_eq!(c.sweep_interval_seconds, 5, "default");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_setting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BOXOFFICE_LISTEN", "not-an-address");
            let err = format!("{:#}", Config::load(None).unwrap_err());
            assert!(err.to_lowercase().contains("listen"), "{err}");
            jail.set_env("BOXOFFICE_LISTEN", "127.0.0.1:1");
            jail.set_env("BOXOFFICE_ADMIN_TOKEN", "short");
            let err = format!("{:#}", Config::load(None).unwrap_err());
            assert!(err.contains("admin_token"), "{err}");
            jail.set_env("BOXOFFICE_ADMIN_TOKEN", "an-admin-token-of-length");
            jail.set_env("BOXOFFICE_REDIS_PREFIX", "bo{x}:");
            let err = format!("{:#}", Config::load(None).unwrap_err());
            assert!(err.contains("redis_prefix"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn stripe_payments_need_a_url_and_a_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BOXOFFICE_PAYMENTS", "stripe");
            let err = format!("{:#}", Config::load(None).unwrap_err());
            assert!(err.contains("stripe_url"), "{err}");
            jail.set_env("BOXOFFICE_STRIPE_URL", "http://127.0.0.1:12111");
            jail.set_env("BOXOFFICE_STRIPE_KEY", "sk_test_x");
            assert_eq!(Config::load(None).map_err(|e| e.to_string())?.payments, Payments::Stripe);
            jail.set_env("BOXOFFICE_TICKET_SIGNING_KEY", "short");
            let err = format!("{:#}", Config::load(None).unwrap_err());
            assert!(err.contains("ticket_signing_key"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_named_config_file_must_exist() {
        let err = Config::load(Some(Path::new("/nonexistent/boxoffice.toml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
