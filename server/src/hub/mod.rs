//! Documents in memory, shared by every connection that syncs them.
//!
//! Each live document is a [`DocSession`] behind an async mutex. A sync
//! message is applied, its new changes are checked (actor binding, size) and
//! committed to the store, and only then are sync messages generated for the
//! document's peers: no peer is ever told heads the disk does not have.
//! A refused or unstorable message leaves nothing behind: the document is
//! reloaded from the store, which never saw it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use automerge::{ActorId, Automerge, ChangeHash};
use doorstep_protocol::schema::{DocumentKind, GENESIS_ACTOR, genesis};
use doorstep_protocol::session::{DocSession, SessionError};
use doorstep_protocol::{DeviceId, DocumentId, Month, PeerId, TenantId};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, mpsc, watch};

use crate::config::Config;
use crate::projection::{self, Source};
use crate::store::{Device, Store, StoreError, now_ms};

/// Something the hub asks a connection to send.
#[derive(Debug)]
pub enum Outbound {
    Sync {
        document_id: DocumentId,
        data: Vec<u8>,
    },
    Ephemeral {
        sender_id: PeerId,
        document_id: DocumentId,
        count: u64,
        session_id: String,
        data: Vec<u8>,
    },
}

/// Why the hub refused a sync message. Every variant closes the connection;
/// none leaves anything stored or in memory.
#[derive(Debug, thiserror::Error)]
pub enum SyncRefusal {
    #[error("sync data is not valid: {0}")]
    BadSyncData(String),
    #[error("change {hash} is authored by actor {actor}, which is not registered to this device")]
    ForeignActor { actor: String, hash: String },
    #[error("sync message holds {size} bytes of changes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the server could not store the changes; nothing was acknowledged, try again later")]
    Storage(#[source] StoreError),
}

/// The outcome of asking for a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    /// Missing or not the device's: the two must look the same.
    Unavailable,
    /// The device was revoked since it connected.
    Revoked,
}

struct Subscriber {
    outbox: mpsc::Sender<Outbound>,
    /// Tells the connection it fell too far behind and must reconnect.
    overflow: Arc<Notify>,
    storage_id: Option<String>,
}

struct LiveDoc {
    session: DocSession,
    /// What the projections need to know; `None` for a document with no row.
    source: Option<Source>,
    /// A projection failed; the next merge projects the whole document.
    stale_projection: bool,
    /// No longer the hub's copy (evicted, or dropped after a failed reload):
    /// whoever locks it must fetch the current one instead, so there is
    /// never more than one live copy of a document.
    retired: bool,
    subscribers: HashMap<PeerId, Subscriber>,
    snapshot_bytes: u64,
    incremental_bytes: u64,
}

/// One open WebSocket connection of a device, as the hub knows it.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    /// The key of this connection's sync states: unique per connection, so
    /// two clients claiming one automerge-repo peer id cannot collide.
    pub key: PeerId,
    pub device: Device,
    pub outbox: mpsc::Sender<Outbound>,
    /// Notified when the device is revoked.
    pub revoked: Arc<Notify>,
    /// Notified when the client cannot keep up with what it is sent.
    pub overflow: Arc<Notify>,
    /// Automerge-repo storage id the client announced, if it persists.
    pub storage_id: Option<String>,
    /// Actor ids known to belong to this device.
    actors: StdMutex<HashSet<ActorId>>,
    documents: StdMutex<HashSet<DocumentId>>,
}

/// Size of each connection's outbound queue. A client this far behind is
/// disconnected (it resumes from its sync state) rather than buffered forever.
pub const OUTBOX_CAPACITY: usize = 4096;

