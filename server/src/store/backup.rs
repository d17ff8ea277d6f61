//! Backups of the embedded database, and restoring one under a running
//! server.
//!
//! A backup is SQLite's `VACUUM INTO` into a file made here (new, `0600`:
//! it holds every name): one read transaction, so the copy is the database
//! as of one commit while the server goes on writing, and it is compact (no
//! free pages, no write-ahead log beside it). It is checked
//! (`integrity_check`), flushed to disk and recorded in the audit log before
//! it is reported made.
//!
//! A restore never rewinds anything: it *adds* the backup's rows that the
//! database lacks, in one transaction, and keeps every row the database
//! has. Automerge changes are content-addressed and only ever added, so the
//! union is the whole history either held; devices, actor bindings,
//! revocations, disabled accounts, used codes and revoked grants only ever
//! move forward, so the database's own rows are the later truth. Restoring
//! into a lost database (a new data directory) therefore brings the backup
//! back whole, and restoring into a damaged one brings back what it lost,
//! while a revoked phone stays revoked. The figures are derived: the
//! documents that gain changes are marked and re-projected.
//!
//! The transaction also gives the database a new epoch ([`Store::epoch`]):
//! the server notices within a second, drops every document it held, closes
//! every connection and re-projects, and the devices sync again; a device
//! that sees the server's storage id change offers every document it holds,
//! so what reached the server after the backup comes back from the phones.
//!
//! A backup of another installation is refused: its storage id must be one
//! this database has had (or the database must be empty).

use std::path::{Path, PathBuf};

use sqlx::{AnyConnection, Connection, Row};

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

/// What a restore brought back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RestoreSummary {
    pub from: PathBuf,
    /// Rows of the backup the database lacked, now added.
    pub rows_added: u64,
    /// Documents that gained changes (their figures are re-projected).
    pub documents_gaining_changes: u64,
    /// The database's epoch from now on.
    pub epoch: String,
}

/// A backup chunk `b` the database lacks: a snapshot it does not have, or
/// a change it holds in no form.
const CHUNKS_LACKING: &str = "not exists (select 1 from main.chunks c
                    where c.document_id = b.document_id and c.hash = b.hash)
     and (b.kind = 'snapshot' or not exists (select 1 from main.change_log l
                    where l.document_id = b.document_id and l.hash = b.hash))";

/// The previous epochs of this database (comma-separated in `server_meta`):
/// a backup's storage id must be among them, or be the current one.
const PREVIOUS_EPOCHS: &str = "previous_epochs";

/// Which of a backup's rows a restore adds to a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Merge {
    /// Every row the database lacks.
    Lacking,
    /// Chunks the database lacks, but no change it already holds (in a
    /// snapshot compaction made since the backup).
    Chunks,
    /// Audit entries the log lacks, compared by content and given new ids:
    /// the log may have used the backup's ids for other entries (a server
    /// that ran on an empty database before the restore).
    AuditEntries,
    /// Only rows of devices the database lacks: a device's token replaced
    /// (its enrollment repeated) was deleted on purpose, and must not work
    /// again.
    OfLackingDevices,
    /// None.
    Skip,
}

/// How a restore treats `table`. Rows deleted on purpose must not come
/// back: an ended login session (logout, a revoked session, a disabled
/// user, a changed password) is a deleted row, so no session is restored
/// (everyone logs in again after a restore). Skipped too: the migration
/// history (the backup is migrated to this binary's schema first), SQLite's
/// own tables, the projection rows (re-projected from the documents), the
/// login throttle's counters, and sync states (a lost one costs only a
/// longer sync, a stale one nothing at all).
/// A table no decision was made for is `None`: the restore refuses rather
/// than bring back rows that may have been deleted on purpose.
fn merge_of(table: &str) -> Option<Merge> {
    Some(match table {
        "device_tokens" => Merge::OfLackingDevices,
        "chunks" => Merge::Chunks,
        "audit" => Merge::AuditEntries,
        "server_meta" | "tenants" | "users" | "devices" | "device_actors" | "documents"
        | "change_log" | "enrollment_codes" | "user_invitations" | "drilldown_grants" => {
            Merge::Lacking
        }
        "_sqlx_migrations"
        | "user_sessions"
        | "login_attempts"
        | "login_lockouts"
        | "login_known_addresses"
        | "sync_states"
        | "sqlite_sequence" => Merge::Skip,
        t if crate::projection::TABLES.contains(&t) => Merge::Skip,
        _ => return None,
    })
}

