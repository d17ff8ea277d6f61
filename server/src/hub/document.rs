//! The driver of one live document: a task that owns its [`Keeper`].
//!
//! Every connection syncing the document talks to this task through a
//! bounded mailbox, so a document never needs a lock and the hub holds none
//! across I/O. The task does the keeper's I/O in order (load, commit,
//! compaction, sync states) and runs every piece of Automerge work (load,
//! apply, generate, save, the projection's reads) on the blocking pool, so a
//! large document costs its own devices time, never another document's.
//!
//! A panic in that work is caught: the connection that caused it is
//! refused, and the document is reloaded from the store, which never saw
//! anything unconfirmed.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use doorstep_protocol::keeper::{Batch, Keeper, Outgoing, Step, verify_snapshot};
use doorstep_protocol::{DocumentId, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::outbox::{Outbound, Outbox};
use super::{Connection, Shared, SyncRefusal};
use crate::metrics::StorageWrite;
use crate::projection::{self, Scope, Source};
use crate::store::keeping::snapshot_key;
use crate::store::{Commit, CommitError, StoreError, now_ms};

/// What a document's mailbox carries.
#[derive(Debug)]
pub(super) enum Command {
    Sync {
        connection: Arc<Connection>,
        data: Vec<u8>,
        done: oneshot::Sender<Outcome>,
    },
    /// A connection closed: save its sync state.
    Leave { key: PeerId },
    /// Relay to every peer but `from`.
    Ephemeral { from: PeerId, message: Outbound },
    /// Save every sync state and stop.
    Shutdown { done: oneshot::Sender<()> },
    /// Stop without saving anything: the database was restored under the
    /// document, which lacks what the restore added, and its peers' sync
    /// states describe the data before.
    Forget { done: oneshot::Sender<()> },
    /// The document's last commit is number `seq` (another server node
    /// announced it, or the slow poll read it): what this task lacks of it
    /// is read and passed on. `figures_lag`: the poll read figures behind
    /// that commit, which the task levels if nothing newer is on its way.
    Stored { seq: i64, figures_lag: bool },
}

/// The answer to a [`Command::Sync`].
#[derive(Debug)]
pub(super) enum Outcome {
    Done(Result<(), SyncRefusal>),
    /// The task was retiring; send the data to the document's new task.
    Retry(Vec<u8>),
}

/// Work on the blocking pool panicked.
#[derive(Debug)]
struct Panicked;

struct Subscriber {
    outbox: Arc<Outbox>,
    connection: Arc<Connection>,
    /// Where this peer's sync state is saved, if it has stable storage.
    state_key: Option<String>,
}

struct DocumentTask {
    id: DocumentId,
    generation: u64,
    shared: Arc<Shared>,
    /// `None` only while the keeper is on the blocking pool.
    keeper: Option<Keeper>,
    source: Option<Source>,
    subscribers: HashMap<PeerId, Subscriber>,
    /// Keys of the stored chunks the live document holds: exactly what a
    /// snapshot of it covers, so exactly what compaction may delete.
    chunk_keys: Vec<String>,
    snapshot_bytes: u64,
    /// The last commit went in without its projection: the next one
    /// projects the whole document.
    projection_lagging: bool,
    /// The document's commit number this live document holds every stored
    /// change up to; other nodes' commits after it are read from the store.
    seen_seq: i64,
}

/// Runs a document until it is idle without peers, or the hub shuts down.
pub(super) async fn run(
    id: DocumentId,
    generation: u64,
    shared: Arc<Shared>,
    mut mailbox: mpsc::Receiver<Command>,
) {
    let mut task = match DocumentTask::open(id, generation, shared.clone()).await {
        Ok(task) => task,
        Err(e) => {
            tracing::error!(document = %id, error = %e, "could not load a document");
            shared.retire(id, generation);
            mailbox.close();
            while let Ok(command) = mailbox.try_recv() {
                refuse_while_unloaded(command, &e);
            }
            return;
        }
    };
    let idle = shared.config.document_idle;
    // Idle counts from the last command a peer caused: the slow poll's
    // looks for other nodes' changes must not keep a document in memory.
    let mut touched = tokio::time::Instant::now();
    loop {
        let command = match tokio::time::timeout_at(touched + idle, mailbox.recv()).await {
            Ok(Some(command)) => command,
            Ok(None) => break,
            Err(_elapsed) => {
                if task.subscribers.is_empty() && shared.retire_if_idle(id, generation, &mailbox) {
                    tracing::debug!(document = %id, "evicted idle document");
                    break;
                }
                touched = tokio::time::Instant::now();
                continue;
            }
        };
        if !matches!(command, Command::Stored { .. }) {
            touched = tokio::time::Instant::now();
        }
        match command {
            Command::Shutdown { done } => {
                task.save_all_states().await;
                let _ = done.send(());
                shared.retire(id, generation);
                break;
            }
            Command::Forget { done } => {
                shared.retire(id, generation);
                let _ = done.send(());
                break;
            }
            command => {
                if !task.handle(command).await {
                    break;
                }
            }
        }
    }
    // Whatever raced in before the mailbox closed goes to the next task.
    mailbox.close();
    while let Ok(command) = mailbox.try_recv() {
        match command {
            Command::Sync { data, done, .. } => {
                let _ = done.send(Outcome::Retry(data));
            }
            Command::Shutdown { done } | Command::Forget { done } => {
                let _ = done.send(());
            }
            Command::Leave { .. } | Command::Ephemeral { .. } | Command::Stored { .. } => {}
        }
    }
}

fn refuse_while_unloaded(command: Command, error: &StoreError) {
    match command {
        Command::Sync { done, .. } => {
            let _ = done.send(Outcome::Done(Err(SyncRefusal::Storage(
                StoreError::Invalid(format!("the document could not be loaded: {error}")),
            ))));
        }
        Command::Shutdown { done } | Command::Forget { done } => {
            let _ = done.send(());
        }
        Command::Leave { .. } | Command::Ephemeral { .. } | Command::Stored { .. } => {}
    }
}

/// Runs `f` on the blocking pool; a panic comes back as [`Panicked`].
async fn on_pool<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Panicked> {
    tokio::task::spawn_blocking(move || std::panic::catch_unwind(AssertUnwindSafe(f)))
        .await
        .map_err(|_| Panicked)?
        .map_err(|_| Panicked)
}

impl DocumentTask {
    async fn open(
        id: DocumentId,
        generation: u64,
        shared: Arc<Shared>,
    ) -> Result<DocumentTask, StoreError> {
        let row = shared.store.document(id).await?;
        // A document whose rows lag its stored heads (a restore added
        // changes, or a projection failed) projects itself whole at its
        // first commit.
        let projection_lagging = row.as_ref().is_some_and(|row| row.projection_lags());
        let source = row.and_then(|row| {
            Some(Source {
                document: id,
                branch: row.branch_id,
                kind: row.kind()?,
            })
        });
        let stored = shared.documents.load(id).await?;
        let limits = shared.config.limits.document;
        let (doc, stored) = on_pool(move || stored.load(id).map(|doc| (doc, stored)))
            .await
            .map_err(|Panicked| StoreError::Corrupt(format!("loading document {id} panicked")))??;
        let mut keeper = Keeper::new(doc, stored.stored_bytes(), limits, now_ms() as u64);
        keeper.set_device_actors(stored.device_actors.clone());
        Ok(DocumentTask {
            id,
            generation,
            shared,
            keeper: Some(keeper),
            source,
            subscribers: HashMap::new(),
            chunk_keys: stored.keys,
            snapshot_bytes: stored.snapshot_bytes,
            projection_lagging,
            seen_seq: stored.seq,
        })
    }

    /// Handles one command; `false` ends the task (its keeper was lost).
    async fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Sync {
                connection,
                data,
                done,
            } => {
                let result = self.sync(&connection, data).await;
                if result.is_err() {
                    self.subscribers.remove(&connection.key);
                }
                let _ = done.send(Outcome::Done(result));
            }
            Command::Leave { key } => self.leave(&key).await,
            Command::Ephemeral { from, message } => self.relay(&from, message),
            Command::Stored { seq, figures_lag } => {
                if seq > self.seen_seq {
                    self.catch_up().await;
                } else if figures_lag {
                    self.project_if_lagging().await;
                }
            }
            Command::Shutdown { done } | Command::Forget { done } => {
                let _ = done.send(());
            }
        }
        self.keeper.is_some()
    }

    /// Moves the keeper to the blocking pool for `f` and back. A panic
    /// leaves the keeper needing a reload, which the caller does.
    async fn with_keeper<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Keeper) -> T + Send + 'static,
    ) -> Result<T, Panicked> {
        let mut keeper = self.keeper.take().ok_or(Panicked)?;
        let joined = tokio::task::spawn_blocking(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut keeper)));
            (keeper, result)
        })
        .await;
        match joined {
            Ok((keeper, result)) => {
                self.keeper = Some(keeper);
                result.map_err(|_| Panicked)
            }
            // The runtime is going down; the keeper went with the closure.
            Err(_) => Err(Panicked),
        }
    }

    async fn sync(
        &mut self,
        connection: &Arc<Connection>,
        data: Vec<u8>,
    ) -> Result<(), SyncRefusal> {
        let key = connection.key.clone();
        if !self.subscribers.contains_key(&key) {
            self.join(connection).await;
        }
        let now = now_ms() as u64;
        let from = key.clone();
        let step = match self
            .with_keeper(move |k| k.receive(&from, &data, now))
            .await
        {
            Ok(step) => step,
            Err(Panicked) => return Err(self.recover_from_panic(&key).await),
        };
        match step {
            Ok(Step::Reply(outgoing)) => {
                self.deliver(outgoing);
                Ok(())
            }
            Ok(Step::Persist(batch)) => self.persist(connection, batch).await,
            Err(refusal) => {
                tracing::warn!(document = %self.id, device = %connection.device.id, %refusal, "refused a sync message");
                if self.keeper.as_ref().is_some_and(Keeper::needs_reload) {
                    self.reload().await;
                }
                Err(SyncRefusal::Refused(refusal))
            }
        }
    }

    async fn join(&mut self, connection: &Arc<Connection>) {
        let state_key = connection
            .storage_id
            .as_deref()
            .map(|s| super::sync_state_key(connection.device.id, s));
        let saved = match &state_key {
            Some(key) => match self.shared.documents.load_sync_state(self.id, key).await {
                Ok(saved) => saved,
                Err(e) => {
                    // A lost sync state only costs a longer sync.
                    tracing::warn!(document = %self.id, error = %e, "could not load a sync state");
                    None
                }
            },
            None => None,
        };
        if let Some(keeper) = self.keeper.as_mut() {
            keeper.add_peer(
                connection.key.clone(),
                connection.device.id,
                saved.as_deref(),
                now_ms() as u64,
            );
        }
        if let Ok(mut documents) = connection.documents.lock() {
            documents.insert(self.id);
        }
        self.subscribers.insert(
            connection.key.clone(),
            Subscriber {
                outbox: connection.outbox.clone(),
                connection: connection.clone(),
                state_key,
            },
        );
    }

    async fn persist(
        &mut self,
        connection: &Arc<Connection>,
        mut batch: Batch,
    ) -> Result<(), SyncRefusal> {
        let patches = std::mem::take(&mut batch.patches);
        let lagging = self.projection_lagging;
        let plan = match self.source {
            Some(source) => self
                .with_keeper(move |k| {
                    let scope = if lagging {
                        Scope::everything(source.kind)
                    } else {
                        projection::scope_of(&patches)
                    };
                    projection::plan(k.document(), source, &scope)
                })
                .await
                .inspect_err(|_| {
                    tracing::error!(document = %self.id, "projection panicked; the changes are stored and the document will be re-projected");
                })
                .ok(),
            None => None,
        };
        if self.keeper.is_none() {
            // Only a runtime shutdown takes the keeper away for good.
            return Err(SyncRefusal::Storage(StoreError::Invalid(
                "server shutting down".into(),
            )));
        }
        let state_key = self
            .subscribers
            .get(&connection.key)
            .and_then(|s| s.state_key.clone());
        let commit = Commit {
            document: self.id,
            device: batch.device,
            changes: &batch.changes,
            actors: &batch.actors,
            heads: &batch.heads,
            projection: plan.as_ref(),
            sync_state: state_key
                .as_deref()
                .map(|key| (key, batch.sender_state.as_slice())),
            known_seq: self.seen_seq,
            whole_projection: lagging,
        };
        match self.shared.documents.commit(commit).await {
            Ok(committed) => {
                tracing::debug!(document = %self.id, changes = batch.changes.len(), "stored changes");
                self.projection_lagging = self.source.is_some() && !committed.projected;
                // Stored only if this document held every stored change.
                self.seen_seq = committed.seq;
                self.chunk_keys
                    .extend(batch.changes.iter().map(|c| c.hash.to_string()));
                let ticket = batch.ticket;
                let now = now_ms() as u64;
                let deliver = self.deliverer();
                match self
                    .with_keeper(move |k| k.confirm_each(ticket, now, deliver))
                    .await
                {
                    Ok(dropped) => self.drop_overflowing(dropped),
                    // Stored, so nothing is lost; the peers hear on the next round.
                    Err(Panicked) => {
                        self.recover_from_panic(&connection.key).await;
                    }
                }
                if self.projection_lagging {
                    self.project_if_lagging().await;
                }
                self.compact_if_due().await;
                Ok(())
            }
            Err(e) => {
                if let Some(keeper) = self.keeper.as_mut() {
                    keeper.abandon(batch.ticket);
                }
                self.reload().await;
                Err(match e {
                    CommitError::ForeignActor { actor } => {
                        tracing::warn!(document = %self.id, device = %connection.device.id, %actor, "refused changes by another device's actor");
                        SyncRefusal::Refused(doorstep_protocol::keeper::Refusal::ForeignActor {
                            actor,
                        })
                    }
                    // Another node stored changes first: the reload above
                    // took them in, and the device sends again (the
                    // connection closes with "try again").
                    CommitError::Store(StoreError::Behind) => {
                        tracing::info!(document = %self.id, "another node stored changes first; the device sends again");
                        SyncRefusal::Storage(StoreError::Behind)
                    }
                    CommitError::Store(e) => {
                        // Refused because of a restore a moment ago: the
                        // storage is fine.
                        if !matches!(e, StoreError::Restored) {
                            self.shared
                                .config
                                .metrics
                                .storage_error(StorageWrite::Commit);
                        }
                        tracing::error!(document = %self.id, error = %e, "could not store changes; nothing was acknowledged");
                        SyncRefusal::Storage(e)
                    }
                })
            }
        }
    }

    /// Replaces the live document with the store's copy. If even that
    /// fails, the task ends: its keeper holds what the disk does not, and a
    /// new task will load the document afresh.
    async fn reload(&mut self) {
        let loaded = match self.shared.documents.load(self.id).await {
            Ok(stored) => {
                let id = self.id;
                on_pool(move || stored.load(id).map(|doc| (doc, stored)))
                    .await
                    .map_err(|Panicked| StoreError::Corrupt("reload panicked".into()))
                    .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        match loaded {
            Ok((doc, stored)) => {
                if let Some(keeper) = self.keeper.as_mut() {
                    keeper.reload(doc, stored.stored_bytes());
                }
                self.chunk_keys = stored.keys;
                self.snapshot_bytes = stored.snapshot_bytes;
                self.seen_seq = stored.seq;
                let now = now_ms() as u64;
                let deliver = self.deliverer();
                if let Some(keeper) = self.keeper.as_mut() {
                    let dropped = keeper.flush_each(now, deliver);
                    self.drop_overflowing(dropped);
                }
            }
            Err(e) => {
                tracing::error!(document = %self.id, error = %e, "could not reload a document; dropping it from memory");
                self.keeper = None;
                self.shared.retire(self.id, self.generation);
                for subscriber in self.subscribers.values() {
                    subscriber.connection.overflow.notify_one();
                }
            }
        }
    }

    async fn recover_from_panic(&mut self, key: &PeerId) -> SyncRefusal {
        tracing::error!(document = %self.id, peer = %key, "sync work panicked; detaching the connection and reloading the document");
        self.subscribers.remove(key);
        if let Some(keeper) = self.keeper.as_mut() {
            let _ = keeper.remove_peer(key);
        }
        self.reload().await;
        SyncRefusal::Internal
    }

    /// Reads what other server nodes stored after [`Self::seen_seq`],
    /// passes it on to this node's peers, and brings the figures up to it
    /// when they lag (a commit whose plan could not level them).
    async fn catch_up(&mut self) {
        let newer = match self
            .shared
            .documents
            .load_after(self.id, self.seen_seq)
            .await
        {
            Ok(newer) => newer,
            Err(e) => {
                // The next announcement or the slow poll tries again.
                tracing::warn!(document = %self.id, error = %e, "could not read another node's changes");
                return;
            }
        };
        if newer.seq <= self.seen_seq {
            // Nothing new here; the figures may still lag a commit whose
            // whole projection failed.
            self.project_if_lagging().await;
            return;
        }
        // Only what this document lacks (a number read before the chunks
        // can bring back chunks it holds). A snapshot (another node compacted) is read by a
        // reload, which also counts the stored bytes afresh.
        let (chunks, keys, bytes, snapshot) = {
            let held: std::collections::HashSet<&str> =
                self.chunk_keys.iter().map(String::as_str).collect();
            let mut fresh = (Vec::new(), Vec::new(), 0u64, false);
            for (i, (chunk, key)) in newer.chunks.into_iter().zip(newer.keys).enumerate() {
                if held.contains(key.as_str()) {
                    continue;
                }
                fresh.3 |= i < newer.snapshots;
                fresh.2 += chunk.len() as u64;
                fresh.0.push(chunk);
                fresh.1.push(key);
            }
            fresh
        };
        let merged = snapshot
            || chunks.is_empty()
            || self
                .with_keeper(move |k| k.merge_stored(&chunks, bytes))
                .await
                .unwrap_or(false);
        if snapshot || !merged {
            tracing::debug!(document = %self.id, "reloading to take in another node's changes");
            // Reads the number, takes in every stored change, tells the peers.
            self.reload().await;
            self.project_if_lagging().await;
            return;
        }
        self.chunk_keys.extend(keys);
        self.seen_seq = newer.seq;
        let now = now_ms() as u64;
        let deliver = self.deliverer();
        match self.with_keeper(move |k| k.flush_each(now, deliver)).await {
            Ok(dropped) => self.drop_overflowing(dropped),
            Err(Panicked) => {
                self.reload().await;
                return;
            }
        }
        self.project_if_lagging().await;
    }

    /// Projects the whole document when its stored figures lag its commit
    /// number and this document holds every change up to that number.
    async fn project_if_lagging(&mut self) {
        let Some(source) = self.source else {
            return;
        };
        let row = match self.shared.store.document(self.id).await {
            Ok(Some(row)) => row,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(document = %self.id, error = %e, "could not read a document's projection marker");
                return;
            }
        };
        if row.projected_seq >= row.seq || row.seq != self.seen_seq {
            // Up to date, or a newer commit is on its way here.
            return;
        }
        let planned = self
            .with_keeper(move |k| {
                (
                    k.heads(),
                    projection::plan(k.document(), source, &Scope::everything(source.kind)),
                )
            })
            .await;
        let Ok((heads, plan)) = planned else {
            tracing::error!(document = %self.id, "projection panicked; the document will be re-projected");
            return;
        };
        match self
            .shared
            .documents
            .reproject(self.id, &heads, &plan, self.seen_seq)
            .await
        {
            Ok(true) => self.projection_lagging = false,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(document = %self.id, error = %e, "could not re-project a document")
            }
        }
    }

    /// Writes a snapshot in place of the chunks it covers, once the
    /// incremental chunks outweigh the snapshot. Runs after the peers were
    /// answered: it delays no acknowledgement. Nothing is deleted unless the
    /// snapshot loads back with the same heads, and then only the chunks
    /// this live document holds.
    async fn compact_if_due(&mut self) {
        let Some(keeper) = self.keeper.as_ref() else {
            return;
        };
        let incremental = keeper.stored_bytes().saturating_sub(self.snapshot_bytes);
        if incremental < self.snapshot_bytes {
            return;
        }
        let made = self
            .with_keeper(|k| {
                let heads = k.heads();
                let snapshot = k.snapshot();
                let verified = verify_snapshot(&snapshot, &heads);
                (snapshot, verified)
            })
            .await;
        let (snapshot, fresh) = match made {
            Ok((snapshot, Ok(fresh))) => (snapshot, fresh),
            Ok((_, Err(e))) => {
                tracing::error!(document = %self.id, error = %e, "compaction snapshot failed verification; keeping every chunk");
                return;
            }
            Err(Panicked) => {
                tracing::error!(document = %self.id, "compaction panicked; keeping every chunk");
                return;
            }
        };
        if let Err(e) = self
            .shared
            .documents
            .compact(self.id, &snapshot, &self.chunk_keys)
            .await
        {
            if !matches!(e, StoreError::Restored) {
                self.shared
                    .config
                    .metrics
                    .storage_error(StorageWrite::Compaction);
            }
            tracing::warn!(document = %self.id, error = %e, "compaction failed; every chunk is kept");
            return;
        }
        tracing::debug!(document = %self.id, bytes = snapshot.len(), "compacted");
        self.snapshot_bytes = snapshot.len() as u64;
        self.chunk_keys = vec![snapshot_key(&snapshot)];
        if let Some(keeper) = self.keeper.as_mut() {
            // A freshly loaded document sheds the memory applying costs.
            keeper.reload(fresh, self.snapshot_bytes);
        }
    }

    fn deliver(&mut self, outgoing: Outgoing) {
        let peers: Vec<PeerId> = outgoing.iter().map(|(peer, _)| peer.clone()).collect();
        let mut deliver = self.deliverer_to(Some(&peers));
        let dropped: Vec<PeerId> = outgoing
            .into_iter()
            .filter_map(|(peer, data)| (!deliver(&peer, data)).then_some(peer))
            .collect();
        if let Some(keeper) = self.keeper.as_mut() {
            for peer in &dropped {
                let _ = keeper.remove_peer(peer);
            }
        }
        self.drop_overflowing(dropped);
    }

    /// Puts a peer's message in its connection's queue; false when the
    /// queue has no room (the keeper then drops the peer). Runs where the
    /// keeper makes its messages, one at a time ([`Keeper::generate_each`]).
    /// A revoked device hears nothing more, even while its connection is
    /// still winding down.
    fn deliverer(&mut self) -> impl FnMut(&PeerId, Vec<u8>) -> bool + Send + 'static {
        self.deliverer_to(None)
    }

    /// [`Self::deliverer`] for `peers` only (a reply), or every subscriber.
    /// A device revoked while the keeper makes the messages (which can
    /// take a while for a large document) is skipped at its push.
    fn deliverer_to(
        &mut self,
        peers: Option<&[PeerId]>,
    ) -> impl FnMut(&PeerId, Vec<u8>) -> bool + Send + 'static {
        self.drop_revoked();
        let document_id = self.id;
        let queue = |s: &Subscriber| (s.outbox.clone(), s.connection.revoked.clone());
        let outboxes: HashMap<PeerId, _> = match peers {
            Some(peers) => peers
                .iter()
                .filter_map(|peer| Some((peer.clone(), queue(self.subscribers.get(peer)?))))
                .collect(),
            None => self
                .subscribers
                .iter()
                .map(|(peer, s)| (peer.clone(), queue(s)))
                .collect(),
        };
        move |peer, data| {
            outboxes.get(peer).is_none_or(|(outbox, revoked)| {
                revoked.is_revoked() || outbox.push(Outbound::Sync { document_id, data }).is_ok()
            })
        }
    }

    /// The peers whose queue had no room: the message is lost and the sync
    /// state believes it sent, so the connection must go, and the peer
    /// resumes on reconnect.
    fn drop_overflowing(&mut self, dropped: Vec<PeerId>) {
        for peer in dropped {
            if let Some(subscriber) = self.subscribers.remove(&peer) {
                tracing::warn!(document = %self.id, %peer, "peer is not keeping up; dropping its connection");
                subscriber.connection.overflow.notify_one();
            }
        }
    }

    fn drop_revoked(&mut self) {
        let revoked: Vec<PeerId> = self
            .subscribers
            .iter()
            .filter(|(_, s)| s.connection.revoked.is_revoked())
            .map(|(key, _)| key.clone())
            .collect();
        for key in revoked {
            self.subscribers.remove(&key);
            if let Some(keeper) = self.keeper.as_mut() {
                let _ = keeper.remove_peer(&key);
            }
        }
    }

    fn relay(&mut self, from: &PeerId, message: Outbound) {
        self.drop_revoked();
        let Outbound::Ephemeral(ephemeral) = message else {
            return;
        };
        for (key, subscriber) in &self.subscribers {
            if key != from {
                // Ephemeral messages are lossy by contract: a full queue
                // drops this one, not the connection.
                let _ = subscriber
                    .outbox
                    .push(Outbound::Ephemeral(ephemeral.clone()));
            }
        }
    }

    async fn leave(&mut self, key: &PeerId) {
        let Some(subscriber) = self.subscribers.remove(key) else {
            return;
        };
        let state = self.keeper.as_mut().and_then(|k| k.remove_peer(key));
        if let (Some(state_key), Some(state)) = (subscriber.state_key, state)
            && let Err(e) = self
                .shared
                .documents
                .save_sync_state(self.id, &state_key, &state)
                .await
        {
            tracing::warn!(document = %self.id, error = %e, "could not save a sync state");
        }
    }

    async fn save_all_states(&mut self) {
        let keys: Vec<PeerId> = self.subscribers.keys().cloned().collect();
        for key in keys {
            self.leave(&key).await;
        }
    }
}

/// Brings a document's projection up to its stored heads: the catch-up
/// for a document whose marker lags (after an upgrade, or a projection that
/// failed while its changes were stored).
pub(super) async fn catch_up_projection(shared: &Shared, id: DocumentId) -> Result<(), StoreError> {
    let Some(row) = shared.store.document(id).await? else {
        return Ok(());
    };
    let Some(kind) = row.kind() else {
        return Ok(());
    };
    let source = Source {
        document: id,
        branch: row.branch_id,
        kind,
    };
    // The row was read before the load: a commit after it moves the
    // document's number, and the reprojection below is then skipped (the
    // live document projects itself whole).
    let stored = shared.documents.load(id).await?;
    let (heads, plan) = on_pool(move || {
        stored.load(id).map(|doc| {
            let plan = projection::plan(&doc, source, &Scope::everything(kind));
            (doc.get_heads(), plan)
        })
    })
    .await
    .map_err(|Panicked| StoreError::Corrupt(format!("projecting document {id} panicked")))??;
    if !shared
        .documents
        .reproject(id, &heads, &plan, row.seq)
        .await?
    {
        tracing::debug!(document = %id, "a live document committed first; it projects itself whole");
    }
    Ok(())
}