/// The live documents and connections of this server process.
pub struct Hub {
    store: Store,
    config: Arc<Config>,
    /// Our automerge-repo peer id and storage id.
    pub peer_id: PeerId,
    pub storage_id: String,
    docs: Mutex<HashMap<DocumentId, Arc<Mutex<LiveDoc>>>>,
    connections: StdMutex<HashMap<DeviceId, HashMap<u64, Arc<Notify>>>>,
    rates: StdMutex<HashMap<DeviceId, crate::sync::rate::TokenBucket>>,
    next_connection: AtomicU64,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Starts the hub and its background tasks (idle eviction, revocations
    /// made by other processes).
    pub async fn start(store: Store, config: Arc<Config>) -> Result<Arc<Hub>, StoreError> {
        let storage_id = store.storage_id().await?;
        let peer_id = PeerId::new(format!("doorstep-{}", uuid::Uuid::new_v4()))
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (shutdown_tx, _) = watch::channel(false);
        let hub = Arc::new(Hub {
            store,
            config,
            peer_id,
            storage_id,
            docs: Mutex::new(HashMap::new()),
            connections: StdMutex::new(HashMap::new()),
            rates: StdMutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            shutdown_tx,
        });
        tokio::spawn(evict_idle(Arc::downgrade(&hub), hub.shutdown_signal()));
        tokio::spawn(watch_revocations(
            Arc::downgrade(&hub),
            hub.shutdown_signal(),
        ));
        Ok(hub)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Resolves to `true` when the server is shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Tells every connection and background task to stop, then persists the
    /// sync states of documents still in memory.
    pub async fn shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
        let docs: Vec<(DocumentId, Arc<Mutex<LiveDoc>>)> = self
            .docs
            .lock()
            .await
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (id, doc) in docs {
            let mut doc = doc.lock().await;
            let keys: Vec<PeerId> = doc.subscribers.keys().cloned().collect();
            for key in keys {
                self.persist_and_forget_peer(id, &mut doc, &key).await;
            }
        }
    }

    /// Registers a new connection of a live device.
    pub fn connect(
        &self,
        device: Device,
        storage_id: Option<String>,
    ) -> (Arc<Connection>, mpsc::Receiver<Outbound>) {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (outbox, inbox) = mpsc::channel(OUTBOX_CAPACITY);
        let revoked = Arc::new(Notify::new());
        if let Ok(mut connections) = self.connections.lock() {
            connections
                .entry(device.id)
                .or_default()
                .insert(id, revoked.clone());
        }
        let key = PeerId::new(format!("connection-{id}"))
            .expect("a short constant-shaped peer id is valid");
        let connection = Arc::new(Connection {
            id,
            key,
            device,
            outbox,
            revoked,
            overflow: Arc::new(Notify::new()),
            storage_id,
            actors: StdMutex::new(HashSet::new()),
            documents: StdMutex::new(HashSet::new()),
        });
        (connection, inbox)
    }

    /// Forgets a closed connection, saving its sync states.
    pub async fn disconnect(&self, connection: &Connection) {
        if let Ok(mut connections) = self.connections.lock()
            && let Some(of_device) = connections.get_mut(&connection.device.id)
        {
            of_device.remove(&connection.id);
            if of_device.is_empty() {
                connections.remove(&connection.device.id);
            }
        }
        let documents: Vec<DocumentId> = connection
            .documents
            .lock()
            .map(|d| d.iter().copied().collect())
            .unwrap_or_default();
        for id in documents {
            let live = self.docs.lock().await.get(&id).cloned();
            if let Some(live) = live {
                let mut doc = live.lock().await;
                self.persist_and_forget_peer(id, &mut doc, &connection.key)
                    .await;
            }
        }
    }

    async fn persist_and_forget_peer(&self, id: DocumentId, doc: &mut LiveDoc, key: &PeerId) {
        let subscriber = doc.subscribers.remove(key);
        let state = doc.session.remove_peer(key);
        if let (
            Some(Subscriber {
                storage_id: Some(storage),
                ..
            }),
            Some(state),
        ) = (subscriber, state)
            && let Err(e) = self.store.save_sync_state(id, &storage, &state).await
        {
            // Losing a sync state costs a longer sync next time, not data.
            tracing::warn!(document = %id, error = %e, "could not save sync state");
        }
    }

    /// Closes every open connection of a device at once.
    pub fn disconnect_device(&self, device: DeviceId) -> usize {
        let Ok(connections) = self.connections.lock() else {
            return 0;
        };
        connections
            .get(&device)
            .map(|of_device| {
                for revoked in of_device.values() {
                    revoked.notify_one();
                }
                of_device.len()
            })
            .unwrap_or(0)
    }

    /// How long a device must wait before its next message is handled.
    pub fn throttle(&self, device: DeviceId) -> Duration {
        let limits = self.config.limits;
        let Ok(mut rates) = self.rates.lock() else {
            return Duration::ZERO;
        };
        rates
            .entry(device)
            .or_insert_with(|| {
                crate::sync::rate::TokenBucket::new(
                    limits.messages_per_second,
                    limits.message_burst,
                )
            })
            .take(std::time::Instant::now())
    }

    /// Decides whether a device may open a document, from the database,
    /// every time it is asked. A monthly log of the device's own branch
    /// that nobody has opened yet is created from its genesis.
    pub async fn access(&self, device: &Device, id: DocumentId) -> Result<Access, StoreError> {
        if self.store.device_may_open(device.id, id).await? {
            return Ok(Access::Open);
        }
        if !self.store.device_is_live(device.id).await? {
            return Ok(Access::Revoked);
        }
        // Another branch's document and a missing one take the same steps,
        // so not even the time of the answer tells them apart.
        let stored = self.store.document(id).await?.is_some();
        let month = log_month(device.branch_id, id, now_ms());
        match month.filter(|_| !stored) {
            Some(month) => {
                let doc = genesis(device.branch_id, DocumentKind::MonthlyLog(month));
                self.store
                    .ensure_log_document(device.branch_id, month, &doc.save())
                    .await?;
                tracing::info!(document = %id, %month, "opened a new monthly log");
                Ok(Access::Open)
            }
            None => Ok(Access::Unavailable),
        }
    }

    /// Locks the hub's current copy of a document, loading it if needed.
    async fn lock_live(&self, id: DocumentId) -> Result<OwnedMutexGuard<LiveDoc>, SyncRefusal> {
        loop {
            let doc = self.live(id).await?.lock_owned().await;
            if !doc.retired {
                return Ok(doc);
            }
        }
    }

    async fn live(&self, id: DocumentId) -> Result<Arc<Mutex<LiveDoc>>, SyncRefusal> {
        let mut docs = self.docs.lock().await;
        if let Some(live) = docs.get(&id) {
            return Ok(live.clone());
        }
        let (doc, snapshot_bytes, incremental_bytes) = self.load(id).await?;
        let source = self
            .store
            .document(id)
            .await
            .map_err(SyncRefusal::Storage)?
            .and_then(|row| {
                Some(Source {
                    document: id,
                    branch: row.branch_id,
                    kind: row.kind()?,
                })
            });
        let live = Arc::new(Mutex::new(LiveDoc {
            source,
            stale_projection: false,
            retired: false,
            session: DocSession::new(doc, now_ms() as u64),
            subscribers: HashMap::new(),
            snapshot_bytes,
            incremental_bytes,
        }));
        docs.insert(id, live.clone());
        Ok(live)
    }

    async fn load(&self, id: DocumentId) -> Result<(Automerge, u64, u64), SyncRefusal> {
        let stored = self
            .store
            .load_chunks(id)
            .await
            .map_err(SyncRefusal::Storage)?;
        let mut doc = Automerge::new();
        for chunk in &stored.chunks {
            doc.load_incremental(chunk).map_err(|e| {
                SyncRefusal::Storage(StoreError::Corrupt(format!(
                    "document {id} does not load: {e}"
                )))
            })?;
        }
        Ok((doc, stored.snapshot_bytes, stored.incremental_bytes))
    }

    /// Applies a `request` or `sync` from a connection that may open the
    /// document. Persists first, then queues messages for every peer.
    pub async fn receive_sync(
        &self,
        connection: &Connection,
        id: DocumentId,
        data: &[u8],
    ) -> Result<(), SyncRefusal> {
        let mut doc = self.lock_live(id).await?;
        let now = now_ms() as u64;
        if !doc.subscribers.contains_key(&connection.key) {
            let saved = match &connection.storage_id {
                Some(storage) => self
                    .store
                    .load_sync_state(id, &sync_state_key(connection.device.id, storage))
                    .await
                    .map_err(SyncRefusal::Storage)?,
                None => None,
            };
            if doc
                .session
                .add_peer(connection.key.clone(), saved.as_deref(), now)
                .is_err()
            {
                // A corrupt saved state only costs a full sync.
                doc.session
                    .add_peer(connection.key.clone(), None, now)
                    .map_err(|e| SyncRefusal::BadSyncData(e.to_string()))?;
            }
            doc.subscribers.insert(
                connection.key.clone(),
                Subscriber {
                    outbox: connection.outbox.clone(),
                    overflow: connection.overflow.clone(),
                    storage_id: connection
                        .storage_id
                        .as_deref()
                        .map(|s| sync_state_key(connection.device.id, s)),
                },
            );
            if let Ok(mut documents) = connection.documents.lock() {
                documents.insert(id);
            }
        }

        let before = doc.session.heads();
        let received = match doc.session.receive(&connection.key, data, now) {
            Ok(received) => received,
            Err(
                SessionError::BadSyncMessage(e)
                | SessionError::Apply(e)
                | SessionError::BadSyncState(e),
            ) => {
                self.discard_unpersisted(id, &mut doc).await;
                return Err(SyncRefusal::BadSyncData(e));
            }
        };
        if !received.new_changes.is_empty() {
            if let Err(refusal) = self.admit(connection, &received).await {
                self.discard_unpersisted(id, &mut doc).await;
                return Err(refusal);
            }
            if let Err(e) = self
                .store
                .append_changes(id, &received.new_changes, Some(connection.device.id))
                .await
            {
                self.discard_unpersisted(id, &mut doc).await;
                return Err(SyncRefusal::Storage(e));
            }
            doc.incremental_bytes += received
                .new_changes
                .iter()
                .map(|c| c.bytes.len() as u64)
                .sum::<u64>();
            tracing::debug!(document = %id, changes = received.new_changes.len(), "stored changes");
            // Before anyone hears of the merge, so a device that sees its
            // change acknowledged finds it in the figures too.
            self.update_projection(&mut doc, &before).await;
            if doc.incremental_bytes >= doc.snapshot_bytes {
                self.compact(id, &mut doc).await;
            }
        }
        self.send_pending(id, &mut doc, now);
        Ok(())
    }

    async fn update_projection(&self, doc: &mut LiveDoc, before: &[ChangeHash]) {
        let Some(source) = doc.source else { return };
        let document = doc.session.document();
        let records = if doc.stale_projection {
            projection::all_records(document, source.kind)
        } else {
            projection::touched(document, before, &document.get_heads())
        };
        match projection::project(&self.store, source, document, &records).await {
            Ok(()) => doc.stale_projection = false,
            Err(e) => {
                // The changes are stored; only the figures lag until the next
                // merge (or `doorstep reproject`) catches them up.
                tracing::error!(document = %source.document, error = %e, "projection failed");
                doc.stale_projection = true;
            }
        }
    }

    /// Checks new changes before they are stored: size, and that every one
    /// is authored by an actor registered to this device.
    async fn admit(
        &self,
        connection: &Connection,
        received: &doorstep_protocol::session::Received,
    ) -> Result<(), SyncRefusal> {
        let limit = self.config.limits.max_sync_change_bytes;
        if received.raw_len() > limit {
            return Err(SyncRefusal::TooLarge {
                size: received.raw_len(),
                limit,
            });
        }
        for change in &received.new_changes {
            let known = connection
                .actors
                .lock()
                .map(|a| a.contains(&change.actor))
                .unwrap_or(false);
            if known {
                continue;
            }
            let actor = change.actor.to_hex_string();
            let owner = if change.actor.to_bytes() == GENESIS_ACTOR {
                None
            } else {
                self.store
                    .actor_owner(&actor)
                    .await
                    .map_err(SyncRefusal::Storage)?
            };
            if owner != Some(connection.device.id) {
                tracing::warn!(device = %connection.device.id, %actor, hash = %change.hash, "refused a change by an actor not registered to the device");
                return Err(SyncRefusal::ForeignActor {
                    actor,
                    hash: change.hash.to_string(),
                });
            }
            if let Ok(mut actors) = connection.actors.lock() {
                actors.insert(change.actor.clone());
            }
        }
        Ok(())
    }

    /// Drops changes that were applied in memory but not stored.
    async fn discard_unpersisted(&self, id: DocumentId, doc: &mut LiveDoc) {
        match self.load(id).await {
            Ok((fresh, snapshot_bytes, incremental_bytes)) => {
                doc.session.replace_document(fresh);
                doc.snapshot_bytes = snapshot_bytes;
                doc.incremental_bytes = incremental_bytes;
            }
            Err(e) => {
                // The memory copy may now hold unstored changes; make sure
                // no one syncs from it by dropping it from the hub.
                tracing::error!(document = %id, error = %e, "could not reload a document after a refusal");
                doc.retired = true;
                self.docs.lock().await.remove(&id);
            }
        }
    }

    /// Writes a snapshot replacing the chunks it covers, then reloads the
    /// document from it: a loaded document does not keep the memory that
    /// applying changes one by one costs.
    async fn compact(&self, id: DocumentId, doc: &mut LiveDoc) {
        // Changes still waiting for their dependencies were never checked
        // (they are not \"new\" until they apply): keep them out of storage.
        let snapshot = doc
            .session
            .document()
            .save_with_options(automerge::SaveOptions {
                retain_orphans: false,
                ..automerge::SaveOptions::default()
            });
        let document = doc.session.document();
        let covers = |hash: &str| {
            hash.parse::<ChangeHash>()
                .map(|h| document.get_change_meta_by_hash(&h).is_some())
                .unwrap_or(false)
        };
        if let Err(e) = self.store.compact(id, &snapshot, covers).await {
            // Compaction is an optimisation; the chunks are all still there.
            tracing::warn!(document = %id, error = %e, "compaction failed");
            return;
        }
        match Automerge::load(&snapshot) {
            Ok(fresh) => doc.session.replace_document(fresh),
            Err(e) => tracing::error!(document = %id, error = %e, "a fresh snapshot does not load"),
        }
        tracing::debug!(document = %id, bytes = snapshot.len(), "compacted");
        doc.snapshot_bytes = snapshot.len() as u64;
        doc.incremental_bytes = 0;
    }

    fn send_pending(&self, id: DocumentId, doc: &mut LiveDoc, now: u64) {
        let mut behind = Vec::new();
        for (peer, data) in doc.session.generate_all(now) {
            let Some(subscriber) = doc.subscribers.get(&peer) else {
                continue;
            };
            if subscriber
                .outbox
                .try_send(Outbound::Sync {
                    document_id: id,
                    data,
                })
                .is_err()
            {
                // The message is lost and the sync state believes it sent:
                // the connection must go, and the peer resumes on reconnect.
                tracing::warn!(document = %id, %peer, "peer is not keeping up; dropping its connection");
                subscriber.overflow.notify_one();
                behind.push(peer);
            }
        }
        for peer in behind {
            doc.subscribers.remove(&peer);
            doc.session.remove_peer(&peer);
        }
    }

    /// Relays an ephemeral message to the document's other peers. They
    /// must already sync the document, so access was checked for them.
    pub async fn relay_ephemeral(
        &self,
        from: &Connection,
        document_id: DocumentId,
        sender_id: &PeerId,
        count: u64,
        session_id: &str,
        data: &[u8],
    ) {
        let live = self.docs.lock().await.get(&document_id).cloned();
        let Some(live) = live else { return };
        let doc = live.lock().await;
        for (key, subscriber) in &doc.subscribers {
            if *key != from.key {
                let _ = subscriber.outbox.try_send(Outbound::Ephemeral {
                    sender_id: sender_id.clone(),
                    document_id,
                    count,
                    session_id: session_id.to_owned(),
                    data: data.to_vec(),
                });
            }
        }
    }

    /// Documents held in memory right now.
    pub async fn live_documents(&self) -> usize {
        self.docs.lock().await.len()
    }

    async fn evict_idle_now(&self) {
        let idle_ms = self.config.document_idle.as_millis() as u64;
        let now = now_ms() as u64;
        let mut docs = self.docs.lock().await;
        docs.retain(|id, live| match live.try_lock() {
            Ok(mut doc) => {
                let keep = !doc.subscribers.is_empty()
                    || now.saturating_sub(doc.session.last_activity_ms()) < idle_ms;
                if !keep {
                    doc.retired = true;
                    tracing::debug!(document = %id, "evicted idle document");
                }
                keep
            }
            Err(_) => true,
        });
    }
}

/// Sync states are saved per device and storage id: a storage id is only
/// what the client claims, and must not reach another device's state.
fn sync_state_key(device: DeviceId, storage_id: &str) -> String {
    format!("{device}/{storage_id}")
}

/// The month whose log of `branch` has id `id`, if any: checked against
/// every month from 2000 to next month (a few hundred hashes, only for ids
/// the server has not stored).
fn log_month(branch: TenantId, id: DocumentId, now_ms: i64) -> Option<Month> {
    let now = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000).ok()?;
    let last = Month::new(now.year(), now.month() as u8)?.next();
    let mut month = Month::new(2000, 1)?;
    while month <= last {
        if DocumentId::monthly_log(branch, month) == id {
            return Some(month);
        }
        month = month.next();
    }
    None
}

