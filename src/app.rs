//! Wiring: builds the store, accelerators, services and router from a
//! [`Config`], binds the listener, and runs until shutdown.
//!
//! `Application::build` binds before it returns, so tests can listen on
//! port 0 and ask for [`Application::port`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::accelerators::redis_conn::{RedisConn, RedisSettings};
use crate::accelerators::redis_rooms::{RedisRooms, TickerSettings};
use crate::accelerators::waiting_room::{InProcessRooms, WaitingRooms};
use crate::accelerators::{CatalogCache, InProcessSeatLocks, RedisBus, RedisSeatLocks, SeatFeed, SeatLocks};
use crate::api::traffic::{self, Traffic, TrafficSettings};
use crate::api::{self, AppState, HttpLimits, Payments};
use crate::booking::checkout::CheckoutService;
use crate::booking::queue::{QueueService, QueueSettings};
use crate::booking::BookingService;
use crate::config::{Config, Database, Payments as PaymentsSetting};
use crate::domain::admission::AdmissionKey;
use crate::domain::ticket::TicketSigner;
use crate::domain::time::Clock;
use crate::jobs::outbox::{self, Relay, RelaySettings};
use crate::jobs::{reconcile, sweeper};
use crate::payments::sim::{Faults, Simulator};
use crate::payments::{ClientSettings, StripeClient};
use crate::store::postgres::{PgSettings, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::store::DynStore;
use crate::telemetry;

/// Which parts of the service this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API and the background jobs.
    All,
    /// Only the HTTP API.
    Api,
    /// Only the background jobs (plus /healthz, /readyz, /metrics).
    Worker,
}

/// Opens the configured source of truth, migrating it.
pub async fn open_store(config: &Config) -> anyhow::Result<DynStore> {
    match config.database()? {
        Database::Sqlite(path) => Ok(Arc::new(SqliteStore::open(&path, config.sqlite_synchronous)?)),
        Database::Postgres { primary, replicas } => {
            let timeout = Duration::from_millis(config.database_statement_timeout_ms);
            let settings = PgSettings {
                max_connections: config.database_max_connections,
                acquire_timeout: timeout,
                statement_timeout: timeout,
            };
            Ok(Arc::new(PgStore::connect(&primary, &replicas, &settings).await?))
        }
    }
}

