//! The server's keeping of one branch document for every device that syncs it.
//!
//! A [`Keeper`] is a sans-IO state machine: events go in (a device's sync
//! message, a storage result, a reload after a failure) and effects come out
//! as values (a [`Batch`] to persist, [`Outgoing`] messages to send, a
//! [`Refusal`] that closes one device's connection). The driver in the
//! server does the I/O; the order that makes the acknowledgement durable is
//! carried by the types:
//!
//! - applying a message with new changes yields a [`Batch`] holding a
//!   [`Ticket`]. While a ticket is out, the keeper produces no message for
//!   anyone: every method that returns [`Outgoing`] is gated on it.
//! - only [`Keeper::confirm`], which consumes the ticket and is called after
//!   the store committed the batch, turns it into messages that advertise the
//!   new heads. [`Keeper::abandon`] consumes it on failure and leaves the
//!   keeper [`Keeper::needs_reload`]: memory holds changes the disk does not,
//!   and nothing is sent until [`Keeper::reload`] replaces the document with
//!   what the store holds.
//!
//! Admission comes before application: a message is measured by
//! [`crate::admission`] (bloom filters, counts, inflated bytes, operations)
//! and checked against the document's ceilings before Automerge sees it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use automerge::sync::{self, MessageVersion, SyncDoc};
use automerge::{ActorId, Automerge, ChangeHash, Patch, PatchLog, ReadDoc};

use crate::admission::{
    AdmissionError, AdmissionLimits, CreatedObject, Inspected, ObjectKey, inspect_sync_message,
};
use crate::ids::{DeviceId, PeerId};
use crate::provenance;
use crate::schema::GENESIS_ACTOR;

/// Ceilings of one kept document, on top of the per-message admission limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeeperLimits {
    pub admission: AdmissionLimits,
    /// Stored bytes (compressed, as Automerge saves them) a document may
    /// grow to; past it every change is refused with a clear error.
    pub max_document_bytes: u64,
    /// Changes waiting for their dependencies, per document.
    pub max_orphans: usize,
    /// Bytes of those changes, per document.
    pub max_orphan_bytes: u64,
    /// Distinct authors of the change chunks in one message: Automerge's
    /// cost grows faster than linearly with a document's actors, and every
    /// actor stays in the document for good.
    pub max_actors_per_message: usize,
    /// Distinct actors a document may hold over its life. Automerge's cost
    /// per change grows with a document's actors (at 10,240 actors each
    /// message took 3 s, a fresh load 2.3 s) and an actor stays in the
    /// document for good, so past this every new actor is refused.
    pub max_document_actors: usize,
    /// Actors one device may add to a document over its life: its share of
    /// `max_document_actors`, so one device (or a stolen token) cannot use
    /// up a roster's actors and shut every new phone, restored store or
    /// import out of it for good.
    pub max_actors_per_device: usize,
    /// How deep, counting from the document root, an object a message makes
    /// may sit. Automerge's patch log records every operation's path from
    /// the root, so applying costs the square of the depth (a 16 KB change
    /// nesting maps 8,000 deep took 3.2 GB), and every reader walks it
    /// again.
    pub max_depth: usize,
    /// Changes a document may hold over its life. Its stored bytes do not
    /// bound them: a snapshot keeps a small change in a few bytes, while
    /// Automerge's change graph and the server's `change_log` keep a row
    /// for each for good.
    pub max_document_changes: u64,
}

impl Default for KeeperLimits {
    fn default() -> Self {
        KeeperLimits {
            admission: AdmissionLimits::default(),
            max_document_bytes: 256 * 1024 * 1024,
            max_orphans: 1024,
            max_orphan_bytes: 16 * 1024 * 1024,
            max_actors_per_message: 256,
            // A branch has tens of devices; the SDK writes with one actor
            // per install, a stock client with one per document handle.
            max_document_actors: 1024,
            // The SDK adds one per generation of its store and one per
            // import; a stock client one per document handle it opens.
            max_actors_per_device: 64,
            // The branch schema nests four levels (root, collection,
            // record, a set or a stock client's Text); the projection reads
            // sixteen. Twice that leaves room without making depth a cost.
            max_depth: 32,
            // A branch's month is thousands of edits and its roster tens of
            // thousands over years; a million is far past either.
            max_document_changes: 1_000_000,
        }
    }
}

/// A change that arrived from a device and is not yet persisted.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub hash: ChangeHash,
    pub actor: ActorId,
    /// The change chunk, compressed as Automerge stores it.
    pub bytes: Vec<u8>,
}

/// Proof that a batch was handed out for persisting. It cannot be made or
/// copied outside this module, so messages advertising the batch's heads
/// exist only after the store gave it back through [`Keeper::confirm`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a ticket must be confirmed or abandoned, or the document stays silent"]
pub struct Ticket(u64);

