//! The sync engine.
//!
//! A [`Connection`] is one WebSocket to the server, speaking the
//! automerge-repo protocol. It syncs the documents it is subscribed to: the
//! roster, the current and previous month, every document holding an
//! unacknowledged local edit, and any month the app opens while connected.
//! Older months are not touched until the app opens them.
//!
//! One sync service drives it, and never two connections at once (each
//! document has one sync state with the server; two connections over it
//! take each other's replies and wait for good). Whoever drives a
//! connection holds `Inner::syncing`.
//! [`Client::start_background_sync`] keeps one connection open while the
//! app is active: a local edit is sent the moment it is on disk, the
//! server's changes arrive as they happen, and a broken connection is
//! retried with exponential backoff and jitter. [`Client::sync_now`] (and
//! the checkpoint) rides that connection when it is up: it asks for a round
//! (a ping the server must answer, proving the link, then everything
//! subscribed in sync) and waits for it. Without one it connects, syncs to
//! quiescence and closes. Neither polls; `sync_interval` only re-checks.
//!
//! Every wait has a deadline that frames other than sync messages do not
//! extend: a server that pings every second but never answers a sync
//! message ends `sync_now` at `sync_deadline`, and the live connection at
//! `receive_timeout` without progress.

pub(crate) mod transport;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use doorstep_protocol::schema::DocumentKind;
use doorstep_protocol::wire::{self, Limits, Message, PeerMetadata};
use doorstep_protocol::{DocumentId, Month, PeerId, StorageId, provenance};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::client::Client;
use crate::custody::Rebased;
use crate::error::ClientError;
use crate::replicas::{Replicas, server_peer};
use transport::{KnownServer, Socket, Transport};

/// Where syncing stands, for the app's status line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum SyncStatus {
    /// No connection to the server (no signal, server down).
    Offline {
        reason: String,
    },
    Syncing,
    /// Everything was exchanged at this time (seconds since the epoch);
    /// with the live connection, the device stays up to date from here.
    UpToDate {
        at_unix_secs: i64,
    },
    /// Everything else was exchanged at this time, but `documents`
    /// documents' edits cannot reach the server (held back after a
    /// refusal this phone could not re-base, or refused outright): they
    /// stay on this phone, exportable. Not "safe to wipe".
    HeldBack {
        at_unix_secs: i64,
        documents: u32,
        reason: String,
    },
    /// Something other than the network went wrong.
    Error {
        reason: String,
    },
    /// The server does not know this device (restored from a backup, a
    /// wrong URL). Syncing is retried; edits stay and can be exported.
    Unrecognised {
        reason: String,
    },
    /// The server revoked this device; syncing has stopped for good.
    Revoked {
        reason: String,
    },
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct SyncReport {
    /// Documents exchanged with the server.
    pub documents: usize,
    /// Local changes the server acknowledged during this sync.
    pub changes_sent: usize,
    /// Changes received from the server and stored.
    pub changes_received: usize,
    pub bytes_sent: usize,
    pub bytes_received: usize,
    /// Documents the server refused (not found for this device): their
    /// edits cannot be acknowledged. The others synced regardless.
    pub refused: Vec<DocumentId>,
}

