//! Projections: the records of branch documents as relational rows.
//!
//! Rollups have to answer in SQL over every branch of a district, seconds
//! after a phone syncs, so each merge also rewrites the rows of the records
//! it changed, in the same transaction that stores the changes: the figures
//! never lag or lead the documents. Which records changed comes from the
//! patches of the apply itself ([`scope_of`]), not from a second diff.
//!
//! The work is split so the hub holds no lock on the database while reading
//! a document: [`plan`] is pure and CPU-only (it runs on a blocking thread)
//! and decides every row; [`write`] only replaces rows inside the caller's
//! transaction, with a few set-based statements.
//!
//! Rows are keyed by the document they come from and the record's key, so a
//! replayed or duplicated sync writes the same rows again and never counts
//! twice, the same id in two monthly logs is two records, and ids a device
//! chose cannot touch another document's rows. A record counts only if the
//! schema's [`check_record`](doorstep_protocol::schema::check_record) accepts
//! it, the same rule a device's lists use; anything else is listed for the
//! branch secretary instead. A collection replaced or deleted as a whole at
//! the document root has all its rows recomputed, so no row outlives its
//! record. [`reproject`] rebuilds everything from the stored documents.

mod rows;
mod sql;
pub(crate) use sql::TABLES;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Automerge, ObjType, Patch, Prop, ReadDoc, Value};
use doorstep_protocol::schema::DocumentKind;
use doorstep_protocol::{DocumentId, TenantId};

use crate::store::{DocumentRow, Store, StoreError};

/// Which document a projection is for.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub document: DocumentId,
    pub branch: TenantId,
    pub kind: DocumentKind,
}

/// Which records a merge may have changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// (collection, record key) pairs touched.
    pub records: BTreeSet<(String, String)>,
    /// Collections replaced or deleted as a whole at the document root:
    /// every row of the collection for this document is recomputed (rows of
    /// records no longer present go away).
    pub whole_collections: BTreeSet<String>,
}

