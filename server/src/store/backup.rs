//! Backups of the embedded database, and restoring one under a running
//! server.
//!
//! A backup is SQLite's `VACUUM INTO`: one read transaction, so the copy is
//! the database as of one commit while the server goes on writing, and it
//! is compact (no free pages, no write-ahead log beside it). It is checked
//! (`integrity_check`) and flushed to disk before it is reported made.
//!
//! A restore copies the backup's rows into the live database in one write
//! transaction, rather than replacing the file: a server that has the file
//! open sees a committed change like any other (a file swapped under an
//! open SQLite handle is not seen, or is corrupted). The transaction also
//! gives the database a new epoch ([`Store::epoch`]): the server notices it
//! within a second, drops what it held of the old data and closes every
//! connection, and the devices sync again against the restored data. What
//! they hold that the backup lacks reaches the server again then.
//!
//! The audit log is never rewound: rows the backup lacks stay, and the
//! restore itself is recorded.

use std::path::{Path, PathBuf};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Row, SqliteConnection};

use super::audit::{AuditEntry, OPERATOR, record};
use super::{Store, StoreError};

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BackupSummary {
    pub path: PathBuf,
    pub bytes: u64,
    pub documents: i64,
    pub tenants: i64,
    pub devices: i64,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RestoreSummary {
    pub from: PathBuf,
    /// The copy of the data the restore replaced.
    pub replaced_data_kept_in: PathBuf,
    pub documents: i64,
    pub tenants: i64,
    pub devices: i64,
    /// The database's epoch from now on.
    pub epoch: String,
}

/// The tables a restore does not copy: the migration history (the backup
/// is migrated to this binary's schema first) and SQLite's own.
fn restored(table: &str) -> bool {
    table != "_sqlx_migrations" && !table.starts_with("sqlite_")
}

impl Store {
    /// Writes a consistent copy of the whole database to `to`, which must
    /// not exist yet, while the server keeps writing. A copy that fails
    /// (a full disk) is removed, never left half-written.
    pub async fn backup_to(&self, to: &Path) -> Result<BackupSummary, StoreError> {
        let target = to
            .to_str()
            .ok_or_else(|| StoreError::Invalid(format!("{} is not a UTF-8 path", to.display())))?;
        if to.exists() {
            return Err(StoreError::Conflict(format!("the file {}", to.display())));
        }
        let made = async {
            sqlx::query("vacuum into ?")
                .bind(target)
                .execute(self.pool())
                .await?;
            let summary = check_copy(to).await?;
            sync_file_and_folder(to).map_err(|e| StoreError::DataDir {
                path: to.display().to_string(),
                source: e,
            })?;
            Ok(summary)
        }
        .await;
        if made.is_err() {
            let _ = std::fs::remove_file(to);
        }
        made
    }

    /// Replaces every row of this database with the backup's, in one
    /// transaction, and gives the database a new epoch. The backup is first
    /// copied to `staging` (removed after) and brought to this binary's
    /// schema; it must be a Doorstep database that passes SQLite's
    /// integrity check, or nothing changes. Only then is the data it
    /// replaces backed up to `keep` (which must not exist), and only once
    /// that copy is made is anything replaced.
    pub async fn restore_from(
        &self,
        from: &Path,
        staging: &Path,
        keep: &Path,
    ) -> Result<RestoreSummary, StoreError> {
        let result = self.restore_staged(from, staging, keep).await;
        remove_database_files(staging);
        result
    }

    async fn restore_staged(
        &self,
        from: &Path,
        staging: &Path,
        keep: &Path,
    ) -> Result<RestoreSummary, StoreError> {
        if !from.is_file() {
            return Err(StoreError::Invalid(format!(
                "there is no backup file at {}",
                from.display()
            )));
        }
        // A backup must already be a Doorstep database: an empty or foreign
        // SQLite file would otherwise be migrated into an empty one, and
        // restoring it would empty the server.
        let not_a_backup = |why: String| {
            StoreError::Invalid(format!(
                "{} is not a Doorstep backup: {why}",
                from.display()
            ))
        };
        let mut probe = SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(from)
                .immutable(true)
                .read_only(true),
        )
        .await
        .map_err(|e| not_a_backup(e.to_string()))?;
        let migrations: Result<i64, sqlx::Error> =
            sqlx::query_scalar("select count(*) from _sqlx_migrations")
                .fetch_one(&mut probe)
                .await;
        let _ = probe.close().await;
        match migrations {
            Ok(n) if n > 0 => {}
            Ok(_) => return Err(not_a_backup("it has no schema".into())),
            Err(e) => return Err(not_a_backup(e.to_string())),
        }
        remove_database_files(staging);
        // A copy of a data directory (a file-system snapshot) may hold
        // committed transactions still in its write-ahead log: it comes too.
        for suffix in ["", "-wal"] {
            let (mut source_path, mut staged_path) =
                (from.as_os_str().to_owned(), staging.as_os_str().to_owned());
            source_path.push(suffix);
            staged_path.push(suffix);
            if suffix.is_empty() || Path::new(&source_path).is_file() {
                std::fs::copy(&source_path, &staged_path).map_err(|source| {
                    StoreError::DataDir {
                        path: staging.display().to_string(),
                        source,
                    }
                })?;
            }
        }
        // Opening migrates it to this binary's schema; a backup made by a
        // newer binary fails here, naming the migration it does not know.
        let staged = Store::open(staging).await?;
        let check = integrity(staged.pool()).await;
        staged.close().await;
        check.map_err(not_a_backup)?;

        let staged_name = staging.to_str().ok_or_else(|| {
            StoreError::Invalid(format!("{} is not a UTF-8 path", staging.display()))
        })?;
        self.backup_to(keep).await?;
        let epoch = uuid::Uuid::new_v4().to_string();
        // A connection of its own, not the pool's: an attached database
        // must not go back into the pool.
        let mut conn =
            SqliteConnection::connect_with(self.pool().connect_options().as_ref()).await?;
        sqlx::query("attach database ? as backup")
            .bind(staged_name)
            .execute(&mut conn)
            .await?;
        let copied = copy_rows(&mut conn, from, &epoch).await;
        let _ = sqlx::query("detach database backup")
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        let summary = copied?;
        // This process works in the new epoch at once (a server notices
        // through its own watcher).
        self.enter_epoch(epoch.clone());
        Ok(RestoreSummary {
            from: from.to_owned(),
            replaced_data_kept_in: keep.to_owned(),
            documents: summary.documents,
            tenants: summary.tenants,
            devices: summary.devices,
            epoch,
        })
    }
}