/// Stops the sync service when dropped or stopped.
#[derive(Debug)]
pub struct BackgroundSync {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl BackgroundSync {
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The heads the rollups count each of the device's documents up to (hex
/// change hashes), as the server said on the sync socket.
pub(crate) type Counted = BTreeMap<DocumentId, Vec<String>>;

/// What a bounded sync brought: its report, and the counted heads when
/// they were asked for and the server speaks `wire::EXTENSION_COUNTED`.
#[derive(Debug, Default)]
pub(crate) struct Synced {
    pub report: SyncReport,
    pub counted: Option<Counted>,
}

/// A request to ride the live connection: a round, then the counted heads
/// if `counted`, answered on `reply`.
#[derive(Debug)]
pub(crate) struct Ride {
    counted: bool,
    reply: oneshot::Sender<Result<Synced, ClientError>>,
    /// When the rider gives up: its ping is due well before, so that it
    /// can still connect by itself over a dead live connection.
    deadline: Instant,
}

/// How `sync_now` and `checkpoint` reach the live connection.
pub(crate) type LiveRequests = mpsc::UnboundedSender<Ride>;

/// What the device decodes the server's frames within: the message limit,
/// and deflated frames (offered in every `join`; a server that did not
/// accept it sends none) up to the same limit.
fn server_limits() -> Limits {
    Limits {
        max_frame_bytes: MAX_MESSAGE_BYTES,
        inflate: Some(wire::Inflate::FROM_SERVER),
        ..Limits::default()
    }
}

const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Refusals one `sync_now` may re-base (each costs a connection) before it
/// reports one: a document takes one or two (the second when the form the
/// server kept had yet to arrive), and an import may touch several.
const MAX_REBASES_PER_SYNC: usize = 16;
const CLOSE_REVOKED: u16 = 4403;
/// Syncs a refused change may wait for the form the server kept.
const MAX_REBASE_WAITS: u32 = 3;
/// Messages without changes a re-based document sends on one connection
/// while it lacks some of the server's heads, before its changes go anyway.
const MAX_HEADS_ONLY: u32 = 4;
/// The server keeps a refused change's edits in another form: re-base.
const CLOSE_KEPT_IN_ANOTHER_FORM: u16 = 4409;
/// Largest message accepted from the server; a first sync of a big
/// roster arrives as one whole-document message. The socket's own frame
/// cap is set to the same (see `transport`).
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// Most bytes of changes the first flight of a document carries before the
/// server's heads are known (see `DocSession::generate_parts`).
const FIRST_FLIGHT_BYTES: usize = 1024 * 1024;
/// Changes per message, about: a cut link costs the server's answers to
/// at most the parts in flight, not the whole upload.
const PART_BYTES: usize = 16 * 1024;
/// How often an idle live connection pings, so a dead link is noticed
/// within `receive_timeout` and middleboxes keep it open.
const PING_EVERY: Duration = Duration::from_secs(30);

/// True when the server has all our changes and we have all of its.
fn in_sync(replica: &crate::replicas::Replica) -> bool {
    let session = &replica.session;
    let peer = server_peer();
    let known = session.their_heads(&peer).is_some_and(|h| {
        h.iter()
            .all(|h| session.document().get_change_meta_by_hash(h).is_some())
    });
    known && session.peer_covers(&peer, &session.heads())
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The documents a connection subscribes to before the app asks for any:
/// the roster and the current and previous month, by the server's clock
/// (`now`, see `clock`; a phone's clock in 1970 would ask for months the
/// server refuses).
fn eager(
    branch: doorstep_protocol::TenantId,
    now: time::OffsetDateTime,
) -> Vec<(DocumentId, DocumentKind)> {
    let mut eager = vec![(DocumentId::roster(branch), DocumentKind::Roster)];
    if let Some(month) = Month::new(now.year(), now.month() as u8) {
        for month in [month, month.previous()] {
            eager.push((
                DocumentId::monthly_log(branch, month),
                DocumentKind::MonthlyLog(month),
            ));
        }
    }
    eager
}

/// Turns a refused HTTP response into the error it stands for: only the
/// server's explicit revocation is [`ClientError::Revoked`]; a token it does
/// not know is [`ClientError::UnknownDevice`], which keeps every edit.
pub(crate) async fn refusal(response: reqwest::Response, what: &str) -> ClientError {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body["error"].as_str().unwrap_or("refused").to_owned();
    match (status.as_u16(), body["code"].as_str()) {
        (403, Some("device_revoked")) => ClientError::Revoked(message),
        (401, _) => ClientError::UnknownDevice(format!("{what}: {message}")),
        (500..=599, _) => ClientError::Network(format!("{what}: HTTP {status}")),
        _ => ClientError::Refused(format!("{what}: {message}")),
    }
}

/// Re-bases of changes the server keeps in another form, across
/// connections: one place for what they decide.
#[derive(Debug, Default)]
pub(crate) struct Rebasing {
    /// Documents whose next sync must hear the server before it sends any
    /// change: the form the server kept must be here before a refused
    /// change can be re-based, and an import may have made more than one.
    pull_first: HashSet<DocumentId>,
    /// Documents whose refused change could not be re-based: left out of
    /// every sync until the app opens again, so the rest keeps syncing
    /// (reported as refused; their edits stay here, and exportable).
    held_back: HashSet<DocumentId>,
    /// Per document, the refused change waiting for the form the server
    /// kept, and how many syncs it has waited.
    waits: HashMap<DocumentId, (automerge::ChangeHash, u32)>,
    /// Per document, re-bases in a row that failed for a passing reason
    /// (the store): retried with the next syncs, held back past a few.
    failures: HashMap<DocumentId, u32>,
}

impl Rebasing {
    /// Takes in what the re-base of `change` in `document` did; true when
    /// syncing again now is worth it.
    fn after(
        &mut self,
        document: DocumentId,
        change: automerge::ChangeHash,
        rebased: Result<Rebased, ClientError>,
    ) -> bool {
        if matches!(rebased, Ok(Rebased::NotYet | Rebased::Done { .. })) {
            self.pull_first.insert(document);
        }
        if matches!(rebased, Ok(Rebased::NotYet)) {
            // The form the server kept comes with the server's first
            // answer; a change still waiting after a few syncs (a bloom
            // filter's false positive kept it from us, say) would end
            // every sync.
            let wait = self.waits.entry(document).or_insert((change, 0));
            if wait.0 != change {
                *wait = (change, 0);
            }
            wait.1 += 1;
            if wait.1 > MAX_REBASE_WAITS {
                tracing::warn!(%document, "the form the server kept never came; holding the document back");
                self.held_back.insert(document);
            }
            return true;
        }
        self.waits.remove(&document);
        if rebased.is_ok() {
            self.failures.remove(&document);
        }
        match rebased {
            Ok(Rebased::Done { .. }) => true,
            Ok(Rebased::Nothing | Rebased::NotYet) => false,
            Ok(Rebased::Impossible(why)) => {
                // Sending it again would be refused again, and end every
                // sync: that document waits, the others go on.
                tracing::warn!(%document, %why, "cannot re-base a refused change; holding the document back");
                self.held_back.insert(document);
                true
            }
            Err(e) => {
                // The store failed in passing: the next sync meets the
                // refusal again and tries again, unless it keeps failing.
                let failures = self.failures.entry(document).or_insert(0);
                *failures += 1;
                if *failures > MAX_REBASE_WAITS {
                    tracing::warn!(%document, error = %e, "re-basing a refused change keeps failing; holding the document back");
                    self.failures.remove(&document);
                    self.held_back.insert(document);
                    return true;
                }
                tracing::warn!(%document, error = %e, "could not re-base a refused change; trying again with the next sync");
                false
            }
        }
    }
}

/// Up to date, unless documents are held back ([`Rebasing`]) or refused
/// by the server with edits it never acknowledged: those edits cannot
/// reach the server, and an app that read "up to date" as "safe to wipe
/// the phone" would lose them. So the status says so, and where they are:
/// on this phone, exportable.
fn settled_status(held_back: usize, refused_with_edits: usize, now: i64) -> SyncStatus {
    let mut problems = Vec::new();
    if held_back > 0 {
        problems.push(format!(
            "{held_back} document(s) held back: the server refused a change of theirs that this phone could not re-base"
        ));
    }
    if refused_with_edits > 0 {
        problems.push(format!(
            "{refused_with_edits} document(s) with edits the server does not take for this phone (not found for it)"
        ));
    }
    if problems.is_empty() {
        return SyncStatus::UpToDate { at_unix_secs: now };
    }
    SyncStatus::HeldBack {
        at_unix_secs: now,
        documents: u32::try_from(held_back.saturating_add(refused_with_edits)).unwrap_or(u32::MAX),
        reason: format!(
            "{}; their edits stay on this phone (export them) and the rest is up to date",
            problems.join("; ")
        ),
    }
}

/// One WebSocket to the server and the sync state of what it carries.
struct Connection {
    socket: Socket,
    me: PeerId,
    server: PeerId,
    /// Subscribed documents, and whether a message was sent for each yet
    /// (the first is a `request`, so the server may answer "unavailable").
    subscribed: HashMap<DocumentId, bool>,
    refused: HashSet<DocumentId>,
    report: SyncReport,
    exchanged: HashSet<DocumentId>,
    receive_timeout: Duration,
    /// Messages sent per document on this connection.
    sent: HashMap<DocumentId, u64>,
    /// Documents with unacknowledged edits, as the last `outgoing` read them.
    unacked: Vec<DocumentId>,
    /// Documents whose first flight carries no change (`Rebasing`).
    pull_first: HashSet<DocumentId>,
    /// Messages without changes sent per `pull_first` document on this
    /// connection while the server's heads were not all here (bounded by
    /// `MAX_HEADS_ONLY`).
    heads_only: HashMap<DocumentId, u32>,
    /// The overall deadline of a bounded sync; no wait goes past it.
    deadline: Option<Instant>,
    /// The server accepted `wire::EXTENSION_COUNTED` (as last seen, until
    /// this connection's `peer` arrives).
    counted_extension: bool,
    /// The server accepted `wire::EXTENSION_DEFLATE`: what we send may be
    /// compressed (what it sends is decoded either way).
    deflate: bool,
    /// The server's last `doorstep-counted`, until taken.
    counted: Option<Counted>,
    /// Counted requests sent and answers received on this connection: an
    /// answer is to the latest request when they are equal.
    counted_asks: u32,
    counted_answers: u32,
    /// Changes went out after the latest counted request: its answer may
    /// not cover them.
    changes_since_counted: bool,
    /// `join` went without waiting for `peer` (the server was known from a
    /// previous connection); `peer` is still to come.
    awaiting_peer: bool,
    /// The epoch (storage id) the server's `peer` announced, until the
    /// replicas have compared it with the one the device last saw.
    server_epoch: Option<String>,
    /// This connection offers every document on the device (the server's
    /// data was restored)...
    resyncing_everything: bool,
    /// ...and these are still to be exchanged: each is loaded in turn and
    /// keeps the connection from settling until the server has it.
    resync_pending: HashSet<DocumentId>,
    transport: Transport,
    /// The server's time when it answered the upgrade (see `clock`).
    server_now: time::OffsetDateTime,
    /// Where the app sees how far this sync has got.
    progress: std::sync::Arc<watch::Sender<crate::status::SyncProgress>>,
    /// When progress was last published.
    progress_at: Option<Instant>,
}

impl Drop for Connection {
    /// A connection that ends without a report (a cut, a refusal) ends its
    /// progress too: nothing is under way any more.
    fn drop(&mut self) {
        self.progress
            .send_replace(crate::status::SyncProgress::default());
    }
}

impl Connection {
    async fn open(client: &Client, deadline: Option<Instant>) -> Result<Connection, ClientError> {
        let identity = client.identity()?;
        let mut socket = client.inner.transport.connect(&identity.token).await?;
        // The server's time from the upgrade's `Date`, kept in the store too:
        // a phone whose clock is wrong and that restarts offline goes by it.
        let server_now = client.server_now().await?;
        let me = PeerId::new(format!("device-{}", uuid::Uuid::new_v4()))
            .map_err(|e| ClientError::Storage(e.to_string()))?;
        // A zero timeout would fail every handshake: at least ten seconds.
        let timeout = client
            .inner
            .config
            .receive_timeout
            .max(Duration::from_secs(10));
        let until = wait_until(timeout, deadline);
        let transport = client.inner.transport.clone();
        join(&mut socket, &me, &identity.storage_id, until).await?;
        // A server seen before: the first messages go right behind `join`
        // (a round trip saved); its `peer` is handled when it comes.
        let (server, awaiting_peer) = match transport.known_server() {
            Some(known) => (known, true),
            None => {
                let server = read_peer(&mut socket, until).await?;
                transport.remember_server(server.clone());
                (server, false)
            }
        };
        // The epoch this `peer` announced; an awaited one is read when it
        // comes.
        let server_epoch = if awaiting_peer {
            None
        } else {
            server.epoch.clone()
        };
        let extensions = &server.extensions;
        let (held_back, pull_first) = client
            .inner
            .rebasing
            .lock()
            .map(|r| (r.held_back.clone(), r.pull_first.clone()))
            .unwrap_or_default();
        Ok(Connection {
            socket,
            me,
            server: server.peer.clone(),
            subscribed: HashMap::new(),
            refused: held_back,
            report: SyncReport::default(),
            exchanged: HashSet::new(),
            receive_timeout: timeout,
            sent: HashMap::new(),
            unacked: Vec::new(),
            pull_first,
            heads_only: HashMap::new(),
            deadline,
            counted_extension: extensions.iter().any(|e| e == wire::EXTENSION_COUNTED),
            deflate: extensions.iter().any(|e| e == wire::EXTENSION_DEFLATE),
            counted: None,
            counted_asks: 0,
            counted_answers: 0,
            changes_since_counted: false,
            awaiting_peer,
            server_epoch,
            resyncing_everything: false,
            resync_pending: HashSet::new(),
            transport,
            server_now,
            progress: client.inner.progress.clone(),
            progress_at: None,
        })
    }

    /// When the wait starting now ends: the receive timeout, cut short by
    /// the overall deadline. Computed once per wait, so frames that are not
    /// sync messages (pings) do not extend it.
    fn wait_until(&self) -> Instant {
        wait_until(self.receive_timeout, self.deadline)
    }

    /// Subscribes to the eager set, the unacknowledged documents and the
    /// loaded ones, restarting each from its persisted sync state.
    async fn subscribe_initial(&mut self, replicas: &mut Replicas) -> Result<(), ClientError> {
        replicas.clear_pins();
        if let Some(epoch) = self.server_epoch.take() {
            replicas.server_epoch_seen(&epoch).await?;
        }
        if replicas.resync_everything().await? {
            self.subscribe_everything(replicas).await?;
        }
        for (id, kind) in eager(replicas.branch, self.server_now) {
            // One unreadable document must not stop the sync of the rest.
            match replicas.get(id, kind).await {
                Ok(_) => self.subscribe(replicas, id)?,
                Err(e) => {
                    tracing::warn!(document = %id, error = %e, "not syncing a document that does not load")
                }
            }
        }
        for id in replicas.unacked().await? {
            // Loaded in turn when it is its turn (see `outgoing`).
            self.subscribe(replicas, id)?;
        }
        for id in replicas.loaded() {
            self.subscribe(replicas, id)?;
        }
        Ok(())
    }

    /// Subscribes every document on the device: the server's data was
    /// restored from a backup (its epoch changed), so it may lack changes
    /// it once acknowledged, in documents this device would not otherwise
    /// open again (last year's logs). Each is loaded in turn, as for
    /// unacknowledged ones; once a round settles with none refused, the
    /// device goes back to its usual set ([`Replicas::resync_done`]).
    async fn subscribe_everything(&mut self, replicas: &mut Replicas) -> Result<(), ClientError> {
        tracing::info!("the server's data was restored; offering every document on the device");
        for (id, _) in replicas.all().await? {
            self.subscribe(replicas, id)?;
            if self.subscribed.contains_key(&id) {
                self.resync_pending.insert(id);
            }
        }
        self.resyncing_everything = true;
        Ok(())
    }

    /// A settled round: a re-sync of everything is done once each of its
    /// documents was exchanged (or refused: another branch's document the
    /// device still holds is not offered again and again).
    async fn settle_resync(&mut self, replicas: &mut Replicas) -> Result<(), ClientError> {
        if self.resyncing_everything && self.resync_pending.is_empty() {
            replicas.resync_done().await?;
            self.resyncing_everything = false;
        }
        Ok(())
    }

    fn subscribe(&mut self, replicas: &mut Replicas, id: DocumentId) -> Result<(), ClientError> {
        if self.subscribed.contains_key(&id) || self.refused.contains(&id) {
            return Ok(());
        }
        replicas.reconnect(id)?;
        self.subscribed.insert(id, false);
        Ok(())
    }

    /// What there is to say for every subscribed document (new local
    /// edits included), prepared under the replicas lock and sent after it
    /// is released, so a stalled link never blocks the app. A document
    /// evicted from memory comes back only for an unacknowledged edit, and
    /// only while fewer documents than the memory bound are mid-exchange;
    /// the rest wait their turn.
    async fn outgoing(&mut self, replicas: &mut Replicas) -> Result<Vec<Message>, ClientError> {
        replicas.purge_unpersisted();
        let unacked = replicas.unacked().await?;
        self.unacked.clone_from(&unacked);
        for id in replicas.loaded().into_iter().chain(unacked.iter().copied()) {
            // Opened by the app, or edited, while connected: on demand.
            self.subscribe(replicas, id)?;
        }
        let ids: Vec<DocumentId> = self.subscribed.keys().copied().collect();
        let mut messages = Vec::new();
        for id in ids {
            if replicas.peek(id).is_none() {
                let wanted = unacked.contains(&id) || self.resync_pending.contains(&id);
                if !wanted || !replicas.can_pin_another() {
                    continue;
                }
                if let Err(e) = replicas.existing(id).await {
                    tracing::warn!(document = %id, error = %e, "not syncing a document that does not load");
                    self.subscribed.remove(&id);
                    self.refused.insert(id);
                    self.resync_pending.remove(&id);
                    continue;
                }
                replicas.reconnect(id)?;
            }
            let first = !self.subscribed.get(&id).copied().unwrap_or(false);
            let parts = replicas.replica(id).map(|r| {
                // Data in the first flight: what the server has not
                // acknowledged goes with our heads, not a round trip after
                // them. Uploads go in parts the server answers one by one.
                let acked = r.acked.clone();
                let pull_first = self.pull_first.contains(&id);
                let asked = self.heads_only.entry(id).or_default();
                if pull_first
                    && !first
                    && *asked < MAX_HEADS_ONLY
                    && !r.session.holds_heads_of(&server_peer())
                {
                    // After a refusal, nothing goes until everything the
                    // server holds is here: the form it kept may be a head
                    // its first answer left out (a false positive in our
                    // bloom filter), which we ask for by name. A few times
                    // only: a head the server will not send again on this
                    // connection (it counts it sent, and we lost it) must
                    // not keep our changes from going at all.
                    let message = r.session.generate_without_changes(&server_peer(), 0);
                    // Counted when one goes (none does while one is in
                    // flight), not per pass of the loop.
                    if message.is_some() {
                        *asked += 1;
                    }
                    return message.into_iter().collect();
                }
                let first_flight =
                    (first && !pull_first).then_some((acked.as_slice(), FIRST_FLIGHT_BYTES));
                r.session
                    .generate_parts(&server_peer(), first_flight, PART_BYTES, 0)
            });
            let parts = parts.unwrap_or_default();
            if parts.is_empty() {
                if replicas.peek(id).is_some_and(in_sync) {
                    // Nothing more to say either way: evictable again.
                    replicas.unpin(id);
                    self.resync_pending.remove(&id);
                }
                continue;
            }
            replicas.pin(id);
            self.exchanged.insert(id);
            self.subscribed.insert(id, true);
            for (n, data) in parts.into_iter().enumerate() {
                self.changes_since_counted |=
                    automerge::sync::Message::decode(&data).map_or(true, |m| !m.changes.is_empty());
                self.report.bytes_sent += data.len();
                self.publish_progress();
                *self.sent.entry(id).or_default() += 1;
                let (sender_id, target_id, document_id) =
                    (self.me.clone(), self.server.clone(), id);
                messages.push(if first && n == 0 {
                    Message::Request {
                        sender_id,
                        target_id,
                        document_id,
                        data,
                    }
                } else {
                    Message::Sync {
                        sender_id,
                        target_id,
                        document_id,
                        data,
                    }
                });
            }
        }
        Ok(messages)
    }

    /// Sends prepared messages, each within the receive timeout: a link
    /// that accepts nothing for that long is dead.
    async fn send_all(&mut self, messages: Vec<Message>) -> Result<(), ClientError> {
        for message in messages {
            let bytes = if self.deflate {
                wire::encode_deflated(&message, wire::Inflate::FROM_DEVICE)
            } else {
                wire::encode(&message)
            };
            let sent =
                tokio::time::timeout_at(self.wait_until(), send_bytes(&mut self.socket, bytes))
                    .await
                    .map_err(|_| ClientError::Network("the server stopped reading".into()))
                    .and_then(|sent| sent);
            if let Err(e) = sent {
                return Err(self.refusal_behind(e).await);
            }
        }
        Ok(())
    }

    /// A send failed. Before the server's `peer` came, that is most often
    /// a server refusing the device (an `error` and a close sent before
    /// it read our `join`): read what it said, so a revoked or unknown
    /// device is told so and not taken for a network failure.
    async fn refusal_behind(&mut self, failed: ClientError) -> ClientError {
        if !self.awaiting_peer {
            return failed;
        }
        let until = wait_until(Duration::from_secs(5), self.deadline);
        match receive(&mut self.socket, until).await {
            Ok(bytes) => match wire::decode(&bytes, &server_limits()) {
                Ok(Message::Error { message, .. }) => {
                    closing_error(&mut self.socket, message, until).await
                }
                _ => failed,
            },
            Err(refused @ (ClientError::Revoked(_) | ClientError::UnknownDevice(_))) => refused,
            Err(_) => failed,
        }
    }

    /// Applies one message from the server and persists what it settled.
    /// Returns the server's `error` message, which ends the connection: the
    /// caller reads the close code once the replicas lock is released.
    async fn handle(
        &mut self,
        replicas: &mut Replicas,
        bytes: &[u8],
    ) -> Result<Option<String>, ClientError> {
        replicas.purge_unpersisted();
        self.report.bytes_received += bytes.len();
        self.publish_progress();
        match wire::decode(bytes, &server_limits())
            .map_err(|e| ClientError::Network(e.to_string()))?
        {
            Message::Sync {
                document_id, data, ..
            } => {
                if !self.subscribed.contains_key(&document_id) {
                    return Ok(None);
                }
                if replicas.peek(document_id).is_none() {
                    // Evicted since: the server's news brings it back.
                    replicas.existing(document_id).await?;
                    replicas.reconnect(document_id)?;
                }
                replicas.pin(document_id);
                self.exchanged.insert(document_id);
                self.publish_progress();
                let pending = replicas.pending_in(document_id);
                self.report.changes_received +=
                    replicas.receive(document_id, data.as_ref()).await?;
                if replicas.peek(document_id).is_some_and(in_sync) {
                    self.report.changes_sent += pending;
                    replicas.save_sync_state(document_id).await?;
                    replicas.unpin(document_id);
                    self.resync_pending.remove(&document_id);
                }
            }
            Message::DocUnavailable { document_id, .. } => {
                tracing::warn!(document = %document_id, "the server does not have this document for us");
                self.subscribed.remove(&document_id);
                self.refused.insert(document_id);
                self.resync_pending.remove(&document_id);
                replicas.unpin(document_id);
            }
            Message::Counted { counted, .. } => {
                self.counted_answers = self.counted_answers.saturating_add(1);
                self.counted = Some(counted);
            }
            Message::Peer {
                sender_id,
                peer_metadata,
                ..
            } if self.awaiting_peer => {
                let server = KnownServer::announced(sender_id, peer_metadata);
                let extensions = &server.extensions;
                self.awaiting_peer = false;
                self.counted_extension = extensions.iter().any(|e| e == wire::EXTENSION_COUNTED);
                self.deflate = extensions.iter().any(|e| e == wire::EXTENSION_DEFLATE);
                self.server = server.peer.clone();
                let epoch = server.epoch.clone();
                self.transport.remember_server(server);
                if let Some(epoch) = epoch
                    && replicas.server_epoch_seen(&epoch).await?
                {
                    self.subscribe_everything(replicas).await?;
                }
            }
            Message::Error { message, .. } => return Ok(Some(message)),
            _ => {}
        }
        Ok(None)
    }

    /// The error a server's `error` message stands for, from the close
    /// code that follows it.
    async fn closed_by_server(&mut self, message: String) -> ClientError {
        let until = self.wait_until();
        closing_error(&mut self.socket, message, until).await
    }

    /// Every subscribed document in memory is in sync, and none evicted
    /// still holds an unacknowledged edit.
    /// Uses the unacknowledged set `outgoing` read under the same lock.
    fn settled(&self, replicas: &Replicas) -> bool {
        self.subscribed.keys().all(|id| match replicas.peek(*id) {
            Some(replica) => in_sync(replica),
            None => !self.unacked.contains(id) && !self.resync_pending.contains(id),
        })
    }

    /// Asks for the counted heads; the answer lands in `self.counted`.
    fn counted_request(&mut self) -> Message {
        self.counted_asks = self.counted_asks.saturating_add(1);
        self.changes_since_counted = false;
        self.counted = None;
        Message::CountedRequest {
            sender_id: self.me.clone(),
            target_id: self.server.clone(),
        }
    }

    /// A counted request is out and not yet answered.
    fn counting(&self) -> bool {
        self.counted_answers < self.counted_asks
    }

    /// The counted heads answer everything sent so far.
    fn counted_fresh(&self) -> bool {
        !self.counting() && self.counted.is_some() && !self.changes_since_counted
    }

    /// Tells the app how far this sync has got, at most every quarter
    /// second: each publication wakes every state observer, which recounts
    /// the pending changes under the documents' lock this sync needs.
    fn publish_progress(&mut self) {
        const EVERY: Duration = Duration::from_millis(250);
        if self.progress_at.is_some_and(|at| at.elapsed() < EVERY) {
            return;
        }
        self.progress_at = Some(Instant::now());
        let now = crate::status::SyncProgress {
            documents: self.exchanged.len() as u64,
            bytes_sent: self.report.bytes_sent as u64,
            bytes_received: self.report.bytes_received as u64,
        };
        self.progress.send_if_modified(|progress| {
            let moved = *progress != now;
            *progress = now;
            moved
        });
    }

    fn report(&mut self) -> SyncReport {
        self.progress
            .send_replace(crate::status::SyncProgress::default());
        let mut report = std::mem::take(&mut self.report);
        report.documents = std::mem::take(&mut self.exchanged).len();
        report.refused = self.refused.iter().copied().collect();
        report
    }
}

impl Client {
    pub fn status(&self) -> SyncStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe_status(&self) -> watch::Receiver<SyncStatus> {
        self.inner.status.subscribe()
    }

    /// A receiver whose value changes whenever a change was persisted on
    /// this device, made here or received from the server.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn set_status(&self, status: SyncStatus) {
        self.inner.status.send_replace(status);
    }

    /// After a sync that ended with the server refusing a change it keeps
    /// in another form (`provenance`): re-bases that document
    /// ([`Client::rebase`]). True when syncing again now is worth it (the
    /// document was re-based, or the form the server kept is still to
    /// come); the paths that sync call this one place.
    async fn rebase_after_refusal<T>(&self, result: &Result<T, ClientError>) -> bool {
        let Err(ClientError::Refused(reason)) = result else {
            return false;
        };
        let Some((document, change)) = provenance::refused(reason) else {
            return false;
        };
        let rebased = self.rebase(document, change).await;
        let Ok(mut rebasing) = self.inner.rebasing.lock() else {
            return false;
        };
        rebasing.after(document, change, rebased)
    }

    /// The status a sync that exchanged everything it could settles in
    /// (both sync paths come here).
    fn settled_status(&self) -> SyncStatus {
        // A poisoned lock still holds the set: never "up to date" for want
        // of reading it.
        let held_back = self
            .inner
            .rebasing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .held_back
            .clone();
        // A document held back is reported refused too: counted once.
        let refused_with_edits = self
            .inner
            .refused_with_edits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .difference(&held_back)
            .count();
        settled_status(held_back.len(), refused_with_edits, now_secs())
    }

    /// Notes what a connection that settled saw refused with edits still
    /// unacknowledged, for [`Client::settled_status`].
    fn note_refused_with_edits(&self, connection: &Connection) {
        let refused: HashSet<DocumentId> = connection
            .refused
            .iter()
            .filter(|id| connection.unacked.contains(id))
            .copied()
            .collect();
        *self
            .inner
            .refused_with_edits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = refused;
    }

    /// Publishes the outcome of a sync and remembers an explicit revocation.
    async fn settle_status(&self, result: &Result<(), ClientError>) -> Result<(), ClientError> {
        match result {
            Ok(()) => self.set_status(self.settled_status()),
            Err(ClientError::Revoked(reason)) => {
                self.inner.store.set_meta(&[("revoked", reason)]).await?;
                self.set_status(SyncStatus::Revoked {
                    reason: reason.clone(),
                });
            }
            Err(ClientError::UnknownDevice(reason)) => self.set_status(SyncStatus::Unrecognised {
                reason: reason.clone(),
            }),
            Err(ClientError::Network(reason)) => self.set_status(SyncStatus::Offline {
                reason: reason.clone(),
            }),
            Err(e) => self.set_status(SyncStatus::Error {
                reason: e.to_string(),
            }),
        }
        Ok(())
    }

    /// Local changes the server has not yet acknowledged: the server's heads,
    /// as last seen, do not cover them. Zero means nothing can be lost by
    /// wiping the device.
    pub async fn pending_changes(&self) -> Result<usize, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        replicas.pending().await
    }