async fn evict_idle(hub: std::sync::Weak<Hub>, mut shutdown: watch::Receiver<bool>) {
    let period = hub
        .upgrade()
        .map(|h| (h.config.document_idle / 4).max(Duration::from_millis(100)))
        .unwrap_or(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        match hub.upgrade() {
            Some(hub) => hub.evict_idle_now().await,
            None => return,
        }
    }
}

/// Devices revoked by another process (the CLI) lose their sockets here.
async fn watch_revocations(hub: std::sync::Weak<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut since = now_ms();
    loop {
        let period = match hub.upgrade() {
            Some(hub) => hub.config.revocation_poll,
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        let Some(hub) = hub.upgrade() else { return };
        let checked_at = now_ms();
        match hub.store.revoked_since(since).await {
            Ok(revoked) => {
                for (device, _) in revoked {
                    if hub.disconnect_device(device) > 0 {
                        tracing::info!(%device, "closed the sockets of a revoked device");
                    }
                }
                // Overlap by a second: clocks of two processes writing
                // `revoked_at` may differ slightly.
                since = checked_at - 1000;
            }
            Err(e) => tracing::warn!(error = %e, "could not check for revoked devices"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn log_month_finds_derived_ids_only() {
        let branch = TenantId::from_uuid(Uuid::from_u128(5));
        let other = TenantId::from_uuid(Uuid::from_u128(6));
        let now = 1_795_000_000_000; // 2026-11
        let month: Month = "2026-11".parse().expect("month");
        assert_eq!(
            log_month(branch, DocumentId::monthly_log(branch, month), now),
            Some(month)
        );
        assert_eq!(
            log_month(branch, DocumentId::monthly_log(branch, month.next()), now),
            Some(month.next())
        );
        assert_eq!(
            log_month(branch, DocumentId::monthly_log(other, month), now),
            None
        );
        assert_eq!(log_month(branch, DocumentId::roster(branch), now), None);
    }
}