impl Store {
    /// Writes a consistent copy of the whole database to `to`, which must
    /// not exist yet, while the server keeps writing. The file is made
    /// here, readable by this user only, and never through a link; a copy
    /// that fails (a full disk) is removed, never left half-written. The
    /// backup is recorded in the audit log: it holds every name.
    pub async fn backup_to(&self, to: &Path) -> Result<BackupSummary, StoreError> {
        self.sqlite_file("doorstep backup")?;
        let target = sql_path(to)?;
        // `create_new` fails on anything at the path, a dangling link
        // included, so SQLite writes only into the file made here.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Conflict(format!("the file {}", to.display())));
            }
            Err(e) => {
                return Err(StoreError::Invalid(format!(
                    "cannot write the backup {}: {e}",
                    to.display()
                )));
            }
        }
        let made = async {
            // SQLite writes into an empty existing file.
            sqlx::query("vacuum into $1")
                .bind(&target)
                .execute(self.every_branch())
                .await?;
            let summary = check_copy(to).await?;
            sync_file_and_folder(to).map_err(|e| {
                StoreError::Invalid(format!("cannot flush the backup {}: {e}", to.display()))
            })?;
            let entry = AuditEntry::new(OPERATOR, "database.backup", to.display().to_string())
                .detail(format!(
                    "{} documents, {} tenants, {} devices",
                    summary.documents, summary.tenants, summary.devices
                ))
                .every_district();
            self.record_audit(entry).await?;
            Ok(summary)
        }
        .await;
        if made.is_err() {
            let _ = std::fs::remove_file(to);
        }
        made
    }

    /// Adds every row of the backup at `from` that this database lacks, in
    /// one transaction, and gives the database a new epoch. The backup is
    /// first copied to `staging` (removed after) and brought to this
    /// binary's schema; it must be a Doorstep backup of this installation
    /// that passes SQLite's integrity check, or nothing changes.
    pub async fn restore_from(
        &self,
        from: &Path,
        staging: &Path,
    ) -> Result<RestoreSummary, StoreError> {
        let result = self.restore_staged(from, staging).await;
        remove_database_files(staging);
        result
    }

    async fn restore_staged(
        &self,
        from: &Path,
        staging: &Path,
    ) -> Result<RestoreSummary, StoreError> {
        if !from.is_file() {
            return Err(StoreError::Invalid(format!(
                "there is no backup file at {}",
                from.display()
            )));
        }
        if same_file(from, staging) {
            return Err(StoreError::Invalid(format!(
                "{} is a restore's staging copy, not a backup",
                from.display()
            )));
        }
        if same_file(from, self.sqlite_file("doorstep restore")?) {
            return Err(StoreError::Invalid(format!(
                "{} is the live database itself; name a file `doorstep backup` wrote",
                from.display()
            )));
        }
        // A backup must already be a Doorstep database: an empty or foreign
        // SQLite file would otherwise be migrated into an empty one.
        let not_a_backup = |why: String| {
            StoreError::Invalid(format!(
                "{} is not a Doorstep backup: {why}",
                from.display()
            ))
        };
        let mut probe = super::read_sqlite_file(from)
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
        // The file alone: a backup has no write-ahead log, and a `-wal`
        // lying beside it (SQLite would replay one from any database) is
        // not taken as part of it.
        std::fs::copy(from, staging).map_err(|source| StoreError::DataDir {
            path: staging.display().to_string(),
            source,
        })?;
        // Opening migrates it to this binary's schema; a backup made by a
        // newer binary fails here, naming the migration it does not know.
        let staged = Store::open(staging).await?;
        let check = integrity(staged.every_branch())
            .await
            .map_err(|e| StoreError::Invalid(e.to_string()))
            .and_then(|found| found.map_err(not_a_backup));
        let lineage = staged.epoch();
        staged.close().await;
        check?;

        let staged_name = sql_path(staging)?;
        let epoch = uuid::Uuid::new_v4().to_string();
        // A connection of its own, not the pool's: an attached database
        // must not go back into the pool.
        let mut conn = self.connect_alone().await?;
        sqlx::query("attach database $1 as backup")
            .bind(&staged_name)
            .execute(&mut conn)
            .await?;
        let merged = merge_rows(&mut conn, from, &lineage, &epoch).await;
        let _ = sqlx::query("detach database backup")
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        let (rows_added, documents_gaining_changes) = merged?;
        // This process works in the new epoch at once (a server notices
        // through its own watcher).
        self.enter_epoch(epoch.clone());
        Ok(RestoreSummary {
            from: from.to_owned(),
            rows_added,
            documents_gaining_changes,
            epoch,
        })
    }
}

