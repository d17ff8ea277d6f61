//! Durable state through sqlx, on SQLite (the embedded default) or
//! PostgreSQL.
//!
//! Every query goes through sqlx's `Any` driver with `$n` placeholders, so
//! one text of each query serves both backends and they cannot drift apart;
//! what differs between them (opening, the write lock, error codes, backup)
//! is decided in this module and nowhere else.
//!
//! SQLite runs in WAL mode with `synchronous=FULL`: a commit has reached
//! the disk when it returns, which is what the server's acknowledgement
//! promises. Both settings are set and read back at start. On PostgreSQL a
//! commit is durable with the server's default `synchronous_commit = on`,
//! which is read back too. Migrations for each backend are embedded in the
//! binary and applied on open.

pub mod audit;
pub mod backup;
mod devices;
mod documents;
pub mod faults;
pub mod keeping;
mod logins;
pub mod postgres;
pub mod statement;
pub mod testing;
pub use logins::{Attempt, LoginAccount, Session};
mod tenants;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use audit::{AuditEntry, AuditQuery, AuditRecord, Concern, Outcome, record};
pub use devices::{
    CodeStatus, Device, EnrollError, Enrollment, EnrollmentCode, NewEnrollmentCode,
    REPEAT_WINDOW_MS,
};
pub use documents::{DocumentKindRow, DocumentNumbers, DocumentRow};
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
    /// What this backend does not do (an SQLite file backup of PostgreSQL).
    #[error("{0}")]
    Unsupported(String),
    /// The database was restored from a backup under this process (its
    /// epoch changed): nothing is written until the process has dropped
    /// what it loaded before, within a second.
    #[error("the database was restored from a backup moments ago; try again")]
    Restored,
    /// Another server node stored changes to the document after the ones
    /// the committing node holds: nothing was written (the changes were
    /// checked against a document that lacks the other node's), and the
    /// node reads them before the device sends again.
    #[error("another server stored changes to this document a moment ago; try again")]
    Behind,
    /// A permit of the authority rule used for another action: a bug.
    #[error("a permit to {given} does not allow {wanted}")]
    WrongPermit {
        given: &'static str,
        wanted: &'static str,
    },
}

impl StoreError {
    /// Whether the database was busy (locked by another writer past the
    /// busy timeout, or a lock wait PostgreSQL gave up) rather than failing.
    pub fn is_busy(&self) -> bool {
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes
        // (the low byte is the primary code); lock_not_available,
        // serialization_failure and deadlock_detected.
        self.sqlite_code()
            .is_some_and(|c| matches!(c & 0xff, 5 | 6))
            || self
                .postgres_code()
                .is_some_and(|c| matches!(c, "55P03" | "40001" | "40P01"))
    }

    /// Whether the database (or its folder) may not be written.
    pub fn is_read_only(&self) -> bool {
        self.sqlite_code().is_some_and(|c| c & 0xff == 8) || self.postgres_code() == Some("25006")
    }

    /// Whether the disk holding the database is full (`SQLITE_FULL`,
    /// PostgreSQL's disk_full).
    pub fn is_disk_full(&self) -> bool {
        self.sqlite_code().is_some_and(|c| c & 0xff == 13) || self.postgres_code() == Some("53100")
    }

    fn sqlite_code(&self) -> Option<i32> {
        match self {
            StoreError::Database(sqlx::Error::Database(e))
                if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() =>
            {
                e.code()?.parse().ok()
            }
            _ => None,
        }
    }

    fn postgres_code(&self) -> Option<&str> {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => Some(
                e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?
                    .code(),
            ),
            _ => None,
        }
    }
}

/// The engine that holds the data.
#[derive(Clone, Debug)]
pub enum Backend {
    /// The embedded default: one file, served by one process.
    Sqlite { path: PathBuf },
    /// A PostgreSQL database.
    Postgres,
}

/// Where the data is: an SQLite file, or a PostgreSQL URL
/// (`postgres://user@host/database`).
#[derive(Clone)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Location {
        Location::Sqlite(path)
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Location {
        Location::Sqlite(path.to_owned())
    }
}

impl std::fmt::Display for Location {
    /// The database as named in messages and logs: never a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&postgres::redacted(url)),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Location::Postgres(_) => f.debug_tuple("Postgres").field(&self.to_string()).finish(),
        }
    }
}