    /// Messages the live connection has sent so far, per document: what
    /// syncing costs the battery, and proof that an edit in one month
    /// syncs that month alone.
    pub fn messages_sent(&self) -> HashMap<DocumentId, u64> {
        self.inner
            .messages_sent
            .lock()
            .map(|sent| sent.clone())
            .unwrap_or_default()
    }

    /// The documents in memory now (for diagnostics and tests of the LRU).
    pub async fn loaded_documents(&self) -> Result<Vec<DocumentId>, ClientError> {
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        Ok(replicas.loaded())
    }

    /// One bounded sync, for a background job: the roster, the current and
    /// previous month, every document with unacknowledged edits and the
    /// months in memory, to quiescence. Rides the live connection when it
    /// is up; connects, syncs and closes otherwise. Returns within the
    /// configured `sync_deadline` whatever the link does. A document the
    /// server refuses is reported, and does not stop the others.
    pub async fn sync_now(&self) -> Result<SyncReport, ClientError> {
        self.sync_within(self.inner.config.sync_deadline).await
    }

    /// The app saw the network come back (a platform connectivity
    /// callback): the sync service retries at once instead of waiting out
    /// its backoff. Harmless when connected or with no service running.
    pub fn network_available(&self) {
        // The same wake-up a local edit gives the service's retry sleep.
        self.inner.edited.notify_one();
    }