/// The rows of the attached `backup` replace `main`'s, all in one
/// transaction that rolls back on any error.
async fn copy_rows(
    conn: &mut SqliteConnection,
    from: &Path,
    epoch: &str,
) -> Result<BackupSummary, StoreError> {
    let mut tx = conn.begin_with("begin immediate").await?;
    // Rows refer to each other (devices to tenants, chunks to documents):
    // checked once, at commit, when every table is whole again.
    sqlx::query("pragma defer_foreign_keys = on")
        .execute(&mut *tx)
        .await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "select name from main.sqlite_master where type = 'table' order by name",
    )
    .fetch_all(&mut *tx)
    .await?;
    let tables: Vec<&String> = tables.iter().filter(|t| restored(t)).collect();
    // Every table is emptied before any is filled: a delete cascades (a
    // user's sessions go with the user), and must not reach rows already
    // copied from the backup.
    for table in tables.iter().filter(|t| **t != "audit") {
        sqlx::query(&format!("delete from main.{}", quoted(table)))
            .execute(&mut *tx)
            .await?;
    }
    for table in &tables {
        let columns: Vec<String> =
            sqlx::query(&format!("pragma main.table_info({})", quoted(table)))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>("name"))
                .collect::<Result<_, _>>()?;
        let list = columns
            .iter()
            .map(|c| quoted(c))
            .collect::<Vec<_>>()
            .join(", ");
        let name = quoted(table);
        // The audit log is append-only (its triggers refuse deletes): the
        // entries the backup has and this log lacks are added, none removed.
        let lacking = if *table == "audit" {
            format!(" where id not in (select id from main.{name})")
        } else {
            String::new()
        };
        sqlx::query(&format!(
            "insert into main.{name} ({list}) select {list} from backup.{name}{lacking}"
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "insert into main.server_meta (key, value) values ('storage_id', ?)
         on conflict (key) do update set value = excluded.value",
    )
    .bind(epoch)
    .execute(&mut *tx)
    .await?;
    let summary = counts(&mut tx, from.to_owned(), 0).await?;
    let entry = AuditEntry::new(OPERATOR, "database.restore", from.display().to_string())
        .detail(format!(
            "{} documents, {} tenants, {} devices restored; new epoch {epoch}",
            summary.documents, summary.tenants, summary.devices
        ))
        .every_district();
    record(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(summary)
}

/// SQLite's check of a whole database file: `Err` says what is wrong.
async fn integrity(pool: &sqlx::SqlitePool) -> Result<(), String> {
    let found: Vec<String> = sqlx::query_scalar("pragma integrity_check")
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?;
    if found.len() == 1 && found[0] == "ok" {
        Ok(())
    } else {
        Err(format!(
            "it fails SQLite's integrity check: {}",
            found.join("; ")
        ))
    }
}

/// Opens a finished copy read-only and checks it whole.
async fn check_copy(path: &Path) -> Result<BackupSummary, StoreError> {
    let mut conn = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .immutable(true)
            .read_only(true),
    )
    .await?;
    let found: Vec<String> = sqlx::query_scalar("pragma integrity_check")
        .fetch_all(&mut conn)
        .await?;
    if found.len() != 1 || found[0] != "ok" {
        let _ = conn.close().await;
        return Err(StoreError::Corrupt(format!(
            "the backup {} fails SQLite's integrity check: {}",
            path.display(),
            found.join("; ")
        )));
    }
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut tx = conn.begin().await?;
    let summary = counts(&mut tx, path.to_owned(), bytes).await;
    drop(tx);
    let _ = conn.close().await;
    summary
}