impl Location {
    /// Whether `text` names a PostgreSQL database rather than a file.
    pub fn is_postgres_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }
}

impl std::fmt::Debug for Store {
    // Not the connect options: they hold the database's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

/// A write transaction of the store.
pub(crate) type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Handle to the database; cheap to clone (clones share the epoch).
#[derive(Clone)]
pub struct Store {
    /// The server's own work, across every branch.
    pool: AnyPool,
    /// Reads on somebody's behalf, each scoped to its unit. On PostgreSQL
    /// a pool of its own whose connections start in a scope that admits
    /// nothing; on SQLite, which has no row-level security, `pool` again.
    scoped: AnyPool,
    /// Write transactions, on a small pool of their own: writers queue
    /// for one lock (SQLite's, or PostgreSQL's advisory lock), and a queue
    /// of them must not take the connections reads need.
    writers: AnyPool,
    options: AnyConnectOptions,
    backend: Backend,
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

    /// Opens the database at `location`.
    pub async fn open_at(location: &Location) -> Result<Store, StoreError> {
        match location {
            Location::Sqlite(path) => Store::open(path).await,
            Location::Postgres(url) => Store::connect_postgres(url).await,
        }
    }

    /// Connects to a PostgreSQL database (which must exist) and applies
    /// migrations; several processes may do so at once (sqlx's migrator
    /// holds an advisory lock while it works).
    pub async fn connect_postgres(url: &str) -> Result<Store, StoreError> {
        let postgres::Pools {
            every_branch: pool,
            scoped,
            writers,
            options,
        } = postgres::connect(url).await?;
        postgres::migrate(&pool, &sqlx::migrate!("../migrations/postgres")).await?;
        let epoch = stored_epoch_or_new(&pool).await?;
        Ok(Store {
            pool,
            scoped,
            writers,
            options,
            backend: Backend::Postgres,
            epoch: Arc::new(RwLock::new(epoch)),
        })
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
        sqlx::any::install_default_drivers();
        let path = resolved(path)?;
        let mut params = "mode=rwc".to_owned();
        if let Some(vfs) = vfs {
            params.push_str("&vfs=");
            params.push_str(vfs);
        }
        let options = AnyConnectOptions::from_str(&sqlite_url(&path, &params)?)?;
        let pool = |connections: u32| {
            AnyPoolOptions::new()
                .max_connections(connections)
                .after_connect(|conn, _| Box::pin(async move { set_up_connection(conn).await }))
                .after_release(|conn, _| Box::pin(async move { Ok(is_clean(conn).await) }))
                .connect_with(options.clone())
        };
        // One writer at a time holds the file's write lock; a second waits
        // for it. More would only hold connections the readers need.
        let writers = pool(2).await?;
        let pool = pool(8).await?;
        check_durability(&pool).await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        let epoch = stored_epoch_or_new(&pool).await?;
        Ok(Store {
            scoped: pool.clone(),
            writers,
            pool,
            options,
            backend: Backend::Sqlite { path },
            epoch: Arc::new(RwLock::new(epoch)),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// A read transaction that sees only the rows of the branches at or
    /// under `tenant` (an unknown tenant: none). On PostgreSQL row-level
    /// security enforces it whatever the queries say; SQLite has no such
    /// layer, and the queries' own conditions are all there is.
    pub(crate) async fn begin_read_within(
        &self,
        tenant: doorstep_protocol::TenantId,
    ) -> Result<Tx, StoreError> {
        let mut tx = self.scoped.begin().await?;
        if let Backend::Postgres = self.backend {
            postgres::set_scope(&mut tx, tenant).await?;
        }
        Ok(tx)
    }

    /// [`Store::begin_read_within`] the tenant at the path `scope`, for the
    /// listings of a unit's people, devices, codes and audit entries.
    pub(crate) async fn begin_read_under(
        &self,
        scope: &crate::tenancy::TenantPath,
    ) -> Result<Tx, StoreError> {
        let mut tx = self.scoped.begin().await?;
        if let Backend::Postgres = self.backend {
            postgres::set_scope_path(&mut tx, scope).await?;
        }
        Ok(tx)
    }

    /// Tells other nodes a document's commit number moved (on PostgreSQL;
    /// one process serves an SQLite database, so nobody is told there).
    pub(crate) async fn announce(
        &self,
        tx: &mut Tx,
        document: doorstep_protocol::DocumentId,
        seq: i64,
    ) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite { .. } => Ok(()),
            Backend::Postgres => postgres::announce(tx, document, seq).await,
        }
    }

    /// The share of PostgreSQL's NOTIFY queue in use (0 on SQLite).
    pub async fn notification_queue_usage(&self) -> Result<f64, StoreError> {
        match self.backend {
            Backend::Sqlite { .. } => Ok(0.0),
            Backend::Postgres => Ok(sqlx::query_scalar("select pg_notification_queue_usage()")
                .fetch_one(&self.pool)
                .await?),
        }
    }

    /// The TLS version of the connections to PostgreSQL (`None`: not
    /// encrypted, or an SQLite file, which has no connection to encrypt).
    pub async fn encryption(&self) -> Result<Option<String>, StoreError> {
        match self.backend {
            Backend::Sqlite { .. } => Ok(None),
            Backend::Postgres => postgres::encryption(&self.pool).await,
        }
    }

    /// The PostgreSQL URL, where other nodes' announcements are heard.
    pub(crate) fn postgres_url(&self) -> Option<String> {
        match self.backend {
            Backend::Sqlite { .. } => None,
            Backend::Postgres => Some(self.options.database_url.to_string()),
        }
    }

    /// The column that orders a document's chunks as they were stored:
    /// SQLite's rowid, PostgreSQL's identity column.
    pub(crate) fn chunk_order(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite { .. } => "rowid",
            Backend::Postgres => "seq",
        }
    }

