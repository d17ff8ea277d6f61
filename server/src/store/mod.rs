//! Durable state on SQLite through sqlx.
//!
//! The database runs in WAL mode with `synchronous=FULL`: a commit has
//! reached the disk when it returns, which is what the server's
//! acknowledgement promises. Both settings are set and read back at start.
//! Migrations are embedded in the binary and applied on open.

pub mod audit;
pub mod backup;
mod devices;
mod documents;
pub mod faults;
pub mod keeping;
mod logins;
pub use logins::{Attempt, LoginAccount, Session};
mod tenants;

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use audit::{AuditEntry, AuditQuery, AuditRecord, Concern, Outcome, record};
pub use devices::{
    CodeStatus, Device, EnrollError, Enrollment, EnrollmentCode, NewEnrollmentCode,
    REPEAT_WINDOW_MS,
};
pub use documents::{DocumentKindRow, DocumentRow};
pub use keeping::{Commit, CommitError, DocumentStore, StoredChunks};
pub(crate) use tenants::serialize_display;
pub use tenants::{Grant, Invitation, NewInvitation, Tenant, User};

/// Milliseconds since the Unix epoch: the unit of every stored time.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database setting {setting} is {actual}, expected {expected}")]
    Setting {
        setting: &'static str,
        actual: String,
        expected: &'static str,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// An audit entry that names no tenant: a bug, refused so that the
    /// action it describes does not commit unwitnessed.
    #[error("the audit entry for {0} names no tenant")]
    Unconcerned(String),
    /// The database was restored from a backup under this process (its
    /// epoch changed): nothing is written until the process has dropped
    /// what it loaded before, within a second.
    #[error("the database was restored from a backup moments ago; try again")]
    Restored,
    /// A permit of the authority rule used for another action: a bug.
    #[error("a permit to {given} does not allow {wanted}")]
    WrongPermit {
        given: &'static str,
        wanted: &'static str,
    },
}

impl StoreError {
    /// Whether the database was busy (locked by another writer past the
    /// busy timeout) rather than failing.
    pub fn is_busy(&self) -> bool {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended
        // codes (the low byte is the primary code).
        self.sqlite_code()
            .is_some_and(|c| matches!(c & 0xff, 5 | 6))
    }

    /// Whether the database (or its folder) may not be written.
    pub fn is_read_only(&self) -> bool {
        self.sqlite_code().is_some_and(|c| c & 0xff == 8)
    }

    /// Whether the disk holding the database is full (`SQLITE_FULL`).
    pub fn is_disk_full(&self) -> bool {
        self.sqlite_code().is_some_and(|c| c & 0xff == 13)
    }

    fn sqlite_code(&self) -> Option<i32> {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => e.code()?.parse().ok(),
            _ => None,
        }
    }
}

/// Handle to the database; cheap to clone (clones share the epoch).
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The database's epoch this process works in: its automerge-repo
    /// storage id, which a restore replaces. Every write transaction checks
    /// it ([`Store::begin_write`]), so a process still holding documents
    /// loaded before a restore cannot write from them after it.
    epoch: Arc<RwLock<String>>,
}

impl Store {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_on_vfs(path, None).await
    }

    /// [`Store::open`] on an SQLite VFS registered beforehand (`None`: the
    /// default). The durability tests use one that simulates a power cut.
    pub async fn open_on_vfs(path: &Path, vfs: Option<&str>) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?;
        let options = match vfs {
            Some(vfs) => options.vfs(vfs.to_owned()),
            None => options,
        };
        let options = options
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .after_release(|conn, _| Box::pin(async move { Ok(is_clean(conn).await) }))
            .connect_with(options)
            .await?;
        check_durability(&pool).await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        let epoch = stored_epoch_or_new(&pool).await?;
        Ok(Store {
            pool,
            epoch: Arc::new(RwLock::new(epoch)),
        })
    }
}

