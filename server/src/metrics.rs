//! Prometheus metrics, served at `GET /metrics`.
//!
//! One [`Metrics`] per server process, held in its [`crate::Config`] beside
//! the budgets, so every path that counts reaches the same counters
//! without a global registry (tests run several servers in one process).
//! prometheus-client is the Prometheus project's own Rust client: typed
//! metrics, no global state, and the OpenMetrics text encoding.
//!
//! What is counted where: sync connections and frames in `sync`, the
//! acknowledgement time around `Hub::receive_sync` (the changes are on disk
//! and the replies queued when it returns), refusals where a connection is
//! refused or closed for a reason, storage failures where the document
//! driver's writes fail. Live documents and projection lag are read when
//! scraped.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Which way a sync frame went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// Label values in Prometheus's own style (`snake_case`), one name per
/// variant.
macro_rules! label_values {
    ($kind:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl EncodeLabelValue for $kind {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self {
                    $(<$kind>::$variant => $name,)+
                })
            }
        }
    };
}

label_values!(Direction { In => "in", Out => "out" });

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: Direction,
}

/// Why the server refused a connection or a message.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Refusal {
    /// A `/sync` token the server does not know.
    UnknownToken,
    /// A revoked device.
    Revoked,
    /// A frame that breaks the protocol.
    Protocol,
    /// A message or change past a size limit.
    TooLarge,
    /// Could not be stored, or the server is busy: the client retries.
    TryAgain,
    /// A change kept in another form (the phone re-bases it).
    KeptInAnotherForm,
    /// A document the device may not open, or that does not exist.
    DocumentUnavailable,
    /// A TCP connection past the per-address or process budget.
    ConnectionBudget,
    /// A client that stopped reading or went silent.
    Unresponsive,
}

label_values!(Refusal {
    UnknownToken => "unknown_token",
    Revoked => "revoked",
    Protocol => "protocol",
    TooLarge => "too_large",
    TryAgain => "try_again",
    KeptInAnotherForm => "kept_in_another_form",
    DocumentUnavailable => "document_unavailable",
    ConnectionBudget => "connection_budget",
    Unresponsive => "unresponsive",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Refusal,
}

/// What storage write failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StorageWrite {
    /// A device's changes (nothing was acknowledged).
    Commit,
    /// A compaction (the chunks stay; it runs again later).
    Compaction,
}

label_values!(StorageWrite { Commit => "commit", Compaction => "compaction" });

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabel {
    write: StorageWrite,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    sync_connections: Gauge,
    frames: Family<DirectionLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    acknowledgement: Histogram,
    refusals: Family<ReasonLabel, Counter>,
    storage_errors: Family<WriteLabel, Counter>,
    live_documents: Gauge,
    lagging_projections: Gauge,
    notification_queue: Gauge<f64, AtomicU64>,
}

/// The figures read when the metrics are scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct AtScrape {
    pub live_documents: usize,
    pub lagging_projections: u64,
    /// On PostgreSQL, the share of its NOTIFY queue in use (0 to 1): a
    /// node that stops reading its announcements fills it, and at 1 every
    /// commit on every node fails.
    pub notification_queue_usage: f64,
}

/// The process's metrics. Cheap to clone; clones share every series.
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("doorstep");
        let r = &mut registry;
        let inner = Inner {
            sync_connections: registered(
                r,
                "sync_connections",
                "Open /sync WebSocket connections of devices",
                Gauge::default(),
            ),
            frames: registered(
                r,
                "sync_messages",
                "Sync protocol messages received from and sent to devices",
                Family::default(),
            ),
            bytes: registered(
                r,
                "sync_message_bytes",
                "Bytes of sync protocol messages received and sent, as framed on the socket",
                Family::default(),
            ),
            // 1 ms to ~16 s: a commit on a quiet SSD to a stalled disk.
            acknowledgement: registered(
                r,
                "sync_acknowledgement_seconds",
                "Time from a sync message's arrival to its changes stored and its replies queued",
                Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            ),
            refusals: registered(
                r,
                "refusals",
                "Connections and messages refused or closed, by reason",
                Family::default(),
            ),
            storage_errors: registered(
                r,
                "storage_errors",
                "Writes of the document driver that failed",
                Family::default(),
            ),
            live_documents: registered(
                r,
                "live_documents",
                "Documents held in memory",
                Gauge::default(),
            ),
            lagging_projections: registered(
                r,
                "lagging_projections",
                "Documents whose projected rows are behind their stored changes (re-projected at the next merge or start)",
                Gauge::default(),
            ),
            notification_queue: registered(
                r,
                "notification_queue_usage",
                "On PostgreSQL, the share of the NOTIFY queue in use by announcements not yet read by every listening node (0 on SQLite)",
                Gauge::default(),
            ),
            registry,
        };
        Metrics(Arc::new(inner))
    }

    /// A device's `/sync` connection opened; it counts until the guard
    /// drops, on every path out.
    pub fn sync_connection(&self) -> ConnectionGuard {
        self.0.sync_connections.inc();
        ConnectionGuard(self.clone())
    }

    /// One sync frame of `bytes` bytes went `direction`.
    pub fn frame(&self, direction: Direction, bytes: usize) {
        let label = DirectionLabel { direction };
        self.0.frames.get_or_create(&label).inc();
        self.0
            .bytes
            .get_or_create(&label)
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    pub fn acknowledged(&self, after: Duration) {
        self.0.acknowledgement.observe(after.as_secs_f64());
    }

    pub fn refused(&self, reason: Refusal) {
        self.0.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn storage_error(&self, write: StorageWrite) {
        self.0
            .storage_errors
            .get_or_create(&WriteLabel { write })
            .inc();
    }

    /// The OpenMetrics text of every series, with the figures read at
    /// scrape time set first.
    pub fn encode(&self, at_scrape: AtScrape) -> String {
        self.0
            .live_documents
            .set(i64::try_from(at_scrape.live_documents).unwrap_or(i64::MAX));
        self.0
            .lagging_projections
            .set(i64::try_from(at_scrape.lagging_projections).unwrap_or(i64::MAX));
        self.0
            .notification_queue
            .set(at_scrape.notification_queue_usage);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }
}

/// `metric`, registered under `name` (handles share their series).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Counts one open sync connection while it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Metrics);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.0.sync_connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_named_and_counts_what_it_was_given() {
        let metrics = Metrics::new();
        let guard = metrics.sync_connection();
        metrics.frame(Direction::In, 100);
        metrics.frame(Direction::In, 20);
        metrics.frame(Direction::Out, 7);
        metrics.refused(Refusal::Revoked);
        metrics.storage_error(StorageWrite::Commit);
        metrics.acknowledged(Duration::from_millis(3));
        let text = metrics.encode(AtScrape {
            live_documents: 2,
            lagging_projections: 1,
            notification_queue_usage: 0.25,
        });
        for line in [
            "doorstep_sync_connections 1",
            "doorstep_sync_messages_total{direction=\"in\"} 2",
            "doorstep_sync_message_bytes_total{direction=\"in\"} 120",
            "doorstep_sync_message_bytes_total{direction=\"out\"} 7",
            "doorstep_refusals_total{reason=\"revoked\"} 1",
            "doorstep_storage_errors_total{write=\"commit\"} 1",
            "doorstep_sync_acknowledgement_seconds_count 1",
            "doorstep_live_documents 2",
            "doorstep_lagging_projections 1",
            "doorstep_notification_queue_usage 0.25",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        drop(guard);
        assert!(
            metrics
                .encode(AtScrape::default())
                .contains("doorstep_sync_connections 0")
        );
    }
}