    /// The SQLite database file, for what only a file has (backups).
    pub fn sqlite_file(&self, what: &str) -> Result<&Path, StoreError> {
        match &self.backend {
            Backend::Sqlite { path } => Ok(path),
            Backend::Postgres => Err(StoreError::Unsupported(format!(
                "{what} works on the SQLite database; for PostgreSQL use pg_dump and \
                 pg_restore (README, \"Backups, restores and metrics\")"
            ))),
        }
    }

    /// A connection outside the pool, set up as the pool's are: for work
    /// that changes a connection's state (an attached database) which must
    /// not go back into the pool.
    pub(crate) async fn connect_alone(&self) -> Result<sqlx::AnyConnection, StoreError> {
        use sqlx::ConnectOptions;
        let mut conn = self.options.connect().await?;
        set_up_connection(&mut conn).await?;
        Ok(conn)
    }
}

/// The settings each SQLite connection is opened with. Synchronous and the
/// busy timeout are not kept in the file; WAL is, and is set again harmlessly.
async fn set_up_connection(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute(
        "pragma busy_timeout = 10000; pragma journal_mode = wal;
         pragma synchronous = full; pragma foreign_keys = on",
    )
    .await?;
    Ok(())
}

/// The SQLite migrations this binary carries: what `open` applies and
/// what `identify_sqlite_file` compares a file with.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// What an SQLite database file says of itself, read without writing to
/// it (no migrations, no epoch made): for a tool that must check a data
/// directory before it opens it for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteFileIdentity {
    /// Its storage id (epoch), the one its server tells devices.
    pub storage_id: Option<String>,
    /// Whether it has every migration this binary has, and no other.
    pub migrations_match: bool,
}

impl Store {
    /// [`SqliteFileIdentity`] of the database file at `path`, which a
    /// server may be writing meanwhile; an error if it is not a Doorstep
    /// database.
    pub async fn identify_sqlite_file(path: &Path) -> Result<SqliteFileIdentity, StoreError> {
        use sqlx::{ConnectOptions, Connection};
        sqlx::any::install_default_drivers();
        let path = resolved(path)?;
        let options = AnyConnectOptions::from_str(&sqlite_url(&path, "mode=ro")?)?;
        let mut conn = options.connect().await?;
        let storage_id: Option<String> =
            sqlx::query_scalar("select value from server_meta where key = 'storage_id'")
                .fetch_optional(&mut conn)
                .await?;
        let applied: Vec<i64> = sqlx::query_scalar(
            "select version from _sqlx_migrations where success order by version",
        )
        .fetch_all(&mut conn)
        .await?;
        let _ = conn.close().await;
        let known: Vec<i64> = SQLITE_MIGRATIONS.iter().map(|m| m.version).collect();
        Ok(SqliteFileIdentity {
            storage_id,
            migrations_match: applied == known,
        })
    }
}

