//! The branch's documents on this device, in memory and on disk.
//!
//! Every change, made here or received from the server, is appended to the
//! local store before the call that produced it returns; a failed append
//! drops the change from memory too (the document is reloaded), so memory
//! never holds what the disk does not (an edit cancelled between the two is
//! purged before anything reads or sends it). That also makes any document
//! safe to evict: memory holds `max_loaded_months` monthly logs (and the
//! roster), least recently used out first, however long the history; only
//! documents mid-exchange with the server are pinned past that, and no more
//! of them start an exchange than the bound allows.

use std::collections::{HashMap, HashSet};

use automerge::transaction::{CommitOptions, Transaction};
use automerge::{ActorId, Automerge, ChangeHash};
use doorstep_protocol::schema::{DocumentKind, genesis};
use doorstep_protocol::session::DocSession;
use doorstep_protocol::{DocumentId, PeerId, TenantId};

use tokio::sync::watch;

use crate::error::ClientError;
use crate::store::LocalStore;

/// Runs Automerge work (a load, applying a sync message) so that it does
/// not hold up the runtime's other tasks: on a multi-threaded runtime (the
/// FFI's) the worker hands its tasks to another first. A current-thread
/// runtime has no other worker to hand them to, so it runs inline there.
pub(crate) fn off_async<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The key of the server's sync state inside each session.
pub(crate) fn server_peer() -> PeerId {
    PeerId::new("server").expect("a constant peer id is valid")
}

#[derive(Debug)]
pub(crate) struct Replica {
    pub session: DocSession,
    pub kind: DocumentKind,
    /// Heads the server is known to have (the acknowledgement).
    pub acked: Vec<ChangeHash>,
    snapshot_bytes: u64,
    incremental_bytes: u64,
    /// The keys of the stored chunks this replica holds: what a local
    /// compaction may replace.
    chunk_keys: Vec<String>,
    /// For the LRU: the value of `Replicas::clock` at the last use.
    last_used: u64,
    /// The sync state and acknowledged heads as last saved: an unchanged
    /// state is not written again (evictions would write one per month).
    saved: Option<(Vec<u8>, Vec<ChangeHash>)>,
}

impl Replica {
    pub fn doc(&self) -> &Automerge {
        self.session.document()
    }
}

#[derive(Debug)]
pub(crate) struct Replicas {
    store: LocalStore,
    pub branch: TenantId,
    /// This open's actor (see `client::session_actor`).
    pub actor: ActorId,
    /// The prefix of all of this device's actors.
    pub actor_base: Vec<u8>,
    docs: HashMap<DocumentId, Replica>,
    /// Documents with a change committed in memory whose persist has not
    /// finished (set across the await, so a cancelled edit is noticed).
    unpersisted: HashSet<DocumentId>,
    /// Set when a purge dropped such a document: its append may still be
    /// running on a store connection, and no document is read from disk
    /// until it has ended.
    unsettled: bool,
    /// Bumped after every persisted change, for observers.
    changed: watch::Sender<u64>,
    max_loaded_months: usize,
    clock: u64,
    /// Documents whose load failed (a chunk Automerge refuses): they are
    /// skipped, not retried on every call, until the app reopens.
    unreadable: HashMap<DocumentId, String>,
    /// Documents in the middle of an exchange with the server: never
    /// evicted, since their in-flight sync state lives only in memory.
    pinned: HashSet<DocumentId>,
    /// Every log is in the record index: set once `ensure_indexed` found
    /// none left (new logs are stored indexed), so reads skip the check.
    indexed: bool,
}

/// Meta keys of [`Replicas::server_epoch_seen`].
const SERVER_EPOCH: &str = "server_epoch";
const RESYNC_EVERYTHING: &str = "resync_everything";

impl Replicas {
    pub fn new(
        store: LocalStore,
        branch: TenantId,
        actor: ActorId,
        actor_base: Vec<u8>,
        changed: watch::Sender<u64>,
        max_loaded_months: usize,
    ) -> Self {
        Replicas {
            store,
            branch,
            actor,
            actor_base,
            docs: HashMap::new(),
            unpersisted: HashSet::new(),
            unsettled: false,
            changed,
            max_loaded_months: max_loaded_months.max(1),
            clock: 0,
            unreadable: HashMap::new(),
            pinned: HashSet::new(),
            indexed: false,
        }
    }

