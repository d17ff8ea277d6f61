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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, Prop, ReadDoc, Value};
use doorstep_protocol::admission::{AdmissionLimits, inspect_chunks};
use doorstep_protocol::keeper::KeeperLimits;
use doorstep_protocol::schema::{Checked, DocumentKind, check_record_in};
use doorstep_protocol::{DocumentId, Month, TenantId, provenance};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::ClientError;
use crate::replicas::Replicas;

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
    /// The exporting device's actor base (hex): every change is by an actor
    /// that starts with it (one per open of that device; an export from an
    /// SDK before per-open actors names its one actor, the same test).
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

/// The record a patch touches, as (collection, key): the first two map
/// keys of its path, or a collection's key it puts or deletes.
fn record_of(patch: &automerge::Patch) -> Option<(String, String)> {
    let mut keys = patch.path.iter().filter_map(|(_, prop)| match prop {
        Prop::Map(key) => Some(key.clone()),
        Prop::Seq(_) => None,
    });
    match (keys.next(), keys.next(), &patch.action) {
        (Some(collection), Some(record), _) => Some((collection, record)),
        (Some(collection), None, automerge::PatchAction::PutMap { key, .. })
        | (Some(collection), None, automerge::PatchAction::DeleteMap { key }) => {
            Some((collection, key.clone()))
        }
        _ => None,
    }
}

/// The records (`collection/key`) whose state differs between two sets of
/// heads of `doc`, all of which it must hold.
fn records_changed(doc: &Automerge, from: &[ChangeHash], to: &[ChangeHash]) -> BTreeSet<String> {
    doc.diff(from, to)
        .iter()
        .filter_map(record_of)
        .map(|(collection, key)| format!("{collection}/{key}"))
        .collect()
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
        let mut synced = self.sync_until(deadline, true).await;
        if matches!(synced, Err(ClientError::Network(_))) && tokio::time::Instant::now() < deadline
        {
            // A reset is common on a poor link, and the volunteer is
            // waiting: the second try goes at once.
            tracing::debug!("checkpoint: the sync failed; trying again at once");
            synced = self.sync_until(deadline, true).await;
        }
        let (problem, counted) = match synced {
            Ok(synced) => (None, synced.counted),
            Err(ClientError::NotEnrolled) => return Err(ClientError::NotEnrolled),
            Err(e) => (Some(e.to_string()), None),
        };
        let all_counted = match (problem.as_ref(), counted) {
            // From the sync socket (a server with the extension).
            (None, Some(counted)) => self.apply_counted_heads(&counted).await?,
            (None, None) => tokio::time::timeout_at(deadline, self.refresh_counted_heads())
                .await
                .is_ok_and(|counted| counted.unwrap_or(false)),
            (Some(_), _) => false,
        };
        let unsynced_changes = self.pending_changes().await?;
        // The server's data was restored and not every document has been
        // offered to it again: what it acknowledged before may be gone.
        let resyncing = {
            let guard = self.replicas().await?;
            let replicas = guard.as_ref().ok_or(ClientError::NotEnrolled)?;
            replicas.resync_everything().await?
        };
        let problem = problem.or_else(|| {
            resyncing.then(|| {
                "the server's data was restored from a backup; this phone has not yet offered \
                 it every document it holds"
                    .to_owned()
            })
        });
        let safe = unsynced_changes == 0 && !resyncing;
        Ok(Checkpoint {
            safe,
            unsynced_changes,
            all_counted: all_counted && safe,
            problem,
        })
    }

    /// Fetches the heads the rollups count each document up to over HTTPS
    /// (a server without `wire::EXTENSION_COUNTED`); true if they cover
    /// everything the server acknowledged of ours.
    async fn refresh_counted_heads(&self) -> Result<bool, ClientError> {
        #[derive(Deserialize)]
        struct Listed {
            document_id: String,
            #[serde(default)]
            counted_heads: Vec<String>,
        }
        let identity = self.identity()?;
        let listed: Vec<Listed> = self
            .inner
            .transport
            .device_documents(&identity.token)
            .await?;
        let counted = listed
            .into_iter()
            .filter_map(|l| Some((l.document_id.parse().ok()?, l.counted_heads)))
            .collect();
        self.apply_counted_heads(&counted).await
    }

    /// Saves the counted heads the server gave; true if they cover
    /// everything the server acknowledged of ours.
    async fn apply_counted_heads(
        &self,
        listed: &crate::sync::Counted,
    ) -> Result<bool, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut all_counted = true;
        for (id, kind) in replicas.all().await? {
            let Some(entry) = listed.get(&id) else {
                continue;
            };
            self.inner.store.save_counted_heads(id, entry).await?;
            let counted: Vec<ChangeHash> = entry.iter().filter_map(|h| h.parse().ok()).collect();
            let replica = replicas.get(id, kind).await?;
            let doc = replica.doc();
            all_counted &= match known(doc, &counted) {
                Some(counted) => doc
                    .get_changes_meta(&counted)
                    .iter()
                    .all(|m| !crate::client::is_own(&self.inner.actor_base, &m.actor)),
                None => true,
            };
        }
        Ok(all_counted)
    }

    /// Every change the server has not acknowledged, as a file another
    /// device of the branch can import. Works offline and after the server
    /// stopped recognising this device.
    ///
    /// **The file is plaintext**: JSON holding the changes, and so members'
    /// names, phones and addresses, in clear. It is not encrypted to anyone's
    /// key: hand it from phone to phone directly, never through shared
    /// storage, mail or chat, and delete it once imported.
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
            let changes = own_changes(replica.doc(), &replica.acked, &self.inner.actor_base);
            if !changes.is_empty() {
                documents.push(ExportedDocument {
                    document_id: id.to_string(),
                    month,
                    changes,
                });
            }
        }
        export_file(
            &identity.branch.to_string(),
            &identity.device_id,
            &self.inner.actor_base,
            documents,
        )
    }

    /// The export of [`Client::export_unsynced`], read straight from the
    /// store in `data_dir`, for a store this version cannot open (a
    /// downgraded app meets [`ClientError::NewerStore`]): no migration
    /// runs and nothing is written. It reads only what every schema
    /// version keeps (the identity, the documents, their changes and the
    /// heads the server acknowledged; migrations only add). The directory
    /// must not be open (it takes the directory's lock for the read).
    pub async fn export_unsynced_from_store(
        data_dir: impl AsRef<std::path::Path>,
        key: &crate::StoreKey,
    ) -> Result<Vec<u8>, ClientError> {
        let dir = data_dir.as_ref();
        let _lock = crate::client::lock_directory(dir)?;
        let store = crate::store::LocalStore::open_as_is(&dir.join("device.db"), key).await?;
        let exported = export_from(&store).await;
        store.close_without_tidy().await;
        exported
    }
    /// Enters another device's exported edits as this device's own, field
    /// by field: each exported change is made again by this device, on the
    /// same history as the original, so edits of other devices to other
    /// fields stay and a field both set shows as a conflict (see
    /// `import_document`). Importing the same edits twice enters them
    /// once. The export must be from this branch and hold only the
    /// exporting device's changes, and this device must hold what those
    /// build on (sync first).
    pub async fn import_unsynced(&self, file: &[u8]) -> Result<ImportReport, ClientError> {
        if file.len() > MAX_EXPORT_BYTES {
            return Err(ClientError::invalid("export", "larger than any export"));
        }
        // Neither message quotes the file: it holds names.
        let export: Export = serde_json::from_slice(file)
            .map_err(|_| ClientError::invalid("export", "not an export file"))?;
        if export.format != EXPORT_FORMAT {
            return Err(ClientError::invalid(
                "export",
                "not an export this app knows (another format)",
            ));
        }
        if export.documents.len() > MAX_IMPORTED_DOCUMENTS {
            return Err(ClientError::invalid(
                "export",
                format!("it lists more than {MAX_IMPORTED_DOCUMENTS} documents"),
            ));
        }
        let branch = self.identity()?.branch;
        if export.branch_id.parse::<TenantId>().ok() != Some(branch) {
            return Err(ClientError::invalid(
                "export",
                "it is from another branch's device",
            ));
        }
        // An empty base would make every change "the exporting device's".
        let actor = hex::decode(&export.actor_id)
            .ok()
            .filter(|base| !base.is_empty())
            .ok_or_else(|| ClientError::invalid("export", "the actor id is not hex"))?;
        let mut report = ImportReport::default();
        // A fresh actor of this device for the import: its changes are built
        // on older heads than this open's edits, so they need their own
        // sequence (see `reauthor`).
        let importer = crate::client::session_actor(&self.inner.actor_base);
        // One budget for the whole file, the server's for one message: a
        // file of many changes each just under the bounds is not a way
        // round them.
        let mut budget = FileBudget::default();
        let mut seen = HashSet::new();
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        // Every document is checked and re-made first, then all are applied:
        // a file refused anywhere changes nothing.
        let mut prepared = Vec::new();
        for document in &export.documents {
            let (id, kind) = exported_document(branch, document)?;
            if !seen.insert(id) {
                return Err(ClientError::invalid(
                    "export",
                    format!("document {id} is listed twice"),
                ));
            }
            if document.changes.is_empty() {
                continue;
            }
            prepared.push(
                prepare_document(
                    replicas,
                    id,
                    kind,
                    &actor,
                    &document.changes,
                    &importer,
                    &mut budget,
                )
                .await?,
            );
        }
        for (id, kind, made, records) in prepared {
            if !made.is_empty() {
                replicas.apply_local(id, kind, made).await?;
            }
            report.records += records;
            report.documents += 1;
        }
        drop(guard);
        self.inner.edited.notify_one();
        Ok(report)
    }
}

