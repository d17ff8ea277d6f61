//! Documents in memory, shared by every connection that syncs them.
//!
//! Each live document is a task ([`document`]) owning a sans-IO
//! [`Keeper`](doorstep_protocol::keeper::Keeper); connections reach it
//! through its bounded mailbox. The hub itself only maps document ids to
//! mailboxes (a lock held for a map lookup, never across I/O or Automerge
//! work), tracks connections for revocation, and decides access.
//!
//! ```text
//! mod.rs       the hub: access, connections, mailboxes, shutdown
//! document.rs  one document's task: admit, apply, commit, advertise, compact
//! outbox.rs    a connection's byte-bounded queue of messages to send
//! ```

mod document;
pub mod outbox;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use doorstep_protocol::keeper::Refusal;
use doorstep_protocol::schema::{DocumentKind, genesis};
use doorstep_protocol::{DeviceId, DocumentId, Month, PeerId, TenantId};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::config::Config;
use crate::store::postgres::ChangeListener;
use crate::store::{Device, DocumentStore, Store, StoreError, now_ms};
use document::{Command, Outcome};
pub use outbox::{Ephemeral, Outbound, Outbox};

/// Why the hub refused a sync message. Each closes the sender's
/// connection; none leaves anything stored, acknowledged or in memory.
#[derive(Debug, thiserror::Error)]
pub enum SyncRefusal {
    #[error(transparent)]
    Refused(Refusal),
    #[error("the server could not store the changes; nothing was acknowledged, try again later")]
    Storage(#[source] StoreError),
    #[error(
        "the server failed while handling this message; nothing was acknowledged, try again later"
    )]
    Internal,
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

/// One open WebSocket connection of a device, as the hub knows it.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    /// The key of this connection's sync states: unique per connection, so
    /// two clients claiming one automerge-repo peer id cannot collide.
    pub key: PeerId,
    pub device: Device,
    pub outbox: Arc<Outbox>,
    /// Set and notified when the device is revoked.
    pub revoked: Arc<Revocation>,
    /// Notified when the client cannot keep up with what it is sent.
    pub overflow: Arc<Notify>,
    /// Automerge-repo storage id the client announced, if it persists.
    pub storage_id: Option<String>,
    documents: StdMutex<HashSet<DocumentId>>,
}

/// A connection's revocation: a flag anyone can read (a document task
/// pushing changes skips a revoked connection at once, whatever its socket
/// is doing) and a wake-up for the connection's own loop. A connection
/// closed because its device opened too many newer ones is "superseded",
/// and one closed because the database was restored under it is
/// "restored": either stops like a revoked one, but the device is not
/// revoked.
#[derive(Debug, Default)]
pub struct Revocation {
    revoked: std::sync::atomic::AtomicBool,
    superseded: std::sync::atomic::AtomicBool,
    restored: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Revocation {
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Stops the connection because newer ones of its device took its place.
    pub fn supersede(&self) {
        self.superseded.store(true, Ordering::SeqCst);
        self.revoke();
    }

    /// Whether the stop was [`Revocation::supersede`], not a revocation.
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::SeqCst)
    }

    /// Stops the connection because a restore changed the data it synced
    /// against: the device reconnects and syncs afresh.
    pub fn restored(&self) {
        self.restored.store(true, Ordering::SeqCst);
        self.revoke();
    }

    /// Whether the stop was [`Revocation::restored`].
    pub fn is_restored(&self) -> bool {
        self.restored.load(Ordering::SeqCst)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Resolves once the connection is revoked (at once if it already is).
    pub async fn notified(&self) {
        while !self.is_revoked() {
            self.notify.notified().await;
        }
    }
}

/// How long shutdown waits for the sockets to say goodbye: a message being
/// handled finishes first (a commit takes milliseconds; a client that
/// stopped reading is cut by its own send timeout sooner or later).
const SOCKET_DRAIN: Duration = Duration::from_secs(10);

/// Messages a document's mailbox holds before senders wait.
const MAILBOX_CAPACITY: usize = 64;

/// A live document's mailbox, and which incarnation of it this is.
#[derive(Debug, Clone)]
struct Mailbox {
    generation: u64,
    sender: mpsc::Sender<Command>,
}

/// What the hub and its document tasks share.
#[derive(Debug)]
struct Shared {
    store: Store,
    documents: Arc<dyn DocumentStore>,
    config: Arc<Config>,
    mailboxes: StdMutex<HashMap<DocumentId, Mailbox>>,
    next_generation: AtomicU64,
}