impl Scope {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.whole_collections.is_empty()
    }

    /// Every collection of a document of this kind, whole: a full projection.
    pub fn everything(kind: DocumentKind) -> Scope {
        Scope {
            records: BTreeSet::new(),
            whole_collections: kind.collections().iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

/// The records the patches of one apply touch.
///
/// A patch on the root replaces or deletes a whole collection (a device that
/// puts a fresh `visits` map drops every record of the old one); a patch on
/// a collection or below it touches the record under its key. What cannot be
/// pinned to a record key is taken as the whole collection, which is never
/// wrong, only slower.
pub fn scope_of(patches: &[Patch]) -> Scope {
    let mut scope = Scope::default();
    for patch in patches {
        let key = match &patch.action {
            automerge::PatchAction::PutMap { key, .. }
            | automerge::PatchAction::DeleteMap { key } => Some(key.as_str()),
            automerge::PatchAction::Increment {
                prop: Prop::Map(key),
                ..
            }
            | automerge::PatchAction::Conflict {
                prop: Prop::Map(key),
            } => Some(key.as_str()),
            _ => None,
        };
        match patch.path.as_slice() {
            // On the root itself: the action's key is the collection.
            [] => {
                if let Some(collection) = key {
                    scope.whole_collections.insert(collection.to_owned());
                }
            }
            [(_, Prop::Map(collection)), rest @ ..] => {
                let record = match rest {
                    // On the collection map: the action's key is the record.
                    [] => key,
                    [(_, Prop::Map(record)), ..] => Some(record.as_str()),
                    [(_, Prop::Seq(_)), ..] => None,
                };
                match record {
                    Some(record) => {
                        scope
                            .records
                            .insert((collection.clone(), record.to_owned()));
                    }
                    None => {
                        scope.whole_collections.insert(collection.clone());
                    }
                }
            }
            // The root is a map; a sequence step under it cannot happen.
            [(_, Prop::Seq(_)), ..] => {}
        }
    }
    scope
}

/// Every row a merge's records project to: what [`write`] puts in place of
/// the rows of the planned records. Pure data, so it can be computed on any
/// thread and written in any transaction.
#[derive(Debug, Clone, Default)]
pub struct ProjectionPlan {
    document: String,
    branch: String,
    /// Collections whose rows for this document are all replaced.
    whole: BTreeSet<&'static str>,
    /// Outside `whole`: the records whose rows are replaced, by collection.
    records: BTreeMap<&'static str, BTreeSet<String>>,
    rows: rows::Rows,
}

impl ProjectionPlan {
    /// Whether writing the plan would change nothing.
    pub fn is_empty(&self) -> bool {
        self.whole.is_empty() && self.records.is_empty()
    }
}

/// Reads each record in scope from the document and decides its rows, its
/// invalid listing and its conflicted fields. Collections the document's
/// kind does not have are ignored: a roster cannot carry visits.
pub fn plan(doc: &Automerge, source: Source, scope: &Scope) -> ProjectionPlan {
    let month = match source.kind {
        DocumentKind::MonthlyLog(m) => Some(m),
        DocumentKind::Roster => None,
    };
    let mut plan = ProjectionPlan {
        document: source.document.to_string(),
        branch: source.branch.to_string(),
        ..ProjectionPlan::default()
    };
    for &collection in source.kind.collections() {
        let obj = match doc.get(automerge::ROOT, collection) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => Some(obj),
            _ => None,
        };
        let keys: Vec<String> = if scope.whole_collections.contains(collection) {
            plan.whole.insert(collection);
            obj.as_ref()
                .map(|obj| doc.keys(obj).collect())
                .unwrap_or_default()
        } else {
            let keys: BTreeSet<String> = scope
                .records
                .range((collection.to_owned(), String::new())..)
                .take_while(|(c, _)| c == collection)
                .map(|(_, key)| key.clone())
                .collect();
            if keys.is_empty() {
                continue;
            }
            let listed = keys.iter().cloned().collect();
            plan.records.insert(collection, keys);
            listed
        };
        if let Some(obj) = obj {
            for key in &keys {
                plan.rows.read(doc, &obj, collection, key, month);
            }
        }
    }
    plan
}

/// Writes a plan inside the caller's transaction: deletes the rows of every
/// planned record (and of every whole collection), then inserts the planned
/// rows.
pub async fn write(tx: &mut crate::store::Tx, plan: &ProjectionPlan) -> Result<(), StoreError> {
    if plan.is_empty() {
        return Ok(());
    }
    sql::delete(tx, plan).await?;
    sql::insert(tx, plan).await
}

/// Rebuilds every projection row from the stored documents, one document
/// per transaction (the figures stay whole meanwhile), and removes rows of
/// documents no longer stored. Returns the number of documents projected.
///
/// Each document's "projected up to" marker is set to the heads it was
/// projected at; should a live server store changes to it meanwhile, the
/// marker stays behind its heads and the server projects it again.
pub async fn reproject(store: &Store) -> Result<usize, StoreError> {
    let documents = store.all_documents().await?;
    let mut failed = Vec::new();
    for row in &documents {
        // One unreadable document must not stop the others' repair.
        if let Err(e) = reproject_document(store, row).await {
            tracing::error!(document = %row.id, error = %e, "could not re-project a document");
            failed.push(row.id.to_string());
        }
    }
    let mut tx = store.begin_write().await?;
    sql::delete_orphans(&mut tx).await?;
    tx.commit().await?;
    if !failed.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "{} of {} documents could not be re-projected (the rest were): {}",
            failed.len(),
            documents.len(),
            failed.join(", ")
        )));
    }
    Ok(documents.len())
}

async fn reproject_document(store: &Store, row: &DocumentRow) -> Result<(), StoreError> {
    use crate::store::DocumentStore;
    let kind = row
        .kind()
        .ok_or_else(|| StoreError::Corrupt(format!("document {} has no valid month", row.id)))?;
    let source = Source {
        document: row.id,
        branch: row.branch_id,
        kind,
    };
    let id = row.id;
    // Beside running servers a commit can land between the load and the
    // write: the write is a compare-and-set on the document's commit
    // number, and a miss loads again.
    for _ in 0..3 {
        let stored = store.load_chunks(id).await?;
        let seq = stored.seq;
        // Automerge can panic on stored bytes it wrote itself; a panic is
        // this document's failure, not the command's.
        let (heads, plan) = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(|| {
                let doc = stored.load(id)?;
                Ok::<_, StoreError>((
                    doc.get_heads(),
                    plan(&doc, source, &Scope::everything(kind)),
                ))
            })
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("document {id}: {e}")))?
        .map_err(|_| StoreError::Corrupt(format!("document {id}: loading it panicked")))??;
        if store.reproject(id, &heads, &plan, seq).await? {
            return Ok(());
        }
    }
    Err(StoreError::Invalid(format!(
        "document {id} kept changing while it was re-projected; the servers holding it project it"
    )))
}
