//! What is PostgreSQL's own: connecting and checking the server's
//! settings, the write lock, announcing commits to the other nodes and
//! hearing theirs, and naming a database URL without its password.
//! Everything else runs the same SQL as SQLite.

use std::str::FromStr;

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use super::StoreError;

/// The key of the transaction-level advisory lock every write transaction
/// takes: writes are serialised as on SQLite (`begin immediate`), so each
/// transaction's reads stay true until it commits.
const WRITE_LOCK: i64 = 0x646f_6f72_7374_6570; // "doorstep"

/// How long a write waits for the write lock before it fails as busy, as
/// SQLite's busy timeout does.
const WRITE_LOCK_TIMEOUT: &str = "10s";

/// The two pools on the PostgreSQL database at `url`, its settings checked.
pub(super) struct Pools {
    /// The server's own work, which spans every branch (syncing any
    /// branch's documents, finding a device by its token, writing): its
    /// connections work in scope `*`.
    pub every_branch: AnyPool,
    /// Reads on somebody's behalf: its connections start in the empty
    /// scope, which admits nothing, and each transaction names its own
    /// ([`set_scope`]). A read here that forgot its scope reads nothing.
    pub scoped: AnyPool,
    /// Write transactions ([`begin_write`]). They queue for one lock, so
    /// more than a few only hold connections while they wait; on a pool
    /// of their own, a queue of writers cannot take the connections
    /// reads need.
    pub writers: AnyPool,
    pub options: AnyConnectOptions,
}

/// How many connections a node holds at most, per pool: 18 in all, and
/// one that listens. Four nodes fit PostgreSQL's default of 100 (97 for
/// roles that are not superusers) with room for admin commands (three
/// pools of their own, one connection each while they run) and `pg_dump`.
const EVERY_BRANCH_CONNECTIONS: u32 = 10;
const SCOPED_CONNECTIONS: u32 = 4;
const WRITER_CONNECTIONS: u32 = 4;

/// How long a caller waits for a pooled connection (sqlx retries a
/// refused connection until then): as long as a writer waits for the
/// write lock. A wait that ends so is an error, not "busy": it is also how
/// a database that is down shows, which readiness must report.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) async fn connect(url: &str) -> Result<Pools, StoreError> {
    sqlx::any::install_default_drivers();
    let options = AnyConnectOptions::from_str(url)?;
    let pool = |connections: u32, scope: &'static str| {
        AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    sqlx::query("select set_config('doorstep.scope', $1, false)")
                        .bind(scope)
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .after_release(|conn, _| Box::pin(async move { Ok(super::is_clean(conn).await) }))
            .connect_with(options.clone())
    };
    let every_branch = pool(EVERY_BRANCH_CONNECTIONS, "*").await?;
    let scoped = pool(SCOPED_CONNECTIONS, "").await?;
    let writers = pool(WRITER_CONNECTIONS, "*").await?;
    check_settings(&every_branch).await?;
    Ok(Pools {
        every_branch,
        scoped,
        writers,
        options,
    })
}

/// The TLS version of a connection of `pool`, if it is encrypted.
pub(super) async fn encryption(pool: &AnyPool) -> Result<Option<String>, StoreError> {
    let version: String = sqlx::query_scalar(
        "select coalesce((select version from pg_stat_ssl where pid = pg_backend_pid() and ssl), '')",
    )
    .fetch_one(pool)
    .await?;
    Ok(Some(version).filter(|v| !v.is_empty()))
}

/// Applies what `migrator` has that the database lacks. A database that
/// has every migration, each with the checksum this binary has, is left
/// alone without a word to the migrator, which would ask for the right to
/// create tables: the nodes may run as a role that owns nothing (so that
/// row-level security holds them), the migrations applied by the owner.
/// Anything else (one missing, a checksum that differs) goes to the
/// migrator, which applies or refuses.
pub(super) async fn migrate(
    pool: &AnyPool,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let applied: Result<Vec<(i64, Vec<u8>)>, sqlx::Error> = sqlx::query_as(
        "select version, checksum from _sqlx_migrations where success order by version",
    )
    .fetch_all(pool)
    .await;
    let wanted: Vec<(i64, Vec<u8>)> = migrator
        .iter()
        .map(|m| (m.version, m.checksum.to_vec()))
        .collect();
    if applied.is_ok_and(|applied| applied == wanted) {
        return Ok(());
    }
    migrator.run(pool).await?;
    Ok(())
}

