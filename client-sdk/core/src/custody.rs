//! Where this device's edits stand, and a way out when the server cannot
//! take them.
//!
//! An edit is `Local` (on this phone's disk) until the server stored it
//! (`Acknowledged`), and `Counted` once the rollups the offices see include
//! it. [`Client::checkpoint`] answers the question of the volunteer handing
//! the phone back: is everything on this phone safely on the server now?
//!
//! When the server does not know the device (restored from a backup, the
//! wrong URL) nothing is written off: [`Client::export_unsynced`] writes the
//! unacknowledged changes to a file, and [`Client::import_unsynced`] on
//! another enrolled device of the same branch re-enters them as its own
//! edits, record by record (the server accepts a change only from the
//! device whose actor wrote it, so the old device's changes cannot simply
//! be forwarded).

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;

use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ObjType, Prop, ReadDoc, Value};
use doorstep_protocol::schema::DocumentKind;
use doorstep_protocol::{DocumentId, Month, TenantId};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::ClientError;
use crate::replicas::Replicas;
use crate::tree::Node;

/// How far one edit has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum EditState {
    /// On this phone's disk only.
    Local,
    /// The server stored it; the rollups may not include it yet.
    Acknowledged,
    /// In the rollups the sub-district and district offices see.
    Counted,
}

/// The answer to "is everything on this phone safely on the server?".
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Checkpoint {
    /// True when no local edit is outside what the server acknowledged.
    pub safe: bool,
    /// Local changes the server has not acknowledged.
    pub unsynced_changes: usize,
    /// Whether the rollups include everything acknowledged too.
    pub all_counted: bool,
    /// Why the check could not reach the server, if it could not.
    pub problem: Option<String>,
}

/// The export file's format tag; the import refuses anything else.
const EXPORT_FORMAT: &str = "doorstep-unsynced-edits/1";
/// Larger than any honest export of a phone's unsynced work.
const MAX_EXPORT_BYTES: usize = 64 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Export {
    format: String,
    branch_id: String,
    device_id: String,
    /// The exporting device's Automerge actor (hex): every change is its.
    actor_id: String,
    exported_at_unix_secs: i64,
    documents: Vec<ExportedDocument>,
}

#[derive(Serialize, Deserialize)]
struct ExportedDocument {
    document_id: String,
    /// `None` for the roster, `YYYY-MM` for a monthly log.
    month: Option<String>,
    /// The changes (hex) the server had not acknowledged.
    changes: Vec<String>,
}

/// What an import entered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ImportReport {
    pub documents: usize,
    /// Records written as this device's edits.
    pub records: usize,
}

/// The records (`collection/key`) whose state differs between two sets of
/// heads of `doc`, all of which it must hold.
fn records_changed(doc: &Automerge, from: &[ChangeHash], to: &[ChangeHash]) -> BTreeSet<String> {
    let mut records = BTreeSet::new();
    for patch in doc.diff(from, to) {
        let mut keys = patch.path.iter().filter_map(|(_, prop)| match prop {
            Prop::Map(key) => Some(key.clone()),
            Prop::Seq(_) => None,
        });
        match (keys.next(), keys.next(), &patch.action) {
            (Some(collection), Some(record), _) => {
                records.insert(format!("{collection}/{record}"));
            }
            (Some(collection), None, automerge::PatchAction::PutMap { key, .. })
            | (Some(collection), None, automerge::PatchAction::DeleteMap { key }) => {
                records.insert(format!("{collection}/{key}"));
            }
            _ => {}
        }
    }
    records
}

/// The heads of `heads` this document holds; `None` if it lacks any.
fn known(doc: &Automerge, heads: &[ChangeHash]) -> Option<Vec<ChangeHash>> {
    heads
        .iter()
        .all(|h| doc.get_change_meta_by_hash(h).is_some())
        .then(|| heads.to_vec())
}

impl Client {
    /// How far the latest edit of a record has got. A record never edited
    /// here, or whose edits are all counted, is `Counted`.
    pub async fn edit_state(
        &self,
        record: doorstep_protocol::schema::RecordId,
    ) -> Result<EditState, ClientError> {
        let key = record.to_string();
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        for (id, kind) in replicas.all().await? {
            let replica = replicas.get(id, kind).await?;
            let doc = replica.doc();
            let holds = kind.collections().iter().any(|collection| {
                doc.get(automerge::ROOT, *collection)
                    .ok()
                    .flatten()
                    .is_some_and(|(_, coll)| doc.get(&coll, key.as_str()).ok().flatten().is_some())
            });
            if !holds {
                continue;
            }
            let counted = self.inner.store.counted_heads(id).await?;
            let touched = |from: &[ChangeHash], to: &[ChangeHash]| {
                records_changed(doc, from, to)
                    .iter()
                    .any(|r| r.ends_with(&format!("/{key}")))
            };
            let heads = doc.get_heads();
            if touched(&replica.acked, &heads) {
                return Ok(EditState::Local);
            }
            return Ok(match known(doc, &counted) {
                Some(counted) if !touched(&counted, &replica.acked) => EditState::Counted,
                // The rollups are behind, or ahead in a way this device
                // cannot see: not claimed as counted.
                _ => EditState::Acknowledged,
            });
        }
        Err(ClientError::NotFound {
            what: "record",
            id: key,
        })
    }