impl Shared {
    /// Forgets a document task's mailbox, if it is still this incarnation's.
    fn retire(&self, id: DocumentId, generation: u64) {
        if let Ok(mut mailboxes) = self.mailboxes.lock()
            && mailboxes
                .get(&id)
                .is_some_and(|m| m.generation == generation)
        {
            mailboxes.remove(&id);
        }
    }

    /// Retires an idle document task unless a command is already waiting.
    /// Under the map lock, so no sender can find the mailbox in between.
    fn retire_if_idle(
        &self,
        id: DocumentId,
        generation: u64,
        mailbox: &mpsc::Receiver<Command>,
    ) -> bool {
        let Ok(mut mailboxes) = self.mailboxes.lock() else {
            return false;
        };
        if !mailbox.is_empty() {
            return false;
        }
        if mailboxes
            .get(&id)
            .is_some_and(|m| m.generation == generation)
        {
            mailboxes.remove(&id);
        }
        true
    }
}

/// The live documents and connections of this server process.
pub struct Hub {
    shared: Arc<Shared>,
    /// Our automerge-repo peer id (the storage id is the store's epoch).
    pub peer_id: PeerId,
    connections: StdMutex<HashMap<DeviceId, HashMap<u64, Arc<Revocation>>>>,
    next_connection: AtomicU64,
    shutdown_tx: watch::Sender<bool>,
    /// Every `/sync` socket's task, so shutdown waits for their goodbyes.
    sockets: TaskTracker,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Starts the hub: brings every lagging projection up to its document's
    /// stored heads (so the figures are whole before the first request),
    /// then watches for revocations made by other processes.
    pub async fn start(
        store: Store,
        documents: Arc<dyn DocumentStore>,
        config: Arc<Config>,
    ) -> Result<Arc<Hub>, StoreError> {
        let peer_id = PeerId::new(format!("doorstep-{}", uuid::Uuid::new_v4()))
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (shutdown_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            store,
            documents,
            config,
            mailboxes: StdMutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
        });
        catch_up_lagging(&shared).await?;
        let hub = Arc::new(Hub {
            shared,
            peer_id,
            connections: StdMutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            shutdown_tx,
            sockets: TaskTracker::new(),
        });
        tokio::spawn(watch_other_processes(
            Arc::downgrade(&hub),
            hub.shutdown_signal(),
        ));
        if let Some(url) = hub.shared.store.postgres_url() {
            tokio::spawn(hear_other_nodes(
                Arc::downgrade(&hub),
                url,
                hub.shutdown_signal(),
            ));
        }
        Ok(hub)
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Resolves to `true` when the server is shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Tells every connection to stop: each finishes the message it is
    /// handling (its changes stored and acknowledged), then says "server
    /// shutting down" and closes.
    pub fn stop_connections(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    /// Held by a `/sync` socket's task while it runs.
    pub fn socket_token(&self) -> TaskTrackerToken {
        self.sockets.token()
    }

    /// Stops every connection and waits (at most [`SOCKET_DRAIN`]) until
    /// each has closed, then has every live document save the sync states
    /// of its peers. A load balancer's devices reconnect elsewhere at once,
    /// instead of finding a dead socket at their next ping.
    pub async fn shutdown(&self) {
        self.stop_connections();
        self.sockets.close();
        if tokio::time::timeout(SOCKET_DRAIN, self.sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.sockets.len(),
                "some connections did not close in time"
            );
        }
        self.stop_documents(|done| Command::Shutdown { done }).await;
    }

    /// Sends every live document the stop `command` and waits until each
    /// has stopped.
    async fn stop_documents(&self, command: impl Fn(oneshot::Sender<()>) -> Command) {
        let mailboxes: Vec<Mailbox> = self
            .shared
            .mailboxes
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for mailbox in mailboxes {
            let (done, finished) = oneshot::channel();
            if mailbox.sender.send(command(done)).await.is_ok() {
                let _ = finished.await;
            }
        }
    }