/// What must be stored, in one transaction, before anyone hears of it.
#[derive(Debug)]
#[must_use = "a batch must be persisted and its ticket confirmed or abandoned"]
pub struct Batch {
    pub ticket: Ticket,
    /// The device whose connection sent the changes.
    pub device: DeviceId,
    /// New changes in causal order.
    pub changes: Vec<NewChange>,
    /// Authors of the new changes; the store binds each to `device` on first
    /// use and refuses the batch if one is bound to another device.
    pub actors: Vec<ActorId>,
    /// What the apply changed, for the projection.
    pub patches: Vec<Patch>,
    /// The document's heads once the batch is stored.
    pub heads: Vec<ChangeHash>,
    /// The sender's sync state after the message, to store with the batch.
    pub sender_state: Vec<u8>,
}

impl Batch {
    pub fn stored_bytes(&self) -> u64 {
        self.changes.iter().map(|c| c.bytes.len() as u64).sum()
    }
}

/// Messages to send: (peer, encoded Automerge sync message).
pub type Outgoing = Vec<(PeerId, Vec<u8>)>;

/// The result of a device's message that was not refused.
#[derive(Debug)]
pub enum Step {
    /// New changes: persist the batch, then [`Keeper::confirm`] its ticket.
    Persist(Batch),
    /// Nothing new to store: these replies may go out now.
    Reply(Outgoing),
}

/// Why a device's message was refused. The sender's connection closes; its
/// sync state is dropped unsaved, so it never names refused changes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error(transparent)]
    Inadmissible(#[from] AdmissionError),
    #[error("sync data is not valid: {0}")]
    BadSyncData(String),
    #[error(
        "the document is full: {size} bytes stored, {incoming} more would pass the ceiling of {limit}"
    )]
    DocumentFull {
        size: u64,
        incoming: u64,
        limit: u64,
    },
    #[error(
        "{count} changes ({bytes} bytes) wait for dependencies that never came; the limit is {limit}"
    )]
    TooManyOrphans {
        count: usize,
        bytes: u64,
        limit: usize,
    },
    #[error("change {hash} claims the genesis actor, which no device may use")]
    GenesisActor { hash: String },
    #[error("the message's changes have {count} authors; the limit is {limit}")]
    TooManyActors { count: usize, limit: usize },
    #[error(
        "the document has {count} actors and the message adds {incoming}; the limit is {limit} actors per document"
    )]
    DocumentActors {
        count: usize,
        incoming: usize,
        limit: usize,
    },
    #[error(
        "this device has added {count} actors to the document and the message adds {incoming}; the limit is {limit} per device"
    )]
    DeviceActors {
        count: usize,
        incoming: usize,
        limit: usize,
    },
    #[error(
        "the document holds {count} changes and the message carries {incoming}; the limit is {limit} changes per document"
    )]
    DocumentChanges {
        count: u64,
        incoming: u64,
        limit: u64,
    },
    #[error("the message nests an object {depth} levels deep; the limit is {limit}")]
    TooDeep { depth: usize, limit: usize },
    #[error("the message makes object {object} inside an object the document does not hold")]
    UnknownParent { object: String },
    #[error("change {hash} does not follow its actor's previous change")]
    OutOfSequence { hash: String },
    #[error("actor {actor} belongs to another device")]
    ForeignActor { actor: String },
    #[error(
        "change {hash} makes the same edits as a change this document keeps (one was re-made from the other by an import)"
    )]
    KeptInAnotherForm { hash: ChangeHash },
    #[error("this peer is not syncing the document")]
    UnknownPeer,
    #[error("the document is waiting for storage; retry")]
    Busy,
}

impl Refusal {
    /// Whether the document itself must be reloaded from the store: the
    /// refused message was (partly) applied in memory.
    fn poisons(&self) -> bool {
        matches!(
            self,
            Refusal::BadSyncData(_)
                | Refusal::TooManyOrphans { .. }
                | Refusal::GenesisActor { .. }
                | Refusal::OutOfSequence { .. }
                | Refusal::ForeignActor { .. }
                | Refusal::KeptInAnotherForm { .. }
        )
    }
}

/// What a document holds, as its lifetime limits count it.
#[derive(Debug)]
struct Census {
    actors: HashSet<ActorId>,
    changes: u64,
    /// The originals the document's stand-ins stand for
    /// ([`crate::provenance`]): the document keeps one form of each.
    stood_for: HashSet<ChangeHash>,
}

impl Census {
    /// One walk of the document's change metadata.
    fn of(doc: &Automerge) -> Self {
        let changes = doc.get_changes_meta(&[]);
        Census {
            changes: changes.len() as u64,
            actors: changes.iter().map(|m| m.actor.as_ref().clone()).collect(),
            stood_for: changes
                .iter()
                .filter_map(|m| provenance::stands_in_for(m.message.as_deref()))
                .collect(),
        }
    }
}

/// An object by the id of the operation that made it: (counter, actor).
type ObjectRef = (u64, ActorId);

/// An object made, and the object it is made in (`None`: the root).
type Made = (ObjectRef, Option<ObjectRef>);

/// Changes not yet in the document: their dependencies and the objects
/// they make (actors as indexes into the depth check's actor table).
type Unapplied<'a> = HashMap<ChangeHash, (&'a [ChangeHash], Cow<'a, [CreatedObject]>)>;

/// A change waiting in Automerge's queue for its dependencies. What it makes
/// is checked when it becomes applicable, in the message that completes it.
#[derive(Debug)]
struct Orphan {
    bytes: u64,
    deps: Vec<ChangeHash>,
    objects: Vec<Made>,
}