    /// Drops a document from memory (it reloads from disk when next used),
    /// and its pin with it: a pin on a document not in memory would hold a
    /// slot for good.
    fn forget(&mut self, id: DocumentId) {
        self.docs.remove(&id);
        self.pinned.remove(&id);
    }

    /// Unpins everything: a new connection starts every exchange afresh.
    pub fn clear_pins(&mut self) {
        self.pinned.clear();
    }

    /// Drops what an edit cancelled between its commit in memory and its
    /// append holds beyond the disk, before anything reads or sends it.
    pub fn purge_unpersisted(&mut self) {
        for id in std::mem::take(&mut self.unpersisted) {
            self.forget(id);
            self.unsettled = true;
        }
    }

    /// Keeps a document in memory until [`Replicas::unpin`].
    pub fn pin(&mut self, id: DocumentId) {
        if self.docs.contains_key(&id) {
            self.pinned.insert(id);
        }
    }

    pub fn unpin(&mut self, id: DocumentId) {
        self.pinned.remove(&id);
    }

    /// Evicts down to the memory bound, now that pins may have gone.
    pub async fn trim(&mut self) -> Result<(), ClientError> {
        self.evict(None).await
    }

    /// Whether another document may start an exchange without going over
    /// the memory bound.
    pub fn can_pin_another(&self) -> bool {
        self.pinned.len() < self.max_loaded_months
    }

    /// Documents in memory now (the roster and at most `max_loaded_months`
    /// monthly logs).
    pub fn loaded(&self) -> Vec<DocumentId> {
        self.docs.keys().copied().collect()
    }

    /// Evicts the least recently used monthly logs beyond the limit, saving
    /// their sync state first (their changes are on disk already).
    async fn evict(&mut self, keep: Option<DocumentId>) -> Result<(), ClientError> {
        let keep = keep.unwrap_or(DocumentId::roster(self.branch));
        loop {
            let months: Vec<(u64, DocumentId)> = self
                .docs
                .iter()
                .filter(|(id, r)| **id != keep && matches!(r.kind, DocumentKind::MonthlyLog(_)))
                .filter(|(id, _)| !self.pinned.contains(*id))
                .map(|(id, r)| (r.last_used, *id))
                .collect();
            let loaded = months.len()
                + usize::from(
                    self.docs
                        .get(&keep)
                        .is_some_and(|r| matches!(r.kind, DocumentKind::MonthlyLog(_))),
                );
            if loaded <= self.max_loaded_months {
                return Ok(());
            }
            let Some((_, oldest)) = months.into_iter().min() else {
                return Ok(());
            };
            self.save_sync_state(oldest).await?;
            self.forget(oldest);
        }
    }

    /// The document, loaded from disk or, the first time, created from its
    /// deterministic genesis (so a new month opens offline).
    pub async fn get(
        &mut self,
        id: DocumentId,
        kind: DocumentKind,
    ) -> Result<&mut Replica, ClientError> {
        // An edit's future dropped between commit and persist: what memory
        // holds beyond the disk must go.
        self.purge_unpersisted();
        if !self.docs.contains_key(&id) {
            // And the disk is read only once that edit's write has ended
            // (`LocalStore::settle_writes`), whichever path purged it.
            if self.unsettled {
                self.store.settle_writes().await?;
                self.unsettled = false;
            }
            if let Some(why) = self.unreadable.get(&id) {
                return Err(ClientError::Storage(format!("document {id}: {why}")));
            }
            let mut chunks = self.store.chunks(id).await?;
            if chunks.chunks.is_empty() {
                let doc = genesis(self.branch, kind);
                let bytes = doc.save();
                self.store.insert_document(id, kind, &bytes).await?;
                chunks = self.store.chunks(id).await?;
            }
            let mut doc = Automerge::new();
            let loaded = off_async(|| {
                chunks
                    .chunks
                    .iter()
                    .try_for_each(|chunk| doc.load_incremental(chunk).map(|_| ()))
            });
            if let Err(e) = loaded {
                self.unreadable.insert(id, e.to_string());
                return Err(e.into());
            }
            let doc = doc.with_actor(self.actor.clone());
            let mut session = DocSession::new(doc, 0);
            let (state, acked) = self.store.sync_state(id).await?;
            if session
                .add_peer(server_peer(), state.as_deref(), 0)
                .is_err()
            {
                // A corrupt saved state only costs a full sync.
                session
                    .add_peer(server_peer(), None, 0)
                    .map_err(|e| ClientError::Storage(e.to_string()))?;
            }
            self.docs.insert(
                id,
                Replica {
                    session,
                    kind,
                    acked,
                    snapshot_bytes: chunks.snapshot_bytes,
                    incremental_bytes: chunks.incremental_bytes,
                    chunk_keys: chunks.keys,
                    last_used: 0,
                    saved: None,
                },
            );
            self.evict(Some(id)).await?;
        }
        self.clock += 1;
        let clock = self.clock;
        let replica = self
            .docs
            .get_mut(&id)
            .ok_or_else(|| ClientError::Storage("document vanished".into()))?;
        replica.last_used = clock;
        Ok(replica)
    }

