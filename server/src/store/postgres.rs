//! What is PostgreSQL's own: connecting and checking the server's
//! settings, the write lock, the one-node lock, and naming a database URL
//! without its password. Everything else runs the same SQL as SQLite.

use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Connection};

use super::StoreError;

/// The key of the transaction-level advisory lock every write transaction
/// takes: writes are serialised as on SQLite (`begin immediate`), so each
/// transaction's reads stay true until it commits.
const WRITE_LOCK: i64 = 0x646f_6f72_7374_6570; // "doorstep"

/// The key of the session-level advisory lock the one node serving a
/// database holds.
const SOLE_NODE_LOCK: i64 = 0x646f_6f72_6e6f_6465; // "doornode"

/// How long a write waits for the write lock before it fails as busy, as
/// SQLite's busy timeout does.
const WRITE_LOCK_TIMEOUT: &str = "10s";

/// A pool on the PostgreSQL database at `url`, its settings checked.
pub(super) async fn connect(url: &str) -> Result<(AnyPool, AnyConnectOptions), StoreError> {
    sqlx::any::install_default_drivers();
    let options = AnyConnectOptions::from_str(url)?;
    let pool = AnyPoolOptions::new()
        .max_connections(16)
        .after_release(|conn, _| Box::pin(async move { Ok(super::is_clean(conn).await) }))
        .connect_with(options.clone())
        .await?;
    check_settings(&pool).await?;
    Ok((pool, options))
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

/// Held while this process is the one node serving the database; dropping
/// it lets another start.
#[derive(Debug)]
pub struct SoleNode {
    /// PostgreSQL keeps the lock while this connection lives.
    _holder: Option<sqlx::AnyConnection>,
}

impl SoleNode {
    /// For SQLite, whose data directory's lock does the same.
    pub(super) fn by_directory() -> SoleNode {
        SoleNode { _holder: None }
    }
}

/// Makes this process the one node serving the database at `url`, or says
/// who is. Taken before migrations run, so a second node changes nothing.
pub(super) async fn claim_sole_node(url: &str) -> Result<SoleNode, StoreError> {
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnectOptions::from_str(url)?.connect().await?;
    let claimed: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(SOLE_NODE_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if claimed {
        return Ok(SoleNode {
            _holder: Some(conn),
        });
    }
    // A 64-bit advisory key shows in pg_locks as two 32-bit halves.
    let holders: String = sqlx::query_scalar(
        "select coalesce(string_agg('PostgreSQL backend ' || l.pid::text || ' (client '
                || coalesce(host(a.client_addr), 'local socket') || ')', ', '), 'unknown')
         from pg_locks l left join pg_stat_activity a on a.pid = l.pid
         where l.locktype = 'advisory' and l.granted
           and l.database = (select oid from pg_database where datname = current_database())
           and ((l.classid::bigint << 32) | l.objid::bigint) = $1",
    )
    .bind(SOLE_NODE_LOCK)
    .fetch_one(&mut conn)
    .await?;
    let _ = conn.close().await;
    Err(StoreError::Invalid(format!(
        "another doorstep node already serves this database ({holders} holds its lock); \
         one node serves a PostgreSQL database until nodes notify each other of changes"
    )))
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