impl Store {
    /// Gives the database a new epoch after it was restored by other means
    /// than `doorstep restore` (`pg_restore`, a file copied back): the
    /// running servers notice within a second and drop what they held, and
    /// every device offers every document it holds, so what reached the
    /// database after the backup was taken comes back from the phones. The
    /// old epoch stays in the lineage.
    ///
    /// Unlike `doorstep restore`, such a restore rewinds: device
    /// revocations, disabled accounts and password changes made after the
    /// backup are undone by it, and the caller must say so. Every login
    /// session is ended here, so that whoever was logged in logs in again,
    /// against the accounts as they are now.
    pub async fn mark_restored(&self, how: &str) -> Result<MarkedRestored, StoreError> {
        let epoch = uuid::Uuid::new_v4().to_string();
        let mut tx = self.begin_write().await?;
        let sessions_ended = sqlx::query("delete from user_sessions")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let meta = |key: &'static str| {
            sqlx::query_scalar::<_, String>("select value from server_meta where key = $1")
                .bind(key)
        };
        let current = meta("storage_id").fetch_optional(&mut *tx).await?;
        let previous = meta(PREVIOUS_EPOCHS).fetch_optional(&mut *tx).await?;
        let lineage: Vec<&str> = previous
            .iter()
            .chain(current.iter())
            .flat_map(|epochs| epochs.split(','))
            .filter(|e| !e.is_empty())
            .collect();
        for (key, value) in [
            (PREVIOUS_EPOCHS, lineage.join(",")),
            ("storage_id", epoch.clone()),
        ] {
            sqlx::query(
                "insert into server_meta (key, value) values ($1, $2)
                 on conflict (key) do update set value = excluded.value",
            )
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        let entry = AuditEntry::new(OPERATOR, "database.mark_restored", how.to_owned())
            .detail(format!(
                "new epoch {epoch}; {sessions_ended} login sessions ended"
            ))
            .every_district();
        record(&mut tx, entry).await?;
        tx.commit().await?;
        self.enter_epoch(epoch.clone());
        Ok(MarkedRestored {
            epoch,
            sessions_ended,
        })
    }
}

/// What [`Store::mark_restored`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MarkedRestored {
    /// The database's epoch from now on.
    pub epoch: String,
    /// Login sessions ended (every one).
    pub sessions_ended: u64,
}