    /// A document if it exists on this device (no genesis is created).
    pub async fn existing(&mut self, id: DocumentId) -> Result<Option<&mut Replica>, ClientError> {
        if let Some(kind) = self.docs.get(&id).map(|r| r.kind) {
            return self.get(id, kind).await.map(Some);
        }
        let Some(kind) = self
            .store
            .documents()
            .await?
            .into_iter()
            .find(|(d, _)| *d == id)
            .map(|(_, k)| k)
        else {
            return Ok(None);
        };
        self.get(id, kind).await.map(Some)
    }

    /// Notes the epoch (storage id) the server announced; `true` when it
    /// is not the one this device saw before, that is, when the server's
    /// data was restored from a backup: every document is then to be
    /// offered again, until [`Replicas::resync_done`]. The first epoch a
    /// device sees counts as new too (once): a server restored before this
    /// device's app learnt to look must still get what the device holds.
    /// Kept in the store, so a re-sync cut short resumes after an app
    /// restart.
    pub async fn server_epoch_seen(&mut self, epoch: &str) -> Result<bool, ClientError> {
        if self.store.meta(SERVER_EPOCH).await?.as_deref() == Some(epoch) {
            return Ok(false);
        }
        self.store
            .set_meta(&[(SERVER_EPOCH, epoch), (RESYNC_EVERYTHING, "1")])
            .await?;
        Ok(true)
    }

    /// Whether every document is to be offered (see
    /// [`Replicas::server_epoch_seen`]).
    pub async fn resync_everything(&self) -> Result<bool, ClientError> {
        Ok(self.store.meta(RESYNC_EVERYTHING).await?.as_deref() == Some("1"))
    }

    /// Every document was offered and the server has them all.
    pub async fn resync_done(&self) -> Result<(), ClientError> {
        self.store.set_meta(&[(RESYNC_EVERYTHING, "0")]).await
    }

    /// Every document on the device (not loaded: load each with
    /// [`Replicas::get`] as it is needed, so memory stays bounded).
    pub async fn all(&mut self) -> Result<Vec<(DocumentId, DocumentKind)>, ClientError> {
        self.store.documents().await
    }

    /// Runs `f` in one transaction and makes its change durable before
    /// returning. An error from `f` rolls the transaction back.
    pub async fn edit<R>(
        &mut self,
        id: DocumentId,
        kind: DocumentKind,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        let replica = self.get(id, kind).await?;
        let before = replica.session.heads();
        let doc = replica.session.document_mut();
        let mut tx = doc.transaction();
        let out = match f(&mut tx) {
            Ok(out) => out,
            Err(e) => {
                tx.rollback();
                return Err(e);
            }
        };
        // Automerge's convention: seconds since the epoch. Conflicts show it.
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let _ = tx.commit_with(CommitOptions::default().with_time(now));
        self.unpersisted.insert(id);
        self.persist_since(id, &before, true).await?;
        self.unpersisted.remove(&id);
        Ok(out)
    }

    /// Applies changes this device made elsewhere than in [`Replicas::edit`]
    /// (an import's re-authored changes) and makes them durable as local
    /// edits before returning.
    pub async fn apply_local(
        &mut self,
        id: DocumentId,
        kind: DocumentKind,
        changes: Vec<automerge::Change>,
    ) -> Result<(), ClientError> {
        let replica = self.get(id, kind).await?;
        let before = replica.session.heads();
        let applied = replica.session.document_mut().apply_changes(changes);
        if let Err(e) = applied {
            // It may have applied in part: reload from disk next time.
            self.forget(id);
            return Err(e.into());
        }
        // No await since the apply: a cancelled import is noticed from here.
        self.unpersisted.insert(id);
        self.persist_since(id, &before, true).await?;
        self.unpersisted.remove(&id);
        Ok(())
    }

