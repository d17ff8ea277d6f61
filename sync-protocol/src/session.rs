//! One document, synced with any number of peers.
//!
//! A [`DocSession`] owns an Automerge document and one `sync::State` per
//! peer. It never does I/O: [`DocSession::receive`] applies a peer's sync
//! message and hands back the changes that are new, and the caller persists
//! them *before* calling [`DocSession::generate`] for any peer, because a
//! generated message advertises heads that contain those changes. That order
//! is the durable acknowledgement: a peer that sees its change in our heads
//! knows it is on disk.
//!
//! A caller that refuses what arrived (an actor the device may not use, a
//! message over the size limit) must not persist it; it calls
//! [`DocSession::replace_document`] with the last persisted state, which
//! drops the refused changes from memory as well.

use std::collections::HashMap;

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Automerge, ChangeHash};

use crate::ids::PeerId;

/// A change that arrived from a peer and is not yet persisted.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub hash: ChangeHash,
    pub actor: ActorId,
    /// The change chunk, compressed as Automerge stores it.
    pub bytes: Vec<u8>,
    /// Operations in the change; a size measure independent of compression.
    pub ops: u64,
    /// Uncompressed size of the change chunk.
    pub raw_len: usize,
}

/// What applying one sync message did.
#[derive(Debug, Default)]
pub struct Received {
    /// New changes in causal order, to be persisted before any `generate`.
    pub new_changes: Vec<NewChange>,
}

impl Received {
    /// Uncompressed bytes of all new changes: the "decompressed size" of the
    /// sync message, for limits.
    pub fn raw_len(&self) -> usize {
        self.new_changes.iter().map(|c| c.raw_len).sum()
    }
}

/// Why a sync message could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("sync data is not an Automerge sync message: {0}")]
    BadSyncMessage(String),
    #[error("changes in the sync message could not be applied: {0}")]
    Apply(String),
    #[error("sync state for this peer is corrupt: {0}")]
    BadSyncState(String),
}

#[derive(Debug)]
struct PeerSync {
    state: sync::State,
    last_seen_ms: u64,
}

/// A document and its per-peer sync states.
#[derive(Debug)]
pub struct DocSession {
    doc: Automerge,
    peers: HashMap<PeerId, PeerSync>,
    last_activity_ms: u64,
}

impl DocSession {
    pub fn new(doc: Automerge, now_ms: u64) -> Self {
        DocSession {
            doc,
            peers: HashMap::new(),
            last_activity_ms: now_ms,
        }
    }

    pub fn document(&self) -> &Automerge {
        &self.doc
    }