/// The payment gateway (the in-process simulator or a Stripe-compatible
/// one), the ticket key, and the checkout service over them.
async fn payments(
    config: &Config,
    store: &DynStore,
    booking: BookingService,
    catalog: Arc<CatalogCache>,
    rooms: Arc<dyn WaitingRooms>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Payments> {
    let (url, key, simulator) = match config.payments {
        PaymentsSetting::Simulator => {
            let sim = Simulator::new(clock.clone(), None, Faults::default());
            let url = sim.spawn_loopback().await.context("starting the in-process gateway simulator")?;
            (url, "sk_test_boxoffice_simulator".to_owned(), Some(sim))
        }
        PaymentsSetting::Stripe => (
            config.stripe_url.clone().context("BOXOFFICE_STRIPE_URL")?,
            config.stripe_key.clone().context("BOXOFFICE_STRIPE_KEY")?,
            None,
        ),
    };
    // A checkout's gateway call must end before its HTTP request's deadline.
    let request_deadline = Duration::from_secs(config.request_timeout_seconds);
    let settings = ClientSettings {
        timeout: Duration::from_millis(config.gateway_timeout_ms),
        deadline: request_deadline.saturating_sub(Duration::from_secs(5)).max(Duration::from_secs(1)),
        max_retries: config.gateway_max_retries,
        ..ClientSettings::new(url, key)
    };
    let gateway = Arc::new(StripeClient::new(settings, clock.clone())?);
    let signer = match &config.ticket_signing_key {
        Some(k) => TicketSigner::from_base64_seed(k).context("BOXOFFICE_TICKET_SIGNING_KEY")?,
        None => {
            let fresh = crate::domain::customer::random_secret().to_vec();
            let seed: [u8; 32] = store
                .ensure_setting("ticket_signing_seed", fresh)
                .await?
                .try_into()
                .map_err(|_| anyhow::anyhow!("the stored ticket signing seed is not 32 bytes"))?;
            TicketSigner::from_seed(&seed)
        }
    };
    let checkout = CheckoutService::new(booking, gateway, signer, config.payment_window_seconds);
    // Admission tokens are signed with a key every node shares.
    let admission: [u8; 32] = store
        .ensure_setting("admission_token_key", crate::domain::customer::random_secret().to_vec())
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the stored admission token key is not 32 bytes"))?;
    let queue = QueueService::new(
        store.clone(),
        rooms,
        catalog,
        clock,
        AdmissionKey::new(admission),
        QueueSettings {
            claim_window: Duration::from_secs(config.queue_claim_window_seconds),
            shopping_time: Duration::from_secs(config.queue_shopping_seconds),
        },
    );
    Ok(Payments { checkout, queue, simulator, scanner_token: config.scanner_token.clone() })
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    bus: Option<RedisBus>,
    role: Role,
    sweep_period: Duration,
    reconcile_period: Duration,
    relay: Relay,
    outbox_period: Duration,
}

impl Application {
    pub async fn build(config: &Config, role: Role, clock: Arc<dyn Clock>, admin_token: &str) -> anyhow::Result<Self> {
        let store = open_store(config).await?;
        Self::build_with_store(config, role, clock, admin_token, store, Router::new()).await
    }

    /// Like [`Application::build`] with a given store and extra routes
    /// (the benchmark's no-op baseline) behind the same middleware.
    pub async fn build_with_store(
        config: &Config,
        role: Role,
        clock: Arc<dyn Clock>,
        admin_token: &str,
        store: DynStore,
        extra: Router<AppState>,
    ) -> anyhow::Result<Self> {
        // Scale-out: one Redis connection for seat locks, waiting rooms and
        // rate limits.
        let redis = match config.redis_urls().as_slice() {
            [] => None,
            urls => Some(
                RedisConn::connect(
                    urls,
                    RedisSettings {
                        call_timeout: Duration::from_millis(config.redis_timeout_ms.max(1)),
                        retry_after: Duration::from_millis(config.redis_retry_after_ms),
                    },
                )
                .await
                .context("BOXOFFICE_REDIS_URL")?,
            ),
        };
        let (locks, rooms): (Arc<dyn SeatLocks>, Arc<dyn WaitingRooms>) = match &redis {
            None => (Arc::new(InProcessSeatLocks::new()), Arc::new(InProcessRooms::new())),
            Some(redis) => (
                Arc::new(RedisSeatLocks::new(redis.clone(), &config.redis_prefix)),
                Arc::new(RedisRooms::new(redis.clone(), &config.redis_prefix, TickerSettings::default())),
            ),
        };
        let bus = match config.redis_urls().first() {
            Some(url) => Some(RedisBus::new(url, &config.redis_prefix).context("BOXOFFICE_REDIS_URL")?),
            None => None,
        };
        let catalog = Arc::new(CatalogCache::new(store.clone(), bus.clone()));
        let feed = match &bus {
            Some(bus) => SeatFeed::relayed(bus.clone()),
            None => Arc::new(SeatFeed::new()),
        };
        let relay = Relay::new(
            store.clone(),
            clock.clone(),
            &RelaySettings {
                webhook_url: config.webhook_url.clone(),
                webhook_secret: config.webhook_secret.clone(),
                smtp_url: config.smtp_url.clone(),
                email_from: config.email_from.clone(),
                timeout: Duration::from_secs(10),
            },
        )
        .context("notification settings")?;
        let booking = BookingService::with_feed(store.clone(), locks, clock.clone(), feed);
        let payments = payments(config, &store, booking.clone(), catalog.clone(), rooms, clock).await?;
        let state = AppState::new(
            booking,
            payments,
            catalog,
            admin_token,
            Duration::from_secs(config.session_ttl_hours * 3600),
            config.max_seat_streams,
            Duration::from_secs(config.request_timeout_seconds),
            Traffic::new(
                &TrafficSettings {
                    max_in_flight: config.max_in_flight,
                    reserved_in_flight: config.reserved_in_flight,
                    per_ip_per_second: config.rate_limit_ip_per_second,
                    per_ip_burst: config.rate_limit_ip_burst,
                    per_customer_per_second: config.rate_limit_customer_per_second,
                    per_customer_burst: config.rate_limit_customer_burst,
                    trust_forwarded_for: config.trust_forwarded_for,
                },
                redis.map(|r| (r, config.redis_prefix.clone())),
            ),
            telemetry::metrics_handle(),
        );
        let limits = HttpLimits {
            max_body_bytes: config.max_body_bytes,
            request_timeout: Duration::from_secs(config.request_timeout_seconds),
            ..HttpLimits::default()
        };
        let router = match role {
            Role::Worker => api::ops_router(state.clone()),
            Role::All | Role::Api => api::router_with(state.clone(), &limits, extra),
        };
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        Ok(Application {
            listener,
            router,
            state,
            bus,
            role,
            sweep_period: Duration::from_secs(config.sweep_interval_seconds),
            reconcile_period: Duration::from_secs(config.reconcile_interval_seconds),
            relay,
            outbox_period: Duration::from_secs(config.outbox_interval_seconds),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The notification relay this node runs (on `all` and `worker` roles).
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Serves until `shutdown` completes, then drains in-flight requests
    /// and stops the background jobs.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let listener = self.bus.clone().map(|bus| {
            let (catalog, feed, clock) =
                (self.state.catalog.clone(), self.state.booking.feed().clone(), self.state.clock.clone());
            tokio::spawn(bus.listen(catalog, feed, clock, stop.clone()))
        });
        let jobs = match self.role {
            Role::All | Role::Worker => {
                let checkout = self.state.checkout.clone();
                let reconcile_period = self.reconcile_period;
                let (booking, queue) = (self.state.booking.clone(), self.state.queue.clone());
                let sweeps = sweeper::run(booking, queue, self.sweep_period, stop.clone());
                let reconciles = reconcile::run(checkout, reconcile_period, stop.clone());
                let relays = outbox::run(self.relay.clone(), self.outbox_period, stop.clone());
                Some(tokio::spawn(async move {
                    tokio::join!(sweeps, reconciles, relays);
                }))
            }
            Role::Api => None,
        };
        let tidy = tokio::spawn(traffic::tidy_every(self.state.traffic.clone(), Duration::from_secs(60), stop.clone()));
        // Redis rooms advance under a ticker lease, also while no fan asks.
        let (rooms, clock) = (self.state.queue.rooms().clone(), self.state.clock.clone());
        let ticker =
            tokio::spawn(crate::jobs::every("queue-ticker", Duration::from_millis(250), stop.clone(), move || {
                let (rooms, now) = (rooms.clone(), clock.now());
                async move { rooms.tick_all(now).await }
            }));
        let served = axum::serve(self.listener, self.router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await;
        stop.cancel();
        for task in [jobs, listener, Some(tidy), Some(ticker)].into_iter().flatten() {
            let _ = task.await;
        }
        // Hand the ticker leases over at once rather than after they lapse.
        self.state.queue.rooms().stop().await;
        served.context("HTTP server failed")
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: draining requests and stopping jobs");
}