    /// The report of a sync, logged at DEBUG: counts only, never contents
    /// (an app's log sink gets the SDK's own DEBUG lines; see the FFI's
    /// logging).
    fn log_report(result: &Result<SyncReport, ClientError>) {
        match result {
            Ok(report) => tracing::debug!(
                documents = report.documents,
                sent = report.changes_sent,
                received = report.changes_received,
                refused = report.refused.len(),
                "sync finished"
            ),
            Err(e) => tracing::debug!(error = %e, "sync did not finish"),
        }
    }

    /// [`Client::sync_now`] with its own deadline (a background job's
    /// remaining time): past it, a network error says so.
    pub async fn sync_within(&self, limit: Duration) -> Result<SyncReport, ClientError> {
        // Bounded, so a huge limit cannot overflow the clock.
        let limit = limit.min(Duration::from_secs(86_400));
        let result = self
            .sync_until(Instant::now() + limit, false)
            .await
            .map(|synced| synced.report);
        Self::log_report(&result);
        if result.is_ok() {
            // A sync writes sync states and received changes: fold the log
            // into the database while the app is not editing.
            self.inner.store.tidy().await;
        }
        result
    }

    /// One bounded sync (see [`Client::sync_now`]); with `counted`, the
    /// counted heads too, from the same connection, when the server speaks
    /// `wire::EXTENSION_COUNTED`.
    pub(crate) async fn sync_until(
        &self,
        deadline: Instant,
        counted: bool,
    ) -> Result<Synced, ClientError> {
        if let Some(reason) = self.inner.store.meta("revoked").await? {
            return Err(ClientError::Revoked(reason));
        }
        let mut live = self.inner.live.subscribe();
        // Each re-base drops the change refused; a few in a row is already
        // more than an honest device meets.
        let mut rebases = 0;
        loop {
            let requests = live.borrow_and_update().clone();
            if let Some(requests) = requests {
                let (reply, answer) = oneshot::channel();
                let ride = Ride {
                    counted,
                    reply,
                    deadline,
                };
                if requests.send(ride).is_ok() {
                    match tokio::time::timeout_at(deadline, answer).await {
                        Ok(Ok(result)) => return result,
                        // That connection ended before it could answer:
                        // the next one, or a connection of our own, will.
                        Ok(Err(_)) => continue,
                        Err(_) => return Err(past_deadline()),
                    }
                }
            }
            // No live connection serving: connect ourselves once nobody else
            // drives one. A live connection coming up meanwhile is ridden.
            let guard = tokio::select! {
                guard = self.inner.syncing.lock() => guard,
                changed = live.changed() => {
                    if changed.is_err() {
                        return Err(ClientError::Storage("the client is closing".into()));
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => return Err(past_deadline()),
            };
            self.set_status(SyncStatus::Syncing);
            let result = self.sync_to_quiescence(deadline, counted).await;
            drop(guard);
            if rebases < MAX_REBASES_PER_SYNC && self.rebase_after_refusal(&result).await {
                rebases += 1;
                continue;
            }
            let settled = result.as_ref().map(|_| ()).map_err(clone_error);
            self.settle_status(&settled).await?;
            return result;
        }
    }

    /// One connection of our own, to quiescence. Only network waits are
    /// bounded by `deadline` (each through `Connection::wait_until`): work
    /// under the replicas lock is never cut off half way, since a change
    /// applied in memory must reach the disk.
    async fn sync_to_quiescence(
        &self,
        deadline: Instant,
        counted: bool,
    ) -> Result<Synced, ClientError> {
        let mut connection =
            tokio::time::timeout_at(deadline, Connection::open(self, Some(deadline)))
                .await
                .map_err(|_| past_deadline())??;
        {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            connection.subscribe_initial(replicas).await?;
        }
        // The replicas are locked only to prepare and apply messages, never
        // across a network wait, so the app can keep editing and reading
        // while a slow sync runs.
        let counted = counted && connection.counted_extension;
        loop {
            let (outgoing, settled) = {
                let mut guard = self.replicas().await?;
                let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
                let outgoing = connection.outgoing(replicas).await?;
                let settled = connection.settled(replicas);
                if settled {
                    for id in connection.subscribed.keys().copied().collect::<Vec<_>>() {
                        replicas.save_sync_state(id).await?;
                    }
                    connection.settle_resync(replicas).await?;
                    replicas.trim().await?;
                    self.note_refused_with_edits(&connection);
                }
                (outgoing, settled)
            };
            // Settled, a last message may still go (Automerge's closing
            // acknowledgement); the server answers it with nothing.
            connection.send_all(outgoing).await?;
            if counted && connection.counted_asks == 0 {
                // Right behind the first flight, on this socket: the server
                // answers after persisting what came before it, and no
                // second connection is needed for the counted heads.
                let request = connection.counted_request();
                connection.send_all(vec![request]).await?;
            }
            if settled {
                break;
            }
            self.receive_one(&mut connection).await?;
        }
        // The `peer` of a pipelined `join` says whether the server speaks
        // the extension; an answer that came before later changes is asked
        // again.
        while connection.awaiting_peer {
            self.receive_one(&mut connection).await?;
        }
        if counted && connection.counted_extension {
            if !connection.counting() && !connection.counted_fresh() {
                let request = connection.counted_request();
                connection.send_all(vec![request]).await?;
            }
            while !connection.counted_fresh() {
                if !connection.counting() {
                    let request = connection.counted_request();
                    connection.send_all(vec![request]).await?;
                }
                self.receive_one(&mut connection).await?;
            }
        }
        let _ = tokio::time::timeout_at(deadline, connection.socket.close(None)).await;
        let counted = if counted && connection.counted_extension {
            connection.counted.take()
        } else {
            None
        };
        Ok(Synced {
            report: connection.report(),
            counted,
        })
    }

    /// Receives one frame and handles it; a server's `error` ends the
    /// connection with what its close code stands for.
    async fn receive_one(&self, connection: &mut Connection) -> Result<(), ClientError> {
        let until = connection.wait_until();
        let bytes = receive(&mut connection.socket, until).await?;
        let closing = {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            connection.handle(replicas, &bytes).await?
        };
        if let Some(message) = closing {
            return Err(connection.closed_by_server(message).await);
        }
        Ok(())
    }

    /// Keeps one live connection while the app is active (see the module
    /// docs). Stops for good when the device is revoked; a device the
    /// server does not recognise keeps retrying at the longest backoff.
    pub fn start_background_sync(&self) -> BackgroundSync {
        let (stop, stopped) = watch::channel(false);
        let client = self.clone();
        let task = tokio::spawn(async move { client.run_service(stopped).await });
        BackgroundSync {
            stop,
            task: Some(task),
        }
    }

    async fn run_service(&self, mut stopped: watch::Receiver<bool>) {
        let mut global_stop = self.inner.stop.subscribe();
        let config = &self.inner.config;
        let mut failures: u32 = 0;
        loop {
            if *stopped.borrow() || *global_stop.borrow() {
                return;
            }
            if self
                .inner
                .store
                .meta("revoked")
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return;
            }
            let result = self
                .live(&mut stopped, &mut global_stop, &mut failures)
                .await;
            if result.is_ok() {
                // Stopped. A status the connection settled stays true as
                // of its time; one stopped half way has not settled, and
                // "up to date" would claim edits reached the server.
                if matches!(self.status(), SyncStatus::Syncing) {
                    self.set_status(SyncStatus::Offline {
                        reason: "sync stopped".into(),
                    });
                }
                return;
            }
            // Re-based or not, the retry below (at once the first time,
            // then backing off) syncs what was made again.
            self.rebase_after_refusal(&result).await;
            if self.settle_status(&result).await.is_err() {
                tracing::warn!("could not record the sync status");
            }
            let delay = match result {
                Ok(()) => return,
                Err(ClientError::Revoked(_)) => return,
                Err(ClientError::UnknownDevice(e)) => {
                    tracing::warn!(error = %e, "the server does not recognise this device");
                    failures = failures.saturating_add(1);
                    config.backoff_max
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // The first retry goes at once: on a poor link most
                    // failures are one reset, and the next try works.
                    let delay = match failures {
                        1 => Duration::ZERO,
                        n => backoff(config.backoff_initial, config.backoff_max, n - 1),
                    };
                    tracing::info!(error = %e, ?delay, "sync failed; retrying");
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // A local edit is worth an early retry: the user is there.
                _ = self.inner.edited.notified() => {}
                _ = stopped.changed() => return,
                _ = global_stop.changed() => return,
            }
        }
    }

    /// One live connection, until it breaks (an error) or the service is
    /// stopped (`Ok`).
    async fn live(
        &self,
        stopped: &mut watch::Receiver<bool>,
        global_stop: &mut watch::Receiver<bool>,
        failures: &mut u32,
    ) -> Result<(), ClientError> {
        // The one connection: a bounded sync in progress finishes first
        // (within its deadline).
        let _driving = tokio::select! {
            guard = self.inner.syncing.lock() => guard,
            _ = stopped.changed() => return Ok(()),
            _ = global_stop.changed() => return Ok(()),
        };
        self.set_status(SyncStatus::Syncing);
        let mut connection = Connection::open(self, None).await?;
        {
            let mut guard = self.replicas().await?;
            let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
            connection.subscribe_initial(replicas).await?;
        }
        // From here `sync_now` rides this connection; the slot empties when
        // it ends, however it ends, and unanswered riders then see their
        // reply dropped and go on by themselves.
        let (requests, mut riders) = mpsc::unbounded_channel();
        let _serving = Serving::new(&self.inner.live, requests);
        let mut waiting: Vec<Ride> = Vec::new();
        // The ping whose answer the waiting riders need, and whether it came.
        let mut probe: u64 = 0;
        let mut probed = true;
        let timeout = connection.receive_timeout;
        let mut pings = Pings::new(timeout);
        // Checked as often as an idle connection pings: at least twice a
        // receive timeout.
        let mut check = tokio::time::interval(pings.every);
        check.tick().await;
        let mut recheck = self
            .inner
            .config
            .sync_interval
            // Bounded, so a huge setting cannot overflow the clock.
            .map(|every| every.clamp(Duration::from_secs(1), Duration::from_secs(86_400)))
            .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
        let mut last_heard = Instant::now();
        // The last sync message from the server, or the last moment with
        // nothing to wait for: the server's pings prove the link, not that
        // sync goes anywhere.
        let mut last_progress = Instant::now();
        loop {
            let (outgoing, settled) = {
                let mut guard = self.replicas().await?;
                let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
                let mut outgoing = connection.outgoing(replicas).await?;
                if let Ok(mut sent) = self.inner.messages_sent.lock() {
                    sent.clone_from(&connection.sent);
                }
                // `handle` saved each document's state as it settled.
                let settled = connection.settled(replicas);
                if settled {
                    connection.settle_resync(replicas).await?;
                    replicas.trim().await?;
                    self.note_refused_with_edits(&connection);
                    let now = self.settled_status();
                    // A settled status differs by its time alone: not news.
                    let unchanged = match (self.status(), &now) {
                        (SyncStatus::UpToDate { .. }, SyncStatus::UpToDate { .. }) => true,
                        (
                            SyncStatus::HeldBack {
                                documents, reason, ..
                            },
                            SyncStatus::HeldBack {
                                documents: now_documents,
                                reason: now_reason,
                                ..
                            },
                        ) => documents == *now_documents && reason == *now_reason,
                        (before, now) => before == *now,
                    };
                    if !unchanged {
                        *failures = 0;
                        self.set_status(now);
                    }
                    let wants_counted =
                        connection.counted_extension && waiting.iter().any(|rider| rider.counted);
                    if probed && wants_counted && !connection.counted_fresh() {
                        // The counted heads, on this socket, once more if
                        // changes went after the last request.
                        if !connection.counting() {
                            outgoing.push(connection.counted_request());
                        }
                    } else if probed && !waiting.is_empty() {
                        for id in connection.subscribed.keys().copied().collect::<Vec<_>>() {
                            replicas.save_sync_state(id).await?;
                        }
                        let report = connection.report();
                        let counted = connection.counted.take();
                        for rider in waiting.drain(..) {
                            let synced = Synced {
                                report: report.clone(),
                                counted: counted.clone().filter(|_| rider.counted),
                            };
                            let _ = rider.reply.send(Ok(synced));
                        }
                    }
                } else if matches!(
                    self.status(),
                    SyncStatus::UpToDate { .. } | SyncStatus::HeldBack { .. }
                ) {
                    self.set_status(SyncStatus::Syncing);
                }
                (outgoing, settled)
            };
            // Idle is progress only with no probe outstanding: the loop
            // turns on every server ping, which proves nothing going up.
            if settled && probed && outgoing.is_empty() {
                last_progress = Instant::now();
            }
            connection.send_all(outgoing).await?;
            tokio::select! {
                frame = connection.socket.next() => {
                    last_heard = Instant::now();
                    if let Some(Ok(WsMessage::Pong(payload))) = &frame {
                        if pings.answered(payload).is_some_and(|n| n >= probe) {
                            probed = true;
                        }
                        continue;
                    }
                    let Some(bytes) = binary_frame(frame)? else { continue };
                    last_progress = Instant::now();
                    let closing = {
                        let mut guard = self.replicas().await?;
                        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
                        connection.handle(replicas, &bytes).await?
                    };
                    if let Some(message) = closing {
                        return Err(connection.closed_by_server(message).await);
                    }
                }
                Some(rider) = riders.recv() => {
                    // Given up already (a deadline of zero, a dropped
                    // call): nothing to prove to anyone.
                    if rider.reply.is_closed() {
                        continue;
                    }
                    let rider_deadline = rider.deadline;
                    if waiting.is_empty() {
                        // The report covers what happened for these riders.
                        connection.report();
                    }
                    let ask_counted = rider.counted && connection.counted_extension && !connection.counting();
                    waiting.push(rider);
                    if ask_counted {
                        // Along with the probe: the server answers it after
                        // what we sent before; changes sent later are asked
                        // about again once settled.
                        let request = connection.counted_request();
                        connection.send_all(vec![request]).await?;
                    }
                    // Its answer proves the link works now; being in sync
                    // then means our edits are acknowledged and the
                    // server's heads known (a push it had queued may still
                    // be behind the pong: the server serves both in turn).
                    let within = rider_ping_within(timeout, rider_deadline.saturating_duration_since(Instant::now()));
                    probe = send_ping(&mut connection, &mut pings, within, timeout).await?;
                    probed = false;
                }
                // The server's own pings and pushes may keep arriving over
                // a link whose way up is gone (a NAT that forgot the flow):
                // only the answer to our ping shows it works.
                _ = until_due(pings.due()) => {
                    return Err(ClientError::Network("the server did not answer a ping within the receive timeout".into()));
                }
                _ = self.inner.edited.notified() => {}
                _ = check.tick() => {
                    if last_heard.elapsed() > timeout {
                        return Err(ClientError::Network("the server stopped answering".into()));
                    }
                    if (!settled || !probed) && last_progress.elapsed() > timeout {
                        return Err(ClientError::Network("the server stopped answering sync messages".into()));
                    }
                    if pings.idle_ping_due() {
                        send_ping(&mut connection, &mut pings, timeout, timeout).await?;
                    }
                }
                _ = tick(&mut recheck) => {
                    // Restart the exchange of each document not in sync from
                    // its saved state: anything either side missed is found
                    // again. A document in sync is left alone: the server
                    // stays silent to a repeat of heads it has answered, so
                    // restarting it would wait for a reply that never comes.
                    let mut guard = self.replicas().await?;
                    let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
                    for id in connection.subscribed.keys().copied().collect::<Vec<_>>() {
                        if !replicas.peek(id).is_some_and(in_sync) {
                            replicas.reconnect(id)?;
                        }
                    }
                }
                _ = stopped.changed() => break,
                _ = global_stop.changed() => break,
            }
        }
        let _ = tokio::time::timeout(timeout, connection.socket.close(None)).await;
        Ok(())
    }
}

/// Publishes a live connection's request channel while it serves, and
/// takes it back when dropped (the connection ended, however).
struct Serving<'a> {
    slot: &'a watch::Sender<Option<LiveRequests>>,
}

impl<'a> Serving<'a> {
    fn new(slot: &'a watch::Sender<Option<LiveRequests>>, requests: LiveRequests) -> Self {
        slot.send_replace(Some(requests));
        Serving { slot }
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.slot.send_replace(None);
    }
}

/// The live connection's own pings, numbered: a pong says how far the
/// server has read what we sent, and a ping still unanswered at its due
/// time says the way up is gone (the server's own pings and pushes may
/// keep arriving over it: a NAT that forgot the flow).
#[derive(Debug)]
struct Pings {
    sent: u64,
    /// Sent and not yet answered, oldest first, each with its due time.
    unanswered: VecDeque<(u64, Instant)>,
    last_sent: Option<Instant>,
    /// How often an idle connection pings.
    every: Duration,
}

impl Pings {
    /// Pings of a connection whose receive timeout is `timeout`: an idle
    /// one every `PING_EVERY` (the radio sleeps between), but at least
    /// twice a receive timeout, so that a healthy link always answers
    /// within one whatever the server's own ping interval.
    fn new(timeout: Duration) -> Pings {
        Pings {
            sent: 0,
            unanswered: VecDeque::new(),
            last_sent: None,
            every: PING_EVERY.min(timeout / 2),
        }
    }