#[derive(Debug)]
struct Peer {
    state: sync::State,
    device: DeviceId,
}

#[derive(Debug)]
struct Pending {
    ticket: u64,
    sender: PeerId,
    device: DeviceId,
    actors: Vec<ActorId>,
    /// Actors the batch adds to the document, counted to its device.
    new_actors: usize,
    stored_bytes: u64,
}

/// Changes per message whose actor's previous change is not a direct
/// dependency, each checked against the whole history outside its deps. An
/// honest device has about one per actor per sync.
const MAX_DEEP_SEQUENCE_CHECKS: usize = 64;

/// One branch document, kept for every device that syncs it.
#[derive(Debug)]
pub struct Keeper {
    doc: Automerge,
    peers: HashMap<PeerId, Peer>,
    pending: Option<Pending>,
    needs_reload: bool,
    /// Changes Automerge holds back until their dependencies arrive, with
    /// their sizes. They were never checked as new changes, so they must
    /// neither grow without bound nor reach another device.
    orphans: HashMap<ChangeHash, Orphan>,
    /// The document's distinct actors and its changes, counted on the
    /// first message that carries any after a load (one walk of the change
    /// metadata), then kept up to date.
    census: Option<Census>,
    /// Actors whose binding the store confirmed, with their device.
    bound: HashMap<ActorId, DeviceId>,
    /// Actors each device has added to the document: from the store at
    /// load ([`Keeper::set_device_actors`]), then kept up to date.
    device_actors: HashMap<DeviceId, usize>,
    /// Actors the message being applied adds, for its pending batch.
    adding_actors: usize,
    stored_bytes: u64,
    limits: KeeperLimits,
    next_ticket: u64,
    last_activity_ms: u64,
}

impl Keeper {
    /// Keeps a document loaded from the store, whose chunks take
    /// `stored_bytes`.
    pub fn new(doc: Automerge, stored_bytes: u64, limits: KeeperLimits, now_ms: u64) -> Self {
        Keeper {
            doc,
            peers: HashMap::new(),
            pending: None,
            needs_reload: false,
            orphans: HashMap::new(),
            census: None,
            bound: HashMap::new(),
            device_actors: HashMap::new(),
            adding_actors: 0,
            stored_bytes,
            limits,
            next_ticket: 1,
            last_activity_ms: now_ms,
        }
    }

    /// How many of the document's actors each device added, as the store
    /// knows (called once after the first load; confirmed batches keep it
    /// up to date after that, across reloads).
    pub fn set_device_actors(&mut self, counts: HashMap<DeviceId, usize>) {
        self.device_actors = counts;
    }