/// What [`Client::rebase`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rebased {
    /// The refused change and what this device built on it were dropped,
    /// and this many changes made again on the form the server kept.
    Done { remade: usize },
    /// The form the server kept has not reached this device yet: the next
    /// sync brings it (the server sends its changes before it takes ours).
    NotYet,
    /// This device does not hold that change (re-based already).
    Nothing,
    /// The documents alone say it cannot be done (another device built on
    /// the change, or the form the server kept makes other edits): the
    /// same data would give the same answer, so the document is held back.
    Impossible(String),
}

impl Client {
    /// The server refused `refused`, a change of this device in
    /// `document`, because the document keeps the same edits in another
    /// form: the change's original, or a stand-in another phone made from
    /// an export of it (`provenance`). Keeping it would bring back a
    /// record deleted since, or hide a correction behind a second copy.
    /// So it is dropped with every change this device built on it, and
    /// those are made again on the form the server kept, by a fresh actor,
    /// the way an import makes an export's changes: stored in one write,
    /// so a crash leaves either the old document or the new one, and the
    /// edits are in both.
    pub(crate) async fn rebase(
        &self,
        document: DocumentId,
        refused: ChangeHash,
    ) -> Result<Rebased, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let Some(replica) = replicas.existing(document).await? else {
            return Ok(Rebased::Nothing);
        };
        let kind = replica.kind;
        let doc = replica.doc().clone();
        let actor_base = replicas.actor_base.clone();
        let actor = crate::client::session_actor(&actor_base);
        // Work in proportion to the document: off the runtime's workers,
        // and inside the unwind guard (the changes came from the server).
        let outcome = crate::replicas::off_async(move || {
            std::panic::catch_unwind(AssertUnwindSafe(move || {
                rebased(doc, refused, &actor_base, actor, kind)
            }))
        });
        // Worked out from the documents in memory: an error or a panic
        // there is a verdict. Reading and writing the store around it may
        // fail for a passing reason (a busy lock, a full disk), which the
        // caller retries.
        let rebased = match outcome {
            Ok(Ok(remade)) => remade,
            Ok(Err(e)) => return Ok(Rebased::Impossible(e.to_string())),
            Err(_) => return Ok(Rebased::Impossible("re-basing the document failed".into())),
        };
        match rebased {
            Remade::Missing => Ok(Rebased::Nothing),
            Remade::NotYet => Ok(Rebased::NotYet),
            Remade::Done(rebased, remade) => {
                replicas.replace(document, *rebased).await?;
                tracing::info!(%document, remade, "re-based edits the server keeps in another form");
                Ok(Rebased::Done { remade })
            }
        }
    }
}

/// What [`rebased`] made of a document.
enum Remade {
    /// The document does not hold the refused change.
    Missing,
    /// The form the server kept is not here yet.
    NotYet,
    /// The document re-based, and how many changes were made again.
    Done(Box<Automerge>, usize),
}

/// See [`Client::rebase`]: `doc` without `refused` and what was built on
/// it, those made again by `actor` on the form the server kept.
fn rebased(
    doc: Automerge,
    refused: ChangeHash,
    actor_base: &[u8],
    actor: ActorId,
    kind: DocumentKind,
) -> Result<Remade, ClientError> {
    let Some(message) = doc
        .get_change_meta_by_hash(&refused)
        .map(|meta| meta.message.map(|m| m.into_owned()))
    else {
        return Ok(Remade::Missing);
    };
    // The refused change and everything built on it.
    let all = doc.get_changes(&[]);
    let mut children: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
    for change in &all {
        for dep in change.deps() {
            children.entry(*dep).or_default().push(change.hash());
        }
    }
    let mut dropped: HashSet<ChangeHash> = HashSet::from([refused]);
    let mut frontier = vec![refused];
    while let Some(hash) = frontier.pop() {
        for child in children.get(&hash).into_iter().flatten() {
            if dropped.insert(*child) {
                frontier.push(*child);
            }
        }
    }
    let (rebuilt, kept): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|c| dropped.contains(&c.hash()));
    // The server never took the refused change, so nobody else can have
    // built on it.
    if rebuilt
        .iter()
        .any(|c| !crate::client::is_own(actor_base, c.actor_id()))
    {
        return Err(ClientError::Storage(
            "another device's change builds on a change the server refused".into(),
        ));
    }
    let forms = KeptForms::new(&kept);
    if forms.of(refused, message.as_deref()).is_empty() {
        return Ok(Remade::NotYet);
    }
    same_edits_as_kept_forms(&doc, &rebuilt, &forms)?;
    drop(forms);
    let mut base = Automerge::new();
    base.apply_changes(kept)?;
    let (made, _) = reauthor(base.clone(), rebuilt, actor, kind)?;
    let remade = made.len();
    base.apply_changes(made)?;
    Ok(Remade::Done(Box::new(base), remade))
}