    /// The next ping's number and payload, counted as sent now and due
    /// `within` from now.
    fn next(&mut self, within: Duration) -> (u64, Vec<u8>) {
        self.sent += 1;
        let now = Instant::now();
        self.unanswered.push_back((self.sent, now + within));
        self.last_sent = Some(now);
        (self.sent, self.sent.to_be_bytes().to_vec())
    }

    /// Takes in a pong: the ping it answers and every earlier one are
    /// answered (the server reads in order). `None` for a pong that is
    /// not one of ours.
    fn answered(&mut self, payload: &[u8]) -> Option<u64> {
        let n = u64::from_be_bytes(payload.try_into().ok()?);
        if n == 0 || n > self.sent {
            return None;
        }
        while self.unanswered.front().is_some_and(|(sent, _)| *sent <= n) {
            self.unanswered.pop_front();
        }
        Some(n)
    }

    /// The earliest due time of a ping still unanswered.
    fn due(&self) -> Option<Instant> {
        self.unanswered.iter().map(|(_, due)| *due).min()
    }

    /// Whether an idle ping is due (a tick early counts: the check that
    /// asks runs on a timer of the same period).
    fn idle_ping_due(&self) -> bool {
        self.last_sent
            .is_none_or(|at| at.elapsed() >= self.every.mul_f64(0.9))
    }
}

/// How long a ping sent for a rider may go unanswered: half the rider's
/// time left, so it can still connect by itself, but never less than a
/// few seconds (a round trip on a slow link; a rider with no time left
/// gave up already) nor more than the receive timeout.
fn rider_ping_within(timeout: Duration, rider_left: Duration) -> Duration {
    (rider_left / 2).clamp(RIDER_PING_FLOOR.min(timeout), timeout)
}

/// The shortest wait for the answer to a rider's ping.
const RIDER_PING_FLOOR: Duration = Duration::from_secs(5);

/// Sends the next numbered ping, due `within`; returns its number.
async fn send_ping(
    connection: &mut Connection,
    pings: &mut Pings,
    within: Duration,
    timeout: Duration,
) -> Result<u64, ClientError> {
    let (n, payload) = pings.next(within);
    tokio::time::timeout(
        timeout,
        connection.socket.send(WsMessage::Ping(payload.into())),
    )
    .await
    .map_err(|_| ClientError::Network("the server stopped reading".into()))?
    .map_err(|e| ClientError::Network(e.to_string()))?;
    Ok(n)
}

/// Sleeps until `due`; forever without one.
async fn until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

fn past_deadline() -> ClientError {
    ClientError::Network("the sync did not finish within its deadline".into())
}

/// The end of a wait starting now: `timeout` from now, or the overall
/// deadline if that comes first.
fn wait_until(timeout: Duration, deadline: Option<Instant>) -> Instant {
    let until = Instant::now() + timeout;
    deadline.map_or(until, |deadline| deadline.min(until))
}

/// The next re-check tick, or never when re-checks are off.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// `ClientError` is not `Clone` (it need not be for apps); the status only
/// needs its kind and message.
fn clone_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Revoked(m) => ClientError::Revoked(m.clone()),
        ClientError::UnknownDevice(m) => ClientError::UnknownDevice(m.clone()),
        ClientError::Network(m) => ClientError::Network(m.clone()),
        other => ClientError::Storage(other.to_string()),
    }
}

