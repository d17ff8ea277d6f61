//! Documents, their chunks and per-peer sync states.

use doorstep_protocol::schema::DocumentKind;
use doorstep_protocol::session::NewChange;
use doorstep_protocol::{DeviceId, DocumentId, Month, TenantId};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use super::tenants::serialize_display;
use super::{Store, StoreError, now_ms, parse_column};

/// What a stored document is, as the document list shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKindRow {
    Roster,
    Log,
}

/// A document the server knows.
#[derive(Clone, Debug, Serialize)]
pub struct DocumentRow {
    #[serde(serialize_with = "serialize_display")]
    pub id: DocumentId,
    #[serde(serialize_with = "serialize_display")]
    pub branch_id: TenantId,
    pub kind: DocumentKindRow,
    pub month: Option<String>,
}

/// Every stored chunk of a document, and their sizes.
#[derive(Debug, Default)]
pub struct StoredChunks {
    pub chunks: Vec<Vec<u8>>,
    pub snapshot_bytes: u64,
    pub incremental_bytes: u64,
}

fn document_from_row(r: &SqliteRow) -> Result<DocumentRow, StoreError> {
    let kind: String = r.try_get("kind")?;
    Ok(DocumentRow {
        id: parse_column(&r.try_get::<String, _>("id")?, "document id")?,
        branch_id: parse_column(&r.try_get::<String, _>("branch_id")?, "tenant id")?,
        kind: if kind == "roster" {
            DocumentKindRow::Roster
        } else {
            DocumentKindRow::Log
        },
        month: r.try_get("month")?,
    })
}

impl DocumentRow {
    /// The schema's kind of the document; `None` for a log row without a
    /// valid month (which no code path writes).
    pub fn kind(&self) -> Option<DocumentKind> {
        match (self.kind, self.month.as_deref()) {
            (DocumentKindRow::Roster, _) => Some(DocumentKind::Roster),
            (DocumentKindRow::Log, Some(month)) => month.parse().ok().map(DocumentKind::MonthlyLog),
            (DocumentKindRow::Log, None) => None,
        }
    }
}

