//! The Doorstep sync server.
//!
//! Devices sync their branch's Automerge documents over `/sync`, which speaks
//! the automerge-repo v1 WebSocket protocol so stock `@automerge/automerge-repo`
//! clients work. Every change is committed to SQLite before any peer is told
//! heads that contain it, and every message is checked against the device's
//! branch.
//!
//! ```text
//! config     settings, limits and their defaults
//! budget     the one owner of every bound per principal and per process
//! tenancy    district > sub-district > branch paths, roles, scope checks
//! auth       tokens, password hashing
//! authority  the one rule over names: who may do which administrative action
//! store      sqlx persistence: tenants, users, devices, documents, chunks;
//!            the DocumentStore trait the document tasks commit through;
//!            the database's epoch, backups and restores
//! hub        live documents: one task each driving a sans-IO Keeper; connections
//! projection records as relational rows, upserted on every merge
//! sync       the /sync WebSocket connection: handshake, access, limits
//! http       the JSON API, its extractors and its single error edge
//! listener   the accept loop: connection budget, TLS, header deadlines
//! metrics    the Prometheus series at /metrics
//! cli        `doorstep` subcommands for operators
//! ```
//!
//! [`run`] serves a bound listener until a shutdown future resolves; `main`
//! only parses the command line.

pub mod admin;
pub mod auth;
pub mod authority;
pub mod budget;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod http;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod projection;
pub mod rollup;
pub mod store;
pub mod sync;
pub mod tenancy;
mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
use hub::Hub;
use store::Store;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    pub readiness: Arc<http::Readiness>,
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the TLS certificate and key the config names, if any, so that a
/// missing or unreadable file stops start-up before the server says it
/// listens (rather than when the first connection arrives).
pub fn check_tls(config: &Config) -> Result<(), StartError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => tls::server_config(cert, key).map(drop),
        _ => Ok(()),
    }
}

/// Serves the API and `/sync` on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let store = Store::open_at(&config.database).await?;
    serve(config, store, listener, shutdown).await
}

/// Like [`run`], with a store the caller opened.
pub async fn serve(
    config: Config,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let documents = Arc::new(store.clone());
    serve_with(config, store, documents, listener, shutdown).await
}

/// Like [`serve`], with the documents persisted through `documents` (a
/// test puts a [`store::faults::FaultyStore`] there).
pub async fn serve_with(
    config: Config,
    store: Store,
    documents: Arc<dyn store::DocumentStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let mut config = config;
    let descriptors = listener::raise_file_limit();
    let wanted = config.budgets.connections.limits();
    let fitted = wanted.fitted_to(descriptors);
    if fitted.total < wanted.total {
        tracing::warn!(
            descriptors,
            connections = fitted.total,
            "the open-file limit bounds connections below the configured budget"
        );
        config.budgets.connections = budget::ConnectionBudget::new(fitted);
    }
    if let store::Backend::Postgres = store.backend() {
        match store.encryption().await {
            Ok(Some(version)) => {
                tracing::info!(%version, "the connections to PostgreSQL are encrypted")
            }
            Ok(None) => tracing::warn!(
                "the connections to PostgreSQL are not encrypted: unless the database is on \
                 this machine or a private network, add sslmode=verify-full and sslrootcert to \
                 its URL"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not tell whether PostgreSQL's connections are encrypted")
            }
        }
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::server_config(cert, key)?)),
        _ => None,
    };
    let config = Arc::new(config);
    let hub = Hub::start(store.clone(), documents, config.clone()).await?;
    let state = AppState {
        store,
        hub: hub.clone(),
        config: config.clone(),
        readiness: Arc::default(),
    };
    let app = http::router(state);
    let local = listener.local_addr()?;
    if tls.is_some() {
        tracing::info!(%local, "serving HTTPS and WSS");
    } else {
        tracing::info!(%local, "serving HTTP and WS");
    }
    // Sync sockets are told to go as soon as shutdown starts, while the
    // listener lets open HTTP exchanges finish.
    let stopping = hub.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.stop_connections();
    };
    let result = listener::serve(
        listener,
        app,
        tls,
        config.budgets.connections.clone(),
        config.metrics.clone(),
        shutdown,
    )
    .await
    .map_err(StartError::Io);
    hub.shutdown().await;
    result
}