    /// Applies a sync message from the server, persisting what is new.
    /// Returns the number of new changes.
    pub async fn receive(&mut self, id: DocumentId, data: &[u8]) -> Result<usize, ClientError> {
        let replica = self
            .docs
            .get_mut(&id)
            .ok_or_else(|| ClientError::Storage(format!("document {id} is not open")))?;
        let before = replica.session.heads();
        let received = match off_async(|| replica.session.receive(&server_peer(), data, 0)) {
            Ok(received) => received,
            Err(e) => {
                // It may have applied in part: reload from disk next time.
                self.forget(id);
                return Err(ClientError::Network(format!(
                    "bad sync message from the server: {e}"
                )));
            }
        };
        let changes: Vec<(ChangeHash, Vec<u8>)> = received
            .new_changes
            .into_iter()
            .map(|c| (c.hash, c.bytes))
            .collect();
        let count = changes.len();
        if count > 0 {
            self.append(id, &before, changes, false).await?;
        }
        Ok(count)
    }

    pub fn replica(&mut self, id: DocumentId) -> Option<&mut Replica> {
        self.docs.get_mut(&id)
    }

    pub fn peek(&self, id: DocumentId) -> Option<&Replica> {
        self.docs.get(&id)
    }

    async fn persist_since(
        &mut self,
        id: DocumentId,
        before: &[ChangeHash],
        local: bool,
    ) -> Result<(), ClientError> {
        let replica = self
            .docs
            .get_mut(&id)
            .ok_or_else(|| ClientError::Storage("document vanished".into()))?;
        let changes: Vec<(ChangeHash, Vec<u8>)> = replica
            .session
            .document()
            .get_changes(before)
            .into_iter()
            .map(|mut c| (c.hash(), c.bytes().into_owned()))
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        self.append(id, before, changes, local).await
    }

