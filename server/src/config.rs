//! Server settings. Every setting has a default that runs a district on one
//! machine; `doorstep serve --help` lists the flags and environment variables.

use std::path::PathBuf;
use std::time::Duration;

use doorstep_protocol::keeper::KeeperLimits;
use doorstep_protocol::wire::Limits;

use crate::store::Location;

/// Settings for one server process.
#[derive(Clone, Debug)]
pub struct Config {
    /// The SQLite file, or a PostgreSQL database.
    pub database: Location,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub limits: SyncLimits,
    /// Interval between server pings on an idle socket.
    pub ping_interval: Duration,
    /// A socket that sends nothing at all for this long is closed.
    pub idle_timeout: Duration,
    /// A frame the client has not taken within this long closes the
    /// connection (it stopped reading; slow 2G links still fit).
    pub send_timeout: Duration,
    /// A document no peer has touched for this long leaves memory.
    pub document_idle: Duration,
    /// How often to look for what another process (the CLI) did to the
    /// database: devices revoked, a restore from a backup.
    pub store_poll: Duration,
    /// On PostgreSQL, how often each live document looks for changes other
    /// nodes stored, besides hearing their announcements: the catch-all
    /// for announcements lost while the listening connection was down.
    pub change_poll: Duration,
    /// Lifetime of an API login.
    pub session_ttl: Duration,
    /// An API login unused for this long ends (before `session_ttl`).
    pub session_idle: Duration,
    /// Login throttling per account and address, and per address.
    pub logins: crate::auth::LoginPolicy,
    /// The time logins, sessions and throttling go by; tests move it.
    pub clock: crate::auth::Clock,
    /// Every bound on what a principal or the process may take (argon2
    /// work, connections, queued bytes, message rates, recorded refusals).
    pub budgets: crate::budget::Budgets,
    /// The Prometheus series at `/metrics` (shared by clones).
    pub metrics: crate::metrics::Metrics,
}

/// Bounds on what one device may send.
#[derive(Clone, Copy, Debug)]
pub struct SyncLimits {
    /// Largest WebSocket message, in bytes.
    pub max_message_bytes: usize,
    /// Bounds on each sync message (checked before Automerge sees it:
    /// bloom filters, counts, inflated bytes, operations) and on each
    /// document (stored bytes, changes waiting for dependencies).
    pub document: KeeperLimits,
}

impl SyncLimits {
    pub fn wire_limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_message_bytes,
            ..Limits::default()
        }
    }
}

impl Default for SyncLimits {
    fn default() -> Self {
        SyncLimits {
            max_message_bytes: 32 * 1024 * 1024,
            document: KeeperLimits::default(),
        }
    }
}

impl Config {
    /// Defaults for the database at `database` (an SQLite file's path,
    /// or a [`Location`]).
    pub fn new(database: impl Into<Location>) -> Self {
        Config {
            database: database.into(),
            tls_cert: None,
            tls_key: None,
            limits: SyncLimits::default(),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(90),
            send_timeout: Duration::from_secs(120),
            document_idle: Duration::from_secs(300),
            store_poll: Duration::from_secs(1),
            change_poll: Duration::from_secs(30),
            session_ttl: Duration::from_secs(12 * 3600),
            session_idle: Duration::from_secs(30 * 60),
            logins: crate::auth::LoginPolicy::default(),
            clock: crate::auth::Clock::system(),
            budgets: crate::budget::Budgets::default(),
            metrics: crate::metrics::Metrics::default(),
        }
    }
}
