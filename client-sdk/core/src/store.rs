//! The device's local store: one SQLCipher file in WAL mode with
//! `synchronous=FULL`, so an edit that returned is on disk even if the app
//! is killed next, and nothing in it (names, the token) can be read without
//! the key the app keeps in the platform keystore.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use automerge::ChangeHash;
use doorstep_protocol::schema::DocumentKind;
use doorstep_protocol::schema::RecordId;
use doorstep_protocol::{Date, DocumentId, Month};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Row, SqlitePool};

use crate::error::ClientError;
use crate::index;

/// The 256-bit key the store is encrypted with. The app keeps it in the
/// platform keystore (Android Keystore, iOS Keychain) and hands it over at
/// every open; the SDK never writes it anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    pub const LEN: usize = 32;

    /// The key from its raw bytes; exactly [`StoreKey::LEN`] of them.
    pub fn from_bytes(bytes: &[u8]) -> Result<StoreKey, ClientError> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            ClientError::invalid(
                "store_key",
                format!("must be {} bytes, not {}", StoreKey::LEN, bytes.len()),
            )
        })?;
        Ok(StoreKey(key))
    }

    /// A fresh random key, for an app to store in its keystore on first run.
    pub fn generate() -> StoreKey {
        StoreKey(rand::random())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SQLCipher's raw-key form: no passphrase derivation at every open,
    /// since the key is already random.
    fn pragma(&self) -> String {
        format!("\"x'{}'\"", hex::encode(self.0))
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

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

/// Handle to the local database; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct LocalStore {
    pool: SqlitePool,
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
    pub async fn open(path: &Path, key: &StoreKey) -> Result<LocalStore, ClientError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ClientError::Storage(format!("creating {}: {e}", dir.display())))?;
        }
        // `key` must be the first statement on every connection; sqlx sends
        // it first by design. sqlx logs the statements it runs, the connect
        // pragmas with the key among them, and an app routes the SDK's logs
        // to logcat: statement logging is off for this store.
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .log_statements(log::LevelFilter::Off)
            .log_slow_statements(log::LevelFilter::Off, Duration::MAX)
            .pragma("key", key.pragma())
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = match SqlitePoolOptions::new()
            .max_connections(4)
            .after_release(|conn, _| Box::pin(async move { Ok(is_clean(conn).await) }))
            .connect_with(options)
            .await
        {
            Ok(pool) => pool,
            // SQLCipher cannot tell a wrong key from a file that is not a
            // database: both read as garbage.
            Err(sqlx::Error::Database(e)) if e.message().contains("not a database") => {
                return Err(ClientError::WrongKey);
            }
            Err(e) => return Err(e.into()),
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
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| match e {
                // A step this version does not have was applied: a newer
                // SDK wrote the store, and this one must not guess at it.
                sqlx::migrate::MigrateError::VersionMissing(version) => {
                    ClientError::NewerStore { version }
                }
                other => ClientError::Storage(other.to_string()),
            })?;
        Ok(LocalStore { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
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
    /// before `on`.
    pub async fn visits_due(&self, on: Date) -> Result<Vec<(DocumentId, String)>, ClientError> {
        self.visit_keys(
            "follow_up_due is not null and follow_up_due <= ?",
            on.to_string(),
        )
        .await
    }

    /// Valid visits (log and key) to `member`.
    pub async fn visits_to(
        &self,
        member: RecordId,
    ) -> Result<Vec<(DocumentId, String)>, ClientError> {
        self.visit_keys("member_id = ?", member.to_string()).await
    }

    /// Valid visits (log and key) made on `day`.
    pub async fn visits_on_day(&self, day: Date) -> Result<Vec<(DocumentId, String)>, ClientError> {
        self.visit_keys("visit_date = ?", day.to_string()).await
    }

    async fn visit_keys(
        &self,
        condition: &'static str,
        value: String,
    ) -> Result<Vec<(DocumentId, String)>, ClientError> {
        let rows = sqlx::query(&format!(
            "select document_id, record_key from record_index
             where collection = 'visits' and {condition} order by document_id"
        ))
        .bind(value)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("document_id")?;
                let id = id
                    .parse()
                    .map_err(|_| ClientError::Storage(format!("bad document id {id}")))?;
                Ok((id, row.try_get("record_key")?))
            })
            .collect()
    }

    /// Logs holding a record at `key` of `collection`, whatever its shape.
    pub async fn logs_holding(
        &self,
        collection: &str,
        key: &str,
    ) -> Result<Vec<DocumentId>, ClientError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "select document_id from record_index where record_key = ? and collection = ?",
        )
        .bind(key)
        .bind(collection)
        .fetch_all(&self.pool)
        .await?;
        parse_ids(&ids)
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
    let document = id.to_string();
    if update.full {
        sqlx::query("delete from record_index where document_id = ?")
            .bind(&document)
            .execute(&mut *tx)
            .await?;
        sqlx::query("update documents set indexed = 1 where id = ?")
            .bind(&document)
            .execute(&mut *tx)
            .await?;
    }
    for (collection, key) in &update.touched {
        sqlx::query(
            "delete from record_index where document_id = ? and collection = ? and record_key = ?",
        )
        .bind(&document)
        .bind(collection)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    }
    for row in &update.rows {
        sqlx::query(
            "insert into record_index (document_id, collection, record_key, visit_date, member_id, follow_up_due)
             values (?, ?, ?, ?, ?, ?)
             on conflict (document_id, collection, record_key) do update
             set visit_date = excluded.visit_date, member_id = excluded.member_id,
                 follow_up_due = excluded.follow_up_due",
        )
        .bind(&document)
        .bind(row.collection)
        .bind(&row.key)
        .bind(&row.visit_date)
        .bind(&row.member_id)
        .bind(&row.follow_up_due)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
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