    /// Syncs now and says whether every edit on this phone is on the
    /// server. Unreachable, the answer still comes (with the reason in
    /// `problem`), never an error: the volunteer needs it either way.
    pub async fn checkpoint(&self) -> Result<Checkpoint, ClientError> {
        // One deadline for the whole answer, the sync and the counted heads.
        let limit = self
            .inner
            .config
            .sync_deadline
            .min(std::time::Duration::from_secs(86_400));
        let deadline = tokio::time::Instant::now() + limit;
        let problem = match self.sync_until(deadline).await {
            Ok(_) => None,
            Err(ClientError::NotEnrolled) => return Err(ClientError::NotEnrolled),
            Err(e) => Some(e.to_string()),
        };
        let all_counted = match problem {
            None => tokio::time::timeout_at(deadline, self.refresh_counted_heads())
                .await
                .is_ok_and(|counted| counted.unwrap_or(false)),
            Some(_) => false,
        };
        let unsynced_changes = self.pending_changes().await?;
        Ok(Checkpoint {
            safe: unsynced_changes == 0,
            unsynced_changes,
            all_counted: all_counted && unsynced_changes == 0,
            problem,
        })
    }

    /// Fetches the heads the rollups count each document up to; true if
    /// they cover everything the server acknowledged of ours.
    async fn refresh_counted_heads(&self) -> Result<bool, ClientError> {
        #[derive(Deserialize)]
        struct Listed {
            document_id: String,
            #[serde(default)]
            counted_heads: Vec<String>,
        }
        let identity = self.identity()?;
        let response = self
            .inner
            .transport
            .http()
            .get(self.inner.transport.url("/api/v1/device/documents"))
            .bearer_auth(&identity.token)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(crate::sync::refusal(response, "listing documents").await);
        }
        let listed: Vec<Listed> = response.json().await?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut all_counted = true;
        for (id, kind) in replicas.all().await? {
            let Some(entry) = listed.iter().find(|l| l.document_id == id.to_string()) else {
                continue;
            };
            self.inner
                .store
                .save_counted_heads(id, &entry.counted_heads)
                .await?;
            let counted: Vec<ChangeHash> = entry
                .counted_heads
                .iter()
                .filter_map(|h| h.parse().ok())
                .collect();
            let replica = replicas.get(id, kind).await?;
            let doc = replica.doc();
            all_counted &= match known(doc, &counted) {
                Some(counted) => doc
                    .get_changes_meta(&counted)
                    .iter()
                    .all(|m| *m.actor != self.inner.actor),
                None => true,
            };
        }
        Ok(all_counted)
    }

    /// Every change the server has not acknowledged, as a file another
    /// device of the branch can import. Works offline and after the server
    /// stopped recognising this device.
    pub async fn export_unsynced(&self) -> Result<Vec<u8>, ClientError> {
        let identity = self.identity()?;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut documents = Vec::new();
        for id in replicas.unacked().await? {
            let Some(replica) = replicas.existing(id).await? else {
                continue;
            };
            let month = match replica.kind {
                DocumentKind::Roster => None,
                DocumentKind::MonthlyLog(month) => Some(month.to_string()),
            };
            let actor = &self.inner.actor;
            let changes: Vec<String> = replica
                .doc()
                .get_changes(&replica.acked)
                .into_iter()
                .filter(|c| c.actor_id() == actor)
                .map(|mut c| hex::encode(c.bytes()))
                .collect();
            if !changes.is_empty() {
                documents.push(ExportedDocument {
                    document_id: id.to_string(),
                    month,
                    changes,
                });
            }
        }
        let export = Export {
            format: EXPORT_FORMAT.into(),
            branch_id: identity.branch.to_string(),
            device_id: identity.device_id.clone(),
            actor_id: self.inner.actor.to_hex_string(),
            exported_at_unix_secs: time::OffsetDateTime::now_utc().unix_timestamp(),
            documents,
        };
        serde_json::to_vec_pretty(&export).map_err(|e| ClientError::Storage(e.to_string()))
    }

    /// Enters another device's exported edits as this device's own: each
    /// record they changed is written whole, as it stands after merging
    /// them into this device's copy (with their correction notes). The
    /// export must be from this branch and hold only the exporting device's
    /// changes, and this device must hold what those build on (sync first).
    pub async fn import_unsynced(&self, file: &[u8]) -> Result<ImportReport, ClientError> {
        if file.len() > MAX_EXPORT_BYTES {
            return Err(ClientError::invalid("export", "larger than any export"));
        }
        let export: Export = serde_json::from_slice(file)
            .map_err(|e| ClientError::invalid("export", format!("not an export file: {e}")))?;
        if export.format != EXPORT_FORMAT {
            return Err(ClientError::invalid(
                "export",
                format!("unknown format {:?}", export.format),
            ));
        }
        let branch = self.identity()?.branch;
        if export.branch_id.parse::<TenantId>().ok() != Some(branch) {
            return Err(ClientError::invalid(
                "export",
                "it is from another branch's device",
            ));
        }
        let actor = hex::decode(&export.actor_id)
            .map(automerge::ActorId::from)
            .map_err(|_| ClientError::invalid("export", "the actor id is not hex"))?;
        let mut report = ImportReport::default();
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        for document in &export.documents {
            let (id, kind) = exported_document(branch, document)?;
            report.records +=
                import_document(replicas, id, kind, &actor, &document.changes).await?;
            report.documents += 1;
        }
        drop(guard);
        self.inner.edited.notify_one();
        Ok(report)
    }
}