    /// Local edits (the device SDK, or the server creating a document).
    /// The caller persists the resulting changes before generating messages.
    pub fn document_mut(&mut self) -> &mut Automerge {
        &mut self.doc
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// Replaces the in-memory document, keeping every peer's sync state.
    ///
    /// Used after compaction (a freshly loaded document does not retain the
    /// memory that applying changes costs) and to drop refused changes.
    /// Sync states stay valid because they only name change hashes; a peer
    /// whose refused changes are now gone should be removed by the caller.
    pub fn replace_document(&mut self, doc: Automerge) {
        self.doc = doc;
        for peer in self.peers.values_mut() {
            // Anything we believed in flight may have referred to dropped
            // changes; letting the peer re-announce is always safe.
            peer.state.in_flight = false;
            peer.state.sent_hashes.clear();
        }
    }

    /// Starts syncing with a peer, resuming from a persisted sync state when
    /// the peer has stable storage we saw before.
    pub fn add_peer(
        &mut self,
        peer: PeerId,
        saved_state: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<(), SessionError> {
        let state = match saved_state {
            Some(bytes) => {
                sync::State::decode(bytes).map_err(|e| SessionError::BadSyncState(e.to_string()))?
            }
            None => sync::State::new(),
        };
        self.peers.insert(
            peer,
            PeerSync {
                state,
                last_seen_ms: now_ms,
            },
        );
        self.last_activity_ms = self.last_activity_ms.max(now_ms);
        Ok(())
    }

    /// Stops syncing with a peer, returning its state to persist.
    pub fn remove_peer(&mut self, peer: &PeerId) -> Option<Vec<u8>> {
        self.peers.remove(peer).map(|p| p.state.encode())
    }

    /// The state to persist for a peer (only the durable part: shared heads).
    pub fn encoded_state(&self, peer: &PeerId) -> Option<Vec<u8>> {
        self.peers.get(peer).map(|p| p.state.encode())
    }

    /// The heads this peer has told us it has, if it has said.
    pub fn their_heads(&self, peer: &PeerId) -> Option<&[ChangeHash]> {
        self.peers.get(peer)?.state.their_heads.as_deref()
    }

    /// True when `peer` has told us its heads and we hold every one.
    pub fn holds_heads_of(&self, peer: &PeerId) -> bool {
        self.their_heads(peer).is_some_and(|theirs| {
            theirs
                .iter()
                .all(|h| self.doc.get_change_meta_by_hash(h).is_some())
        })
    }

    /// The next message to `peer` with no change in it: our heads, what we
    /// have and what we need, so the peer sends what we lack before we
    /// send anything it might refuse. The changes Automerge chose are not
    /// marked sent, so a later message carries them.
    pub fn generate_without_changes(&mut self, peer: &PeerId, now_ms: u64) -> Option<Vec<u8>> {
        let sync = self.peers.get_mut(peer)?;
        let before = sync.state.sent_hashes.clone();
        let mut message = self.doc.generate_sync_message(&mut sync.state)?;
        sync.state.sent_hashes = before;
        message.changes = Vec::<Vec<u8>>::new().into();
        self.last_activity_ms = self.last_activity_ms.max(now_ms);
        Some(message.encode())
    }

    /// Time of the last message to or from any peer; for idle eviction.
    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms
    }

    /// Applies one sync message from `from`, in one batch.
    ///
    /// A peer we have not heard from is added with a fresh state.
    pub fn receive(
        &mut self,
        from: &PeerId,
        data: &[u8],
        now_ms: u64,
    ) -> Result<Received, SessionError> {
        let message =
            sync::Message::decode(data).map_err(|e| SessionError::BadSyncMessage(e.to_string()))?;
        let before = self.doc.get_heads();
        let peer = self.peers.entry(from.clone()).or_insert_with(|| PeerSync {
            state: sync::State::new(),
            last_seen_ms: now_ms,
        });
        peer.last_seen_ms = now_ms;
        self.last_activity_ms = self.last_activity_ms.max(now_ms);
        self.doc
            .receive_sync_message(&mut peer.state, message)
            .map_err(|e| SessionError::Apply(e.to_string()))?;
        if self.doc.get_heads() == before {
            return Ok(Received::default());
        }
        let new_changes = self
            .doc
            .get_changes(&before)
            .into_iter()
            .map(|mut change| NewChange {
                hash: change.hash(),
                actor: change.actor_id().clone(),
                ops: change.len() as u64,
                raw_len: change.raw_bytes().len(),
                bytes: change.bytes().into_owned(),
            })
            .collect();
        Ok(Received { new_changes })
    }

    /// The next sync message for one peer, if there is anything to say.
    pub fn generate(&mut self, peer: &PeerId, now_ms: u64) -> Option<Vec<u8>> {
        let sync = self.peers.get_mut(peer)?;
        let message = self.doc.generate_sync_message(&mut sync.state)?;
        self.last_activity_ms = self.last_activity_ms.max(now_ms);
        Some(message.encode())
    }

    /// The next sync messages for `peer`: what [`DocSession::generate`]
    /// would say, with its changes spread over messages of at most about
    /// `max_part_bytes` each (one change larger than that goes alone).
    /// Every part carries the same heads, need and bloom filter, so each is
    /// a whole sync message any automerge peer applies; the peer answers
    /// each in turn, and a server that persists before it answers thereby
    /// acknowledges each part. A link cut mid-upload then costs only the
    /// parts whose answer did not come back.
    ///
    /// With `first_flight = Some((known, budget))`, the message also carries
    /// the changes after the heads the peer is known to hold, up to about
    /// `budget` bytes in causal order: on a reconnect data moves in the
    /// first flight, where the plain protocol spends a round trip learning
    /// the peer's heads first. Known to the peer: the shared heads of the
    /// sync state (heads the peer advertised; on a server, heads it
    /// persisted), or `known` when the state has none (such as heads the
    /// peer acknowledged before). Changes sent are recorded as sent, so
    /// later messages do not repeat them.
    pub fn generate_parts(
        &mut self,
        peer: &PeerId,
        first_flight: Option<(&[ChangeHash], usize)>,
        max_part_bytes: usize,
        now_ms: u64,
    ) -> Vec<Vec<u8>> {
        let Some(sync) = self.peers.get_mut(peer) else {
            return Vec::new();
        };
        let shared = sync.state.shared_heads.clone();
        let before = sync.state.sent_hashes.clone();
        let Some(mut message) = self.doc.generate_sync_message(&mut sync.state) else {
            return Vec::new();
        };
        self.last_activity_ms = self.last_activity_ms.max(now_ms);
        let known: &[ChangeHash] = match first_flight {
            Some((known, _)) if shared.is_empty() => known,
            _ => &shared,
        };
        let knows_base = known
            .iter()
            .all(|h| self.doc.get_change_meta_by_hash(h).is_some());
        let mut added = false;
        if let (Some((_, budget)), true, false, true) = (
            first_flight,
            knows_base,
            known.is_empty(),
            message.changes.is_empty(),
        ) {
            let mut bytes = 0;
            for change in self.doc.get_changes(known) {
                let hash = change.hash();
                if sync.state.sent_hashes.contains(&hash) {
                    continue;
                }
                let len = change.raw_bytes().len();
                if bytes + len > budget && bytes > 0 {
                    // The rest follows once the peer's heads are known.
                    break;
                }
                bytes += len;
                sync.state.sent_hashes.insert(hash);
                added = true;
            }
        }
        let carried: usize = message.changes.iter().map(<[u8]>::len).sum();
        if !added && carried <= max_part_bytes {
            return vec![message.encode()];
        }
        // The changes chosen, in causal order, less those under the shared
        // heads (a whole-document reply names every change; the peer holds
        // those already).
        let chosen: std::collections::HashSet<ChangeHash> = sync
            .state
            .sent_hashes
            .difference(&before)
            .copied()
            .collect();
        let base: &[ChangeHash] = if knows_base { known } else { &[] };
        let mut in_order: Vec<automerge::Change> = self
            .doc
            .get_changes(base)
            .into_iter()
            .filter(|change| chosen.contains(&change.hash()))
            .collect();
        if in_order.len() < chosen.len() {
            // Automerge chose changes that are not after the base (a peer
            // that asks for an ancestor, after a restore): every chosen
            // change must go, so take them from the whole history.
            in_order = self
                .doc
                .get_changes(&[])
                .into_iter()
                .filter(|change| chosen.contains(&change.hash()))
                .collect();
        }
        let mut parts: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut part = Vec::new();
        let mut bytes = 0;
        for change in in_order {
            let raw = change.raw_bytes();
            if bytes + raw.len() > max_part_bytes && !part.is_empty() {
                parts.push(std::mem::take(&mut part));
                bytes = 0;
            }
            bytes += raw.len();
            part.push(raw.to_vec());
        }
        if !part.is_empty() {
            parts.push(part);
        }
        if parts.is_empty() {
            message.changes = sync::ChunkList::empty();
            return vec![message.encode()];
        }
        parts
            .into_iter()
            .map(|changes| {
                // Version 1 lists changes one by one; every peer reads it.
                sync::Message {
                    heads: message.heads.clone(),
                    need: message.need.clone(),
                    have: message.have.clone(),
                    changes: sync::ChunkList::from(changes),
                    flags: message.flags,
                    version: sync::MessageVersion::V1,
                }
                .encode()
            })
            .collect()
    }

    /// The next sync message for every peer that needs one.
    pub fn generate_all(&mut self, now_ms: u64) -> Vec<(PeerId, Vec<u8>)> {
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        peers
            .into_iter()
            .filter_map(|peer| self.generate(&peer, now_ms).map(|m| (peer, m)))
            .collect()
    }

    /// True when every change in `hashes` is in the history of the heads
    /// `peer` last told us. On a device, with `peer` the server, this is the
    /// acknowledgement: the server persisted those changes.
    pub fn peer_covers(&self, peer: &PeerId, hashes: &[ChangeHash]) -> bool {
        let Some(theirs) = self.their_heads(peer) else {
            return hashes.is_empty();
        };
        if theirs
            .iter()
            .any(|h| self.doc.get_change_meta_by_hash(h).is_none())
        {
            // Their history is not all here yet; only exact heads count.
            return hashes.iter().all(|h| theirs.contains(h));
        }
        // Changes we have that are not in their history.
        let beyond: std::collections::HashSet<ChangeHash> = self
            .doc
            .get_changes_meta(theirs)
            .into_iter()
            .map(|m| m.hash)
            .collect();
        hashes.iter().all(|h| !beyond.contains(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    fn peer(name: &str) -> PeerId {
        PeerId::new(name).expect("peer id")
    }

    /// Runs the sync loop between two sessions until neither has anything to say.
    pub(crate) fn sync_pair(a: &mut DocSession, a_id: &PeerId, b: &mut DocSession, b_id: &PeerId) {
        for _ in 0..64 {
            let a_to_b = a.generate(b_id, 0);
            if let Some(m) = &a_to_b {
                b.receive(a_id, m, 0).expect("b receives");
            }
            let b_to_a = b.generate(a_id, 0);
            if let Some(m) = &b_to_a {
                a.receive(b_id, m, 0).expect("a receives");
            }
            if a_to_b.is_none() && b_to_a.is_none() {
                return;
            }
        }
        panic!("sync did not quiesce");
    }

    #[test]
    fn receive_reports_only_new_changes_and_they_converge() {
        let (ida, idb) = (peer("a"), peer("b"));
        let mut a = DocSession::new(Automerge::new(), 0);
        let mut b = DocSession::new(Automerge::new(), 0);
        a.add_peer(idb.clone(), None, 0).expect("add");
        b.add_peer(ida.clone(), None, 0).expect("add");

        let mut tx = a.document_mut().transaction();
        tx.put(automerge::ROOT, "k", "v").expect("put");
        tx.commit();

        let m = a.generate(&idb, 0).expect("a has something to say");
        let got = b.receive(&ida, &m, 0).expect("receive");
        assert!(
            got.new_changes.is_empty(),
            "first message carries no changes"
        );
        sync_pair(&mut a, &ida, &mut b, &idb);
        assert_eq!(a.heads(), b.heads());
        assert!(b.peer_covers(&ida, &b.heads()));
        assert!(a.peer_covers(&idb, &a.heads()));
    }

    /// After a refusal the device must not send a change before it holds
    /// every head the server announced: a head the server's answer left
    /// out (it believed we had it) is asked for by name first, and our
    /// change follows once it is here.
    #[test]
    fn a_message_without_changes_asks_for_missing_heads_and_keeps_ours_for_later() {
        let (phone_id, server_id) = (peer("phone"), peer("server"));
        let mut phone = DocSession::new(Automerge::new(), 0);
        let mut server = DocSession::new(Automerge::new(), 0);
        phone.add_peer(server_id.clone(), None, 0).expect("add");
        server.add_peer(phone_id.clone(), None, 0).expect("add");
        let mut tx = phone.document_mut().transaction();
        tx.put(automerge::ROOT, "base", 0).expect("put");
        tx.commit();
        sync_pair(&mut phone, &phone_id, &mut server, &server_id);
        for (session, key) in [(&mut phone, "mine"), (&mut server, "kept")] {
            let mut tx = session.document_mut().transaction();
            tx.put(automerge::ROOT, key, 1).expect("put");
            tx.commit();
        }
        let kept = server.heads();
        // The server's answer names its heads but carries none of its
        // changes (as when our bloom filter falsely claims them).
        let hello = phone.generate(&server_id, 0).expect("hello");
        server.receive(&phone_id, &hello, 0).expect("receive");
        let answer = server.generate(&phone_id, 0).expect("answer");
        // (A false positive means the server never chose the change, so it
        // does not count it as sent either.)
        if let Some(sync) = server.peers.get_mut(&phone_id) {
            sync.state.sent_hashes.clear();
        }
        let mut stripped = automerge::sync::Message::decode(&answer).expect("decode");
        stripped.changes = Vec::<Vec<u8>>::new().into();
        phone
            .receive(&server_id, &stripped.encode(), 0)
            .expect("receive");
        assert!(!phone.holds_heads_of(&server_id));

        let ask = phone
            .generate_without_changes(&server_id, 0)
            .expect("a message");
        let ask = automerge::sync::Message::decode(&ask).expect("decode");
        assert!(ask.changes.is_empty());
        assert_eq!(ask.need, kept);
        server
            .receive(&phone_id, &ask.encode(), 0)
            .expect("receive");
        let kept_form = server.generate(&phone_id, 0).expect("the kept change");
        phone.receive(&server_id, &kept_form, 0).expect("receive");
        assert!(phone.holds_heads_of(&server_id));
        // Our change was not marked sent: it still goes, and both converge.
        sync_pair(&mut phone, &phone_id, &mut server, &server_id);
        assert_eq!(phone.heads(), server.heads());
        assert_eq!(server.document().get_changes(&kept).len(), 1);
    }

    #[test]
    fn changes_since_known_heads_go_in_the_first_message() {
        let (ida, idb) = (peer("a"), peer("b"));
        let mut a = DocSession::new(Automerge::new(), 0);
        let mut b = DocSession::new(Automerge::new(), 0);
        a.add_peer(idb.clone(), None, 0).expect("add");
        b.add_peer(ida.clone(), None, 0).expect("add");
        let mut tx = a.document_mut().transaction();
        tx.put(automerge::ROOT, "base", 0).expect("put");
        tx.commit();
        sync_pair(&mut a, &ida, &mut b, &idb);
        let known = a.heads();
        let saved = a.remove_peer(&idb).expect("state");
        for i in 0..3 {
            let mut tx = a.document_mut().transaction();
            tx.put(automerge::ROOT, format!("k{i}"), i).expect("put");
            tx.commit();
        }
        // A reconnect: a plain first message carries no changes; this one
        // carries all three, and b holds them after that one message.
        a.add_peer(idb.clone(), Some(&saved), 0).expect("resume");
        let first = a.generate_parts(&idb, Some((&known, 1 << 20)), 1 << 20, 0);
        assert_eq!(first.len(), 1);
        let got = b.receive(&ida, &first[0], 0).expect("receive");
        assert_eq!(got.new_changes.len(), 3);
        assert_eq!(b.heads(), a.heads());
        sync_pair(&mut a, &ida, &mut b, &idb);
        assert!(a.peer_covers(&idb, &a.heads()));

        // A budget smaller than one change still sends a causal prefix.
        let mut tx = a.document_mut().transaction();
        tx.put(automerge::ROOT, "more", 1).expect("put");
        tx.commit();
        a.add_peer(peer("c"), None, 0).expect("add");
        let first = a.generate_parts(&peer("c"), Some((&known, 1)), 1 << 20, 0);
        let message = sync::Message::decode(&first[0]).expect("decode");
        assert_eq!(message.changes.len(), 1);
        // Unknown heads: a plain message.
        let unknown = [ChangeHash([9; 32])];
        a.add_peer(peer("d"), None, 0).expect("add");
        let plain = a.generate_parts(&peer("d"), Some((&unknown, 1 << 20)), 1 << 20, 0);
        assert!(
            sync::Message::decode(&plain[0])
                .expect("decode")
                .changes
                .is_empty()
        );
    }

    #[test]
    fn a_large_upload_goes_in_parts_each_answered_and_none_repeated() {
        let (ida, idb) = (peer("a"), peer("b"));
        let mut a = DocSession::new(Automerge::new(), 0);
        let mut b = DocSession::new(Automerge::new(), 0);
        a.add_peer(idb.clone(), None, 0).expect("add");
        b.add_peer(ida.clone(), None, 0).expect("add");
        let mut tx = a.document_mut().transaction();
        tx.put(automerge::ROOT, "base", 0).expect("put");
        tx.commit();
        sync_pair(&mut a, &ida, &mut b, &idb);
        let known = a.heads();
        let saved = a.remove_peer(&idb).expect("state");
        for i in 0..40 {
            let mut tx = a.document_mut().transaction();
            tx.put(automerge::ROOT, format!("k{i}"), "x".repeat(200))
                .expect("put");
            tx.commit();
        }
        a.add_peer(idb.clone(), Some(&saved), 0).expect("resume");
        let parts = a.generate_parts(&idb, Some((&known, 1 << 20)), 2_000, 0);
        assert!(parts.len() >= 4, "{} parts", parts.len());
        // Each part applies on its own, in order, and b holds a causal
        // prefix after each: what it would acknowledge.
        let mut held = 0;
        for part in &parts {
            let got = b.receive(&ida, part, 0).expect("receive");
            assert!(!got.new_changes.is_empty());
            held += got.new_changes.len();
            assert!(part.len() < 2_000 + 1_000, "{} bytes", part.len());
        }
        assert_eq!(held, 40);
        assert_eq!(b.heads(), a.heads());
        // Nothing is sent twice once b answers.
        let answer = b.generate(&ida, 0).expect("an answer");
        a.receive(&idb, &answer, 0).expect("receive");
        for again in a.generate_parts(&idb, None, 2_000, 0) {
            let message = sync::Message::decode(&again).expect("decode");
            assert!(message.changes.is_empty());
        }
        sync_pair(&mut a, &ida, &mut b, &idb);
        assert!(a.peer_covers(&idb, &a.heads()));
    }

    #[test]
    fn parts_carry_changes_the_peer_asks_for_below_the_shared_heads() {
        let (ida, idb) = (peer("a"), peer("b"));
        let mut a = DocSession::new(Automerge::new(), 0);
        let mut b = DocSession::new(Automerge::new(), 0);
        a.add_peer(idb.clone(), None, 0).expect("add");
        b.add_peer(ida.clone(), None, 0).expect("add");
        for i in 0..6 {
            let mut tx = a.document_mut().transaction();
            tx.put(automerge::ROOT, format!("k{i}"), "x".repeat(200))
                .expect("put");
            tx.commit();
        }
        sync_pair(&mut a, &ida, &mut b, &idb);
        // The peer (restored from an older copy) asks for ancestors of the
        // heads both were known to share.
        let asked: Vec<ChangeHash> = a
            .doc
            .get_changes(&[])
            .iter()
            .take(3)
            .map(|c| c.hash())
            .collect();
        let heads = a.heads();
        let state = &mut a.peers.get_mut(&idb).expect("peer").state;
        state.their_have = Some(Vec::new());
        state.their_need = Some(asked.clone());
        state.their_heads = Some(heads);
        state.in_flight = false;
        let parts = a.generate_parts(&idb, None, 100, 0);
        let sent: Vec<ChangeHash> = parts
            .iter()
            .flat_map(|part| {
                sync::Message::decode(part)
                    .expect("decode")
                    .changes
                    .iter()
                    .map(|raw| {
                        automerge::Change::from_bytes(raw.to_vec())
                            .expect("a change")
                            .hash()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for hash in &asked {
            assert!(
                sent.contains(hash),
                "{hash} was asked for and not sent: {sent:?}"
            );
        }
    }

    #[test]
    fn garbage_sync_data_is_an_error_not_a_panic() {
        let mut s = DocSession::new(Automerge::new(), 0);
        for data in [&b""[..], b"\x42", b"\xff\xff", b"\x42\x05\x00"] {
            assert!(s.receive(&peer("x"), data, 0).is_err());
        }
    }

    #[test]
    fn a_saved_sync_state_resumes() {
        let (ida, idb) = (peer("a"), peer("b"));
        let mut a = DocSession::new(Automerge::new(), 0);
        let mut b = DocSession::new(Automerge::new(), 0);
        a.add_peer(idb.clone(), None, 0).expect("add");
        b.add_peer(ida.clone(), None, 0).expect("add");
        let mut tx = a.document_mut().transaction();
        tx.put(automerge::ROOT, "k", 1).expect("put");
        tx.commit();
        sync_pair(&mut a, &ida, &mut b, &idb);
        let saved = a.remove_peer(&idb).expect("state");
        a.add_peer(idb.clone(), Some(&saved), 0).expect("resume");
        assert!(a.add_peer(idb, Some(b"garbage"), 0).is_err());
    }
}
