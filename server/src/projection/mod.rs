//! Projections: the records of branch documents as relational rows.
//!
//! After every merge the hub hands us the document and the records the
//! merge touched (from the patches between the old and new heads); each is
//! read again and its row upserted, or deleted if the record is gone or
//! invalid. Rows are keyed by record id, so a replayed or duplicated sync
//! writes the same rows again and can never count twice. `reproject`
//! rebuilds everything from the stored documents.

mod rows;

use std::collections::BTreeSet;

use automerge::{Automerge, ChangeHash, ObjType, Prop, ReadDoc, Value};
use doorstep_protocol::schema::{DocumentKind, conflicted_fields};
use doorstep_protocol::{DocumentId, TenantId};

use crate::store::{Store, StoreError};

/// A record a merge touched: (collection, record key).
pub type Touched = BTreeSet<(String, String)>;

/// The records whose content differs between two heads.
pub fn touched(doc: &Automerge, before: &[ChangeHash], after: &[ChangeHash]) -> Touched {
    let mut touched = Touched::new();
    for patch in doc.diff(before, after) {
        let key = |prop: &Prop| match prop {
            Prop::Map(k) => Some(k.clone()),
            Prop::Seq(_) => None,
        };
        let record = match patch.path.as_slice() {
            [] => continue,
            [(_, collection)] => match &patch.action {
                automerge::PatchAction::PutMap { key: record, .. }
                | automerge::PatchAction::DeleteMap { key: record } => {
                    key(collection).map(|c| (c, record.clone()))
                }
                _ => None,
            },
            [(_, collection), (_, record), ..] => key(collection).zip(key(record)),
        };
        if let Some(record) = record {
            touched.insert(record);
        }
    }
    touched
}

/// Every record in a document, for a full projection.
pub fn all_records(doc: &Automerge, kind: DocumentKind) -> Touched {
    let mut all = Touched::new();
    for collection in kind.collections() {
        if let Ok(Some((Value::Object(ObjType::Map), obj))) = doc.get(automerge::ROOT, *collection)
        {
            for key in doc.keys(&obj) {
                all.insert(((*collection).to_owned(), key));
            }
        }
    }
    all
}

/// Which document a projection is for.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub document: DocumentId,
    pub branch: TenantId,
    pub kind: DocumentKind,
}

/// Upserts or deletes the rows of `records`, and their conflicts, in one
/// transaction.
pub async fn project(
    store: &Store,
    source: Source,
    doc: &Automerge,
    records: &Touched,
) -> Result<(), StoreError> {
    let month = match source.kind {
        DocumentKind::MonthlyLog(m) => Some(m),
        DocumentKind::Roster => None,
    };
    let mut tx = store.begin_write().await?;
    for (collection, key) in records {
        let outcome = rows::read(doc, collection, key, month);
        rows::apply(&mut tx, source, collection, key, outcome).await?;
        let conflicts = record_conflicts(doc, collection, key);
        rows::replace_conflicts(&mut tx, source, collection, key, &conflicts).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn record_conflicts(doc: &Automerge, collection: &str, key: &str) -> Vec<String> {
    let Ok(Some((Value::Object(ObjType::Map), coll))) = doc.get(automerge::ROOT, collection) else {
        return Vec::new();
    };
    let Ok(Some((Value::Object(ObjType::Map), obj))) = doc.get(&coll, key) else {
        return Vec::new();
    };
    conflicted_fields(doc, &obj)
        .into_iter()
        .map(|f| f.path.join("."))
        .collect()
}

/// Rebuilds every projection row from the stored documents. Returns the
/// number of documents projected.
pub async fn reproject(store: &Store) -> Result<usize, StoreError> {
    store.clear_projections().await?;
    let documents = store.all_documents().await?;
    for row in &documents {
        let kind = row.kind().ok_or_else(|| {
            StoreError::Corrupt(format!("document {} has no valid month", row.id))
        })?;
        let mut doc = Automerge::new();
        for chunk in store.load_chunks(row.id).await?.chunks {
            doc.load_incremental(&chunk)
                .map_err(|e| StoreError::Corrupt(format!("document {}: {e}", row.id)))?;
        }
        let source = Source {
            document: row.id,
            branch: row.branch_id,
            kind,
        };
        project(store, source, &doc, &all_records(&doc, kind)).await?;
    }
    Ok(documents.len())
}