/// Adds the attached `backup`'s rows that `main` lacks, all in one
/// transaction that rolls back on any error: the rows added, and the
/// documents that gained changes.
async fn merge_rows(
    conn: &mut AnyConnection,
    from: &Path,
    lineage: &str,
    epoch: &str,
) -> Result<(u64, u64), StoreError> {
    let mut tx = conn.begin_with("begin immediate").await?;
    let meta = |key: &'static str| {
        sqlx::query_scalar::<_, String>("select value from main.server_meta where key = $1")
            .bind(key)
    };
    let current = meta("storage_id").fetch_optional(&mut *tx).await?;
    let previous = meta(PREVIOUS_EPOCHS).fetch_optional(&mut *tx).await?;
    let tenants: i64 = sqlx::query_scalar("select count(*) from main.tenants")
        .fetch_one(&mut *tx)
        .await?;
    let known = current
        .iter()
        .chain(previous.iter())
        .any(|epochs| epochs.split(',').any(|e| e == lineage));
    if tenants > 0 && !known {
        return Err(StoreError::Invalid(format!(
            "{} is a backup of another Doorstep installation (storage id {lineage}); \
             restore it into an empty data directory instead",
            from.display()
        )));
    }
    // A username is one account: a backup account whose username another
    // account took since cannot be added (and what refers to it would then
    // fail at commit, naming nothing). Said plainly, before anything.
    let clashing: Vec<String> = sqlx::query_scalar(
        "select b.username from backup.users b
         join main.users m on m.username = b.username and m.id <> b.id
         order by b.username",
    )
    .fetch_all(&mut *tx)
    .await?;
    if !clashing.is_empty() {
        return Err(StoreError::Invalid(format!(
            "the backup's accounts {} have usernames that other accounts here took since; \
             nothing was restored",
            clashing.join(", ")
        )));
    }
    // Rows refer to each other (devices to tenants, chunks to documents):
    // checked once, at commit.
    sqlx::query("pragma defer_foreign_keys = on")
        .execute(&mut *tx)
        .await?;
    let gaining: Vec<String> = sqlx::query_scalar(&format!(
        "select distinct b.document_id from backup.chunks b where {}",
        CHUNKS_LACKING
    ))
    .fetch_all(&mut *tx)
    .await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "select name from main.sqlite_master where type = 'table' order by name",
    )
    .fetch_all(&mut *tx)
    .await?;
    // Devices the database lacks, before any row is added.
    sqlx::query(
        "create temp table lacking_devices as
         select id from backup.devices where id not in (select id from main.devices)",
    )
    .execute(&mut *tx)
    .await?;
    let mut added = 0;
    for table in &tables {
        let merge = merge_of(table).ok_or_else(|| {
            StoreError::Invalid(format!(
                "the table {table} has no restore rule (a bug of this binary); nothing was restored"
            ))
        })?;
        if merge == Merge::Skip {
            continue;
        }
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
        let statement = match merge {
            Merge::AuditEntries => {
                let without_id = columns
                    .iter()
                    .filter(|c| *c != "id")
                    .map(|c| quoted(c))
                    .collect::<Vec<_>>();
                let same = without_id
                    .iter()
                    .map(|c| format!("a.{c} is b.{c}"))
                    .collect::<Vec<_>>()
                    .join(" and ");
                let without_id = without_id.join(", ");
                // Compared through an indexed copy of the log: against the
                // log itself each backup entry scanned every entry of its
                // tenant (17 s for 20,000), inside the write lock.
                for statement in [
                    format!("create temp table audit_held as select {without_id} from main.{name}"),
                    "create index temp.audit_held_at on audit_held (at)".to_owned(),
                ] {
                    sqlx::query(&statement).execute(&mut *tx).await?;
                }
                format!(
                    "insert into main.{name} ({without_id}) select {without_id} from backup.{name} b
                     where not exists (select 1 from temp.audit_held a where a.at = b.at and {same})
                     order by b.id"
                )
            }
            Merge::OfLackingDevices => format!(
                "insert or ignore into main.{name} ({list}) select {list} from backup.{name}
                 where device_id in (select id from temp.lacking_devices)"
            ),
            Merge::Chunks => format!(
                "insert or ignore into main.{name} ({list}) select {list} from backup.{name} b
                 where {CHUNKS_LACKING}"
            ),
            // `or ignore`: a row the database has (by its key) stays as it is.
            Merge::Lacking | Merge::Skip => format!(
                "insert or ignore into main.{name} ({list}) select {list} from backup.{name}"
            ),
        };
        added += sqlx::query(&statement)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    // The documents that gained changes are re-projected (a server at its
    // watcher's next look, or at its next start).
    for document in &gaining {
        sqlx::query("update main.documents set projected_heads = null where id = $1")
            .bind(document)
            .execute(&mut *tx)
            .await?;
    }
    // The lineage from now on: every epoch this database and the backup
    // have had, so an older backup of either is recognised later.
    let backup_previous: Option<String> =
        sqlx::query_scalar("select value from backup.server_meta where key = $1")
            .bind(PREVIOUS_EPOCHS)
            .fetch_optional(&mut *tx)
            .await?;
    let mut epochs: Vec<&str> = Vec::new();
    let listed = [
        previous.as_deref(),
        current.as_deref(),
        backup_previous.as_deref(),
        Some(lineage),
    ];
    for one in listed.into_iter().flatten().flat_map(|l| l.split(',')) {
        if !one.is_empty() && !epochs.contains(&one) {
            epochs.push(one);
        }
    }
    let lineage_now = epochs.join(",");
    for (key, value) in [
        (PREVIOUS_EPOCHS, lineage_now.as_str()),
        ("storage_id", epoch),
    ] {
        sqlx::query(
            "insert into main.server_meta (key, value) values ($1, $2)
             on conflict (key) do update set value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await?;
    }
    let entry = AuditEntry::new(OPERATOR, "database.restore", from.display().to_string())
        .detail(format!(
            "{added} rows added, {} documents gained changes; new epoch {epoch}",
            gaining.len()
        ))
        .every_district();
    record(&mut tx, entry).await?;
    // The temporary table goes with the connection, closed after.
    tx.commit().await?;
    Ok((added, gaining.len() as u64))
}

/// SQLite's check of a whole database: the inner `Err` says what is wrong.
async fn integrity<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
) -> Result<Result<(), String>, sqlx::Error> {
    let found: Vec<String> = sqlx::query_scalar("pragma integrity_check")
        .fetch_all(executor)
        .await?;
    Ok(if found.len() == 1 && found[0] == "ok" {
        Ok(())
    } else {
        Err(format!(
            "it fails SQLite's integrity check: {}",
            found.join("; ")
        ))
    })
}