    pub fn document(&self) -> &Automerge {
        &self.doc
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn has_peer(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Time of the last message to or from any device; for idle eviction.
    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms
    }

    /// True after a failure left memory ahead of the store: call
    /// [`Keeper::reload`] before anything else.
    pub fn needs_reload(&self) -> bool {
        self.needs_reload
    }

    /// True while a batch is out for storage.
    pub fn is_waiting_for_storage(&self) -> bool {
        self.pending.is_some()
    }

    /// Starts syncing with a device's connection, resuming from a saved sync
    /// state when there is one (a corrupt one only costs a full sync).
    pub fn add_peer(&mut self, peer: PeerId, device: DeviceId, saved: Option<&[u8]>, now_ms: u64) {
        let state = saved
            .and_then(|bytes| sync::State::decode(bytes).ok())
            .unwrap_or_default();
        self.peers.insert(peer, Peer { state, device });
        self.touch(now_ms);
    }

    /// Stops syncing with a connection that left normally, returning the
    /// sync state to save. It names only stored changes: nothing is
    /// advertised or applied for a peer while a batch is unconfirmed, and a
    /// refused peer was removed unsaved.
    pub fn remove_peer(&mut self, peer: &PeerId) -> Option<Vec<u8>> {
        self.peers.remove(peer).map(|p| p.state.encode())
    }

    /// Applies one sync message from `from`.
    ///
    /// On a refusal the sender is removed (its state unsaved); if the
    /// message reached Automerge, the keeper needs a reload.
    pub fn receive(&mut self, from: &PeerId, data: &[u8], now_ms: u64) -> Result<Step, Refusal> {
        if self.pending.is_some() || self.needs_reload {
            return Err(Refusal::Busy);
        }
        let result = self.apply(from, data, now_ms);
        if let Err(refusal) = &result {
            self.peers.remove(from);
            if refusal.poisons() {
                self.needs_reload = true;
            }
        }
        result
    }

    fn apply(&mut self, from: &PeerId, data: &[u8], now_ms: u64) -> Result<Step, Refusal> {
        let device = self.peers.get(from).ok_or(Refusal::UnknownPeer)?.device;
        self.touch(now_ms);
        let inspected = inspect_sync_message(data, &self.limits.admission)?;
        let incoming = inspected.inflated_bytes;
        if self.stored_bytes.saturating_add(incoming) > self.limits.max_document_bytes
            && inspected.change_count > 0
        {
            return Err(Refusal::DocumentFull {
                size: self.stored_bytes,
                incoming,
                limit: self.limits.max_document_bytes,
            });
        }
        let actors: HashSet<&ActorId> = inspected.changes.iter().map(|c| &c.actor).collect();
        if actors.len() > self.limits.max_actors_per_message {
            return Err(Refusal::TooManyActors {
                count: actors.len(),
                limit: self.limits.max_actors_per_message,
            });
        }
        self.check_census(device, &inspected)?;
        self.check_depth(&inspected)?;
        let message =
            sync::Message::decode(data).map_err(|e| Refusal::BadSyncData(e.to_string()))?;

        let before = self.doc.get_heads();
        let mut log = PatchLog::active();
        let peer = self.peers.get_mut(from).ok_or(Refusal::UnknownPeer)?;
        self.doc
            .receive_sync_message_log_patches(&mut peer.state, message, &mut log)
            .map_err(|e| Refusal::BadSyncData(e.to_string()))?;

        // Changes of this message that did not apply wait in Automerge's
        // queue; count them with the ones already waiting.
        if let Some(census) = self.census.as_mut() {
            // Counted before applying; some may wait as orphans, which
            // Automerge holds as well.
            census.actors.extend(inspected.actors.iter().cloned());
        }
        for change in &inspected.changes {
            if self.doc.get_change_meta_by_hash(&change.hash).is_none() {
                let objects = change
                    .objects
                    .iter()
                    .filter_map(|made| resolve_object(&inspected, made))
                    .collect();
                self.orphans.insert(
                    change.hash,
                    Orphan {
                        bytes: change.inflated_bytes,
                        deps: change.deps.clone(),
                        objects,
                    },
                );
            }
        }
        let doc = &self.doc;
        self.orphans
            .retain(|hash, _| doc.get_change_meta_by_hash(hash).is_none());
        let orphan_bytes: u64 = self.orphans.values().map(|o| o.bytes).sum();
        let orphan_objects: u64 = self.orphans.values().map(|o| o.objects.len() as u64).sum();
        if self.orphans.len() > self.limits.max_orphans
            || orphan_bytes > self.limits.max_orphan_bytes
            || orphan_objects > self.limits.admission.max_ops
        {
            return Err(Refusal::TooManyOrphans {
                count: self.orphans.len(),
                bytes: orphan_bytes,
                limit: self.limits.max_orphans,
            });
        }

        let heads = self.doc.get_heads();
        if heads == before {
            return Ok(Step::Reply(self.generate_all()));
        }
        let new_changes = load_order(self.doc.get_changes(&before));
        self.keep_one_form(&new_changes)?;
        let mut changes = Vec::new();
        let mut actors = Vec::new();
        let mut seen = HashSet::new();
        let mut deep_checks = 0;
        for mut change in new_changes {
            self.check_sequence(&change, &mut deep_checks)?;
            let actor = change.actor_id().clone();
            if actor.to_bytes() == GENESIS_ACTOR {
                return Err(Refusal::GenesisActor {
                    hash: change.hash().to_string(),
                });
            }
            if let Some(owner) = self.bound.get(&actor)
                && *owner != device
            {
                return Err(Refusal::ForeignActor {
                    actor: actor.to_hex_string(),
                });
            }
            if seen.insert(actor.clone()) {
                actors.push(actor.clone());
            }
            changes.push(NewChange {
                hash: change.hash(),
                actor,
                bytes: change.bytes().into_owned(),
            });
        }
        if let Some(census) = self.census.as_mut() {
            let count = census.changes;
            let incoming = changes.len() as u64;
            if count.saturating_add(incoming) > self.limits.max_document_changes {
                // Only a document chunk gets here (change chunks were
                // counted before applying): bounded by admission, and the
                // document is reloaded without it.
                self.needs_reload = true;
                return Err(Refusal::DocumentChanges {
                    count,
                    incoming,
                    limit: self.limits.max_document_changes,
                });
            }
            census.changes = count.saturating_add(incoming);
        }
        let patches = self.doc.make_patches(&mut log);
        let sender_state = self
            .peers
            .get(from)
            .map(|p| p.state.encode())
            .unwrap_or_default();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let batch = Batch {
            ticket: Ticket(ticket),
            device,
            changes,
            actors,
            patches,
            heads,
            sender_state,
        };
        self.pending = Some(Pending {
            ticket,
            sender: from.clone(),
            device,
            actors: batch.actors.clone(),
            new_actors: std::mem::take(&mut self.adding_actors),
            stored_bytes: batch.stored_bytes(),
        });
        Ok(Step::Persist(batch))
    }

    /// Refuses a new change (applied in memory, not yet stored) when the
    /// document would then hold an original and a stand-in for it, or two
    /// stand-ins for one original ([`crate::provenance`]): the first form
    /// to arrive is kept.
    fn keep_one_form(&mut self, new_changes: &[automerge::Change]) -> Result<(), Refusal> {
        let doc = &self.doc;
        let census = self.census.get_or_insert_with(|| Census::of(doc));
        let mut stood_for = HashSet::new();
        for change in new_changes {
            let hash = change.hash();
            if census.stood_for.contains(&hash) || stood_for.contains(&hash) {
                return Err(Refusal::KeptInAnotherForm { hash });
            }
            if let Some(original) = provenance::stands_in_for(change.message()) {
                // The original here already (the document holds the
                // message's changes now, so one earlier in it counts), or
                // another stand-in for it.
                if doc.get_change_meta_by_hash(&original).is_some()
                    || census.stood_for.contains(&original)
                    || !stood_for.insert(original)
                {
                    return Err(Refusal::KeptInAnotherForm { hash });
                }
            }
        }
        census.stood_for.extend(stood_for);
        Ok(())
    }

    /// Refuses a message that would take the document past its lifetime
    /// actor or change limits, before Automerge adds anything. Every actor
    /// the message names counts, not only authors: Automerge adds the
    /// actors a change's operations refer to as well.
    fn check_census(&mut self, device: DeviceId, inspected: &Inspected) -> Result<(), Refusal> {
        self.adding_actors = 0;
        if inspected.actors.is_empty() && inspected.change_count == 0 {
            return Ok(());
        }
        let doc = &self.doc;
        let census = self.census.get_or_insert_with(|| Census::of(doc));
        let incoming = inspected
            .actors
            .iter()
            .filter(|a| !census.actors.contains(*a))
            .count();
        if incoming > 0
            && census.actors.len().saturating_add(incoming) > self.limits.max_document_actors
        {
            return Err(Refusal::DocumentActors {
                count: census.actors.len(),
                incoming,
                limit: self.limits.max_document_actors,
            });
        }
        let mine = self.device_actors.get(&device).copied().unwrap_or(0);
        if incoming > 0 && mine.saturating_add(incoming) > self.limits.max_actors_per_device {
            return Err(Refusal::DeviceActors {
                count: mine,
                incoming,
                limit: self.limits.max_actors_per_device,
            });
        }
        self.adding_actors = incoming;
        // Change chunks the document lacks; a document chunk's new changes
        // are known only once applied, and counted then.
        let incoming = inspected
            .changes
            .iter()
            .filter(|c| doc.get_change_meta_by_hash(&c.hash).is_none())
            .map(|c| c.hash)
            .collect::<HashSet<_>>()
            .len() as u64;
        if census.changes.saturating_add(incoming) > self.limits.max_document_changes {
            return Err(Refusal::DocumentChanges {
                count: census.changes,
                incoming,
                limit: self.limits.max_document_changes,
            });
        }
        Ok(())
    }

    /// Refuses a message that would make an object deeper than
    /// `max_depth` below the root, before Automerge applies anything.
    ///
    /// The objects checked are those made by the changes that will apply
    /// now: the message's and the queued orphans' whose dependencies the
    /// document and the message complete, and those of document chunks.
    /// Each one's parent is the root, another of them, or an object the
    /// document holds (whose depth the document knows). Anything else is a
    /// parent that will not exist when the operation applies, and is
    /// refused too: an object under a phantom parent has no depth to
    /// bound. Changes that stay orphans are checked when they apply.
    fn check_depth(&self, inspected: &Inspected) -> Result<(), Refusal> {
        let limit = self.limits.max_depth;
        // Objects are keyed by (counter, actor index) into one table: the
        // message's actors, then any only queued orphans name. A message
        // may make two million objects; this keeps each entry small.
        let mut actors: Vec<&ActorId> = inspected.actors.iter().collect();
        let mut index: HashMap<&ActorId, u32> = actors
            .iter()
            .enumerate()
            .map(|(i, a)| (*a, u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();

        // What each change that is not yet in the document makes, and
        // whether it will apply.
        let mut pending: Unapplied<'_> = HashMap::new();
        for change in &inspected.changes {
            if pending.contains_key(&change.hash)
                || self.doc.get_change_meta_by_hash(&change.hash).is_some()
            {
                continue;
            }
            pending.insert(
                change.hash,
                (change.deps.as_slice(), Cow::Borrowed(&change.objects)),
            );
        }
        for (hash, orphan) in &self.orphans {
            if pending.contains_key(hash) {
                continue;
            }
            let objects: Vec<CreatedObject> = orphan
                .objects
                .iter()
                .map(|(object, parent)| CreatedObject {
                    object: intern_object(&mut actors, &mut index, object),
                    parent: parent
                        .as_ref()
                        .map(|p| intern_object(&mut actors, &mut index, p)),
                })
                .collect();
            pending.insert(*hash, (orphan.deps.as_slice(), Cow::Owned(objects)));
        }
        let applicable = self.applicable(&pending);

        // Each object made: its parent, and whether its change applies now.
        let mut made: HashMap<ObjectKey, (Option<ObjectKey>, bool)> = HashMap::new();
        let mut add = |created: &CreatedObject, applies: bool| match made.get(&created.object) {
            Some((known, _)) if *known != created.parent => Err(created.object),
            Some(_) => Ok(()),
            None => {
                made.insert(created.object, (created.parent, applies));
                Ok(())
            }
        };
        let text = |(counter, actor): ObjectKey| -> String {
            match actors.get(actor as usize) {
                Some(actor) => format!("{counter}@{}", actor.to_hex_string()),
                None => format!("{counter}@?"),
            }
        };
        let twice = |object: ObjectKey| Refusal::UnknownParent {
            object: text(object),
        };
        for created in &inspected.document_objects {
            add(created, true).map_err(twice)?;
        }
        for (hash, (_, objects)) in &pending {
            let applies = applicable.contains(hash);
            for created in objects.iter() {
                add(created, applies).map_err(twice)?;
            }
        }

        let mut depths: HashMap<ObjectKey, usize> = HashMap::new();
        let mut in_document: HashMap<ObjectKey, Option<usize>> = HashMap::new();
        for (object, (_, applies)) in &made {
            if !*applies || depths.contains_key(object) {
                continue;
            }
            // Walk up to something of known depth: the root, an object
            // already measured, or one the document holds.
            let mut chain: Vec<ObjectKey> = vec![*object];
            let base = loop {
                let top = chain.last().copied().unwrap_or(*object);
                let Some(parent) = made.get(&top).and_then(|(parent, _)| *parent) else {
                    break 0;
                };
                if let Some(depth) = depths.get(&parent) {
                    break *depth;
                }
                match made.get(&parent) {
                    Some((_, true)) => {
                        // A cycle, which no honest encoder makes, also ends here.
                        if chain.len() >= limit {
                            return Err(Refusal::TooDeep {
                                depth: chain.len() + 1,
                                limit,
                            });
                        }
                        chain.push(parent);
                    }
                    Some((_, false)) => {
                        return Err(Refusal::UnknownParent { object: text(top) });
                    }
                    None => {
                        let depth = *in_document.entry(parent).or_insert_with(|| {
                            let (counter, actor) = parent;
                            let actor = actors.get(actor as usize)?;
                            self.depth_in_document(&(counter, (*actor).clone()))
                        });
                        match depth {
                            Some(depth) => break depth,
                            None => return Err(Refusal::UnknownParent { object: text(top) }),
                        }
                    }
                }
            };
            for (above, current) in chain.iter().rev().enumerate() {
                let depth = base + above + 1;
                if depth > limit {
                    return Err(Refusal::TooDeep { depth, limit });
                }
                depths.insert(*current, depth);
            }
        }
        Ok(())
    }

    /// The changes of `pending` whose dependencies the document and the
    /// other applicable changes hold: those Automerge applies now.
    fn applicable(&self, pending: &Unapplied<'_>) -> HashSet<ChangeHash> {
        let mut waiting: HashMap<ChangeHash, usize> = HashMap::new();
        let mut dependents: HashMap<ChangeHash, Vec<ChangeHash>> = HashMap::new();
        let mut ready = Vec::new();
        for (hash, (deps, _)) in pending {
            let mut missing = 0usize;
            let mut blocked = false;
            for dep in deps.iter() {
                if pending.contains_key(dep) {
                    missing += 1;
                    dependents.entry(*dep).or_default().push(*hash);
                } else if self.doc.get_change_meta_by_hash(dep).is_none() {
                    blocked = true;
                }
            }
            if blocked {
                continue;
            }
            if missing == 0 {
                ready.push(*hash);
            } else {
                waiting.insert(*hash, missing);
            }
        }
        let mut applicable = HashSet::new();
        while let Some(hash) = ready.pop() {
            if !applicable.insert(hash) {
                continue;
            }
            for dependent in dependents.get(&hash).into_iter().flatten() {
                if let Some(left) = waiting.get_mut(dependent) {
                    *left -= 1;
                    if *left == 0 {
                        ready.push(*dependent);
                    }
                }
            }
        }
        applicable
    }

    /// How deep an object the document holds sits, or `None` if it holds
    /// no such object. Counts at most one past the limit, so a document
    /// stored before the limit existed costs no more than that.
    fn depth_in_document(&self, object: &ObjectRef) -> Option<usize> {
        let (counter, actor) = object;
        // `import_obj` is Automerge's own parser of "counter@actor" ids.
        let id = self
            .doc
            .import_obj(&format!("{counter}@{}", actor.to_hex_string()))
            .ok()?;
        let parents = self.doc.parents(&id).ok()?;
        Some(parents.take(self.limits.max_depth + 1).count())
    }

    /// Refuses a change whose actor's previous change is not in its
    /// history. Automerge applies such a pair in arrival order, but cannot
    /// load it back from storage (it panics), so storing it would brick
    /// the document for the whole branch. The usual case is cheap (the
    /// previous change is a direct dependency); the full history walk is
    /// bounded per message.
    fn check_sequence(
        &self,
        change: &automerge::Change,
        deep_checks: &mut usize,
    ) -> Result<(), Refusal> {
        let seq = change.seq();
        if seq <= 1 {
            return Ok(());
        }
        let actor = change.actor_id();
        let direct = change.deps().iter().any(|dep| {
            self.doc
                .get_change_meta_by_hash(dep)
                .is_some_and(|m| *m.actor == *actor && m.seq == seq - 1)
        });
        if direct {
            return Ok(());
        }
        *deep_checks += 1;
        if *deep_checks > MAX_DEEP_SEQUENCE_CHECKS {
            return Err(Refusal::OutOfSequence {
                hash: change.hash().to_string(),
            });
        }
        let outside_history = self.doc.get_changes_meta(change.deps());
        if outside_history
            .iter()
            .any(|m| *m.actor == *actor && m.seq < seq)
        {
            return Err(Refusal::OutOfSequence {
                hash: change.hash().to_string(),
            });
        }
        Ok(())
    }

    /// The store committed the batch of `ticket` (and bound its actors to
    /// its device): its heads may now be advertised to every peer.
    pub fn confirm(&mut self, ticket: Ticket, now_ms: u64) -> Outgoing {
        let mut out = Vec::new();
        self.confirm_each(ticket, now_ms, |peer, message| {
            out.push((peer.clone(), message));
            true
        });
        out
    }

    /// [`Keeper::confirm`], handing each peer's message to `deliver` as it
    /// is made (see [`Keeper::generate_each`]); returns the peers dropped.
    pub fn confirm_each(
        &mut self,
        ticket: Ticket,
        now_ms: u64,
        deliver: impl FnMut(&PeerId, Vec<u8>) -> bool,
    ) -> Vec<PeerId> {
        let Some(pending) = self.pending.take_if(|p| p.ticket == ticket.0) else {
            // Not the ticket out: a driver bug. Keep silent rather than
            // advertise anything unconfirmed.
            return Vec::new();
        };
        self.stored_bytes += pending.stored_bytes;
        for actor in pending.actors {
            self.bound.insert(actor, pending.device);
        }
        *self.device_actors.entry(pending.device).or_default() += pending.new_actors;
        self.touch(now_ms);
        self.generate_each(deliver)
    }

    /// The store did not commit the batch of `ticket`. The sender is
    /// dropped unsaved (its connection closes with `refusal` or a retry
    /// hint) and the document must be reloaded before anything is sent.
    pub fn abandon(&mut self, ticket: Ticket) {
        if let Some(pending) = self.pending.take_if(|p| p.ticket == ticket.0) {
            self.peers.remove(&pending.sender);
        }
        self.needs_reload = true;
    }

    /// Replaces the document with the store's copy after a failure (or a
    /// verified compaction). Peers keep their sync states, which name only
    /// stored changes, but forget what they believed in flight.
    pub fn reload(&mut self, doc: Automerge, stored_bytes: u64) {
        self.doc = doc;
        self.stored_bytes = stored_bytes;
        self.orphans.clear();
        self.census = None;
        self.needs_reload = false;
        self.pending = None;
        for peer in self.peers.values_mut() {
            peer.state.in_flight = false;
            peer.state.sent_hashes.clear();
        }
    }

    /// Adds changes another server node stored (read back from the shared
    /// store: incremental chunks only, `bytes` of them): they were admitted
    /// there and are on disk, so they go straight into the document, and
    /// the peers hear of them at the next flush.
    ///
    /// Refused (`false`, and the document then needs a reload) whenever
    /// the merge could let through what no commit stored: changes a device
    /// sent that wait here for dependencies would be applied by Automerge
    /// the moment the stored ones supply them, unchecked and never stored;
    /// and stored changes that themselves wait for dependencies mean the
    /// chunks read were not the whole story.
    pub fn merge_stored(&mut self, chunks: &[Vec<u8>], bytes: u64) -> bool {
        if self.pending.is_some() || self.needs_reload || !self.orphans.is_empty() {
            self.needs_reload = true;
            return false;
        }
        // One call, as a load does: Automerge orders them itself.
        let joined = chunks.concat();
        if self.doc.load_incremental(&joined).is_err() || !self.doc.get_missing_deps(&[]).is_empty()
        {
            self.needs_reload = true;
            return false;
        }
        self.stored_bytes += bytes;
        // Recounted from the document on the next message that needs it.
        self.census = None;
        true
    }

    /// Messages every peer is owed now (after a peer joined, or to nudge).
    pub fn flush(&mut self, now_ms: u64) -> Outgoing {
        self.touch(now_ms);
        self.generate_all()
    }

    /// [`Keeper::flush`], handing each peer's message to `deliver` as it is
    /// made (see [`Keeper::generate_each`]); returns the peers dropped.
    pub fn flush_each(
        &mut self,
        now_ms: u64,
        deliver: impl FnMut(&PeerId, Vec<u8>) -> bool,
    ) -> Vec<PeerId> {
        self.touch(now_ms);
        self.generate_each(deliver)
    }

    /// A snapshot of the stored changes, for compaction: changes still
    /// waiting for dependencies were never checked and stay out.
    pub fn snapshot(&self) -> Vec<u8> {
        self.doc.save_with_options(automerge::SaveOptions {
            retain_orphans: false,
            ..automerge::SaveOptions::default()
        })
    }

    fn generate_all(&mut self) -> Outgoing {
        let mut out = Vec::new();
        self.generate_each(|peer, message| {
            out.push((peer.clone(), message));
            true
        });
        out
    }

    /// Makes each peer's message and hands it to `deliver` at once, so no
    /// more than one message exists outside the driver's queues however
    /// many peers a document has (a change of several MiB fanned out to a
    /// hundred sockets was a hundred copies at once). A peer whose message
    /// `deliver` could not take is dropped (its sync state believes it was
    /// sent; it resumes from its saved state on reconnect); the dropped
    /// peers are returned.
    pub fn generate_each(
        &mut self,
        mut deliver: impl FnMut(&PeerId, Vec<u8>) -> bool,
    ) -> Vec<PeerId> {
        if self.pending.is_some() || self.needs_reload {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        let orphans_waiting = !self.orphans.is_empty();
        for (key, peer) in &mut self.peers {
            let Some(mut message) = self.doc.generate_sync_message(&mut peer.state) else {
                continue;
            };
            if orphans_waiting && carries_a_document(&message) {
                // A V2 message carries `save()`, which includes the orphan
                // queue: unchecked changes of another device. Send only
                // what was checked and stored.
                message.changes =
                    sync::ChunkList::from(self.doc.save_with_options(automerge::SaveOptions {
                        retain_orphans: false,
                        ..automerge::SaveOptions::default()
                    }));
            }
            if !deliver(key, message.encode()) {
                dropped.push(key.clone());
            }
        }
        for key in &dropped {
            self.peers.remove(key);
        }
        dropped
    }

    fn touch(&mut self, now_ms: u64) {
        self.last_activity_ms = self.last_activity_ms.max(now_ms);
    }
}

/// `object` keyed by its actor's index in `actors`, added if new.
fn intern_object<'a>(
    actors: &mut Vec<&'a ActorId>,
    index: &mut HashMap<&'a ActorId, u32>,
    (counter, actor): &'a ObjectRef,
) -> ObjectKey {
    let next = u32::try_from(actors.len()).unwrap_or(u32::MAX);
    let i = *index.entry(actor).or_insert_with(|| {
        actors.push(actor);
        next
    });
    (*counter, i)
}

/// An object of a message by its actor, not the message's actor index.
fn resolve_object(
    inspected: &Inspected,
    made: &CreatedObject,
) -> Option<(ObjectRef, Option<ObjectRef>)> {
    let resolve = |(counter, actor): ObjectKey| -> Option<ObjectRef> {
        let actor = inspected.actors.get(usize::try_from(actor).ok()?)?;
        Some((counter, actor.clone()))
    };
    let parent = match made.parent {
        Some(parent) => Some(resolve(parent)?),
        None => None,
    };
    Some((resolve(made.object)?, parent))
}

/// Whether a sync message carries a whole saved document (Automerge's V2
/// reply to a peer missing much), rather than change chunks: only such a
/// payload is `save()`, which includes the orphan queue. The storage chunk
/// header is 4 magic bytes, 4 checksum bytes, then the type (0: document).
fn carries_a_document(message: &sync::Message) -> bool {
    message.version == MessageVersion::V2
        && message.changes.iter().any(|chunk| chunk.get(8) == Some(&0))
}

/// Orders changes so that loading them one by one, as the store does,
/// always works: every change after its dependencies *and* after the same
/// actor's previous change. `get_changes` orders concurrent changes by
/// hash, and a device may author two changes of one actor that are
/// concurrent by their dependencies; loaded seq 2 first, Automerge panics.
fn load_order(changes: Vec<automerge::Change>) -> Vec<automerge::Change> {
    let index: HashMap<ChangeHash, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.hash(), i))
        .collect();
    let by_seq: HashMap<(ActorId, u64), usize> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| ((c.actor_id().clone(), c.seq()), i))
        .collect();
    // Edges from each change to those that must come after it.
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); changes.len()];
    let mut waiting_on = vec![0usize; changes.len()];
    for (i, change) in changes.iter().enumerate() {
        let previous = change
            .seq()
            .checked_sub(1)
            .and_then(|seq| by_seq.get(&(change.actor_id().clone(), seq)));
        let before: HashSet<usize> = change
            .deps()
            .iter()
            .filter_map(|d| index.get(d))
            .chain(previous)
            .copied()
            .filter(|&j| j != i)
            .collect();
        waiting_on[i] = before.len();
        for j in before {
            after[j].push(i);
        }
    }
    let mut ready: std::collections::VecDeque<usize> =
        (0..changes.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut order = Vec::with_capacity(changes.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &k in &after[i] {
            waiting_on[k] -= 1;
            if waiting_on[k] == 0 {
                ready.push_back(k);
            }
        }
    }
    // A cycle cannot come from hashes; should one appear, keep the rest in
    // their original order rather than drop anything.
    let placed: HashSet<usize> = order.iter().copied().collect();
    order.extend((0..changes.len()).filter(|i| !placed.contains(i)));
    let mut slots: Vec<Option<automerge::Change>> = changes.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Checks a compaction snapshot before anything it replaces is deleted: it
/// must load and hold exactly `heads`. Returns the loaded document, which
/// then replaces the one in memory (a fresh load does not keep the memory
/// that applying changes one by one costs).
pub fn verify_snapshot(bytes: &[u8], heads: &[ChangeHash]) -> Result<Automerge, String> {
    let doc = Automerge::load(bytes).map_err(|e| format!("snapshot does not load: {e}"))?;
    let mut got = doc.get_heads();
    let mut want = heads.to_vec();
    got.sort();
    want.sort();
    if got != want {
        return Err(format!(
            "snapshot holds heads {got:?}, the document {want:?}"
        ));
    }
    Ok(doc)
}

#[cfg(test)]
mod tests;