    /// Appends changes the document in memory holds since `before`, with
    /// the record index rows they change, in one transaction.
    async fn append(
        &mut self,
        id: DocumentId,
        before: &[ChangeHash],
        changes: Vec<(ChangeHash, Vec<u8>)>,
        local: bool,
    ) -> Result<(), ClientError> {
        let index = self.docs.get(&id).and_then(|r| match r.kind {
            DocumentKind::MonthlyLog(month) => {
                Some(off_async(|| crate::index::delta(r.doc(), month, before)))
            }
            DocumentKind::Roster => None,
        });
        if let Err(e) = self.store.append(id, &changes, local, index.as_ref()).await {
            // Memory must not hold what the disk does not: forget the
            // document; the next access reloads it from the store.
            self.forget(id);
            return Err(e);
        }
        // On disk now: observers may recompute (send_modify notifies even
        // with no receiver, unlike send).
        self.changed.send_modify(|revision| *revision += 1);
        let Some(replica) = self.docs.get_mut(&id) else {
            return Ok(());
        };
        replica
            .chunk_keys
            .extend(changes.iter().map(|(hash, _)| hash.to_string()));
        replica.incremental_bytes += changes.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        if replica.incremental_bytes >= replica.snapshot_bytes.max(4096) {
            // The changes are already on disk: a failed compaction only costs
            // space, and must not report the edit as failed (it would be
            // entered again, twice counted).
            let snapshot = replica.session.document().save();
            // Keyed by content, so compacting the same state twice is a no-op.
            let key = format!(
                "snapshot:{}",
                replica
                    .session
                    .heads()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let covered: Vec<String> = replica
                .chunk_keys
                .iter()
                .filter(|k| **k != key)
                .cloned()
                .collect();
            match self.store.compact(id, &key, &snapshot, &covered).await {
                Ok(()) => {
                    if let Ok(fresh) = Automerge::load(&snapshot) {
                        replica
                            .session
                            .replace_document(fresh.with_actor(self.actor.clone()));
                    }
                    replica.snapshot_bytes = snapshot.len() as u64;
                    replica.incremental_bytes = 0;
                    replica.chunk_keys = vec![key];
                    // The covered chunks' pages are free now: give them
                    // back, and fold the log into the database.
                    self.store.tidy_soon();
                }
                Err(e) => tracing::warn!(document = %id, error = %e, "local compaction failed"),
            }
        }
        Ok(())
    }

    /// Replaces a loaded document with `doc` on disk (every chunk, in one
    /// transaction) and in memory: for a re-base, which drops changes.
    pub async fn replace(&mut self, id: DocumentId, doc: Automerge) -> Result<(), ClientError> {
        let snapshot = doc.save();
        let key = format!(
            "snapshot:{}",
            doc.get_heads()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let replica = self
            .docs
            .get_mut(&id)
            .ok_or_else(|| ClientError::Storage("document vanished".into()))?;
        // The record index of a log is made again with it: the dropped
        // changes may have made, moved or deleted records.
        let index = match replica.kind {
            DocumentKind::MonthlyLog(month) => Some(off_async(|| crate::index::full(&doc, month))),
            DocumentKind::Roster => None,
        };
        self.store
            .replace_document(id, &key, &snapshot, index.as_ref())
            .await?;
        let actor = self.actor.clone();
        let replica = self
            .docs
            .get_mut(&id)
            .ok_or_else(|| ClientError::Storage("document vanished".into()))?;
        replica.session.replace_document(doc.with_actor(actor));
        replica.snapshot_bytes = snapshot.len() as u64;
        replica.incremental_bytes = 0;
        replica.chunk_keys = vec![key];
        replica.saved = None;
        self.changed.send_modify(|revision| *revision += 1);
        Ok(())
    }

    /// Starts a new connection's sync from the persisted part of the state
    /// (the shared heads), as Automerge requires after a reconnect: what the
    /// server said or had in flight on the last connection is stale.
    pub fn reconnect(&mut self, id: DocumentId) -> Result<(), ClientError> {
        let Some(replica) = self.docs.get_mut(&id) else {
            return Ok(());
        };
        let peer = server_peer();
        let saved = replica.session.remove_peer(&peer);
        if replica
            .session
            .add_peer(peer.clone(), saved.as_deref(), 0)
            .is_err()
        {
            replica
                .session
                .add_peer(peer, None, 0)
                .map_err(|e| ClientError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    /// Saves the server sync state and the acknowledged heads of a document.
    pub async fn save_sync_state(&mut self, id: DocumentId) -> Result<(), ClientError> {
        let Some(replica) = self.docs.get_mut(&id) else {
            return Ok(());
        };
        let peer = server_peer();
        let heads = replica.session.heads();
        if replica.session.peer_covers(&peer, &heads) {
            replica.acked = heads;
        }
        if let Some(state) = replica.session.encoded_state(&peer) {
            let acked = replica.acked.clone();
            if replica.saved.as_ref() == Some(&(state.clone(), acked.clone())) {
                return Ok(());
            }
            let all_acked = self.pending_in(id) == 0;
            self.store
                .save_sync_state(id, &state, &acked, all_acked)
                .await?;
            if let Some(replica) = self.docs.get_mut(&id) {
                replica.saved = Some((state, acked));
            }
        }
        Ok(())
    }

    /// Indexes the records of every log stored before the record index
    /// existed (once per store: afterwards each change keeps it current).
    pub async fn ensure_indexed(&mut self) -> Result<(), ClientError> {
        if self.indexed {
            return Ok(());
        }
        let mut complete = true;
        for id in self.store.unindexed_logs().await? {
            let update = match self.existing(id).await {
                Ok(Some(replica)) => match replica.kind {
                    DocumentKind::MonthlyLog(month) => {
                        off_async(|| crate::index::full(replica.doc(), month))
                    }
                    DocumentKind::Roster => continue,
                },
                Ok(None) => continue,
                // One month that does not load must not hide the others; it
                // is tried again next time.
                Err(e) => {
                    tracing::warn!(document = %id, error = %e, "not indexing a month that does not load");
                    complete = false;
                    continue;
                }
            };
            self.store.write_index(id, &update).await?;
        }
        self.indexed = complete;
        Ok(())
    }

    /// Local changes (by any of this device's actors, this open's or an
    /// earlier one's) in one loaded document the server has not
    /// acknowledged.
    pub fn pending_in(&self, id: DocumentId) -> usize {
        self.docs.get(&id).map_or(0, |r| {
            r.doc()
                .get_changes_meta(&r.acked)
                .into_iter()
                .filter(|m| crate::client::is_own(&self.actor_base, &m.actor))
                .count()
        })
    }

    /// Documents holding local changes the server has not acknowledged.
    pub async fn unacked(&self) -> Result<Vec<DocumentId>, ClientError> {
        self.store.unacked_documents().await
    }

    /// Local changes the server has not acknowledged, on the whole device:
    /// only documents marked unacked are loaded.
    pub async fn pending(&mut self) -> Result<usize, ClientError> {
        let mut pending = 0;
        for id in self.unacked().await? {
            if self.existing(id).await?.is_some() {
                pending += self.pending_in(id);
            }
        }
        Ok(pending)
    }
}