/// Delay before retry number `failures`: doubling from `initial` up to
/// `max`, then "equal jitter" (between half and all of it) so that a district's
/// phones regaining signal together do not all retry at once.
pub(crate) fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let full = initial.saturating_mul(1u32 << exponent).min(max);
    let half = full / 2;
    half + full
        .saturating_sub(half)
        .mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

async fn send(socket: &mut Socket, message: &Message) -> Result<(), ClientError> {
    send_bytes(socket, wire::encode(message)).await
}

async fn send_bytes(socket: &mut Socket, bytes: Vec<u8>) -> Result<(), ClientError> {
    socket
        .send(WsMessage::Binary(bytes.into()))
        .await
        .map_err(|e| ClientError::Network(e.to_string()))
}

/// A binary frame's bytes, `None` for control frames; a close frame or a
/// broken stream becomes the error it stands for.
fn binary_frame(
    frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<Vec<u8>>, ClientError> {
    match frame {
        Some(Ok(WsMessage::Binary(bytes))) => Ok(Some(bytes.to_vec())),
        Some(Ok(WsMessage::Close(frame))) => {
            let (code, reason) = frame
                .map(|f| (u16::from(f.code), f.reason.to_string()))
                .unwrap_or((1005, String::new()));
            Err(close_error(code, reason))
        }
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(ClientError::Network(e.to_string())),
        None => Err(ClientError::Network("the connection closed".into())),
    }
}

/// The next binary frame, by `until`: control frames (the server's pings)
/// are read past but do not extend the wait.
async fn receive(socket: &mut Socket, until: Instant) -> Result<Vec<u8>, ClientError> {
    loop {
        let frame = tokio::time::timeout_at(until, socket.next())
            .await
            .map_err(|_| ClientError::Network("the server stopped answering".into()))?;
        if let Some(bytes) = binary_frame(frame)? {
            return Ok(bytes);
        }
    }
}

fn close_error(code: u16, reason: String) -> ClientError {
    match code {
        CLOSE_REVOKED => ClientError::Revoked(reason),
        CLOSE_UNAUTHORIZED => ClientError::UnknownDevice(reason),
        1002 | 1009 | CLOSE_KEPT_IN_ANOTHER_FORM => ClientError::Refused(reason),
        _ => ClientError::Network(format!("closed by the server ({code}): {reason}")),
    }
}

/// After an `error` message the server closes; its close code says why.
async fn closing_error(socket: &mut Socket, message: String, until: Instant) -> ClientError {
    match receive(socket, until).await {
        Err(ClientError::Revoked(_)) => ClientError::Revoked(message),
        Err(ClientError::UnknownDevice(_)) => ClientError::UnknownDevice(message),
        Err(ClientError::Refused(_)) => ClientError::Refused(message),
        _ => ClientError::Network(message),
    }
}

/// Sends `join`, offering Doorstep's extensions.
async fn join(
    socket: &mut Socket,
    me: &PeerId,
    storage_id: &str,
    until: Instant,
) -> Result<(), ClientError> {
    let join = Message::Join {
        sender_id: me.clone(),
        supported_protocol_versions: vec![wire::PROTOCOL_VERSION.into()],
        peer_metadata: Some(PeerMetadata {
            storage_id: StorageId::new(storage_id).ok(),
            is_ephemeral: false,
            extensions: vec![
                wire::EXTENSION_COUNTED.into(),
                wire::EXTENSION_DEFLATE.into(),
            ],
        }),
    };
    tokio::time::timeout_at(until, send(socket, &join))
        .await
        .map_err(|_| ClientError::Network("the server stopped reading".into()))?
}

/// Waits for the server's `peer`: its peer id and the extensions it
/// accepted (none from a server without them).
async fn read_peer(socket: &mut Socket, until: Instant) -> Result<KnownServer, ClientError> {
    let bytes = receive(socket, until).await?;
    match wire::decode(&bytes, &server_limits()).map_err(|e| ClientError::Network(e.to_string()))? {
        Message::Peer {
            sender_id,
            peer_metadata,
            ..
        } => Ok(KnownServer::announced(sender_id, peer_metadata)),
        Message::Error { message, .. } => Err(closing_error(socket, message, until).await),
        other => Err(ClientError::Network(format!(
            "expected peer, got {}",
            other.type_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for failures in 1..30 {
            let full = (initial * 2u32.pow((failures - 1).min(20))).min(max);
            let delay = backoff(initial, max, failures);
            assert!(
                delay >= full / 2 && delay <= full,
                "{failures}: {delay:?} vs {full:?}"
            );
        }
    }

    #[test]
    fn a_refused_change_that_cannot_be_re_based_holds_back_its_document_alone() {
        let log = DocumentId::monthly_log(
            doorstep_protocol::TenantId::new_v7(),
            "2026-11".parse().expect("a month"),
        );
        let other = DocumentId::roster(doorstep_protocol::TenantId::new_v7());
        let change = automerge::ChangeHash([1; 32]);
        let mut rebasing = Rebasing::default();
        // Waiting for the kept form: sync again, hearing the server first;
        // after three waits for the same change, held back.
        for _ in 0..MAX_REBASE_WAITS {
            assert!(rebasing.after(log, change, Ok(Rebased::NotYet)));
            assert!(rebasing.pull_first.contains(&log));
            assert!(!rebasing.held_back.contains(&log));
        }
        assert!(rebasing.after(log, change, Ok(Rebased::NotYet)));
        assert!(rebasing.held_back.contains(&log));
        // A re-base the documents refuse holds back that document and no
        // other.
        assert!(rebasing.after(other, change, Ok(Rebased::Impossible("x".into()))));
        assert_eq!(rebasing.held_back.len(), 2);
        // One that failed in passing (the store) is tried again with the
        // next syncs, and held back only once it keeps failing.
        let third = DocumentId::roster(doorstep_protocol::TenantId::new_v7());
        for _ in 0..MAX_REBASE_WAITS {
            assert!(!rebasing.after(third, change, Err(ClientError::Storage("busy".into()))));
            assert!(!rebasing.held_back.contains(&third));
        }
        assert!(rebasing.after(third, change, Err(ClientError::Storage("busy".into()))));
        assert!(rebasing.held_back.contains(&third));
        // A success in between starts the count again.
        let fourth = DocumentId::roster(doorstep_protocol::TenantId::new_v7());
        for _ in 0..MAX_REBASE_WAITS {
            assert!(!rebasing.after(fourth, change, Err(ClientError::Storage("busy".into()))));
        }
        assert!(!rebasing.after(fourth, change, Ok(Rebased::Nothing)));
        assert!(!rebasing.after(fourth, change, Err(ClientError::Storage("busy".into()))));
        assert!(!rebasing.held_back.contains(&fourth));
        // A document that no longer holds the change: nothing to retry.
        let mut fresh = Rebasing::default();
        assert!(!fresh.after(log, change, Ok(Rebased::Nothing)));
        assert!(fresh.after(log, change, Ok(Rebased::Done { remade: 1 })));
        assert!(fresh.held_back.is_empty() && fresh.waits.is_empty());
    }

    #[test]
    fn a_pong_answers_its_ping_and_every_earlier_one() {
        let timeout = Duration::from_secs(10);
        let mut pings = Pings::new(timeout);
        assert_eq!(pings.every, Duration::from_secs(5));
        assert_eq!(Pings::new(Duration::from_secs(90)).every, PING_EVERY);
        assert_eq!(pings.due(), None);
        assert!(pings.idle_ping_due());
        let (first, payload) = pings.next(timeout);
        let first_due = pings.due().expect("a ping out");
        let (second, _) = pings.next(timeout);
        // A rider's ping may be due before the idle ones sent earlier.
        let (third, third_payload) = pings.next(Duration::from_secs(1));
        let third_due = pings.due().expect("pings out");
        assert!(third_due < first_due);
        assert!(!pings.idle_ping_due());
        // A pong for the second answers the first too, not the third.
        assert_eq!(pings.answered(&second.to_be_bytes()), Some(second));
        assert_eq!(pings.unanswered.len(), 1);
        assert_eq!(pings.due(), Some(third_due));
        // A stale pong changes nothing; a foreign or garbled one is not ours.
        assert_eq!(pings.answered(&payload), Some(first));
        assert_eq!(pings.unanswered.len(), 1);
        assert_eq!(pings.answered(&99u64.to_be_bytes()), None);
        assert_eq!(pings.answered(b"xyz"), None);
        assert_eq!(pings.answered(&[]), None);
        assert_eq!(pings.answered(&third_payload), Some(third));
        assert_eq!(pings.due(), None);
    }

    #[test]
    fn a_riders_ping_leaves_it_half_its_time_within_bounds() {
        let secs = Duration::from_secs;
        // Half the time left, to connect by itself with the other half.
        assert_eq!(rider_ping_within(secs(90), secs(120)), secs(60));
        assert_eq!(rider_ping_within(secs(90), secs(30)), secs(15));
        // Never less than the floor: a rider short of time (or with none)
        // does not end a healthy connection.
        assert_eq!(
            rider_ping_within(secs(90), Duration::ZERO),
            RIDER_PING_FLOOR
        );
        assert_eq!(rider_ping_within(secs(90), secs(4)), RIDER_PING_FLOOR);
        // Never more than the receive timeout.
        assert_eq!(rider_ping_within(secs(10), secs(600)), secs(10));
        assert_eq!(rider_ping_within(secs(2), secs(1)), secs(2));
    }

    /// An app may take "up to date" for "safe to wipe": never while a
    /// document's edits are held back on the phone.
    #[test]
    fn a_held_back_document_is_never_reported_up_to_date() {
        assert_eq!(
            settled_status(0, 0, 7),
            SyncStatus::UpToDate { at_unix_secs: 7 }
        );
        match settled_status(2, 0, 7) {
            SyncStatus::HeldBack {
                at_unix_secs: 7,
                documents: 2,
                reason,
            } => {
                assert!(reason.starts_with("2 document(s) held back"), "{reason}");
                assert!(reason.contains("export"), "{reason}");
            }
            other => panic!("held back, yet {other:?}"),
        }
        match settled_status(0, 1, 7) {
            SyncStatus::HeldBack {
                documents: 1,
                reason,
                ..
            } => {
                assert!(reason.starts_with("1 document(s) with edits"), "{reason}");
                assert!(reason.contains("export"), "{reason}");
            }
            other => panic!("refused with edits, yet {other:?}"),
        }
    }
}