/// Opens an SQLite file that nothing may change while it is read (a
/// backup), without writing to it or beside it.
pub(crate) async fn read_sqlite_file(path: &Path) -> Result<sqlx::AnyConnection, StoreError> {
    use sqlx::ConnectOptions;
    sqlx::any::install_default_drivers();
    let path = resolved(path)?;
    let options = AnyConnectOptions::from_str(&sqlite_url(&path, "mode=ro&immutable=true")?)?;
    Ok(options.connect().await?)
}

/// An `sqlite://` URL for `path` (absolute) with query `params`.
fn sqlite_url(path: &Path, params: &str) -> Result<String, StoreError> {
    Ok(format!("sqlite://{}?{params}", percent_encoded(path)?))
}

/// `path` with its folder resolved (links and `..` followed, as the kernel
/// follows them): a URL parser would drop `..` as text and name another
/// file.
fn resolved(path: &Path) -> Result<PathBuf, StoreError> {
    let absolute = std::path::absolute(path).map_err(|source| StoreError::DataDir {
        path: path.display().to_string(),
        source,
    })?;
    let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(StoreError::Invalid(format!(
            "{} does not name a database file",
            path.display()
        )));
    };
    let dir = dir.canonicalize().map_err(|source| StoreError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(dir.join(name))
}

/// `path` for an `sqlite://` URL: every byte but the plainest escaped, so
/// that no `?`, `#` or `%` in a folder's name is read as URL syntax.
fn percent_encoded(path: &Path) -> Result<String, StoreError> {
    let text = path.to_str().ok_or_else(|| {
        StoreError::Invalid(format!("the database path {} is not UTF-8", path.display()))
    })?;
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"/._-~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(encoded)
}

/// Reads back the settings the acknowledgement depends on.
async fn check_durability(pool: &AnyPool) -> Result<(), StoreError> {
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
async fn stored_epoch_or_new(pool: &AnyPool) -> Result<String, StoreError> {
    let fresh = uuid::Uuid::new_v4().to_string();
    sqlx::query(
        "insert into server_meta (key, value) values ('storage_id', $1) on conflict (key) do nothing",
    )
    .bind(&fresh)
    .execute(pool)
    .await?;
    Ok(stored_epoch(pool).await?.unwrap_or(fresh))
}

/// The epoch the database holds now.
async fn stored_epoch<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
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
            "insert into server_meta (key, value) values ('write_probe', $1)
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
        self.scoped.close().await;
        self.writers.close().await;
    }

    /// A write transaction that takes the write lock up front. SQLite's
    /// default deferred transaction fails with SQLITE_BUSY_SNAPSHOT (517),
    /// which no busy timeout retries, when it reads and then writes while
    /// another connection committed in between.
    ///
    /// It is also where a restore under this process is caught: the
    /// transaction goes on only while the database's epoch is the one this
    /// process works in ([`StoreError::Restored`] otherwise).
    pub(crate) async fn begin_write(&self) -> Result<Tx, StoreError> {
        let mut tx = match self.backend {
            Backend::Sqlite { .. } => self.writers.begin_with("begin immediate").await?,
            Backend::Postgres => postgres::begin_write(&self.writers).await?,
        };
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

    /// The pool of the server's own work, which spans every branch: on
    /// PostgreSQL its connections work in scope `*`. Reads on somebody's
    /// behalf go through [`Store::begin_read_within`] or
    /// [`Store::begin_read_under`] instead, held to that somebody's unit.
    pub(crate) fn every_branch(&self) -> &AnyPool {
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
async fn is_clean(conn: &mut sqlx::AnyConnection) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Writers queued for the write lock (a slow one holds it) take no
    /// connection a read needs: reads still answer while they wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writers_leave_reads_their_connections() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_at(&testing::test_location(dir.path()).await)
            .await
            .expect("open");
        let slow = store.begin_write().await.expect("the first writer");
        let queued: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.begin_write().await.map(drop) })
            })
            .collect();
        tokio::task::yield_now().await;
        for _ in 0..20 {
            store
                .tenant_count()
                .await
                .expect("a read while writers queue");
        }
        assert!(
            queued.iter().all(|w| !w.is_finished()),
            "the writers still wait for the first"
        );
        drop(slow);
        for writer in queued {
            writer.await.expect("joined").expect("each writer in turn");
        }
    }
}