/// Opens a finished copy read-only, checks it whole and counts what it holds.
async fn check_copy(path: &Path) -> Result<BackupSummary, StoreError> {
    let mut conn = super::read_sqlite_file(path).await?;
    let checked = async {
        integrity(&mut conn)
            .await?
            .map_err(|why| StoreError::Corrupt(format!("the backup {}: {why}", path.display())))?;
        Ok(BackupSummary {
            path: path.to_owned(),
            bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            documents: rows_of(&mut conn, "documents").await?,
            tenants: rows_of(&mut conn, "tenants").await?,
            devices: rows_of(&mut conn, "devices").await?,
        })
    }
    .await;
    let _ = conn.close().await;
    checked
}

/// How many rows `table` (one of this module's constants) holds.
async fn rows_of(conn: &mut AnyConnection, table: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(&format!("select count(*) from {table}"))
        .fetch_one(conn)
        .await?)
}

/// An identifier as SQL text (names come from `sqlite_master`, but are
/// quoted all the same).
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A path as SQLite is given it: absolute, so a name that starts with
/// `file:` is never read as a URI (sqlx opens with URIs on).
fn sql_path(path: &Path) -> Result<String, StoreError> {
    std::path::absolute(path)
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned))
        .ok_or_else(|| StoreError::Invalid(format!("{} is not a usable path", path.display())))
}

