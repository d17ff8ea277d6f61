//! The device's local store: one SQLCipher file in WAL mode with
//! `synchronous=FULL`, so an edit that returned is on disk even if the app
//! is killed next, and nothing in it (names, the token) can be read without
//! the key the app keeps in the platform keystore.
//!
//! Its size stays near its data's: the log is capped
//! (`journal_size_limit`) and checkpointed after a compaction, a sync and
//! at close, and the pages a compaction frees go back to the file system
//! (incremental vacuum).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use automerge::ChangeHash;
use doorstep_protocol::schema::DocumentKind;
use doorstep_protocol::schema::RecordId;
use doorstep_protocol::{Date, DocumentId, Month};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row, SqlitePool};

use zeroize::Zeroize;

use crate::error::ClientError;
use crate::index;

/// The 256-bit key the store is encrypted with. The app keeps it in the
/// platform keystore and hands it over at every open; the SDK never writes
/// it anywhere, and zeroes every copy of it it made when that copy is
/// dropped (see [`StoreKey::generate`] for the keystore recipe).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    pub const LEN: usize = 32;

    /// The key from its raw bytes; exactly [`StoreKey::LEN`] of them. The
    /// caller should zero its own buffer afterwards.
    pub fn from_bytes(bytes: &[u8]) -> Result<StoreKey, ClientError> {
        if bytes.len() != StoreKey::LEN {
            return Err(ClientError::invalid(
                "store_key",
                format!("must be {} bytes, not {}", StoreKey::LEN, bytes.len()),
            ));
        }
        let mut key = StoreKey([0; 32]);
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// A fresh random key from the operating system's generator, for an
    /// app to keep on first run. The SDK does not store it; the app does,
    /// wrapped by a key that never leaves the secure hardware:
    ///
    /// - Android: create an AES-256-GCM key in the Android Keystore
    ///   (`KeyGenParameterSpec.Builder(alias, PURPOSE_ENCRYPT or
    ///   PURPOSE_DECRYPT).setBlockModes(BLOCK_MODE_GCM)`), encrypt these 32
    ///   bytes with it (`Cipher.getInstance("AES/GCM/NoPadding")`), keep the
    ///   ciphertext and IV in the app's private files, and decrypt them in
    ///   the `KeyProvider` at every open.
    /// - iOS: keep the 32 bytes as a Keychain item (`kSecClassGenericPassword`,
    ///   `kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly`, so background
    ///   sync can open the store after the first unlock and the key is not
    ///   restored onto another phone) and read it with `SecItemCopyMatching`
    ///   at every open.
    ///
    /// With a key that must not move to another phone, a restored backup
    /// cannot be opened there: export what is unsynced first.
    pub fn generate() -> StoreKey {
        use rand::RngCore;
        let mut key = StoreKey([0; 32]);
        rand::rngs::OsRng.fill_bytes(&mut key.0);
        key
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SQLCipher's raw-key form, `"x'<hex>'"`: no passphrase derivation at
    /// every open, since the key is already random. Written straight into
    /// a buffer of its final size, so no intermediate copy of the key is
    /// left behind in freed memory by a reallocation or a temporary.
    fn pragma(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(5 + 2 * StoreKey::LEN);
        text.push_str("\"x'");
        for &byte in &self.0 {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        text.push_str("'\"");
        text
    }
}

impl Drop for StoreKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

/// The size of the store on disk, and how much of it is the data itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct StoreSize {
    /// The database file, its write-ahead log and the log's index: what
    /// the store takes on the phone's storage.
    pub bytes_on_disk: u64,
    /// Of `bytes_on_disk`, the write-ahead log's.
    pub wal_bytes: u64,
    /// Pages of the database file that hold nothing (returned to the file
    /// system after a compaction).
    pub free_bytes: u64,
    /// The documents' stored changes and snapshots: the data.
    pub chunk_bytes: u64,
}

/// The write-ahead log is cut back to this size whenever it is reset
/// after a checkpoint (SQLite keeps the file at its largest otherwise).
const JOURNAL_SIZE_LIMIT: u64 = 256 * 1024;
/// Pages written to the log before SQLite copies them into the database
/// on its own: the log's cap, so a day of edits offline carries at most
/// about 256 KiB of log (SQLite's default of 1,000 pages let it reach
/// 0.75 MiB over 1,000 visits between two compactions, 4 MiB at most).
const WAL_AUTOCHECKPOINT_PAGES: u32 = (JOURNAL_SIZE_LIMIT / 4096) as u32;
/// The first bytes of a plain SQLite file. A SQLCipher file starts with its
/// random salt instead.
const PLAIN_SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Whether a connection going back to the pool is outside any transaction;
/// one that is not is closed instead of pooled. An app cancels calls (a
/// `record_visit` whose task is dropped): dropped just after the worker ran
/// `begin immediate` but before sqlx handed back its transaction guard,
/// nothing queues a rollback, and the pooled connection kept the write
/// lock, so every later write waited out the busy timeout and failed
/// ("database is locked"). The server's pool has the same hook.
async fn is_clean(conn: &mut sqlx::SqliteConnection) -> bool {
    use sqlx::Connection;
    if !conn.is_in_transaction() {
        return true;
    }
    // A rollback queued by a dropped transaction runs before this ping.
    if conn.ping().await.is_err() {
        return false;
    }
    !conn.is_in_transaction()
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Handle to the local database; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct LocalStore {
    pool: SqlitePool,
    /// The database file; its log and index sit beside it.
    path: std::path::PathBuf,
    /// Set while a tidy (see [`LocalStore::tidy_soon`]) is queued or runs,
    /// so compactions in a burst start one, not one each.
    tidying: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set by `close`: no tidy starts after it.
    closing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A document's stored chunks, with the keys they are stored under: a
/// compaction deletes exactly these, never a chunk it did not load.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    pub chunks: Vec<Vec<u8>>,
    pub keys: Vec<String>,
    pub snapshot_bytes: u64,
    pub incremental_bytes: u64,
}

impl LocalStore {
    /// Opens the store, bringing its schema up to this version's and
    /// reclaiming free pages once if it predates incremental vacuum.
    /// `vfs`: an SQLite VFS registered by the app (`None`: the default).
    pub async fn open(
        path: &Path,
        key: &StoreKey,
        vfs: Option<&str>,
    ) -> Result<LocalStore, ClientError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ClientError::Storage(format!("creating {}: {e}", dir.display())))?;
        }
        let store = LocalStore::connect(path, key, true, vfs).await?;
        store.check_durability().await?;
        sqlx::migrate!("./migrations")
            .run(&store.pool)
            .await
            .map_err(|e| match e {
                // A step this version does not have was applied: a newer
                // SDK wrote the store, and this one must not guess at it.
                sqlx::migrate::MigrateError::VersionMissing(version) => {
                    ClientError::NewerStore { version }
                }
                other => ClientError::Storage(other.to_string()),
            })?;
        // A VACUUM needs about the store's size free on disk: on a full
        // phone it fails, and the store must still open (edits matter more
        // than free pages). It is tried again at the next open.
        if let Err(e) = store.enable_incremental_vacuum().await {
            tracing::warn!(error = %e, "could not switch the store to incremental vacuum; will retry at the next open");
        }
        Ok(store)
    }

    /// Reads back the settings "an edit call that returned is on disk"
    /// depends on (every connection is opened with them; a build that
    /// changed them would lose edits at a power cut without any test that
    /// kills the process noticing).
    async fn check_durability(&self) -> Result<(), ClientError> {
        let mut conn = self.pool.acquire().await?;
        let journal: String = sqlx::query_scalar("pragma journal_mode")
            .fetch_one(&mut *conn)
            .await?;
        // 2 is FULL.
        let synchronous: i64 = sqlx::query_scalar("pragma synchronous")
            .fetch_one(&mut *conn)
            .await?;
        if !journal.eq_ignore_ascii_case("wal") || synchronous != 2 {
            return Err(ClientError::Storage(format!(
                "the store runs with journal_mode={journal}, synchronous={synchronous}; it needs WAL and FULL (2)"
            )));
        }
        Ok(())
    }

    /// Opens an existing store as it is, whatever its schema version, to
    /// read it (the export of a store a downgraded app cannot open). Runs
    /// no migration and changes no row; SQLite itself may still fold the
    /// write-ahead log into the file (recovery at open, a checkpoint at
    /// close), which keeps the same data.
    pub async fn open_as_is(path: &Path, key: &StoreKey) -> Result<LocalStore, ClientError> {
        if !path.exists() {
            return Err(ClientError::Storage(format!(
                "no store at {}",
                path.display()
            )));
        }
        LocalStore::connect(path, key, false, None).await
    }

    /// How every connection is opened. The key goes first (sqlx sends it
    /// first by design); `auto_vacuum` before `journal_mode`, so a new
    /// store is created with incremental vacuum (on an older one it takes
    /// effect at the one VACUUM of [`Self::enable_incremental_vacuum`]).
    /// sqlx keeps this one copy of the key pragma for the pool's life, to
    /// open further connections.
    fn options(
        path: &Path,
        key: &StoreKey,
        create: bool,
        vfs: Option<&str>,
    ) -> Result<SqliteConnectOptions, ClientError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?;
        let options = match vfs {
            Some(vfs) => options.vfs(vfs.to_owned()),
            None => options,
        };
        // sqlx logs the statements it runs, the connect pragmas with the key
        // among them, and an app routes the SDK's logs to logcat: statement
        // logging is off for this store.
        Ok(options
            .filename(path)
            .log_statements(log::LevelFilter::Off)
            .log_slow_statements(log::LevelFilter::Off, Duration::MAX)
            .pragma("key", key.pragma())
            .create_if_missing(create)
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string())
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT))
    }

    async fn connect(
        path: &Path,
        key: &StoreKey,
        create: bool,
        vfs: Option<&str>,
    ) -> Result<LocalStore, ClientError> {
        refuse_plaintext(path)?;
        let pool = match SqlitePoolOptions::new()
            .max_connections(4)
            .after_release(|conn, _| Box::pin(async move { Ok(is_clean(conn).await) }))
            .connect_with(LocalStore::options(path, key, create, vfs)?)
            .await
        {
            Ok(pool) => pool,
            Err(e) => return Err(open_error(e)),
        };
        let cipher: Option<String> = sqlx::query_scalar("pragma cipher_version")
            .fetch_optional(&pool)
            .await?;
        if cipher.is_none() {
            // Built without SQLCipher: refuse rather than store in plaintext.
            return Err(ClientError::Storage(
                "this build's SQLite has no encryption (SQLCipher)".into(),
            ));
        }
        Ok(LocalStore {
            pool,
            path: path.to_path_buf(),
            tidying: Default::default(),
            closing: Default::default(),
        })
    }

    /// A store made before incremental vacuum (auto_vacuum NONE) never
    /// gives back the pages a compaction frees. Switching needs one full
    /// VACUUM (SQLite applies a new auto_vacuum mode to a database with
    /// tables only then); done once, here, in code rather than as a
    /// migration, so it needs no schema step of its own.
    async fn enable_incremental_vacuum(&self) -> Result<(), ClientError> {
        const INCREMENTAL: i64 = 2;
        let mode: i64 =
            sqlx::query_scalar("select cast(auto_vacuum as integer) from pragma_auto_vacuum()")
                .fetch_one(&self.pool)
                .await?;
        if mode != INCREMENTAL {
            // The connection was opened with auto_vacuum=INCREMENTAL set.
            sqlx::query("vacuum").execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Changes the key of the store at `path`, which no one may have open
    /// (the caller holds the directory lock). SQLCipher re-encrypts every
    /// page in one transaction: the store opens with either key after a
    /// crash, never with neither.
    pub async fn rekey(path: &Path, old: &StoreKey, new: &StoreKey) -> Result<(), ClientError> {
        refuse_plaintext(path)?;
        // One connection, never recycled: the rekey applies to the
        // connection that runs it. (A pool, not a bare connection, because
        // sqlx's futures over `&mut SqliteConnection` are not `Send` for
        // every lifetime, and the FFI runs this on its runtime's tasks.)
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(LocalStore::options(path, old, false, None)?)
            .await
            .map_err(open_error)?;
        let rekeyed = LocalStore::rekey_on(&pool, new).await;
        close_pool(&pool).await;
        rekeyed
    }

    async fn rekey_on(pool: &SqlitePool, new: &StoreKey) -> Result<(), ClientError> {
        // The old key must open it before anything is rewritten.
        sqlx::query_scalar::<_, i64>("select count(*) from sqlite_master")
            .fetch_one(pool)
            .await
            .map_err(open_error)?;
        // Out of WAL mode for the rewrite, the log folded in first: pages
        // left in the log would be copied back under the old key later
        // (SQLCipher keeps the salt on rekey, so it is safe in WAL mode
        // too, but other SQLite ciphers are not, and the rollback journal
        // is the well-trodden path). The next open turns WAL back on.
        LocalStore::leave_wal(pool).await?;
        // Run unprepared, so the statement (the new key in it) is not kept
        // in the connection's statement cache; the text is zeroed after.
        let mut statement = String::with_capacity(14 + 5 + 2 * StoreKey::LEN);
        statement.push_str("pragma rekey = ");
        statement.push_str(&zeroize::Zeroizing::new(new.pragma()));
        let statement = zeroize::Zeroizing::new(statement);
        sqlx::raw_sql(statement.as_str()).execute(pool).await?;
        sqlx::query("pragma journal_mode = wal")
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Folds the log into the file and switches to the rollback journal.
    /// The switch needs the file to itself, and SQLite asks for that lock
    /// without its busy handler: a connection of the store just closed
    /// may still hold its shared lock for a moment (a pool shuts its last
    /// connections on their own threads), so the switch is tried again
    /// for as long as a write would wait for a lock.
    async fn leave_wal(pool: &SqlitePool) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            let switched = async {
                sqlx::query("pragma wal_checkpoint(truncate)")
                    .execute(pool)
                    .await?;
                sqlx::query_scalar::<_, String>("pragma journal_mode = delete")
                    .fetch_one(pool)
                    .await
            }
            .await;
            // SQLite answers the mode in force: `wal` when it could not
            // switch, or an error naming the lock.
            match switched {
                Ok(mode) if mode.eq_ignore_ascii_case("delete") => return Ok(()),
                Ok(_) => {}
                // SQLITE_BUSY, or one of its extended codes.
                Err(sqlx::Error::Database(e))
                    if e.code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .map(|c| c & 0xff)
                        == Some(5) => {}
                Err(e) => return Err(e.into()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Storage(
                    "the store is still open elsewhere; close it before changing its key".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the store: the log is copied into the database and cut to
    /// nothing, so a closed store is one file.
    pub async fn close(&self) {
        use std::sync::atomic::Ordering;
        self.closing.store(true, Ordering::SeqCst);
        // A tidy in flight may be opening a connection, which closing the
        // pool does not wait for: its thread then runs SQLCipher while the
        // process may be exiting (OpenSSL's exit handlers crashed a CLI
        // that closed and exited so). Wait for it, within reason.
        for _ in 0..500 {
            if !self.tidying.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.tidy().await;
        close_pool(&self.pool).await;
    }

    /// Closes a store opened with [`Self::open_as_is`], writing nothing.
    pub async fn close_without_tidy(&self) {
        close_pool(&self.pool).await;
    }

    /// How much the store takes on disk, and how much of it is data.
    pub async fn size(&self) -> Result<StoreSize, ClientError> {
        let file_len = |suffix: &str| {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            std::fs::metadata(&name).map_or(0, |m| m.len())
        };
        let wal_bytes = file_len("-wal");
        let chunk_bytes: i64 =
            sqlx::query_scalar("select coalesce(sum(length(bytes)), 0) from chunks")
                .fetch_one(&self.pool)
                .await?;
        // As table-valued functions, cast: SQLCipher's connection reports
        // these pragmas' values as text.
        let free_pages: i64 = sqlx::query_scalar(
            "select cast(freelist_count as integer) from pragma_freelist_count()",
        )
        .fetch_one(&self.pool)
        .await?;
        let page_size: i64 =
            sqlx::query_scalar("select cast(page_size as integer) from pragma_page_size()")
                .fetch_one(&self.pool)
                .await?;
        Ok(StoreSize {
            bytes_on_disk: file_len("") + wal_bytes + file_len("-shm"),
            wal_bytes,
            free_bytes: u64::try_from(free_pages * page_size).unwrap_or(0),
            chunk_bytes: u64::try_from(chunk_bytes).unwrap_or(0),
        })
    }

    /// Gives free pages back to the file system and copies the log into
    /// the database, cutting it to nothing. Failures only cost space: the
    /// data is committed either way (a busy checkpoint is retried at the
    /// next tidy, and SQLite's own autocheckpoint still runs).
    pub async fn tidy(&self) {
        if let Err(e) = sqlx::query("pragma incremental_vacuum")
            .execute(&self.pool)
            .await
        {
            tracing::debug!(error = %e, "incremental vacuum skipped");
        }
        if let Err(e) = sqlx::query("pragma wal_checkpoint(truncate)")
            .execute(&self.pool)
            .await
        {
            tracing::debug!(error = %e, "checkpoint skipped");
        }
    }

    /// [`Self::tidy`] in the background, for callers on an edit's path
    /// (a compaction runs inside `record_visit`): the checkpoint may wait
    /// for readers, and the edit must not.
    pub fn tidy_soon(&self) {
        use std::sync::atomic::Ordering;
        if self.closing.load(Ordering::SeqCst) || self.tidying.swap(true, Ordering::SeqCst) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            store.tidy().await;
            store.tidying.store(false, Ordering::SeqCst);
        });
    }

    pub async fn meta(&self, key: &str) -> Result<Option<String>, ClientError> {
        Ok(sqlx::query_scalar("select value from meta where key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn set_meta(&self, entries: &[(&str, &str)]) -> Result<(), ClientError> {
        let mut tx = self.pool.begin_with("begin immediate").await?;
        for (key, value) in entries {
            sqlx::query("insert into meta (key, value) values (?, ?) on conflict (key) do update set value = excluded.value")
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn documents(&self) -> Result<Vec<(DocumentId, DocumentKind)>, ClientError> {
        let rows = sqlx::query("select id, kind, month from documents order by kind desc, month")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let id = id
                    .parse()
                    .map_err(|_| ClientError::Storage(format!("bad document id {id}")))?;
                let month: Option<String> = r.try_get("month")?;
                let kind = match month {
                    Some(m) => DocumentKind::MonthlyLog(
                        m.parse::<Month>()
                            .map_err(|e| ClientError::Storage(e.to_string()))?,
                    ),
                    None => DocumentKind::Roster,
                };
                Ok((id, kind))
            })
            .collect()
    }

    /// Records a document with its first chunk (its genesis or the server's copy).
    pub async fn insert_document(
        &self,
        id: DocumentId,
        kind: DocumentKind,
        genesis: &[u8],
    ) -> Result<(), ClientError> {
        let (kind_text, month) = match kind {
            DocumentKind::Roster => ("roster", None),
            DocumentKind::MonthlyLog(m) => ("log", Some(m.to_string())),
        };
        let mut tx = self.pool.begin_with("begin immediate").await?;
        // A genesis holds no records: nothing to index.
        let inserted = sqlx::query(
            "insert into documents (id, kind, month, indexed) values (?, ?, ?, 1) on conflict (id) do nothing",
        )
        .bind(id.to_string())
        .bind(kind_text)
        .bind(month)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            sqlx::query("insert into chunks (document_id, kind, hash, bytes) values (?, 'snapshot', 'genesis', ?)")
                .bind(id.to_string())
                .bind(genesis)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn chunks(&self, id: DocumentId) -> Result<Chunks, ClientError> {
        let rows = sqlx::query(
            "select kind, hash, bytes from chunks where document_id = ? order by kind desc, rowid",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut chunks = Chunks::default();
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let bytes: Vec<u8> = row.try_get("bytes")?;
            chunks.keys.push(row.try_get("hash")?);
            if kind == "snapshot" {
                chunks.snapshot_bytes += bytes.len() as u64;
            } else {
                chunks.incremental_bytes += bytes.len() as u64;
            }
            chunks.chunks.push(bytes);
        }
        Ok(chunks)
    }

    /// Returns once no write that began before it is still under way.
    /// An edit whose future was dropped during its append leaves that
    /// append running on its connection's thread: it still commits (or
    /// rolls back) after the caller moved on. A document reloaded from
    /// disk meanwhile would miss a change that then lands, and the next
    /// edit would store a second change under the same sequence number
    /// ("duplicate seq": the document no longer loads). Every append holds
    /// the write lock from its `begin immediate`, so taking that lock once
    /// waits for it.
    pub async fn settle_writes(&self) -> Result<(), ClientError> {
        let tx = self.pool.begin_with("begin immediate").await?;
        tx.rollback().await?;
        Ok(())
    }

    /// Appends changes in one transaction; durable when this returns.
    /// `local`: they were made on this device, so the document now holds
    /// something the server has not acknowledged.
    /// `index`: the record index rows they change, written in the same
    /// transaction.
    pub async fn append(
        &self,
        id: DocumentId,
        changes: &[(ChangeHash, Vec<u8>)],
        local: bool,
        index: Option<&index::Update>,
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin_with("begin immediate").await?;
        if let Some(update) = index {
            write_index(&mut tx, id, update).await?;
        }
        if local {
            sqlx::query("update documents set unacked = 1 where id = ?")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        for (hash, bytes) in changes {
            sqlx::query(
                "insert into chunks (document_id, kind, hash, bytes) values (?, 'incremental', ?, ?)
                 on conflict (document_id, hash) do nothing",
            )
            .bind(id.to_string())
            .bind(hash.to_string())
            .bind(bytes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the chunks `covered` (those the snapshot was made from)
    /// with the snapshot, stored under `snapshot_key`. A chunk not in
    /// `covered` stays: the snapshot may not hold it.
    pub async fn compact(
        &self,
        id: DocumentId,
        snapshot_key: &str,
        snapshot: &[u8],
        covered: &[String],
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin_with("begin immediate").await?;
        for key in covered {
            sqlx::query("delete from chunks where document_id = ? and hash = ?")
                .bind(id.to_string())
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "insert into chunks (document_id, kind, hash, bytes) values (?, 'snapshot', ?, ?)
             on conflict (document_id, hash) do nothing",
        )
        .bind(id.to_string())
        .bind(snapshot_key)
        .bind(snapshot)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces every stored chunk of a document with `snapshot`, in one
    /// transaction (a re-base: the document lost changes, so no chunk may
    /// outlive it), with its index rows (`index`: a full index of a log),
    /// and marks it as holding unacknowledged edits.
    pub async fn replace_document(
        &self,
        id: DocumentId,
        snapshot_key: &str,
        snapshot: &[u8],
        index: Option<&index::Update>,
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin_with("begin immediate").await?;
        if let Some(update) = index {
            write_index(&mut tx, id, update).await?;
        }
        sqlx::query("delete from chunks where document_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "insert into chunks (document_id, kind, hash, bytes) values (?, 'snapshot', ?, ?)",
        )
        .bind(id.to_string())
        .bind(snapshot_key)
        .bind(snapshot)
        .execute(&mut *tx)
        .await?;
        sqlx::query("update documents set unacked = 1 where id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes a document's index rows on their own (a first indexing).
    pub async fn write_index(
        &self,
        id: DocumentId,
        update: &index::Update,
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin_with("begin immediate").await?;
        write_index(&mut tx, id, update).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Monthly logs whose records are not indexed yet.
    pub async fn unindexed_logs(&self) -> Result<Vec<DocumentId>, ClientError> {
        let ids: Vec<String> =
            sqlx::query_scalar("select id from documents where indexed = 0 and kind = 'log'")
                .fetch_all(&self.pool)
                .await?;
        parse_ids(&ids)
    }

    /// Valid visits (log and key) with a follow-up not done, due on or
    /// before `on` (the partial index holds only open follow-ups).
    pub async fn visits_due(&self, on: Date) -> Result<Vec<(DocumentId, String)>, ClientError> {
        let rows = sqlx::query(
            "select month, record_key from record_index
             where follow_up_due <= ? and collection = ? order by month",
        )
        .bind(index::day_number(on))
        .bind(index::visits_code())
        .fetch_all(&self.pool)
        .await?;
        self.visit_keys(rows).await
    }

    /// Valid visits (log and key) to `member`. A scan of the index (a few
    /// dozen bytes a record): a member's history is asked for one member
    /// at a time, and an index by member would double the index's size.
    pub async fn visits_to(
        &self,
        member: RecordId,
    ) -> Result<Vec<(DocumentId, String)>, ClientError> {
        let rows = sqlx::query(
            "select month, record_key from record_index
             where collection = ? and member = ? order by month",
        )
        .bind(index::visits_code())
        .bind(member.as_uuid().as_bytes().as_slice())
        .fetch_all(&self.pool)
        .await?;
        self.visit_keys(rows).await
    }

    /// Valid visits (log and key) made on `day`: a range of the day's month.
    pub async fn visits_on_day(&self, day: Date) -> Result<Vec<(DocumentId, String)>, ClientError> {
        let rows = sqlx::query(
            "select month, record_key from record_index
             where month = ? and collection = ? and visit_day = ?",
        )
        .bind(index::month_number(day.month()))
        .bind(index::visits_code())
        .bind(index::day_number(day))
        .fetch_all(&self.pool)
        .await?;
        self.visit_keys(rows).await
    }

    /// Index rows of valid visits as (log, record id).
    async fn visit_keys(
        &self,
        rows: Vec<sqlx::sqlite::SqliteRow>,
    ) -> Result<Vec<(DocumentId, String)>, ClientError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let logs = self.logs_by_month().await?;
        rows.iter()
            .map(|row| {
                let month: i64 = row.try_get("month")?;
                let key: Vec<u8> = row.try_get("record_key")?;
                let log = logs.get(&month).copied().ok_or_else(|| {
                    ClientError::Storage(format!("record index names month {month}, not stored"))
                })?;
                // A valid visit's key is a record id, stored as its bytes.
                let key = index::key_text(&key).ok_or_else(|| {
                    ClientError::Storage("record index holds a visit key that is not an id".into())
                })?;
                Ok((log, key))
            })
            .collect()
    }

    /// The stored monthly logs by their month's number in the index.
    async fn logs_by_month(&self) -> Result<HashMap<i64, DocumentId>, ClientError> {
        Ok(self
            .documents()
            .await?
            .into_iter()
            .filter_map(|(id, kind)| match kind {
                DocumentKind::MonthlyLog(month) => Some((index::month_number(month), id)),
                DocumentKind::Roster => None,
            })
            .collect())
    }

    /// Logs holding a record at `key` of `collection`, whatever its shape:
    /// one primary-key lookup per stored month.
    pub async fn logs_holding(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Vec<DocumentId>, ClientError> {
        let Some(code) = index::collection_code(collection) else {
            return Ok(Vec::new());
        };
        let key = index::StoredKey::of(key);
        let mut holding = Vec::new();
        let mut logs: Vec<_> = self.logs_by_month().await?.into_iter().collect();
        logs.sort_unstable_by_key(|(month, _)| *month);
        for (month, log) in logs {
            let query = sqlx::query(
                "select 1 from record_index where month = ? and collection = ? and record_key = ?",
            )
            .bind(month)
            .bind(code);
            let found = bind_key(query, &key)
                .fetch_optional(&self.pool)
                .await?
                .is_some();
            if found {
                holding.push(log);
            }
        }
        Ok(holding)
    }

    /// Documents with local changes not yet acknowledged by the server.
    pub async fn unacked_documents(&self) -> Result<Vec<DocumentId>, ClientError> {
        let ids: Vec<String> = sqlx::query_scalar("select id from documents where unacked = 1")
            .fetch_all(&self.pool)
            .await?;
        parse_ids(&ids)
    }

    /// Heads the server's rollups counted the document up to, as last heard.
    pub async fn counted_heads(&self, id: DocumentId) -> Result<Vec<ChangeHash>, ClientError> {
        let heads: Option<String> =
            sqlx::query_scalar("select counted_heads from sync_states where document_id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        parse_heads(&heads.unwrap_or_default())
    }

    pub async fn save_counted_heads(
        &self,
        id: DocumentId,
        heads: &[String],
    ) -> Result<(), ClientError> {
        sqlx::query(
            "insert into sync_states (document_id, counted_heads) values (?, ?)
             on conflict (document_id) do update set counted_heads = excluded.counted_heads",
        )
        .bind(id.to_string())
        .bind(heads.join(","))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn sync_state(
        &self,
        id: DocumentId,
    ) -> Result<(Option<Vec<u8>>, Vec<ChangeHash>), ClientError> {
        let row = sqlx::query("select state, acked_heads from sync_states where document_id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok((None, Vec::new()));
        };
        let heads: String = row.try_get("acked_heads")?;
        Ok((row.try_get("state")?, parse_heads(&heads)?))
    }

    /// Saves the sync state and the acknowledged heads; `all_acked`: no
    /// local change is outside them, so the document leaves the unacked set.
    pub async fn save_sync_state(
        &self,
        id: DocumentId,
        state: &[u8],
        acked: &[ChangeHash],
        all_acked: bool,
    ) -> Result<(), ClientError> {
        let heads = acked
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut tx = self.pool.begin_with("begin immediate").await?;
        sqlx::query(
            "insert into sync_states (document_id, state, acked_heads) values (?, ?, ?)
             on conflict (document_id) do update set state = excluded.state, acked_heads = excluded.acked_heads",
        )
        .bind(id.to_string())
        .bind(state)
        .bind(heads)
        .execute(&mut *tx)
        .await?;
        if all_acked {
            sqlx::query("update documents set unacked = 0 where id = ?")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A store file in plain SQLite (an SDK from before encryption wrote it):
/// SQLCipher would read its header as garbage and report a wrong key, and
/// the app would ask the user for a key that cannot help.
fn refuse_plaintext(path: &Path) -> Result<(), ClientError> {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        // Missing: a new store (or the open reports it).
        return Ok(());
    };
    let mut header = [0u8; 16];
    match file.read_exact(&mut header) {
        Ok(()) if &header == PLAIN_SQLITE_HEADER => Err(ClientError::UnencryptedStore),
        _ => Ok(()),
    }
}

/// The error of opening the store: SQLCipher cannot tell a wrong key from
/// a file that is not a database, both read as garbage.
/// Closes every connection of `pool`. sqlx's `close` can return with one
/// still open: a connection coming back while it waits runs the release
/// check (`is_clean`, which pings), and joins the idle queue after `close`
/// last emptied it. That connection kept the file open for as long as the
/// closed client lived, and a `rekey` after `close` then found the store
/// in use ("database is locked", and after a wait "still open
/// elsewhere"). Closing again until none is left ends it.
async fn close_pool(pool: &SqlitePool) {
    pool.close().await;
    for _ in 0..500 {
        if pool.size() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        pool.close().await;
    }
    tracing::warn!(
        connections = pool.size(),
        "store connections still open after close"
    );
}

fn open_error(e: sqlx::Error) -> ClientError {
    match e {
        sqlx::Error::Database(e) if e.message().contains("not a database") => ClientError::WrongKey,
        e => e.into(),
    }
}

fn parse_ids(ids: &[String]) -> Result<Vec<DocumentId>, ClientError> {
    ids.iter()
        .map(|id| {
            id.parse()
                .map_err(|_| ClientError::Storage(format!("bad document id {id}")))
        })
        .collect()
}

/// Rewrites a document's index rows inside `tx`.
async fn write_index(
    tx: &mut sqlx::SqliteConnection,
    id: DocumentId,
    update: &index::Update,
) -> Result<(), ClientError> {
    // Only monthly logs hold indexed records.
    let Some(month) = update.month.map(index::month_number) else {
        return Ok(());
    };
    if update.full {
        sqlx::query("delete from record_index where month = ?")
            .bind(month)
            .execute(&mut *tx)
            .await?;
        sqlx::query("update documents set indexed = 1 where id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
    }
    for (collection, key) in &update.touched {
        let Some(code) = index::collection_code(collection) else {
            continue;
        };
        let query = sqlx::query(
            "delete from record_index where month = ? and collection = ? and record_key = ?",
        )
        .bind(month)
        .bind(code);
        bind_key(query, &index::StoredKey::of(key))
            .execute(&mut *tx)
            .await?;
    }
    for row in &update.rows {
        let Some(code) = index::collection_code(row.collection) else {
            continue;
        };
        let query = sqlx::query(
            "insert or replace into record_index
             (month, collection, record_key, visit_day, member, follow_up_due)
             values (?, ?, ?, ?, ?, ?)",
        )
        .bind(month)
        .bind(code);
        bind_key(query, &index::StoredKey::of(&row.key))
            .bind(row.visit_date.map(index::day_number))
            .bind(row.member_id.map(|m| m.as_uuid().as_bytes().to_vec()))
            .bind(row.follow_up_due.map(index::day_number))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds a record key in its stored form.
fn bind_key<'q>(query: SqliteQuery<'q>, key: &index::StoredKey) -> SqliteQuery<'q> {
    match key {
        index::StoredKey::Id(bytes) => query.bind(bytes.to_vec()),
        index::StoredKey::Other(text) => query.bind(text.clone()),
    }
}

fn parse_heads(text: &str) -> Result<Vec<ChangeHash>, ClientError> {
    text.split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            h.parse()
                .map_err(|_| ClientError::Storage(format!("bad head {h}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection of the store's that is still closing when `rekey`
    /// starts (a pool's last connection is shut on its own thread) made
    /// the switch out of WAL fail at once with "database is locked":
    /// SQLite takes that lock without its busy handler. The rekey waits
    /// for it instead, and the store then opens under the new key only.
    #[tokio::test]
    async fn rekey_waits_for_a_connection_still_closing() -> Result<(), ClientError> {
        let dir = tempfile::tempdir().map_err(|e| ClientError::Storage(e.to_string()))?;
        let path = dir.path().join("device.db");
        let (old, new) = (StoreKey::generate(), StoreKey::generate());
        let store = LocalStore::open(&path, &old, None).await?;
        store.set_meta(&[("kept", "yes")]).await?;
        // Holds a connection (and so its shared lock) for a while.
        let mut lingering = store.pool.acquire().await?;
        sqlx::query("select 1").execute(&mut *lingering).await?;
        let closing = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(lingering);
            store.close().await;
        });
        LocalStore::rekey(&path, &old, &new).await?;
        closing
            .await
            .map_err(|e| ClientError::Storage(e.to_string()))?;
        assert!(matches!(
            LocalStore::open_as_is(&path, &old).await,
            Err(ClientError::WrongKey)
        ));
        let reopened = LocalStore::open(&path, &new, None).await?;
        assert_eq!(reopened.meta("kept").await?.as_deref(), Some("yes"));
        reopened.close().await;
        Ok(())
    }
}
