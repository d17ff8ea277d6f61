//! Documents, their chunks and per-peer sync states.

use doorstep_protocol::schema::DocumentKind;
use doorstep_protocol::{DeviceId, DocumentId, Month, TenantId};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::keeping::{DocumentStore, StoredChunks};
use super::statement::Statement;
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
    /// The heads of its stored changes (`None`: nothing stored since its
    /// genesis), and the heads its projected rows count up to.
    #[serde(skip)]
    pub heads: Option<String>,
    #[serde(skip)]
    pub projected_heads: Option<String>,
    /// The number of its last commit, and the number its projected rows
    /// count up to.
    #[serde(skip)]
    pub seq: i64,
    #[serde(skip)]
    pub projected_seq: i64,
}

/// Where a document's commits and figures stand ([`Store::document_numbers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentNumbers {
    pub id: DocumentId,
    /// The number of its last commit.
    pub seq: i64,
    /// The number of the commit its figures count up to.
    pub projected_seq: i64,
}

fn document_from_row(r: &AnyRow) -> Result<DocumentRow, StoreError> {
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
        heads: r.try_get("heads")?,
        projected_heads: r.try_get("projected_heads")?,
        seq: r.try_get("seq")?,
        projected_seq: r.try_get("projected_seq")?,
    })
}

impl DocumentRow {
    /// Whether changes are stored that its projected rows do not count (a
    /// restore added them, a projection failed, or another node's commit
    /// came first).
    pub fn projection_lags(&self) -> bool {
        (self.heads.is_some() && self.projected_heads != self.heads)
            || self.projected_seq < self.seq
    }

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
    tx: &mut crate::store::Tx,
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
        "insert into documents (id, branch_id, kind, month, created_at) values ($1, $2, $3, $4, $5)
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
        sqlx::query("insert into chunks (document_id, kind, hash, bytes, created_at) values ($1, 'snapshot', $2, $3, $4)")
            .bind(id.to_string())
            .bind(super::keeping::snapshot_key(genesis))
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
        sqlx::query(
            "select id, branch_id, kind, month, heads, projected_heads, seq, projected_seq from documents where id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.every_branch())
        .await?
        .as_ref()
        .map(document_from_row)
        .transpose()
    }

    /// The commit number of each of `ids` that is stored, and the number
    /// its figures count up to: what the slow poll of several nodes reads,
    /// in one statement per few hundred documents rather than a few per
    /// document.
    pub async fn document_numbers(
        &self,
        ids: &[DocumentId],
    ) -> Result<Vec<DocumentNumbers>, StoreError> {
        let mut numbers = Vec::with_capacity(ids.len());
        for ids in ids.chunks(super::keeping::ROWS_PER_STATEMENT) {
            let mut select =
                Statement::new("select id, seq, projected_seq from documents where id in (");
            select.push_list(ids.iter().map(ToString::to_string));
            for row in select.build()?.fetch_all(self.every_branch()).await? {
                numbers.push(DocumentNumbers {
                    id: parse_column(&row.try_get::<String, _>("id")?, "document id")?,
                    seq: row.try_get("seq")?,
                    projected_seq: row.try_get("projected_seq")?,
                });
            }
        }
        Ok(numbers)
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
             where doc.id = $1 and d.id = $2 and d.revoked_at is null",
        )
        .bind(document.to_string())
        .bind(device.to_string())
        .fetch_one(self.every_branch())
        .await?
            > 0)
    }

    /// The heads each of a branch's documents is counted in the rollups up
    /// to (`projected_heads`, sorted hex), so a phone can tell an edit the
    /// server stored from one the offices already see.
    pub async fn counted_heads_of_branch(
        &self,
        branch: TenantId,
    ) -> Result<std::collections::HashMap<String, Vec<String>>, StoreError> {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("select id, projected_heads from documents where branch_id = $1")
                .bind(branch.to_string())
                .fetch_all(self.every_branch())
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, heads)| {
                let heads = heads
                    .unwrap_or_default()
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect();
                (id, heads)
            })
            .collect())
    }

    /// The documents of a branch: its roster, then its logs by month.
    pub async fn documents_of_branch(
        &self,
        branch: TenantId,
    ) -> Result<Vec<DocumentRow>, StoreError> {
        sqlx::query(
            "select id, branch_id, kind, month, heads, projected_heads, seq, projected_seq from documents where branch_id = $1
             order by case kind when 'roster' then 0 else 1 end, month",
        )
        .bind(branch.to_string())
        .fetch_all(self.every_branch())
        .await?
        .iter()
        .map(document_from_row)
        .collect()
    }

    /// Every chunk of a document (see [`DocumentStore::load`]).
    pub async fn load_chunks(&self, id: DocumentId) -> Result<StoredChunks, StoreError> {
        DocumentStore::load(self, id).await
    }

    /// Every stored document, for rebuilding projections.
    pub async fn all_documents(&self) -> Result<Vec<DocumentRow>, StoreError> {
        sqlx::query(
            "select id, branch_id, kind, month, heads, projected_heads, seq, projected_seq from documents order by branch_id, kind, month",
        )
        .fetch_all(self.every_branch())
        .await?
        .iter()
        .map(document_from_row)
        .collect()
    }

    /// How many snapshot and incremental chunks a document has.
    pub async fn chunk_counts(&self, id: DocumentId) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            "select count(case when kind = 'snapshot' then 1 end) as snapshots,
                    count(case when kind = 'incremental' then 1 end) as incrementals
             from chunks where document_id = $1",
        )
        .bind(id.to_string())
        .fetch_one(self.every_branch())
        .await?;
        Ok((row.try_get("snapshots")?, row.try_get("incrementals")?))
    }

    pub async fn load_sync_state(
        &self,
        id: DocumentId,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        DocumentStore::load_sync_state(self, id, key).await
    }

    /// Which device sent a change, from the change log.
    pub async fn change_sender(
        &self,
        id: DocumentId,
        hash: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        let row = sqlx::query(
            "select actor_id, device_id from change_log where document_id = $1 and hash = $2",
        )
        .bind(id.to_string())
        .bind(hash)
        .fetch_optional(self.every_branch())
        .await?;
        row.map(|r| Ok((r.try_get("actor_id")?, r.try_get("device_id")?)))
            .transpose()
    }
}