/// Refuses a server whose settings break a promise: an acknowledged commit
/// must be on disk (`fsync`, `synchronous_commit`), and text must sort by
/// its bytes, as on SQLite (range scans over keys and every listing rely
/// on it; a language collation may ignore punctuation).
async fn check_settings(pool: &AnyPool) -> Result<(), StoreError> {
    let show = |setting: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("show {setting}"))
            .fetch_one(pool)
            .await
    };
    let fsync = show("fsync").await?;
    if fsync != "on" {
        return Err(StoreError::Setting {
            setting: "fsync",
            actual: fsync,
            expected: "on",
        });
    }
    let synchronous = show("synchronous_commit").await?;
    if !matches!(
        synchronous.as_str(),
        "on" | "local" | "remote_write" | "remote_apply"
    ) {
        return Err(StoreError::Setting {
            setting: "synchronous_commit",
            actual: synchronous,
            expected: "on",
        });
    }
    let collation: String =
        sqlx::query_scalar("select datcollate from pg_database where datname = current_database()")
            .fetch_one(pool)
            .await?;
    if !matches!(
        collation.as_str(),
        "C" | "POSIX" | "C.UTF-8" | "C.utf8" | "ucs_basic"
    ) {
        return Err(StoreError::Setting {
            setting: "the database's collation (createdb --locale=C.UTF-8 --template=template0)",
            actual: collation,
            expected: "C",
        });
    }
    Ok(())
}

/// Scopes the transaction to the rows of the branches at or under
/// `tenant` (row-level security, migrations 0010 and 0011; an unknown
/// tenant sees nothing).
pub(super) async fn set_scope(
    tx: &mut super::Tx,
    tenant: doorstep_protocol::TenantId,
) -> Result<(), StoreError> {
    sqlx::query(
        "select set_config('doorstep.scope', coalesce((select path from tenants where id = $1), ''), true)",
    )
    .bind(tenant.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Scopes the transaction to the rows at or under the tenant path `scope`.
pub(super) async fn set_scope_path(
    tx: &mut super::Tx,
    scope: &crate::tenancy::TenantPath,
) -> Result<(), StoreError> {
    sqlx::query("select set_config('doorstep.scope', $1, true)")
        .bind(scope.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Begins a write transaction holding the write lock: read committed (so
/// what it reads after the lock is what committed before it), waiting at
/// most [`WRITE_LOCK_TIMEOUT`] for the lock.
pub(super) async fn begin_write(pool: &AnyPool) -> Result<super::Tx, StoreError> {
    let mut tx = pool
        .begin_with("begin isolation level read committed")
        .await?;
    sqlx::query(&format!("set local lock_timeout = '{WRITE_LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    // `::text`: the lock function returns void, which `Any` cannot read.
    sqlx::query("select pg_advisory_xact_lock($1)::text")
        .bind(WRITE_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// `url` without its password (in the user part or a `password=`
/// parameter), for messages and logs; a URL that does not parse is not
/// shown at all.
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "a PostgreSQL URL that does not parse".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_url_is_named_without_its_password() {
        assert_eq!(
            redacted("postgres://doorstep:s3cret@db.example:5432/doorstep"),
            "postgres://doorstep:***@db.example:5432/doorstep"
        );
        // A '/' in a password no longer makes the URL pass unredacted.
        assert!(!redacted("postgres://u:ab/cd@h/db").contains("cd@"));
        let socket = redacted("postgres:///doorstep?host=/run/postgresql&password=s3cret");
        assert!(!socket.contains("s3cret"), "{socket}");
        assert_eq!(
            redacted("not a url"),
            "a PostgreSQL URL that does not parse"
        );
    }
}

/// The channel commits are announced on: `<document id> <commit number>`.
pub const CHANGES_CHANNEL: &str = "doorstep_changes";

/// Announces a document's new commit number to the other nodes, inside the
/// committing transaction: PostgreSQL delivers it at commit, and never for
/// a transaction that rolled back. Once per transaction (NOTIFY takes a
/// database-wide lock at commit).
pub(super) async fn announce(
    tx: &mut super::Tx,
    document: doorstep_protocol::DocumentId,
    seq: i64,
) -> Result<(), StoreError> {
    // `::text`: pg_notify returns void, which `Any` cannot read.
    sqlx::query("select pg_notify($1, $2)::text")
        .bind(CHANGES_CHANNEL)
        .bind(format!("{document} {seq}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A commit another node announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    pub document: doorstep_protocol::DocumentId,
    pub seq: i64,
}

impl Announced {
    /// Reads a payload of [`CHANGES_CHANNEL`]; `None` for anything else.
    pub fn parse(payload: &str) -> Option<Announced> {
        let (document, seq) = payload.split_once(' ')?;
        Some(Announced {
            document: document.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// A connection listening on [`CHANGES_CHANNEL`].
#[derive(Debug)]
pub struct ChangeListener(sqlx::postgres::PgListener);

impl ChangeListener {
    /// Connects and listens. Announcements made before this returns are
    /// not heard: the caller re-reads what it holds after each connection.
    pub async fn connect(url: &str) -> Result<ChangeListener, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(ChangeListener(listener))
    }

    /// The next announcement; `Ok(None)` when the connection was lost
    /// (what was announced meanwhile is lost with it: reconnect, then
    /// re-read).
    pub async fn next(&mut self) -> Result<Option<Announced>, StoreError> {
        loop {
            match self.0.try_recv().await? {
                Some(notification) => {
                    if let Some(announced) = Announced::parse(notification.payload()) {
                        return Ok(Some(announced));
                    }
                    tracing::warn!("ignored a malformed change announcement");
                }
                None => return Ok(None),
            }
        }
    }
}