/// Reads back the settings the acknowledgement depends on.
async fn check_durability(pool: &SqlitePool) -> Result<(), StoreError> {
    let journal: String = sqlx::query_scalar("pragma journal_mode")
        .fetch_one(pool)
        .await?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Setting {
            setting: "journal_mode",
            actual: journal,
            expected: "wal",
        });
    }
    let synchronous: i64 = sqlx::query_scalar("pragma synchronous")
        .fetch_one(pool)
        .await?;
    // 2 is FULL.
    if synchronous != 2 {
        return Err(StoreError::Setting {
            setting: "synchronous",
            actual: synchronous.to_string(),
            expected: "FULL (2)",
        });
    }
    Ok(())
}

/// The database's epoch (its storage id), made on first open.
async fn stored_epoch_or_new(pool: &SqlitePool) -> Result<String, StoreError> {
    let fresh = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "insert into server_meta (key, value) values ('storage_id', ?) on conflict (key) do nothing",
    )
    .bind(&fresh)
    .execute(pool)
    .await?;
    Ok(stored_epoch(pool).await?.unwrap_or(fresh))
}

/// The epoch the database holds now.
async fn stored_epoch<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("select value from server_meta where key = 'storage_id'")
        .fetch_optional(executor)
        .await
}

impl Store {
    /// Whether the database takes a write now: a tiny transaction that
    /// changes a row and commits, so a full disk or a read-only file shows
    /// here (readiness), not first in a device's acknowledgement.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "insert into server_meta (key, value) values ('write_probe', ?)
             on conflict (key) do update set value = excluded.value",
        )
        .bind(now_ms().to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Closes every connection (after which the file can be reopened cleanly).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction that takes the write lock up front. SQLite's
    /// default deferred transaction fails with SQLITE_BUSY_SNAPSHOT (517),
    /// which no busy timeout retries, when it reads and then writes while
    /// another connection committed in between.
    ///
    /// It is also where a restore under this process is caught: the
    /// transaction goes on only while the database's epoch is the one this
    /// process works in ([`StoreError::Restored`] otherwise).
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        let mut tx = self.pool.begin_with("begin immediate").await?;
        if stored_epoch(&mut *tx).await?.as_deref() != Some(self.epoch().as_str()) {
            return Err(StoreError::Restored);
        }
        Ok(tx)
    }

    /// The epoch this process works in: the automerge-repo storage id it
    /// announces to peers.
    pub fn epoch(&self) -> String {
        match self.epoch.read() {
            Ok(epoch) => epoch.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The database's epoch, when it is no longer the one this process
    /// works in: a restore happened under it.
    pub async fn restored_epoch(&self) -> Result<Option<String>, StoreError> {
        let stored = stored_epoch(&self.pool).await?;
        Ok(stored.filter(|stored| *stored != self.epoch()))
    }

    /// Works in `epoch` from now on; the caller has dropped everything it
    /// held of the data before it.
    pub fn enter_epoch(&self, epoch: String) {
        match self.epoch.write() {
            Ok(mut current) => *current = epoch,
            Err(poisoned) => *poisoned.into_inner() = epoch,
        }
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Whether a connection going back to the pool is outside any transaction.
///
/// This is where rollback is made total, for every path at once. A
/// transaction dropped on an error path queues its `rollback`; but after
/// `SQLITE_FULL` SQLite has often rolled the transaction back itself, the
/// queued `rollback` fails, and sqlx's connection keeps counting a
/// transaction that no longer exists: every later `begin` on it then
/// fails, and the server answered 500 to every write until a restart, long
/// after the disk had room again. A connection that is not clean is closed
/// instead of pooled; the pool opens a fresh one when it needs it.
async fn is_clean(conn: &mut sqlx::SqliteConnection) -> bool {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return true;
    }
    // A rollback queued by a dropped transaction runs before this ping.
    if conn.ping().await.is_err() {
        return false;
    }
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("a database connection was left inside a failed transaction; closing it");
    }
    clean
}

/// Parses a stored id column, reporting corruption instead of panicking.
fn parse_column<T: FromStr>(value: &str, what: &str) -> Result<T, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("{what} {value:?} does not parse")))
}