    /// The database was restored under this process (its epoch is now
    /// `epoch`): every live document is dropped from memory unsaved (the
    /// restore added changes it does not hold, and its peers' sync states
    /// describe the data before), and only then are writes let in again,
    /// under the new epoch; every connection is told to reconnect, and the
    /// documents that gained changes are re-projected. Until then every
    /// write fails ([`StoreError::Restored`]), so nothing loaded before the
    /// restore is written after it.
    pub async fn restored(&self, epoch: String) {
        tracing::warn!(%epoch, "the database was restored from a backup; dropping every live document and connection");
        self.stop_documents(|done| Command::Forget { done }).await;
        self.shared.store.enter_epoch(epoch);
        // Closed once the new epoch is in: a device that reconnects at once
        // is told the new one, and offers everything it holds.
        if let Ok(connections) = self.connections.lock() {
            for revocation in connections.values().flat_map(HashMap::values) {
                revocation.restored();
            }
        }
        // In a task of its own: the watcher goes on closing revoked
        // devices' sockets meanwhile. A document that commits first
        // projects itself whole, and its catch-up is skipped.
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(e) = catch_up_lagging(&shared).await {
                tracing::error!(error = %e, "could not re-project after a restore; the next start does");
            }
        });
    }

    /// Registers a new connection of a live device. Past the device's
    /// socket budget its oldest connections are closed (told so through
    /// their [`Connection::superseded`]): a phone whose network changed
    /// reconnects while its old socket still looks open, so the newest is
    /// the one to keep.
    pub fn connect(&self, device: Device, storage_id: Option<String>) -> Arc<Connection> {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(Revocation::default());
        let budgets = &self.shared.config.budgets;
        if let Ok(mut connections) = self.connections.lock() {
            let of_device = connections.entry(device.id).or_default();
            of_device.insert(id, revoked.clone());
            let allowed = budgets.limits().sockets_per_device.max(1);
            if of_device.len() > allowed {
                let mut ids: Vec<u64> = of_device.keys().copied().collect();
                ids.sort_unstable();
                for old in &ids[..ids.len() - allowed] {
                    if let Some(old) = of_device.remove(old) {
                        old.supersede();
                    }
                }
            }
        }
        let key = PeerId::new(format!("connection-{id}"))
            .expect("a short constant-shaped peer id is valid");
        let outbox = Outbox::new(
            budgets.outboxes.share(device.id),
            budgets.outboxes.limits().per_connection,
        );
        Arc::new(Connection {
            id,
            key,
            device,
            outbox: Arc::new(outbox),
            revoked,
            overflow: Arc::new(Notify::new()),
            storage_id,
            documents: StdMutex::new(HashSet::new()),
        })
    }

    /// Forgets a closed connection; its documents save its sync states.
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
            if let Some(mailbox) = self.mailbox_if_live(id) {
                let _ = mailbox
                    .sender
                    .send(Command::Leave {
                        key: connection.key.clone(),
                    })
                    .await;
            }
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
                    revoked.revoke();
                }
                of_device.len()
            })
            .unwrap_or(0)
    }

    /// How long a device must wait before its next message is handled
    /// (its rate is the device's, across all its connections and
    /// reconnections).
    pub fn throttle(&self, device: DeviceId) -> Duration {
        self.shared
            .config
            .budgets
            .rates
            .take(device, std::time::Instant::now())
    }

    /// Decides whether a device may open a document, from the database,
    /// every time it is asked. A monthly log of the device's own branch
    /// that nobody has opened yet is created from its genesis.
    pub async fn access(&self, device: &Device, id: DocumentId) -> Result<Access, StoreError> {
        if self.shared.store.device_may_open(device.id, id).await? {
            return Ok(Access::Open);
        }
        if !self.shared.store.device_is_live(device.id).await? {
            return Ok(Access::Revoked);
        }
        // Another branch's document and a missing one take the same steps,
        // so not even the time of the answer tells them apart.
        let stored = self.shared.store.document(id).await?.is_some();
        let month = log_month(device.branch_id, id, now_ms());
        match month {
            Some(month) if !stored => {
                let doc = genesis(device.branch_id, DocumentKind::MonthlyLog(month));
                self.shared
                    .store
                    .ensure_log_document(device.branch_id, month, &doc.save())
                    .await?;
                tracing::info!(document = %id, %month, "opened a new monthly log");
                Ok(Access::Open)
            }
            // The device's own branch's month, created by another device
            // between the first check and this one: open, not missing.
            Some(_) if self.shared.store.device_may_open(device.id, id).await? => Ok(Access::Open),
            _ => Ok(Access::Unavailable),
        }
    }

    fn mailbox_if_live(&self, id: DocumentId) -> Option<Mailbox> {
        self.shared.mailboxes.lock().ok()?.get(&id).cloned()
    }

    /// The document's mailbox, starting its task if it is not live. The
    /// task loads the document itself: a cold load never holds the map.
    fn mailbox(&self, id: DocumentId) -> Option<Mailbox> {
        let mut mailboxes = self.shared.mailboxes.lock().ok()?;
        if let Some(mailbox) = mailboxes.get(&id) {
            return Some(mailbox.clone());
        }
        let generation = self.shared.next_generation.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(MAILBOX_CAPACITY);
        let mailbox = Mailbox { generation, sender };
        mailboxes.insert(id, mailbox.clone());
        tokio::spawn(document::run(id, generation, self.shared.clone(), receiver));
        Some(mailbox)
    }

    /// Applies a `request` or `sync` from a connection that may open the
    /// document, and waits until its changes are stored and its replies
    /// queued. The document task persists before it advertises.
    pub async fn receive_sync(
        &self,
        connection: &Arc<Connection>,
        id: DocumentId,
        data: Vec<u8>,
    ) -> Result<(), SyncRefusal> {
        let mut data = data;
        // A task that was retiring hands the data back; the next one is
        // fresh, so this loops at most a few times.
        for _ in 0..4 {
            let mailbox = self.mailbox(id).ok_or(SyncRefusal::Internal)?;
            let (done, answer) = oneshot::channel();
            let command = Command::Sync {
                connection: connection.clone(),
                data,
                done,
            };
            if let Err(mpsc::error::SendError(command)) = mailbox.sender.send(command).await {
                self.shared.retire(id, mailbox.generation);
                let Command::Sync { data: back, .. } = command else {
                    return Err(SyncRefusal::Internal);
                };
                data = back;
                continue;
            }
            match answer.await {
                Ok(Outcome::Done(result)) => return result,
                Ok(Outcome::Retry(back)) => data = back,
                Err(_) => return Err(SyncRefusal::Internal),
            }
        }
        Err(SyncRefusal::Internal)
    }

    /// Relays an ephemeral message to the document's other peers. They
    /// already sync the document, so access was checked for them; a
    /// document nobody has live has nobody to relay to.
    pub async fn relay_ephemeral(&self, from: &Connection, ephemeral: Ephemeral) {
        if let Some(mailbox) = self.mailbox_if_live(ephemeral.document_id) {
            let _ = mailbox
                .sender
                .send(Command::Ephemeral {
                    from: from.key.clone(),
                    message: Outbound::Ephemeral(Arc::new(ephemeral)),
                })
                .await;
        }
    }

    /// Another node stored changes of `id` (commit number `seq`): a live
    /// document reads and passes them on. Never waits: a document too busy
    /// to take the note now is caught by the slow poll.
    fn stored_elsewhere(&self, id: DocumentId, seq: i64, figures_lag: bool) {
        if let Some(mailbox) = self.mailbox_if_live(id) {
            let _ = mailbox
                .sender
                .try_send(Command::Stored { seq, figures_lag });
        }
    }

    /// Every live document learns its stored commit number, read for all
    /// of them in a few statements; one that is behind it reads what it
    /// lacks, one that is not does nothing (the number is compared in its
    /// task, which alone knows what it holds).
    async fn look_for_changes_elsewhere(&self) {
        let live: Vec<DocumentId> = match self.shared.mailboxes.lock() {
            Ok(mailboxes) => mailboxes.keys().copied().collect(),
            Err(_) => return,
        };
        if live.is_empty() {
            return;
        }
        match self.shared.store.document_numbers(&live).await {
            Ok(numbers) => {
                for n in numbers {
                    self.stored_elsewhere(n.id, n.seq, n.projected_seq < n.seq);
                }
            }
            // The next poll tries again.
            Err(e) => {
                tracing::warn!(error = %e, "could not read the live documents' commit numbers")
            }
        }
    }

    /// Documents held in memory right now.
    pub fn live_documents(&self) -> usize {
        self.shared.mailboxes.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Brings every lagging projection up to its document's stored heads: at
/// start, and after a restore added changes.
async fn catch_up_lagging(shared: &Arc<Shared>) -> Result<(), StoreError> {
    catch_up_lagging_where(shared, |_| true).await
}

/// [`catch_up_lagging`] for the documents `wanted` picks.
async fn catch_up_lagging_where(
    shared: &Arc<Shared>,
    wanted: impl Fn(&DocumentId) -> bool,
) -> Result<(), StoreError> {
    let mut lagging = shared.store.documents_to_reproject().await?;
    lagging.retain(|id| wanted(id));
    let mut caught_up = 0;
    for id in &lagging {
        // One document that cannot be projected must not keep the
        // server, and every other branch, down; it stays marked and is
        // tried again on its next merge and at the next start.
        match document::catch_up_projection(shared, *id).await {
            Ok(()) => caught_up += 1,
            Err(e) => {
                tracing::error!(document = %id, error = %e, "could not re-project a document")
            }
        }
    }
    if !lagging.is_empty() {
        tracing::info!(
            documents = caught_up,
            failed = lagging.len() - caught_up,
            "re-projected documents whose figures lagged"
        );
    }
    Ok(())
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

/// What other processes (the CLI) did to the database reaches this one
/// here: devices revoked lose their sockets, and a restore under the server
/// drops everything it held of the data before ([`Hub::restored`]).
async fn watch_other_processes(hub: std::sync::Weak<Hub>, mut shutdown: watch::Receiver<bool>) {
    let mut since = now_ms();
    let mut changes_looked_for = tokio::time::Instant::now();
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let period = match hub.upgrade() {
            Some(hub) => hub.shared.config.store_poll,
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
        let Some(hub) = hub.upgrade() else { return };
        if matches!(hub.shared.store.backend(), crate::store::Backend::Postgres)
            && changes_looked_for.elapsed() >= hub.shared.config.change_poll
        {
            changes_looked_for = tokio::time::Instant::now();
            // In a task of its own, one at a time: this loop goes on
            // closing revoked devices' sockets and noticing restores every
            // second however long the database takes to answer these.
            if sweeping
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished)
            {
                let looking = hub.clone();
                let shared = hub.shared.clone();
                sweeping = Some(tokio::spawn(async move {
                    looking.look_for_changes_elsewhere().await;
                    drop(looking);
                    // Figures a node left lagging (it died before levelling
                    // them, and nobody holds the document): projected here;
                    // the compare-and-set keeps two nodes from clashing. A
                    // document live here levels its own figures.
                    let live: HashSet<DocumentId> = match shared.mailboxes.lock() {
                        Ok(mailboxes) => mailboxes.keys().copied().collect(),
                        Err(_) => return,
                    };
                    if let Err(e) = catch_up_lagging_where(&shared, |id| !live.contains(id)).await {
                        tracing::warn!(error = %e, "could not look for lagging figures");
                    }
                }));
            }
        }
        match hub.shared.store.restored_epoch().await {
            Ok(Some(epoch)) => hub.restored(epoch).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the database's epoch"),
        }
        let checked_at = now_ms();
        match hub.shared.store.revoked_since(since).await {
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

/// Other nodes' commits reach this one here (PostgreSQL): each
/// announcement goes to the document if it is live. After every
/// (re)connection every live document looks for changes, since what was
/// announced while no connection listened is lost.
async fn hear_other_nodes(
    hub: std::sync::Weak<Hub>,
    url: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = Duration::from_millis(100);
    loop {
        let connected = tokio::select! {
            connected = ChangeListener::connect(&url) => connected,
            _ = shutdown.changed() => return,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other nodes' changes; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => return,
                }
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let connected_at = tokio::time::Instant::now();
        match hub.upgrade() {
            Some(hub) => hub.look_for_changes_elsewhere().await,
            None => return,
        }
        loop {
            let heard = tokio::select! {
                heard = listener.next() => heard,
                _ = shutdown.changed() => return,
            };
            match heard {
                Ok(Some(announced)) => match hub.upgrade() {
                    Some(hub) => hub.stored_elsewhere(announced.document, announced.seq, false),
                    None => return,
                },
                Ok(None) => {
                    tracing::warn!(
                        "lost the connection that hears other nodes' changes; reconnecting"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection that hears other nodes' changes; reconnecting");
                    break;
                }
            }
        }
        // A connection that keeps being closed soon after it opens (a
        // proxy, an idle-session timeout) is retried ever more slowly:
        // each reconnection makes every live document look again.
        if connected_at.elapsed() < Duration::from_secs(10) {
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = shutdown.changed() => return,
            }
            retry = (retry * 2).min(Duration::from_secs(5));
        } else {
            retry = Duration::from_millis(100);
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