pub(super) async fn insert_document(
    tx: &mut Transaction<'_, Sqlite>,
    id: DocumentId,
    branch: TenantId,
    kind: DocumentKind,
    genesis: &[u8],
) -> Result<(), StoreError> {
    let (kind_text, month) = match kind {
        DocumentKind::Roster => ("roster", None),
        DocumentKind::MonthlyLog(m) => ("log", Some(m.to_string())),
    };
    let now = now_ms();
    let inserted = sqlx::query(
        "insert into documents (id, branch_id, kind, month, created_at) values (?, ?, ?, ?, ?)
         on conflict (id) do nothing",
    )
    .bind(id.to_string())
    .bind(branch.to_string())
    .bind(kind_text)
    .bind(month)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted > 0 {
        sqlx::query("insert into chunks (document_id, kind, hash, bytes, created_at) values (?, 'snapshot', ?, ?, ?)")
            .bind(id.to_string())
            .bind(hex::encode(Sha256::digest(genesis)))
            .bind(genesis)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Store {
    /// Stores a monthly log document the first time any device opens it.
    pub async fn ensure_log_document(
        &self,
        branch: TenantId,
        month: Month,
        genesis: &[u8],
    ) -> Result<DocumentId, StoreError> {
        let id = DocumentId::monthly_log(branch, month);
        let mut tx = self.begin_write().await?;
        insert_document(
            &mut tx,
            id,
            branch,
            DocumentKind::MonthlyLog(month),
            genesis,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn document(&self, id: DocumentId) -> Result<Option<DocumentRow>, StoreError> {
        sqlx::query("select id, branch_id, kind, month from documents where id = ?")
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(document_from_row)
            .transpose()
    }

    /// Whether a live device may open a stored document: it must belong to
    /// the device's branch. Asked on every message that names a document.
    pub async fn device_may_open(
        &self,
        device: DeviceId,
        document: DocumentId,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>(
            "select count(*) from documents doc join devices d on d.branch_id = doc.branch_id
             where doc.id = ? and d.id = ? and d.revoked_at is null",
        )
        .bind(document.to_string())
        .bind(device.to_string())
        .fetch_one(self.pool())
        .await?
            > 0)
    }

    /// The documents of a branch: its roster, then its logs by month.
    pub async fn documents_of_branch(
        &self,
        branch: TenantId,
    ) -> Result<Vec<DocumentRow>, StoreError> {
        sqlx::query(
            "select id, branch_id, kind, month from documents where branch_id = ?
             order by case kind when 'roster' then 0 else 1 end, month",
        )
        .bind(branch.to_string())
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(document_from_row)
        .collect()
    }

    pub async fn load_chunks(&self, id: DocumentId) -> Result<StoredChunks, StoreError> {
        let rows = sqlx::query(
            "select kind, bytes from chunks where document_id = ?
             order by case kind when 'snapshot' then 0 else 1 end, created_at",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await?;
        let mut stored = StoredChunks::default();
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let bytes: Vec<u8> = row.try_get("bytes")?;
            if kind == "snapshot" {
                stored.snapshot_bytes += bytes.len() as u64;
            } else {
                stored.incremental_bytes += bytes.len() as u64;
            }
            stored.chunks.push(bytes);
        }
        Ok(stored)
    }

    /// Stores new changes, idempotently by change hash, and records which
    /// device sent them; committed (to disk) when this returns.
    pub async fn append_changes(
        &self,
        id: DocumentId,
        changes: &[NewChange],
        device: Option<DeviceId>,
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut added = 0;
        for change in changes {
            let hash = change.hash.to_string();
            added += sqlx::query(
                "insert into chunks (document_id, kind, hash, bytes, created_at) values (?, 'incremental', ?, ?, ?)
                 on conflict (document_id, hash) do nothing",
            )
            .bind(id.to_string())
            .bind(&hash)
            .bind(&change.bytes)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "insert into change_log (document_id, hash, actor_id, device_id, received_at) values (?, ?, ?, ?, ?)
                 on conflict (document_id, hash) do nothing",
            )
            .bind(id.to_string())
            .bind(&hash)
            .bind(change.actor.to_hex_string())
            .bind(device.map(|d| d.to_string()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Replaces every chunk the snapshot covers with the snapshot, in one
    /// transaction. `covers` says whether a stored change hash is in it; a
    /// change stored meanwhile that it lacks is kept.
    pub async fn compact(
        &self,
        id: DocumentId,
        snapshot: &[u8],
        covers: impl Fn(&str) -> bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query("select kind, hash from chunks where document_id = ?")
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?;
        let snapshot_hash = hex::encode(Sha256::digest(snapshot));
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let hash: String = row.try_get("hash")?;
            if hash != snapshot_hash && (kind == "snapshot" || covers(&hash)) {
                sqlx::query("delete from chunks where document_id = ? and hash = ?")
                    .bind(id.to_string())
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(
            "insert into chunks (document_id, kind, hash, bytes, created_at) values (?, 'snapshot', ?, ?, ?)
             on conflict (document_id, hash) do nothing",
        )
        .bind(id.to_string())
        .bind(&snapshot_hash)
        .bind(snapshot)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every stored document, for rebuilding projections.
    pub async fn all_documents(&self) -> Result<Vec<DocumentRow>, StoreError> {
        sqlx::query(
            "select id, branch_id, kind, month from documents order by branch_id, kind, month",
        )
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(document_from_row)
        .collect()
    }

    /// Empties every projection table (before a full rebuild).
    pub async fn clear_projections(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for table in [
            "team_people_rows",
            "team_rows",
            "member_rows",
            "hardship_rows",
            "visit_rows",
            "activity_rows",
            "training_rows",
            "placement_rows",
            "fund_rows",
            "invalid_rows",
            "conflict_rows",
        ] {
            // Table names are the constants above, not input.
            sqlx::query(&format!("delete from {table}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// How many snapshot and incremental chunks a document has.
    pub async fn chunk_counts(&self, id: DocumentId) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            "select coalesce(sum(kind = 'snapshot'), 0) as snapshots, coalesce(sum(kind = 'incremental'), 0) as incrementals
             from chunks where document_id = ?",
        )
        .bind(id.to_string())
        .fetch_one(self.pool())
        .await?;
        Ok((row.try_get("snapshots")?, row.try_get("incrementals")?))
    }

    pub async fn load_sync_state(
        &self,
        id: DocumentId,
        storage_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar(
            "select state from sync_states where document_id = ? and storage_id = ?",
        )
        .bind(id.to_string())
        .bind(storage_id)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn save_sync_state(
        &self,
        id: DocumentId,
        storage_id: &str,
        state: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query(
            "insert into sync_states (document_id, storage_id, state, updated_at) values (?, ?, ?, ?)
             on conflict (document_id, storage_id) do update set state = excluded.state, updated_at = excluded.updated_at",
        )
        .bind(id.to_string())
        .bind(storage_id)
        .bind(state)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Which device sent a change, from the change log.
    pub async fn change_sender(
        &self,
        id: DocumentId,
        hash: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        let row = sqlx::query(
            "select actor_id, device_id from change_log where document_id = ? and hash = ?",
        )
        .bind(id.to_string())
        .bind(hash)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((r.try_get("actor_id")?, r.try_get("device_id")?)))
            .transpose()
    }
}