/// A dropped change may be left out of the re-made ones only if every form
/// of it the kept history holds makes the same edits: a stand-in is
/// recognised by its message alone, and one that says otherwise must not
/// make this phone's edits vanish (the document is held back instead).
fn same_edits_as_kept_forms(
    doc: &Automerge,
    dropped: &[automerge::Change],
    forms: &KeptForms<'_>,
) -> Result<(), ClientError> {
    for change in dropped {
        let kept = forms.of(change.hash(), change.message());
        if kept.is_empty() {
            continue;
        }
        let ours = edits_of(doc, change);
        if kept.into_iter().any(|form| edits_of(doc, form) != ours) {
            return Err(ClientError::Storage(
                "the form the server kept does not make the same edits as this device's change"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// The changes of a history that make another change's edits in another
/// form ([`provenance`]): the change's original, and the stand-ins for the
/// change or for its original (stand-ins made before re-made changes named
/// the first original named the change they were made from).
struct KeptForms<'a> {
    by_hash: HashMap<ChangeHash, &'a automerge::Change>,
    stand_ins: HashMap<ChangeHash, Vec<&'a automerge::Change>>,
}

impl<'a> KeptForms<'a> {
    fn new(kept: &'a [automerge::Change]) -> Self {
        let mut forms = KeptForms {
            by_hash: HashMap::new(),
            stand_ins: HashMap::new(),
        };
        for change in kept {
            forms.by_hash.insert(change.hash(), change);
            if let Some(original) = provenance::stands_in_for(change.message()) {
                forms.stand_ins.entry(original).or_default().push(change);
            }
        }
        forms
    }

    /// The forms of the change `hash` whose commit message is `message`.
    fn of(&self, hash: ChangeHash, message: Option<&str>) -> Vec<&'a automerge::Change> {
        let root = provenance::stands_in_for(message).unwrap_or(hash);
        let mut forms: Vec<&automerge::Change> = Vec::new();
        if root != hash {
            forms.extend(self.by_hash.get(&root).copied());
            forms.extend(self.stand_ins.get(&hash).into_iter().flatten());
        }
        forms.extend(self.stand_ins.get(&root).into_iter().flatten());
        forms
    }
}

/// What `change` does in `doc`, one line an edit, sorted: the values it
/// writes and the entries it deletes or replaces, at their places (map
/// keys), without what two honest forms of one edit may do differently:
/// the ids of the objects it writes into, making one where nothing was (a
/// stand-in edits the record a parallel branch of the file had made
/// already), and the positions of list elements. A delete counts like a
/// write: a form made on a history that lacked the record deletes
/// nothing, and leaving this change out for it would bring the record back
/// where it exists. So does a conflict: a form may not hide other values.
fn edits_of(doc: &Automerge, change: &automerge::Change) -> Vec<String> {
    let mut edits = Vec::new();
    for patch in doc.diff(change.deps(), &[change.hash()]) {
        // Keys quoted, so no key can pass for a path of two.
        let at = patch
            .path
            .iter()
            .map(|(_, prop)| match prop {
                Prop::Map(key) => format!("{key:?}"),
                Prop::Seq(_) => "[]".to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        // Making an object is no edit of its own where nothing was there;
        // made over a value, it replaces that value and what it held.
        let replaced = |key: Prop| {
            doc.get_at(&patch.obj, key, change.deps())
                .ok()
                .flatten()
                .is_some()
        };
        match patch.action {
            automerge::PatchAction::PutMap {
                key,
                value: (Value::Object(_), _),
                ..
            } => {
                if replaced(Prop::Map(key.clone())) {
                    edits.push(format!("{at}/{key:?} replaced"));
                }
            }
            automerge::PatchAction::PutSeq {
                index,
                value: (Value::Object(_), _),
                ..
            } => {
                if replaced(Prop::Seq(index)) {
                    edits.push(format!("{at}/[] replaced"));
                }
            }
            automerge::PatchAction::PutMap {
                key,
                value: (Value::Scalar(v), _),
                ..
            } => edits.push(format!("{at}/{key:?} = {v:?}")),
            automerge::PatchAction::PutSeq {
                value: (Value::Scalar(v), _),
                ..
            } => edits.push(format!("{at}/[] = {v:?}")),
            automerge::PatchAction::Insert { values, .. } => edits.push(format!(
                "{at} insert {:?}",
                values
                    .iter()
                    .filter_map(|(v, _, _)| match v {
                        Value::Scalar(s) => Some(format!("{s:?}")),
                        Value::Object(_) => None,
                    })
                    .collect::<Vec<_>>()
            )),
            automerge::PatchAction::DeleteMap { key } => {
                edits.push(format!("{at}/{key:?} deleted"))
            }
            automerge::PatchAction::DeleteSeq { length, .. } => {
                edits.push(format!("{at} {length} deleted"))
            }
            other => edits.push(format!("{at} {other:?}")),
        }
    }
    edits.sort();
    edits
}

/// The changes of `doc` outside `acked` made by the device whose actor base
/// is `base`, hex-encoded: what an export carries.
fn own_changes(doc: &Automerge, acked: &[ChangeHash], base: &[u8]) -> Vec<String> {
    doc.get_changes(acked)
        .into_iter()
        .filter(|c| crate::client::is_own(base, c.actor_id()))
        .map(|mut c| hex::encode(c.bytes()))
        .collect()
}

fn export_file(
    branch: &str,
    device: &str,
    actor_base: &[u8],
    documents: Vec<ExportedDocument>,
) -> Result<Vec<u8>, ClientError> {
    let export = Export {
        format: EXPORT_FORMAT.into(),
        branch_id: branch.to_owned(),
        device_id: device.to_owned(),
        actor_id: hex::encode(actor_base),
        exported_at_unix_secs: time::OffsetDateTime::now_utc().unix_timestamp(),
        documents,
    };
    serde_json::to_vec_pretty(&export).map_err(|e| ClientError::Storage(e.to_string()))
}

/// The export of an unmigrated store, documents loaded from their chunks.
async fn export_from(store: &crate::store::LocalStore) -> Result<Vec<u8>, ClientError> {
    let (Some(device), Some(branch), Some(base)) = (
        store.meta("device_id").await?,
        store.meta("branch_id").await?,
        store.meta("actor_id").await?,
    ) else {
        return Err(ClientError::NotEnrolled);
    };
    let base = hex::decode(&base)
        .ok()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ClientError::Storage("bad actor id".into()))?;
    let kinds: HashMap<DocumentId, DocumentKind> = store.documents().await?.into_iter().collect();
    let mut documents = Vec::new();
    for id in store.unacked_documents().await? {
        let Some(kind) = kinds.get(&id) else {
            continue;
        };
        let mut doc = Automerge::new();
        for chunk in store.chunks(id).await?.chunks {
            doc.load_incremental(&chunk)?;
        }
        let (_, acked) = store.sync_state(id).await?;
        // Acknowledged heads this copy lacks cannot bound anything: export
        // everything of ours (an import enters a change once).
        let acked = known(&doc, &acked).unwrap_or_default();
        let changes = own_changes(&doc, &acked, &base);
        if !changes.is_empty() {
            documents.push(ExportedDocument {
                document_id: id.to_string(),
                month: match kind {
                    DocumentKind::Roster => None,
                    DocumentKind::MonthlyLog(month) => Some(month.to_string()),
                },
                changes,
            });
        }
    }
    export_file(&branch, &device, &base, documents)
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

/// What one export file may carry in all: the server's bounds for one
/// sync message (inflated bytes, changes), over every change of the file.
#[derive(Default)]
struct FileBudget {
    limits: AdmissionLimits,
    bytes: u64,
    changes: u64,
    ops: u64,
}

/// Changes one file may carry: weeks of a phone's edits offline, and a
/// bound on the work (a diff, sometimes a fork) each costs here.
const MAX_IMPORTED_CHANGES: u64 = 20_000;

/// Documents one file may list: the roster and ten years of months.
const MAX_IMPORTED_DOCUMENTS: usize = 121;

impl FileBudget {
    fn take(
        &mut self,
        inspected: &doorstep_protocol::admission::Inspected,
        raw: usize,
    ) -> Result<(), ClientError> {
        let bytes = inspected.inflated_bytes.max(raw as u64);
        self.bytes = self.bytes.saturating_add(bytes);
        self.changes = self.changes.saturating_add(inspected.changes.len() as u64);
        self.ops = self.ops.saturating_add(inspected.ops);
        if self.bytes > self.limits.max_inflated_bytes
            || self.ops > self.limits.max_ops
            || self.changes > MAX_IMPORTED_CHANGES
        {
            return Err(ClientError::invalid(
                "export",
                format!(
                    "it carries more than one file may ({} MiB, {} operations, {MAX_IMPORTED_CHANGES} changes): sync the phone, or export again after part of it synced",
                    self.limits.max_inflated_bytes >> 20,
                    self.limits.max_ops,
                ),
            ));
        }
        Ok(())
    }
}

/// Enters the exported changes into the document as this device's edits,
/// field by field: each exported change becomes one change by `importer`
/// (a fresh actor of this device) that makes the same puts and deletes,
/// built on the same history as the original (its dependencies, mapped to
/// their re-authored stand-ins). So it is concurrent with exactly what the
/// original was concurrent with: fields it did not touch keep every other
/// device's edits, and a field another device also set is a conflict, as
/// it would have been had the exporting device synced. The server takes a
/// change only from the device whose actor wrote it, so the originals
/// themselves cannot be forwarded. Returns the re-made changes, for the
/// caller to apply once every document of the file is ready, and the number
/// of records they touch.
async fn prepare_document(
    replicas: &mut Replicas,
    id: DocumentId,
    kind: DocumentKind,
    exporter: &[u8],
    changes: &[String],
    importer: &ActorId,
    budget: &mut FileBudget,
) -> Result<(DocumentId, DocumentKind, Vec<automerge::Change>, usize), ClientError> {
    let mut parsed = Vec::with_capacity(changes.len());
    for change in changes {
        let bytes = hex::decode(change)
            .map_err(|_| ClientError::invalid("export", "a change is not hex"))?;
        // The server's admission first (checksums, bounds, what Automerge
        // panics on): a file is input from outside, like a sync message.
        let inspected = inspect_chunks(&bytes, &budget.limits)
            .map_err(|e| ClientError::invalid("export", format!("a change is damaged: {e}")))?;
        if inspected.changes.len() != 1 || inspected.documents != 0 {
            return Err(ClientError::invalid(
                "export",
                "an entry of its changes is not one change",
            ));
        }
        budget.take(&inspected, bytes.len())?;
        let change = std::panic::catch_unwind(|| automerge::Change::from_bytes(bytes))
            .map_err(|_| ClientError::invalid("export", "a change is corrupt"))?
            .map_err(|e| ClientError::invalid("export", format!("a change is corrupt: {e}")))?;
        // Only the exporting device's own edits: the file must not carry
        // anyone else's changes under this device's authority.
        if !crate::client::is_own(exporter, change.actor_id()) {
            return Err(ClientError::invalid(
                "export",
                "it holds changes the exporting device did not make",
            ));
        }
        parsed.push(change);
    }
    let base = replicas.get(id, kind).await?.doc().clone();
    let importer = importer.clone();
    // Everything that reads the imported changes runs on copies, inside the
    // unwind guard (an exported change is input from outside), and off the
    // runtime's workers (it is work in proportion to the document); only
    // the re-authored changes reach the real document.
    let (made, records) = crate::replicas::off_async(move || {
        std::panic::catch_unwind(AssertUnwindSafe(move || {
            reauthor(base, parsed, importer, kind)
        }))
    })
    .map_err(|_| ClientError::invalid("export", "its changes could not be applied"))??;
    Ok((id, kind, made, records))
}

/// See [`import_document`]: the re-authored changes, in causal order, and
/// the number of records they touch. Refused if a change would leave a
/// record of the document (of `kind`) invalid that was not already, as the
/// exporting device saw it (its change on its own history, not merged with
/// this device's newer edits: a merge that makes a record invalid is
/// accepted, as sync accepts it, and listed as invalid). The device's own
/// edits are checked before they are made; a file's must not reach further.
fn reauthor(
    mut work: Automerge,
    exported: Vec<automerge::Change>,
    importer: ActorId,
    kind: DocumentKind,
) -> Result<(Vec<automerge::Change>, usize), ClientError> {
    let invalid = |e: &dyn std::fmt::Display| ClientError::invalid("export", e);
    // The root keys a change may create: the collections, and the notes of
    // corrections beside them.
    let roots: Vec<&str> = kind
        .collections()
        .iter()
        .copied()
        .chain(matches!(kind, DocumentKind::MonthlyLog(_)).then_some(crate::corrections::NOTES))
        .collect();
    // The re-made changes can be larger than the originals (a patch that
    // uncovers an object carries all of it): bounded like the file.
    let limits = AdmissionLimits::default();
    let mut made_bytes = 0u64;
    let mut originals = work.clone();
    originals
        .apply_changes(exported.iter().cloned())
        .map_err(|e| invalid(&e))?;
    if !originals.get_missing_deps(&[]).is_empty() {
        return Err(ClientError::invalid(
            "export",
            "it builds on changes this device does not have yet: sync, then import again",
        ));
    }
    // Exported changes already re-authored here (an earlier import of the
    // same edits) map to their stand-ins and are not entered again.
    // (A stand-in names its original: `provenance`.)
    let mut stand_in: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
    for meta in work.get_changes_meta(&[]) {
        if let Some(original) = provenance::stands_in_for(meta.message.as_deref()) {
            stand_in.entry(original).or_default().push(meta.hash);
        }
    }
    let exported_hashes: HashSet<ChangeHash> = exported.iter().map(|c| c.hash()).collect();
    // The exported changes this device lacks, dependencies first.
    let mut todo: Vec<automerge::Change> = originals
        .get_changes(&work.get_heads())
        .into_iter()
        .filter(|c| exported_hashes.contains(&c.hash()))
        .collect();
    todo = causal_order(todo);
    let mut objects: HashMap<ObjId, ObjId> = HashMap::new();
    let mut records = BTreeSet::new();
    let mut made = Vec::new();
    let mut last: Option<ChangeHash> = None;
    let mut fork: Option<Automerge> = None;
    for change in todo {
        // The edits it makes are those of `root`: itself, or the original
        // it stands in for (a change re-made again, by a second import or
        // a re-base, still names the first).
        let root = provenance::stands_in_for(change.message()).unwrap_or_else(|| change.hash());
        let kept = if root != change.hash() && work.get_change_meta_by_hash(&root).is_some() {
            // A stand-in whose original this device holds now.
            Some(vec![root])
        } else {
            stand_in
                .get(&root)
                .or_else(|| stand_in.get(&change.hash()))
                .cloned()
        };
        if let Some(made_before) = kept {
            // Entered already, in another form. Later changes may edit
            // objects it created: map each to the one a form made at its
            // place (in every fork the later changes are made on: they
            // follow the forms). Where no form made one, a later edit of
            // it finds no object and the whole is refused, never sent into
            // an object someone else made there.
            let mut ours: HashMap<String, (Vec<Prop>, ObjId)> = HashMap::new();
            for hash in &made_before {
                if let Some(meta) = work.get_change_meta_by_hash(hash) {
                    for (path, made) in created_objects(&work, &meta.deps, *hash) {
                        ours.entry(path).or_insert(made);
                    }
                }
            }
            // Every object the change made, the ones it lost to another
            // under the same key included (a later change may edit it).
            for (props, id) in objects_made(&originals, &change) {
                if let Some((_, made)) = ours.remove(&format!("{props:?}")) {
                    objects.insert(id, made);
                }
            }
            // What builds on it is made on the forms and on what it was
            // made on: a form another phone made may not follow this
            // history, which holds the objects later changes edit.
            let mut followed = made_before;
            for dep in change.deps() {
                if work.get_change_meta_by_hash(dep).is_some() {
                    followed.push(*dep);
                } else {
                    followed.extend(stand_in.get(dep).into_iter().flatten().copied());
                }
            }
            followed.sort();
            followed.dedup();
            stand_in.insert(change.hash(), followed);
            continue;
        }
        let mut deps: Vec<ChangeHash> = Vec::new();
        for dep in change.deps() {
            // The original itself where this device holds it (received since
            // an earlier import re-made it): the change edits the objects the
            // original made, which its stand-in made under other ids.
            if work.get_change_meta_by_hash(dep).is_some() {
                deps.push(*dep);
                continue;
            }
            match stand_in.get(dep) {
                Some(mapped) => deps.extend(mapped.iter().copied()),
                None => {
                    return Err(ClientError::invalid(
                        "export",
                        "it builds on changes this device does not have yet: sync, then import again",
                    ));
                }
            }
        }
        // The importer's changes form one chain (the server refuses an
        // actor's change that does not follow its previous one), which an
        // export of one device's edits is anyway.
        deps.extend(last);
        deps.sort();
        deps.dedup();
        let mut at = match fork.take() {
            Some(f) if sorted(f.get_heads()) == deps => f,
            _ => work
                .fork_at(&deps)
                .map_err(|e| invalid(&e))?
                .with_actor(importer.clone()),
        };
        let patches = originals.diff(change.deps(), &[change.hash()]);
        let mut touched = BTreeSet::new();
        let view = Exporter {
            doc: &originals,
            deps: change.deps(),
            kind,
            roots: &roots,
        };
        let mut deletes = Deletes::default();
        let mut tx = at.transaction();
        for patch in &patches {
            if let Err(e) = replay(
                &mut tx,
                patch,
                &view,
                &mut objects,
                &mut touched,
                &mut deletes,
            ) {
                tx.rollback();
                return Err(e);
            }
        }
        // As the SDK deletes a log record: one a change, with the note that
        // says so (`delete_log_record`). A file deleting more, or without
        // the note, is not a phone's edits.
        if deletes.records.len() > 1
            || deletes
                .records
                .iter()
                .any(|key| !deletes.noted.contains(key))
        {
            tx.rollback();
            return Err(ClientError::invalid(
                "export",
                "it deletes records no phone's edit would",
            ));
        }
        let options = CommitOptions::default()
            .with_time(change.timestamp())
            .with_message(provenance::stand_in_message(&root));
        let (hash, _) = tx.commit_with(options);
        let Some(hash) = hash else {
            records.extend(touched);
            // Nothing visible to re-enter: what builds on it builds on its
            // dependencies.
            stand_in.insert(change.hash(), deps.clone());
            fork = Some(at);
            continue;
        };
        if let Some(record) = newly_invalid(&at, &originals, &change, &touched, kind)? {
            return Err(ClientError::invalid(
                "export",
                format!("it would leave the record {record} invalid"),
            ));
        }
        records.extend(touched);
        let new = at
            .get_change_by_hash(&hash)
            .ok_or_else(|| ClientError::Storage("a re-authored change vanished".into()))?;
        made_bytes = made_bytes.saturating_add(new.raw_bytes().len() as u64);
        if made_bytes > limits.max_inflated_bytes {
            return Err(ClientError::invalid(
                "export",
                "its changes, made again here, are larger than a sync message may be",
            ));
        }
        work.apply_changes([new.clone()]).map_err(|e| invalid(&e))?;
        stand_in.insert(change.hash(), vec![hash]);
        stand_in.entry(root).or_insert_with(|| vec![hash]);
        last = Some(hash);
        made.push(new);
        fork = Some(at);
    }
    Ok((made, records.len()))
}

/// The first of `records` (collection, key) that the re-made change leaves
/// invalid here (`doc`) and that the exporting phone's change (`change`,
/// in `exporter`) made invalid: invalid after it and not before, as that
/// phone saw it. A record invalid only because this phone's own newer
/// edits merge with it is accepted, as sync accepts it. Named as
/// `collection/key` only: a record's problems quote its values (names
/// included), and an error message travels into logs and crash reports.
fn newly_invalid(
    doc: &Automerge,
    exporter: &Automerge,
    change: &automerge::Change,
    records: &BTreeSet<(String, String)>,
    kind: DocumentKind,
) -> Result<Option<String>, ClientError> {
    // Forked only when a record reads invalid here, which is rare.
    let mut views: Option<(Automerge, Automerge)> = None;
    for (collection, key) in records {
        // Correction notes are the SDK's own, not records.
        if collection == crate::corrections::NOTES {
            continue;
        }
        if !matches!(
            check_record_in(doc, kind, collection, key),
            Checked::Invalid(_)
        ) {
            continue;
        }
        let (after, before) = match &mut views {
            Some(views) => views,
            None => views.insert((
                exporter
                    .fork_at(&[change.hash()])
                    .map_err(|e| ClientError::invalid("export", e))?,
                exporter
                    .fork_at(change.deps())
                    .map_err(|e| ClientError::invalid("export", e))?,
            )),
        };
        let invalid = |doc: &Automerge| {
            matches!(
                check_record_in(doc, kind, collection, key),
                Checked::Invalid(_)
            )
        };
        if invalid(after) && !invalid(before) {
            return Ok(Some(format!("{collection}/{key}")));
        }
    }
    Ok(None)
}

/// The records one change deletes, and the records its new notes of
/// corrections name.
#[derive(Default)]
struct Deletes {
    records: Vec<String>,
    noted: HashSet<String>,
}

/// What the exporting phone saw when it made a change: its document, the
/// change's dependencies, the document's kind and the root keys a change
/// may make there.
struct Exporter<'a> {
    doc: &'a Automerge,
    deps: &'a [ChangeHash],
    kind: DocumentKind,
    roots: &'a [&'a str],
}

/// The objects one change created, by where it put them.
/// The objects `change` makes, each with its place from the root of `doc`
/// (which holds the change), whether or not `doc` shows it there.
fn objects_made(doc: &Automerge, change: &automerge::Change) -> Vec<(Vec<Prop>, ObjId)> {
    let expanded = change.decode();
    let actor = hex::encode(expanded.actor_id.to_bytes());
    expanded
        .operations
        .iter()
        .zip(expanded.start_op.get()..)
        .filter(|(op, _)| matches!(op.action, automerge::legacy::OpType::Make(_)))
        .filter_map(|(_, counter)| {
            let id = doc.import_obj(&format!("{counter}@{actor}")).ok()?;
            let path = doc.parents(&id).ok()?.path();
            Some((path.into_iter().map(|(_, prop)| prop).collect(), id))
        })
        .collect()
}

fn created_objects(
    doc: &Automerge,
    deps: &[ChangeHash],
    hash: ChangeHash,
) -> HashMap<String, (Vec<Prop>, ObjId)> {
    // Keyed by the path rendered (`Prop` has no `Hash`).
    let mut created = HashMap::new();
    for patch in doc.diff(deps, &[hash]) {
        let mut path: Vec<Prop> = patch.path.iter().map(|(_, p)| p.clone()).collect();
        match patch.action {
            automerge::PatchAction::PutMap {
                key,
                value: (Value::Object(_), id),
                ..
            } => {
                path.push(Prop::Map(key));
                created.insert(format!("{path:?}"), (path, id));
            }
            automerge::PatchAction::PutSeq {
                index,
                value: (Value::Object(_), id),
                ..
            } => {
                path.push(Prop::Seq(index));
                created.insert(format!("{path:?}"), (path, id));
            }
            automerge::PatchAction::Insert { index, values } => {
                for (offset, (value, id, _)) in values.iter().enumerate() {
                    if matches!(value, Value::Object(_)) {
                        let mut at = path.clone();
                        at.push(Prop::Seq(index + offset));
                        created.insert(format!("{at:?}"), (at, id.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    created
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<ChangeHash> {
    heads.sort();
    heads
}

/// `changes` ordered so that each comes after those of them it depends on.
fn causal_order(mut changes: Vec<automerge::Change>) -> Vec<automerge::Change> {
    let mut placed: HashSet<ChangeHash> = HashSet::new();
    let all: HashSet<ChangeHash> = changes.iter().map(|c| c.hash()).collect();
    let mut ordered = Vec::with_capacity(changes.len());
    while !changes.is_empty() {
        let (ready, waiting): (Vec<_>, Vec<_>) = changes.into_iter().partition(|c| {
            c.deps()
                .iter()
                .all(|d| !all.contains(d) || placed.contains(d))
        });
        if ready.is_empty() {
            // A cycle cannot happen between hashes; keep the rest as given.
            ordered.extend(waiting);
            break;
        }
        placed.extend(ready.iter().map(|c| c.hash()));
        ordered.extend(ready);
        changes = waiting;
    }
    ordered
}

/// Makes one patch of an exported change in the importer's transaction.
/// Objects the export created are mapped to the ones made here; every
/// other object exists here under the same id (the fork holds the same
/// history up to the change's dependencies).
fn replay(
    tx: &mut automerge::transaction::Transaction<'_>,
    patch: &automerge::Patch,
    exporter: &Exporter<'_>,
    objects: &mut HashMap<ObjId, ObjId>,
    records: &mut BTreeSet<(String, String)>,
    deletes: &mut Deletes,
) -> Result<(), ClientError> {
    use automerge::PatchAction;
    // The server refuses objects deeper than this (by default), and would
    // refuse the re-authored change for good.
    let limit = KeeperLimits::default().max_depth;
    if patch.path.len() >= limit {
        return Err(ClientError::invalid(
            "export",
            format!("it nests objects more than {limit} deep"),
        ));
    }
    records.extend(record_of(patch));
    let obj = objects
        .get(&patch.obj)
        .cloned()
        .unwrap_or_else(|| patch.obj.clone());
    let outside = || ClientError::invalid("export", "it writes outside the branch's records");
    // What the exporting phone's change did is judged as that phone saw it
    // (`exporter`); here the fork may also hold this file's earlier
    // changes from branches parallel to this one.
    let seen = |obj: &ObjId, key: &str| -> Result<bool, ClientError> {
        Ok(matches!(
            exporter.doc.get_at(obj, key, exporter.deps)?,
            Some((Value::Object(automerge::ObjType::Map), _))
        ))
    };
    let here = |tx: &automerge::transaction::Transaction<'_>,
                obj: &ObjId,
                key: &str|
     -> Result<Option<ObjId>, ClientError> {
        Ok(match tx.get(obj, key)? {
            Some((Value::Object(automerge::ObjType::Map), id)) => Some(id),
            _ => None,
        })
    };
    if obj == automerge::ROOT {
        // At the root an edit may only make a collection (or, in a log, the
        // notes of corrections) its history lacks: anything else (a
        // collection replaced or deleted, the month rewritten) would take
        // every record of the document from every device.
        let PatchAction::PutMap {
            key,
            value: (Value::Object(automerge::ObjType::Map), made),
            ..
        } = &patch.action
        else {
            return Err(outside());
        };
        if !exporter.roots.contains(&key.as_str()) || seen(&automerge::ROOT, key)? {
            return Err(outside());
        }
        // Made already by a parallel branch of this file: one map, not two.
        if let Some(existing) = here(tx, &automerge::ROOT, key)? {
            objects.insert(made.clone(), existing);
            return Ok(());
        }
    } else if let Some((notes, Prop::Map(note))) = patch.path.get(1).filter(
        |_| matches!(patch.path.first(), Some((_, Prop::Map(c))) if c == crate::corrections::NOTES),
    ) {
        // Inside a note of corrections: only notes this change or file
        // makes (a note is written once; the history of corrections is not
        // a file's to rewrite).
        if exporter
            .doc
            .get_at(notes, note.as_str(), exporter.deps)?
            .is_some()
        {
            return Err(ClientError::invalid(
                "export",
                "it rewrites a note of corrections",
            ));
        }
        if patch.path.len() == 2
            && let PatchAction::PutMap {
                key,
                value: (Value::Scalar(value), _),
                ..
            } = &patch.action
            && key == "record_id"
            && let automerge::ScalarValue::Str(record) = value.as_ref()
        {
            deletes.noted.insert(record.to_string());
        }
    } else if patch.path.len() == 1 {
        match &patch.action {
            PatchAction::PutMap {
                key,
                value: (Value::Object(_), made),
                ..
            } => {
                // A record is made once and then edited field by field: a
                // new object over it would drop every other device's edits.
                if seen(&patch.obj, key)? {
                    return Err(ClientError::invalid(
                        "export",
                        "it replaces a record instead of editing it",
                    ));
                }
                if let Some(existing) = here(tx, &obj, key)? {
                    objects.insert(made.clone(), existing);
                    return Ok(());
                }
            }
            // The SDK deletes a log's records (checked with their notes by
            // the caller), never a roster's, and never a note.
            PatchAction::DeleteMap { key } => {
                let of_notes = matches!(
                    patch.path.first(),
                    Some((_, Prop::Map(c))) if c == crate::corrections::NOTES
                );
                if matches!(exporter.kind, DocumentKind::Roster) || of_notes {
                    return Err(ClientError::invalid(
                        "export",
                        "it deletes records no phone's edit would",
                    ));
                }
                deletes.records.push(key.clone());
            }
            _ => {}
        }
    }
    match &patch.action {
        PatchAction::PutMap { key, value, .. } => match &value.0 {
            Value::Object(kind) => {
                let made = tx.put_object(&obj, key.as_str(), *kind)?;
                objects.insert(value.1.clone(), made);
            }
            Value::Scalar(scalar) => tx.put(&obj, key.as_str(), scalar.as_ref().clone())?,
        },
        PatchAction::PutSeq { index, value, .. } => match &value.0 {
            Value::Object(kind) => {
                let made = tx.put_object(&obj, *index, *kind)?;
                objects.insert(value.1.clone(), made);
            }
            Value::Scalar(scalar) => tx.put(&obj, *index, scalar.as_ref().clone())?,
        },
        PatchAction::Insert { index, values } => {
            for (offset, (value, id, _)) in values.iter().enumerate() {
                match value {
                    Value::Object(kind) => {
                        let made = tx.insert_object(&obj, index + offset, *kind)?;
                        objects.insert(id.clone(), made);
                    }
                    Value::Scalar(scalar) => {
                        tx.insert(&obj, index + offset, scalar.as_ref().clone())?
                    }
                }
            }
        }
        PatchAction::SpliceText { index, value, .. } => {
            tx.splice_text(&obj, *index, 0, &value.make_string())?;
        }
        PatchAction::Increment { prop, value } => tx.increment(&obj, prop.clone(), *value)?,
        PatchAction::DeleteMap { key } => tx.delete(&obj, key.as_str())?,
        PatchAction::DeleteSeq { index, length } => {
            for _ in 0..*length {
                tx.delete(&obj, *index)?;
            }
        }
        // A conflict is not an edit; marks are not part of the schema.
        PatchAction::Conflict { .. } | PatchAction::Mark { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    /// A month's log as a branch's server makes it, for November 2026.
    fn november_log() -> (DocumentKind, Automerge) {
        let month: Month = "2026-11".parse().expect("a month");
        let kind = DocumentKind::MonthlyLog(month);
        let log = doorstep_protocol::schema::genesis(doorstep_protocol::TenantId::new_v7(), kind)
            .with_actor(ActorId::random());
        (kind, log)
    }

    /// Makes `members.<key>` with `notes` on a fork of `doc` at `deps` by a
    /// new actor, with `message`; returns the change.
    fn made(
        doc: &Automerge,
        deps: &[ChangeHash],
        key: &str,
        notes: &str,
        message: Option<String>,
    ) -> automerge::Change {
        change_by(doc, deps, message, |tx, members| {
            let m = tx
                .put_object(members, key, automerge::ObjType::Map)
                .expect("member");
            tx.put(&m, "notes", notes).expect("notes");
        })
    }

    /// From the second review of the re-base: a forged stand-in for a
    /// change built on the refused one must not make that change vanish.
    #[test]
    fn a_dropped_change_must_make_the_same_edits_as_every_kept_form_of_it() {
        let mut doc = base();
        let heads = doc.get_heads();
        let first = made(&doc, &heads, "a", "first", None);
        doc.apply_changes([first.clone()]).expect("first");
        let second = made(&doc, &[first.hash()], "b", "second", None);
        doc.apply_changes([second.clone()]).expect("second");
        let stand_in = |change: &automerge::Change, notes: &str| {
            made(
                &base_of(&doc, &heads),
                &heads,
                if change.hash() == first.hash() {
                    "a"
                } else {
                    "b"
                },
                notes,
                Some(provenance::stand_in_message(&change.hash())),
            )
        };
        let faithful = [stand_in(&first, "first"), stand_in(&second, "second")];
        let forged = [stand_in(&first, "first"), stand_in(&second, "forged")];
        for forms in [&faithful, &forged] {
            doc.apply_changes(forms.iter().cloned()).expect("forms");
        }
        let dropped = [first.clone(), second.clone()];
        assert!(same_edits_as_kept_forms(&doc, &dropped, &KeptForms::new(&faithful)).is_ok());
        assert!(same_edits_as_kept_forms(&doc, &dropped, &KeptForms::new(&forged)).is_err());
        // A change no kept form stands for is simply made again.
        assert!(same_edits_as_kept_forms(&doc, &dropped, &KeptForms::new(&faithful[..1])).is_ok());
    }

    /// A change on `doc` at `deps` by a new actor, made by `edit`.
    fn change_by(
        doc: &Automerge,
        deps: &[ChangeHash],
        message: Option<String>,
        edit: impl FnOnce(&mut automerge::transaction::Transaction<'_>, &ObjId),
    ) -> automerge::Change {
        let mut fork = doc
            .fork_at(deps)
            .expect("fork")
            .with_actor(ActorId::random());
        let members = match fork.get(automerge::ROOT, "members") {
            Ok(Some((_, id))) => id,
            other => panic!("no members: {other:?}"),
        };
        let mut tx = fork.transaction();
        edit(&mut tx, &members);
        let options = match message {
            Some(message) => CommitOptions::default().with_message(message),
            None => CommitOptions::default(),
        };
        let (hash, _) = tx.commit_with(options);
        fork.get_change_by_hash(&hash.expect("a change"))
            .expect("the change")
            .clone()
    }

    /// From the hostile review of the comparison that leaves out how
    /// forms make their objects: two forgeries that write the same values
    /// as this phone's change but not into its record.
    #[test]
    fn a_form_writing_elsewhere_or_over_the_record_is_not_the_same_edits() {
        let doc = base();
        let heads = doc.get_heads();
        let m = member(&doc);
        // Ours: one field of the existing member `m`.
        let ours = change_by(&doc, &heads, None, |tx, _| {
            tx.put(&m, "notes", "new").expect("notes");
        });
        let message = Some(provenance::stand_in_message(&ours.hash()));
        // A key that reads as the path `m/notes` when keys are joined.
        let slash = change_by(&doc, &heads, message.clone(), |tx, members| {
            tx.put(members, "m/notes", "new")
                .expect("a key with a slash");
        });
        // The member made again over `m`: its address is gone.
        let over = change_by(&doc, &heads, message.clone(), |tx, members| {
            let again = tx
                .put_object(members, "m", automerge::ObjType::Map)
                .expect("made again");
            tx.put(&again, "notes", "new").expect("notes");
        });
        // An honest form: the same field of the same member.
        let honest = change_by(&doc, &heads, message, |tx, _| {
            tx.put(&m, "notes", "new").expect("notes");
        });
        let mut all = doc.clone();
        all.apply_changes([ours.clone(), slash.clone(), over.clone(), honest.clone()])
            .expect("all");
        let dropped = [ours];
        for forged in [slash, over] {
            assert!(same_edits_as_kept_forms(&all, &dropped, &KeptForms::new(&[forged])).is_err());
        }
        assert!(same_edits_as_kept_forms(&all, &dropped, &KeptForms::new(&[honest])).is_ok());
    }

    fn base_of(doc: &Automerge, heads: &[ChangeHash]) -> Automerge {
        doc.fork_at(heads).expect("fork")
    }

    /// A roster-like document: `members.m` with notes and an address.
    fn base() -> Automerge {
        let mut doc = Automerge::new().with_actor(ActorId::random());
        let mut tx = doc.transaction();
        let members = tx
            .put_object(automerge::ROOT, "members", automerge::ObjType::Map)
            .expect("members");
        let m = tx
            .put_object(&members, "m", automerge::ObjType::Map)
            .expect("m");
        tx.put(&m, "notes", "old").expect("notes");
        tx.put(&m, "address", "old").expect("address");
        tx.commit();
        doc
    }

    /// An exporting phone, forked from `base`, that gave member `m` a
    /// migrant card in one change; the card.
    fn with_card(base: &Automerge) -> Result<(Automerge, ObjId), ClientError> {
        let mut exporter = base.fork().with_actor(ActorId::random());
        let m = member(&exporter);
        let mut tx = exporter.transaction();
        let card = tx.put_object(&m, "migrant", automerge::ObjType::Map)?;
        tx.put(&card, "workplace", "深圳")?;
        tx.commit();
        Ok((exporter, card))
    }

    fn member(doc: &Automerge) -> ObjId {
        let (_, members) = doc
            .get(automerge::ROOT, "members")
            .ok()
            .flatten()
            .expect("members");
        doc.get(&members, "m").ok().flatten().expect("m").1
    }

    /// One change on a fork of `doc` by a new actor, setting `fields`.
    fn edit(doc: &Automerge, fields: &[(&str, &str)]) -> automerge::Change {
        let mut fork = doc.fork().with_actor(ActorId::random());
        let m = member(&fork);
        let mut tx = fork.transaction();
        for (key, value) in fields {
            tx.put(&m, *key, *value).expect("put");
        }
        tx.commit();
        fork.get_last_local_change().expect("a change")
    }

    fn values(doc: &Automerge, key: &str) -> Vec<String> {
        let mut values: Vec<String> = doc
            .get_all(member(doc), key)
            .expect("values")
            .into_iter()
            .map(|(v, _)| v.as_str().unwrap_or_default().to_owned())
            .collect();
        values.sort();
        values
    }

    #[test]
    fn an_export_that_would_leave_a_record_invalid_is_refused() -> Result<(), ClientError> {
        use doorstep_protocol::schema::log::{Visit, VisitKind};
        use doorstep_protocol::schema::{RecordId, write_record};
        use doorstep_protocol::{Date, Fen};
        let (kind, mut base) = november_log();
        let id = RecordId::new_v7();
        let mut tx = base.transaction();
        let visit = Visit {
            date: "2026-11-05"
                .parse::<Date>()
                .map_err(|e| ClientError::invalid("date", e))?,
            member_id: RecordId::new_v7(),
            kind: VisitKind::Routine,
            visitors: ["志愿者".to_owned()].into(),
            aid_cash: Fen::from_yuan(50),
            aid_goods: Fen::ZERO,
            goods_description: None,
            notes: None,
            follow_up: None,
            recorded_by: None,
        };
        write_record(&mut tx, id, &visit)?;
        tx.commit();
        let record = |doc: &Automerge| -> ObjId {
            let (_, visits) = doc
                .get(automerge::ROOT, "visits")
                .ok()
                .flatten()
                .expect("visits");
            doc.get(&visits, id.to_string())
                .ok()
                .flatten()
                .expect("the visit")
                .1
        };
        let edit = |key: &str, value: &str| {
            let mut fork = base.fork().with_actor(ActorId::random());
            let obj = record(&fork);
            let mut tx = fork.transaction();
            tx.put(&obj, key, value).expect("put");
            tx.commit();
            fork.get_last_local_change().expect("a change")
        };

        // A member id no device would write: refused, and named.
        let refused = reauthor(
            base.clone(),
            vec![edit("member_id", "9d-a5fb")],
            ActorId::random(),
            kind,
        );
        match refused {
            Err(ClientError::Invalid { problem, .. }) => {
                assert!(problem.contains(&format!("visits/{id}")), "{problem}");
            }
            other => panic!("not refused: {other:?}"),
        }
        // A note is fine.
        let (made, records) = reauthor(
            base.clone(),
            vec![edit("notes", "复查")],
            ActorId::random(),
            kind,
        )?;
        assert_eq!((made.len(), records), (1, 1));
        Ok(())
    }

    #[test]
    fn an_export_that_writes_outside_the_records_is_refused() -> Result<(), ClientError> {
        use doorstep_protocol::schema::RecordId;
        let (kind, base) = november_log();
        let change = |edit: &dyn Fn(&mut automerge::transaction::Transaction<'_>)| {
            let mut fork = base.fork().with_actor(ActorId::random());
            let mut tx = fork.transaction();
            edit(&mut tx);
            tx.commit();
            fork.get_last_local_change().expect("a change")
        };
        let visits = |tx: &automerge::transaction::Transaction<'_>| -> ObjId {
            tx.get(automerge::ROOT, "visits")
                .ok()
                .flatten()
                .expect("visits")
                .1
        };
        let refused: Vec<(&str, automerge::Change)> = vec![
            (
                "the month rewritten",
                change(&|tx| tx.put(automerge::ROOT, "month", "2020-01").expect("put")),
            ),
            (
                "a collection deleted",
                change(&|tx| tx.delete(automerge::ROOT, "visits").expect("delete")),
            ),
            (
                "a collection replaced",
                change(&|tx| {
                    tx.put_object(automerge::ROOT, "visits", automerge::ObjType::Map)
                        .expect("put");
                }),
            ),
            (
                "a root key of its own",
                change(&|tx| {
                    tx.put_object(automerge::ROOT, "elsewhere", automerge::ObjType::Map)
                        .expect("put");
                }),
            ),
        ];
        for (what, exported) in refused {
            match reauthor(base.clone(), vec![exported], ActorId::random(), kind) {
                Err(ClientError::Invalid { problem, .. }) => {
                    assert!(problem.contains("outside"), "{what}: {problem}");
                }
                other => panic!("{what}: not refused: {other:?}"),
            }
        }
        // A record replaced by a new object over it, after it was made.
        let id = RecordId::new_v7().to_string();
        let made = change(&|tx| {
            let v = visits(tx);
            tx.put_object(&v, id.as_str(), automerge::ObjType::Map)
                .expect("put");
        });
        let mut holder = base.clone();
        holder.apply_changes([made])?;
        let mut fork = holder.fork().with_actor(ActorId::random());
        let mut tx = fork.transaction();
        let v = visits(&tx);
        tx.put_object(&v, id.as_str(), automerge::ObjType::Map)?;
        tx.commit();
        let replacing = fork.get_last_local_change().expect("a change");
        match reauthor(holder.clone(), vec![replacing], ActorId::random(), kind) {
            Err(ClientError::Invalid { problem, .. }) => {
                assert!(problem.contains("replaces"), "{problem}")
            }
            other => panic!("a replaced record: not refused: {other:?}"),
        }
        // The notes of corrections may be made where the history has none.
        let noted = change(&|tx| {
            let notes = tx
                .put_object(
                    automerge::ROOT,
                    crate::corrections::NOTES,
                    automerge::ObjType::Map,
                )
                .expect("put");
            tx.put_object(
                &notes,
                RecordId::new_v7().to_string(),
                automerge::ObjType::Map,
            )
            .expect("put");
        });
        let (made, _) = reauthor(base.clone(), vec![noted], ActorId::random(), kind)?;
        assert_eq!(made.len(), 1);
        Ok(())
    }

    /// From the second review: a file may hold branches parallel to each
    /// other (a phone's export carries its re-made copies of a third
    /// phone's edits too). Two of them each making the month's notes of
    /// corrections import as one map holding both notes; a file deleting
    /// more records in one change than a phone would, or a roster record at
    /// all, is refused.
    #[test]
    fn parallel_branches_of_a_file_import_and_mass_deletes_do_not() -> Result<(), ClientError> {
        use doorstep_protocol::schema::RecordId;
        let (kind, base) = november_log();
        let noting = || {
            let mut fork = base.fork().with_actor(ActorId::random());
            let mut tx = fork.transaction();
            let notes = tx
                .put_object(
                    automerge::ROOT,
                    crate::corrections::NOTES,
                    automerge::ObjType::Map,
                )
                .expect("notes");
            let note = tx
                .put_object(
                    &notes,
                    RecordId::new_v7().to_string(),
                    automerge::ObjType::Map,
                )
                .expect("note");
            tx.put(&note, "why", "核对").expect("why");
            tx.commit();
            fork.get_last_local_change().expect("a change")
        };
        let (made, _) = reauthor(
            base.clone(),
            vec![noting(), noting()],
            ActorId::random(),
            kind,
        )?;
        let mut importer = base.clone();
        importer.apply_changes(made)?;
        let maps = importer.get_all(automerge::ROOT, crate::corrections::NOTES)?;
        assert_eq!(maps.len(), 1, "one map of notes");
        assert_eq!(importer.keys(&maps[0].1).count(), 2, "holding both notes");

        // Two visits, then one change deleting both.
        let mut holder = base.fork().with_actor(ActorId::random());
        let mut tx = holder.transaction();
        let visits = tx.get(automerge::ROOT, "visits")?.expect("visits").1;
        let (a, b) = (
            RecordId::new_v7().to_string(),
            RecordId::new_v7().to_string(),
        );
        tx.put_object(&visits, a.as_str(), automerge::ObjType::Map)?;
        tx.put_object(&visits, b.as_str(), automerge::ObjType::Map)?;
        tx.commit();
        let mut deleter = holder.fork().with_actor(ActorId::random());
        let mut tx = deleter.transaction();
        tx.delete(&visits, a.as_str())?;
        tx.delete(&visits, b.as_str())?;
        tx.commit();
        let mass = deleter.get_last_local_change().expect("a change");
        match reauthor(holder.clone(), vec![mass], ActorId::random(), kind) {
            Err(ClientError::Invalid { problem, .. }) => {
                assert!(problem.contains("deletes"), "{problem}")
            }
            other => panic!("a mass delete: not refused: {other:?}"),
        }
        // One delete without the note a phone writes with it: refused; with
        // the note: imported. A note rewritten: refused.
        let delete_one = |noted: bool| {
            let mut fork = holder.fork().with_actor(ActorId::random());
            let mut tx = fork.transaction();
            tx.delete(&visits, a.as_str()).expect("delete");
            if noted {
                let notes = tx
                    .put_object(
                        automerge::ROOT,
                        crate::corrections::NOTES,
                        automerge::ObjType::Map,
                    )
                    .expect("notes");
                let note = tx
                    .put_object(
                        &notes,
                        RecordId::new_v7().to_string(),
                        automerge::ObjType::Map,
                    )
                    .expect("note");
                tx.put(&note, "record_id", a.as_str()).expect("record id");
                tx.put(&note, "action", "deleted").expect("action");
            }
            tx.commit();
            (fork.get_last_local_change().expect("a change"), fork)
        };
        match reauthor(
            holder.clone(),
            vec![delete_one(false).0],
            ActorId::random(),
            kind,
        ) {
            Err(ClientError::Invalid { problem, .. }) => {
                assert!(problem.contains("deletes"), "{problem}")
            }
            other => panic!("a delete without its note: not refused: {other:?}"),
        }
        let (noted, with_note) = delete_one(true);
        let (made, _) = reauthor(holder.clone(), vec![noted.clone()], ActorId::random(), kind)?;
        assert_eq!(made.len(), 1);
        let mut rewriter = with_note.fork().with_actor(ActorId::random());
        let mut tx = rewriter.transaction();
        let notes = tx
            .get(automerge::ROOT, crate::corrections::NOTES)?
            .expect("notes")
            .1;
        let note = tx.keys(&notes).next().expect("a note");
        let note = tx.get(&notes, note.as_str())?.expect("note").1;
        tx.put(&note, "why", "改写")?;
        tx.commit();
        let rewrite = rewriter.get_last_local_change().expect("a change");
        let mut held = holder.clone();
        held.apply_changes([noted])?;
        match reauthor(held, vec![rewrite], ActorId::random(), kind) {
            Err(ClientError::Invalid { problem, .. }) => {
                assert!(problem.contains("note"), "{problem}")
            }
            other => panic!("a note rewritten: not refused: {other:?}"),
        }
        Ok(())
    }

    /// Found by the convergence generator with imports: a device that
    /// imported an export and later received the originals themselves
    /// refused the next export ("id was not an object id"): its change was
    /// rebuilt on the stand-in, where the object it edits has another id.
    #[test]
    fn an_export_building_on_originals_this_device_now_holds_imports() -> Result<(), ClientError> {
        let base = base();
        let (mut exporter, card) = with_card(&base)?;
        let first = exporter.get_changes(&base.get_heads());
        let mut importer = base.clone();
        let (made, _) = reauthor(
            importer.clone(),
            first.clone(),
            ActorId::random(),
            DocumentKind::Roster,
        )?;
        importer.apply_changes(made)?;
        // The exporting phone synced after all: its original arrives too.
        importer.apply_changes(first)?;
        let mut tx = exporter.transaction();
        tx.put(&card, "workplace", "天津")?;
        tx.commit();
        let second = vec![exporter.get_last_local_change().expect("a change")];
        let (made, _) = reauthor(
            importer.clone(),
            second,
            ActorId::random(),
            DocumentKind::Roster,
        )?;
        assert_eq!(made.len(), 1);
        importer.apply_changes(made)?;
        let m = member(&importer);
        let cards = importer.get_all(&m, "migrant")?;
        assert!(
            cards.iter().any(|(_, card)| importer
                .get(card, "workplace")
                .ok()
                .flatten()
                .and_then(|(v, _)| v.as_str().map(str::to_owned))
                == Some("天津".to_owned())),
            "the edit landed on the original's card"
        );
        Ok(())
    }

    #[test]
    fn a_reauthored_change_is_concurrent_with_what_the_original_was() -> Result<(), ClientError> {
        let base = base();
        let exported = edit(&base, &[("notes", "B")]);
        let third = edit(&base, &[("notes", "C"), ("address", "C")]);

        // The importer already holds the third device's edit: the field both
        // set is a conflict, the other field keeps the third device's value.
        let mut importer = base.clone();
        importer.apply_changes([third.clone()])?;
        let (made, records) = reauthor(
            importer.clone(),
            vec![exported.clone()],
            ActorId::random(),
            DocumentKind::Roster,
        )?;
        assert_eq!((made.len(), records), (1, 1));
        importer.apply_changes(made)?;
        assert_eq!(values(&importer, "notes"), ["B", "C"]);
        assert_eq!(values(&importer, "address"), ["C"]);
        // Importing the same change again enters nothing.
        let (again, _) = reauthor(
            importer.clone(),
            vec![exported.clone()],
            ActorId::random(),
            DocumentKind::Roster,
        )?;
        assert!(again.is_empty());

        // The importer without it: the same once the third edit arrives.
        let mut importer = base.clone();
        let (made, _) = reauthor(
            importer.clone(),
            vec![exported],
            ActorId::random(),
            DocumentKind::Roster,
        )?;
        importer.apply_changes(made)?;
        importer.apply_changes([third])?;
        assert_eq!(values(&importer, "notes"), ["B", "C"]);
        assert_eq!(values(&importer, "address"), ["C"]);
        Ok(())
    }

    #[test]
    fn a_chain_of_exported_changes_becomes_one_chain_and_new_objects_are_mapped()
    -> Result<(), ClientError> {
        let base = base();
        let (mut exporter, card) = with_card(&base)?;
        let m = member(&exporter);
        let mut tx = exporter.transaction();
        tx.put(&card, "phone", "123")?;
        tx.delete(&m, "address")?;
        tx.commit();
        let exported = exporter.get_changes(&base.get_heads());
        assert_eq!(exported.len(), 2);

        let mut importer = base.clone();
        let actor = ActorId::random();
        let (made, _) = reauthor(
            importer.clone(),
            exported,
            actor.clone(),
            DocumentKind::Roster,
        )?;
        assert_eq!(made.len(), 2);
        assert!(made.iter().all(|c| *c.actor_id() == actor));
        assert!(made[1].deps().contains(&made[0].hash()));
        importer.apply_changes(made)?;
        let m = member(&importer);
        let (_, card) = importer.get(&m, "migrant")?.expect("the card");
        assert_eq!(
            importer
                .get(&card, "workplace")?
                .and_then(|(v, _)| v.as_str().map(str::to_owned)),
            Some("深圳".to_owned())
        );
        assert_eq!(
            importer
                .get(&card, "phone")?
                .and_then(|(v, _)| v.as_str().map(str::to_owned)),
            Some("123".to_owned())
        );
        assert!(importer.get(&m, "address")?.is_none());
        Ok(())
    }

    #[test]
    fn a_later_export_editing_an_object_an_earlier_import_created_imports()
    -> Result<(), ClientError> {
        let base = base();
        let (mut exporter, card) = with_card(&base)?;
        let first = exporter.get_changes(&base.get_heads());
        let mut tx = exporter.transaction();
        tx.put(&card, "workplace", "天津")?;
        tx.commit();
        let second = exporter.get_changes(&base.get_heads());
        assert_eq!(second.len(), 2);

        let mut importer = base.clone();
        let (made, _) = reauthor(
            importer.clone(),
            first,
            ActorId::random(),
            DocumentKind::Roster,
        )?;
        importer.apply_changes(made)?;
        let (made, _) = reauthor(
            importer.clone(),
            second,
            ActorId::random(),
            DocumentKind::Roster,
        )?;
        assert_eq!(made.len(), 1, "only the new change is entered");
        importer.apply_changes(made)?;
        let m = member(&importer);
        let (_, card) = importer.get(&m, "migrant")?.expect("the card");
        let workplaces: Vec<String> = importer
            .get_all(&card, "workplace")?
            .into_iter()
            .map(|(v, _)| v.as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(workplaces, ["天津"]);
        Ok(())
    }
}