async fn counts(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    path: PathBuf,
    bytes: u64,
) -> Result<BackupSummary, StoreError> {
    let count = |table: &'static str| format!("select count(*) from {table}");
    Ok(BackupSummary {
        path,
        bytes,
        documents: sqlx::query_scalar(&count("documents"))
            .fetch_one(&mut **tx)
            .await?,
        tenants: sqlx::query_scalar(&count("tenants"))
            .fetch_one(&mut **tx)
            .await?,
        devices: sqlx::query_scalar(&count("devices"))
            .fetch_one(&mut **tx)
            .await?,
    })
}

/// An identifier as SQL text (names come from `sqlite_master`, but are
/// quoted all the same).
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Removes an SQLite database file and its write-ahead log and index.
fn remove_database_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// A finished file and the folder that names it reach the disk.
fn sync_file_and_folder(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(folder)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::Level;

    /// The server and the CLI each hold the database open. A restore by
    /// the CLI refuses the server's next write (it still works in the old
    /// epoch, and may hold documents of the replaced data) until the server
    /// enters the new epoch; then it writes into the restored data.
    #[tokio::test]
    async fn a_process_that_has_not_seen_a_restore_cannot_write_until_it_enters_the_new_epoch()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let database = dir.path().join("doorstep.db");
        let server = Store::open(&database).await?;
        let cli = Store::open(&database).await?;
        server
            .create_tenant(None, Level::District, "before")
            .await?;
        let backup = dir.path().join("backup.db");
        let made = cli.backup_to(&backup).await?;
        assert_eq!(made.tenants, 1);
        assert!(matches!(
            cli.backup_to(&backup).await,
            Err(StoreError::Conflict(_))
        ));
        server.create_tenant(None, Level::District, "after").await?;

        let staging = dir.path().join("staging.db");
        let kept = dir.path().join("kept.db");
        let restored = cli.restore_from(&backup, &staging, &kept).await?;
        assert!(kept.is_file(), "the replaced data is kept");
        assert_eq!(restored.tenants, 1);
        assert!(!staging.exists(), "the staged copy is removed");
        assert_eq!(cli.epoch(), restored.epoch);

        assert!(matches!(
            server.create_tenant(None, Level::District, "stale").await,
            Err(StoreError::Restored)
        ));
        let epoch = server.restored_epoch().await?.expect("the restore is seen");
        assert_eq!(epoch, restored.epoch);
        server.enter_epoch(epoch);
        assert_eq!(server.restored_epoch().await?, None);
        server.create_tenant(None, Level::District, "new").await?;
        assert_eq!(server.tenant_count().await?, 2);
        Ok(())
    }
}