/// Whether two paths name one file, through links of either kind (a
/// restore must not read the database it writes).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
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

    async fn delete_tenant(database: &Path, name: &str) -> anyhow::Result<()> {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(database),
        )
        .await?;
        sqlx::query("delete from tenants where name = $1")
            .bind(name)
            .execute(&pool)
            .await?;
        pool.close().await;
        Ok(())
    }

    /// The server and the CLI each hold the database open. A row the
    /// database lost comes back from the backup, a row made after the
    /// backup stays, and the server's next write is refused (it still works
    /// in the old epoch, and may hold documents loaded before) until it
    /// enters the new epoch. The same restore again adds nothing.
    #[tokio::test]
    async fn a_restore_adds_what_was_lost_keeps_what_is_there_and_fences_off_a_stale_process()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let database = dir.path().join("doorstep.db");
        let server = Store::open(&database).await?;
        let cli = Store::open(&database).await?;
        server.create_tenant(None, Level::District, "lost").await?;
        let backup = dir.path().join("backup.db");
        let made = cli.backup_to(&backup).await?;
        assert_eq!(made.tenants, 1);
        assert!(matches!(
            cli.backup_to(&backup).await,
            Err(StoreError::Conflict(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&backup)?.permissions().mode();
            assert_eq!(mode & 0o077, 0, "a backup holds names: owner only");
        }
        delete_tenant(&database, "lost").await?;
        server.create_tenant(None, Level::District, "kept").await?;

        let staging = dir.path().join("staging.db");
        let restored = cli.restore_from(&backup, &staging).await?;
        assert!(restored.rows_added >= 1, "{restored:?}");
        assert!(!staging.exists(), "the staged copy is removed");
        assert_eq!(cli.epoch(), restored.epoch);
        assert_eq!(cli.tenant_count().await?, 2, "lost came back, kept stayed");

        assert!(matches!(
            server.create_tenant(None, Level::District, "stale").await,
            Err(StoreError::Restored)
        ));
        let epoch = server.restored_epoch().await?.expect("the restore is seen");
        assert_eq!(epoch, restored.epoch);
        server.enter_epoch(epoch);
        assert_eq!(server.restored_epoch().await?, None);
        server.create_tenant(None, Level::District, "new").await?;
        assert_eq!(server.tenant_count().await?, 3);

        let again = cli.restore_from(&backup, &staging).await?;
        assert_eq!(again.rows_added, 0, "{again:?}");
        Ok(())
    }

    /// Every table of the schema has a restore rule: a new table must be
    /// decided, not merged by default.
    #[tokio::test]
    async fn every_table_of_the_schema_has_a_restore_rule() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("doorstep.db")).await?;
        let tables: Vec<String> =
            sqlx::query_scalar("select name from sqlite_master where type = 'table'")
                .fetch_all(store.every_branch())
                .await?;
        let undecided: Vec<&String> = tables.iter().filter(|t| merge_of(t).is_none()).collect();
        assert!(undecided.is_empty(), "no restore rule: {undecided:?}");
        Ok(())
    }

    /// Another installation's backup would bring its users and devices in:
    /// refused, unless the database is empty (a new data directory).
    #[tokio::test]
    async fn a_backup_of_another_installation_is_refused_unless_the_database_is_empty()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let other = Store::open(&dir.path().join("other.db")).await?;
        other.create_tenant(None, Level::District, "other").await?;
        let backup = dir.path().join("other-backup.db");
        other.backup_to(&backup).await?;

        let ours = Store::open(&dir.path().join("ours.db")).await?;
        ours.create_tenant(None, Level::District, "ours").await?;
        let staging = dir.path().join("staging.db");
        match ours.restore_from(&backup, &staging).await {
            Err(StoreError::Invalid(why)) => assert!(why.contains("another"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ours.tenant_count().await?, 1);

        let fresh = Store::open(&dir.path().join("fresh.db")).await?;
        fresh.restore_from(&backup, &staging).await?;
        assert_eq!(fresh.tenant_count().await?, 1);
        // Its lineage now includes the backup's: a later restore of the
        // same backup is accepted.
        fresh.create_tenant(None, Level::District, "later").await?;
        fresh.restore_from(&backup, &staging).await?;
        Ok(())
    }

    /// A backup account whose username another account took since is
    /// named, and nothing is restored.
    #[tokio::test]
    async fn a_username_taken_since_by_another_account_is_named_and_nothing_restored()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let database = dir.path().join("doorstep.db");
        let store = Store::open(&database).await?;
        let district = store.create_tenant(None, Level::District, "d").await?;
        let audit = || AuditEntry::new(OPERATOR, "user.create", "li");
        store
            .create_user(
                "li",
                "x",
                crate::tenancy::Role::DistrictAdmin,
                district.id,
                audit(),
            )
            .await?;
        let backup = dir.path().join("backup.db");
        store.backup_to(&backup).await?;
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(&database),
        )
        .await?;
        sqlx::query("delete from users where username = 'li'")
            .execute(&pool)
            .await?;
        pool.close().await;
        store
            .create_user(
                "li",
                "y",
                crate::tenancy::Role::DistrictAdmin,
                district.id,
                audit(),
            )
            .await?;
        let epoch = store.epoch();
        match store
            .restore_from(&backup, &dir.path().join("staging.db"))
            .await
        {
            Err(StoreError::Invalid(why)) => assert!(why.contains("li"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.epoch(), epoch, "nothing was restored");
        assert_eq!(store.restored_epoch().await?, None);
        Ok(())
    }
}
