//! The device's local store: SQLite in WAL mode with `synchronous=FULL`, so
//! an edit that returned is on disk even if the app is killed next.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use automerge::ChangeHash;
use doorstep_protocol::schema::DocumentKind;
use doorstep_protocol::{DocumentId, Month};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::error::ClientError;

/// Handle to the local database; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct LocalStore {
    pool: SqlitePool,
}

/// A document's stored chunks.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    pub chunks: Vec<Vec<u8>>,
    pub snapshot_bytes: u64,
    pub incremental_bytes: u64,
}

impl LocalStore {
    pub async fn open(path: &Path) -> Result<LocalStore, ClientError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ClientError::Storage(format!("creating {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| ClientError::Storage(e.to_string()))?;
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
        let inserted = sqlx::query(
            "insert into documents (id, kind, month) values (?, ?, ?) on conflict (id) do nothing",
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
            "select kind, bytes from chunks where document_id = ? order by kind desc, rowid",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut chunks = Chunks::default();
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let bytes: Vec<u8> = row.try_get("bytes")?;
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
    pub async fn append(
        &self,
        id: DocumentId,
        changes: &[(ChangeHash, Vec<u8>)],
    ) -> Result<(), ClientError> {
        let mut tx = self.pool.begin_with("begin immediate").await?;
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

    /// Replaces every chunk with one snapshot of the whole document.
    pub async fn compact(&self, id: DocumentId, snapshot: &[u8]) -> Result<(), ClientError> {
        let mut tx = self.pool.begin_with("begin immediate").await?;
        sqlx::query("delete from chunks where document_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("insert into chunks (document_id, kind, hash, bytes) values (?, 'snapshot', 'snapshot', ?)")
            .bind(id.to_string())
            .bind(snapshot)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
        let heads = heads
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                h.parse()
                    .map_err(|_| ClientError::Storage(format!("bad head {h}")))
            })
            .collect::<Result<_, _>>()?;
        Ok((row.try_get("state")?, heads))
    }

    pub async fn save_sync_state(
        &self,
        id: DocumentId,
        state: &[u8],
        acked: &[ChangeHash],
    ) -> Result<(), ClientError> {
        let heads = acked
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        sqlx::query(
            "insert into sync_states (document_id, state, acked_heads) values (?, ?, ?)
             on conflict (document_id) do update set state = excluded.state, acked_heads = excluded.acked_heads",
        )
        .bind(id.to_string())
        .bind(state)
        .bind(heads)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