/// The document an exported entry names, checked against its month.
fn exported_document(
    branch: TenantId,
    document: &ExportedDocument,
) -> Result<(DocumentId, DocumentKind), ClientError> {
    let kind = match &document.month {
        None => DocumentKind::Roster,
        Some(month) => DocumentKind::MonthlyLog(
            month
                .parse::<Month>()
                .map_err(|e| ClientError::invalid("export month", e))?,
        ),
    };
    let id = match kind {
        DocumentKind::Roster => DocumentId::roster(branch),
        DocumentKind::MonthlyLog(month) => DocumentId::monthly_log(branch, month),
    };
    if document.document_id != id.to_string() {
        return Err(ClientError::invalid(
            "export",
            format!("document {} is not this branch's", document.document_id),
        ));
    }
    Ok((id, kind))
}

/// Applies the changes to a copy of the document, then writes each record
/// they changed into the real one as this device's edit. Returns the
/// number of records written.
async fn import_document(
    replicas: &mut Replicas,
    id: DocumentId,
    kind: DocumentKind,
    actor: &automerge::ActorId,
    changes: &[String],
) -> Result<usize, ClientError> {
    let mut parsed = Vec::with_capacity(changes.len());
    for change in changes {
        let bytes = hex::decode(change)
            .map_err(|_| ClientError::invalid("export", "a change is not hex"))?;
        let change = automerge::Change::from_bytes(bytes)
            .map_err(|e| ClientError::invalid("export", format!("a change is corrupt: {e}")))?;
        // Only the exporting device's own edits: the file must not carry
        // anyone else's changes under this device's authority.
        if change.actor_id() != actor {
            return Err(ClientError::invalid(
                "export",
                "it holds changes the exporting device did not make",
            ));
        }
        parsed.push(change);
    }
    let base = replicas.get(id, kind).await?.doc().clone();
    let before = base.get_heads();
    let mut collections: Vec<&str> = kind.collections().to_vec();
    if matches!(kind, DocumentKind::MonthlyLog(_)) {
        // A deletion's note travels with it.
        collections.push(crate::corrections::NOTES);
    }
    // Everything that reads the imported changes runs on the copy, inside
    // the unwind guard, and yields plain values (bounded in depth): only
    // those reach the real document's transaction.
    let planned = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let mut fork = base;
        fork.apply_changes(parsed)
            .map_err(|e| ClientError::invalid("export", e))?;
        if !fork.get_missing_deps(&[]).is_empty() {
            return Err(ClientError::invalid(
                "export",
                "it builds on changes this device does not have yet: sync, then import again",
            ));
        }
        let mut planned = Vec::new();
        for record in records_changed(&fork, &before, &fork.get_heads()) {
            let Some((collection, key)) = record.split_once('/') else {
                continue;
            };
            if !collections.contains(&collection) {
                continue;
            }
            let value = match fork.get(automerge::ROOT, collection) {
                Ok(Some((Value::Object(ObjType::Map), coll))) => Node::read_key(&fork, &coll, key),
                _ => None,
            };
            planned.push((collection.to_owned(), key.to_owned(), value));
        }
        Ok(planned)
    }))
    .map_err(|_| ClientError::invalid("export", "its changes could not be applied"))??;
    if planned.is_empty() {
        return Ok(0);
    }
    let count = planned.len();
    replicas
        .edit(id, kind, |tx| {
            for (collection, key, value) in &planned {
                let coll = match tx.get(automerge::ROOT, collection.as_str())? {
                    Some((Value::Object(ObjType::Map), coll)) => coll,
                    _ => tx.put_object(automerge::ROOT, collection.as_str(), ObjType::Map)?,
                };
                match value {
                    Some(node) => node.put(tx, &coll, key)?,
                    None => tx.delete(&coll, key.as_str())?,
                }
            }
            Ok(())
        })
        .await?;
    Ok(count)
}
