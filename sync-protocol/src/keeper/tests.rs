//! The keeper driven by in-memory devices and a fake store that fails on
//! demand, run to quiescence.

use std::collections::{BTreeMap, HashMap};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ChangeHash, ReadDoc};

use super::*;
use crate::ids::TenantId;
use crate::schema::{DocumentKind, genesis};

mod hostile;
mod provenance;
mod simulation;

/// A device: its own replica and its sync state with the server.
struct Device {
    doc: Automerge,
    state: sync::State,
    key: PeerId,
    id: DeviceId,
}

impl Device {
    fn new(name: &str, base: &Automerge) -> Self {
        let mut doc = base.fork();
        doc.set_actor(ActorId::random());
        Device {
            doc,
            state: sync::State::new(),
            key: PeerId::new(name).expect("peer id"),
            id: DeviceId::new_v7(),
        }
    }

    fn record_visit(&mut self, key: &str) {
        let mut tx = self.doc.transaction();
        let visits = match tx.get(automerge::ROOT, "visits") {
            Ok(Some((_, id))) => id,
            other => panic!("no visits map: {other:?}"),
        };
        let visit = tx
            .put_object(&visits, key, automerge::ObjType::Map)
            .expect("visit");
        tx.put(&visit, "note", "hello").expect("note");
        tx.commit();
    }

    fn visit_keys(doc: &Automerge) -> Vec<String> {
        match doc.get(automerge::ROOT, "visits") {
            Ok(Some((_, id))) => doc.keys(&id).collect(),
            _ => Vec::new(),
        }
    }
}

/// The store: chunks by hash, saved sync states, and a switch to fail.
#[derive(Default)]
struct FakeStore {
    chunks: BTreeMap<ChangeHash, Vec<u8>>,
    genesis: Vec<u8>,
    states: HashMap<PeerId, Vec<u8>>,
    fail_next: bool,
    commits: usize,
}

impl FakeStore {
    fn load(&self) -> Automerge {
        let mut doc = Automerge::load(&self.genesis).expect("genesis loads");
        for bytes in self.chunks.values() {
            doc.load_incremental(bytes).expect("chunk loads");
        }
        doc
    }

    fn stored_bytes(&self) -> u64 {
        (self.genesis.len() + self.chunks.values().map(Vec::len).sum::<usize>()) as u64
    }
}

struct World {
    keeper: Keeper,
    store: FakeStore,
    devices: Vec<Device>,
    /// Messages from the keeper not yet delivered, per device key.
    inbox: HashMap<PeerId, Vec<Vec<u8>>>,
    refusals: Vec<(PeerId, Refusal)>,
}

fn base() -> Automerge {
    genesis(
        TenantId::from_uuid(uuid::Uuid::from_u128(7)),
        DocumentKind::MonthlyLog("2026-11".parse().expect("month")),
    )
}

impl World {
    fn new(devices: usize, limits: KeeperLimits) -> Self {
        let genesis = base();
        let store = FakeStore {
            genesis: genesis.save(),
            ..FakeStore::default()
        };
        let mut keeper = Keeper::new(store.load(), store.stored_bytes(), limits, 0);
        let devices: Vec<Device> = (0..devices)
            .map(|i| Device::new(&format!("device-{i}"), &genesis))
            .collect();
        for d in &devices {
            keeper.add_peer(d.key.clone(), d.id, None, 0);
        }
        World {
            keeper,
            store,
            devices,
            inbox: HashMap::new(),
            refusals: Vec::new(),
        }
    }

    fn post(&mut self, outgoing: Outgoing) {
        for (peer, data) in outgoing {
            self.inbox.entry(peer).or_default().push(data);
        }
    }

    /// Delivers one message from device `i` to the keeper, persisting what
    /// it asks for through the fake store.
    fn device_sends(&mut self, i: usize, data: Vec<u8>) {
        let key = self.devices[i].key.clone();
        match self.keeper.receive(&key, &data, 1) {
            Ok(Step::Reply(out)) => self.post(out),
            Ok(Step::Persist(batch)) => {
                // Nothing is advertised while the batch is out.
                assert!(self.keeper.flush(1).is_empty(), "sent before storing");
                if std::mem::take(&mut self.store.fail_next) {
                    self.keeper.abandon(batch.ticket);
                    assert!(self.keeper.needs_reload());
                    assert!(self.keeper.flush(1).is_empty(), "sent while poisoned");
                    self.keeper
                        .reload(self.store.load(), self.store.stored_bytes());
                    self.refusals.push((key, Refusal::Busy));
                    return;
                }
                for change in &batch.changes {
                    self.store.chunks.insert(change.hash, change.bytes.clone());
                }
                self.store.states.insert(key, batch.sender_state.clone());
                self.store.commits += 1;
                let out = self.keeper.confirm(batch.ticket, 1);
                self.post(out);
            }
            Err(refusal) => {
                if self.keeper.needs_reload() {
                    self.keeper
                        .reload(self.store.load(), self.store.stored_bytes());
                }
                self.refusals.push((key, refusal));
            }
        }
    }

    /// Runs every device against the keeper until nobody has anything to say.
    fn quiesce(&mut self) {
        assert!(self.run(200), "did not quiesce");
    }

    /// Up to `rounds` rounds; true if everyone fell quiet.
    fn run(&mut self, rounds: usize) -> bool {
        for _ in 0..rounds {
            let mut quiet = true;
            for i in 0..self.devices.len() {
                let key = self.devices[i].key.clone();
                if !self.keeper.has_peer(&key) {
                    // A refused device reconnects with a fresh state.
                    self.devices[i].state = sync::State::new();
                    self.keeper
                        .add_peer(key.clone(), self.devices[i].id, None, 1);
                }
                for data in self.inbox.remove(&key).unwrap_or_default() {
                    quiet = false;
                    let device = &mut self.devices[i];
                    let message =
                        sync::Message::decode(&data).expect("keeper sends valid messages");
                    device
                        .doc
                        .receive_sync_message(&mut device.state, message)
                        .expect("device applies");
                }
                let device = &mut self.devices[i];
                if let Some(message) = device.doc.generate_sync_message(&mut device.state) {
                    quiet = false;
                    self.device_sends(i, message.encode());
                }
            }
            if quiet {
                return true;
            }
        }
        false
    }
}

#[test]
fn devices_converge_and_the_store_holds_every_change() {
    let mut world = World::new(3, KeeperLimits::default());
    for (i, device) in world.devices.iter_mut().enumerate() {
        for n in 0..5 {
            device.record_visit(&format!("{i}-{n}"));
        }
    }
    world.quiesce();
    let heads = world.keeper.heads();
    for device in &world.devices {
        assert_eq!(device.doc.get_heads(), heads);
        assert_eq!(Device::visit_keys(&device.doc).len(), 15);
    }
    let stored = world.store.load();
    assert_eq!(
        stored.get_heads(),
        heads,
        "the store holds what was advertised"
    );
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
}

/// `confirm_each` hands each peer its message as it is made; a peer whose
/// queue cannot take it is dropped at once (and reported), the others get
/// theirs, and the dropped one, reconnecting with a fresh state, catches up.
#[test]
fn a_peer_whose_queue_is_full_is_dropped_and_catches_up_on_reconnect() {
    let mut world = World::new(3, KeeperLimits::default());
    world.quiesce();
    world.devices[0].record_visit("new");
    let full = world.devices[1].key.clone();
    let mut handed = Vec::new();
    let mut dropped = None;
    for _ in 0..10 {
        let device = &mut world.devices[0];
        let Some(message) = device.doc.generate_sync_message(&mut device.state) else {
            break;
        };
        let key = device.key.clone();
        match world.keeper.receive(&key, &message.encode(), 1) {
            Ok(Step::Persist(batch)) => {
                for change in &batch.changes {
                    world.store.chunks.insert(change.hash, change.bytes.clone());
                }
                dropped = Some(world.keeper.confirm_each(batch.ticket, 1, |peer, data| {
                    handed.push(peer.clone());
                    if *peer == full {
                        return false;
                    }
                    world.inbox.entry(peer.clone()).or_default().push(data);
                    true
                }));
                break;
            }
            Ok(Step::Reply(out)) => {
                for (peer, data) in out {
                    if peer == key {
                        let message = sync::Message::decode(&data).expect("valid");
                        let device = &mut world.devices[0];
                        device
                            .doc
                            .receive_sync_message(&mut device.state, message)
                            .expect("applies");
                    }
                }
            }
            Err(refusal) => panic!("refused: {refusal}"),
        }
    }
    assert_eq!(dropped, Some(vec![full.clone()]));
    assert!(handed.contains(&world.devices[2].key));
    assert!(!world.keeper.has_peer(&full), "dropped from the keeper too");
    world.quiesce();
    for device in &world.devices {
        assert_eq!(device.doc.get_heads(), world.keeper.heads());
    }
}

#[test]
fn a_failed_commit_acknowledges_nothing_and_the_device_completes_on_retry() {
    let mut world = World::new(2, KeeperLimits::default());
    world.devices[0].record_visit("a");
    world.store.fail_next = true;
    world.quiesce();
    assert_eq!(world.refusals.len(), 1, "exactly the failed commit");
    // The refused sender's state was never saved with the refused change.
    let heads = world.keeper.heads();
    assert_eq!(world.store.load().get_heads(), heads);
    assert!(Device::visit_keys(&world.devices[1].doc).contains(&"a".to_owned()));
    for state in world.store.states.values() {
        let state = sync::State::decode(state).expect("state");
        for head in &state.shared_heads {
            assert!(
                world.store.load().get_change_by_hash(head).is_some(),
                "a saved sync state names a change the store lacks"
            );
        }
    }
}

#[test]
fn no_message_names_heads_the_store_lacks() {
    // Every message the keeper ever sends advertises only stored heads.
    let mut world = World::new(3, KeeperLimits::default());
    for (i, device) in world.devices.iter_mut().enumerate() {
        device.record_visit(&format!("v{i}"));
    }
    for round in 0..30 {
        if round % 4 == 1 {
            world.store.fail_next = true;
        }
        for (peer, messages) in &world.inbox {
            for data in messages {
                let message = sync::Message::decode(data).expect("valid");
                let stored = world.store.load();
                for head in &message.heads {
                    assert!(
                        stored.get_change_by_hash(head).is_some(),
                        "{peer} was told head {head} before it was stored"
                    );
                }
            }
        }
        world.quiesce();
    }
    assert_eq!(world.store.load().get_heads(), world.keeper.heads());
}

#[test]
fn changes_by_the_genesis_actor_are_refused_and_rolled_back() {
    let mut world = World::new(1, KeeperLimits::default());
    world.devices[0].doc.set_actor(ActorId::from(GENESIS_ACTOR));
    world.devices[0].record_visit("forged");
    let before = world.keeper.heads();
    let device = &mut world.devices[0];
    let message = device
        .doc
        .generate_sync_message(&mut device.state)
        .expect("message");
    world.device_sends(0, message.encode());
    // The first message carries no changes (the device does not yet know
    // what the server has); run a few rounds to get them sent.
    for _ in 0..4 {
        let key = world.devices[0].key.clone();
        if !world.keeper.has_peer(&key) {
            break;
        }
        for data in world.inbox.remove(&key).unwrap_or_default() {
            let device = &mut world.devices[0];
            let m = sync::Message::decode(&data).expect("valid");
            device
                .doc
                .receive_sync_message(&mut device.state, m)
                .expect("apply");
        }
        let device = &mut world.devices[0];
        if let Some(m) = device.doc.generate_sync_message(&mut device.state) {
            world.device_sends(0, m.encode());
        }
    }
    assert!(
        world
            .refusals
            .iter()
            .any(|(_, r)| matches!(r, Refusal::GenesisActor { .. })),
        "{:?}",
        world.refusals
    );
    assert_eq!(
        world.keeper.heads(),
        before,
        "nothing of it stays in memory"
    );
    assert!(world.store.chunks.is_empty());
}

/// A sync message carrying exactly these change chunks.
fn message_with(changes: Vec<Vec<u8>>, heads: Vec<ChangeHash>) -> Vec<u8> {
    sync::Message {
        heads,
        need: Vec::new(),
        have: vec![sync::Have::default()],
        changes: sync::ChunkList::from(changes),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode()
}

/// A chain of changes whose first dependency is never sent: all orphans.
fn orphan_chain(len: usize) -> (Vec<Vec<u8>>, ChangeHash) {
    let mut device = Device::new("orphan-maker", &base());
    device.record_visit("withheld");
    let withheld = device.doc.get_heads();
    for n in 0..len {
        device.record_visit(&format!("o{n}"));
    }
    let changes: Vec<Vec<u8>> = device
        .doc
        .get_changes(&withheld)
        .into_iter()
        .map(|mut c| c.bytes().into_owned())
        .collect();
    (changes, device.doc.get_heads()[0])
}

#[test]
fn a_flood_of_orphans_is_refused_past_the_bound() {
    let limits = KeeperLimits {
        max_orphans: 8,
        ..KeeperLimits::default()
    };
    let mut world = World::new(1, limits);
    let (changes, head) = orphan_chain(9);
    world.device_sends(0, message_with(changes, vec![head]));
    assert!(
        matches!(
            world.refusals.last(),
            Some((_, Refusal::TooManyOrphans { count: 9, .. }))
        ),
        "{:?}",
        world.refusals
    );
    assert!(
        world.keeper.document().get_missing_deps(&[]).is_empty(),
        "the queue was dropped"
    );
}

#[test]
fn orphans_never_reach_another_device() {
    let mut world = World::new(2, KeeperLimits::default());
    // Give the document enough history that a fresh device gets a V2
    // whole-document message.
    for n in 0..10 {
        world.devices[1].record_visit(&format!("h{n}"));
    }
    world.quiesce();
    let (changes, head) = orphan_chain(2);
    world.device_sends(0, message_with(changes, vec![head]));
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
    assert!(
        !world.keeper.document().get_missing_deps(&[]).is_empty(),
        "orphans queued"
    );

    // A new device with no state: whatever it is sent holds no orphan.
    let newcomer = Device::new("newcomer", &Automerge::new());
    world
        .keeper
        .add_peer(newcomer.key.clone(), newcomer.id, None, 2);
    let mut state = sync::State::new();
    let mut doc = Automerge::new();
    let mut saw_v2 = false;
    for _ in 0..6 {
        if let Some(m) = doc.generate_sync_message(&mut state) {
            match world.keeper.receive(&newcomer.key, &m.encode(), 2) {
                Ok(Step::Reply(out)) => world.post(out),
                other => panic!("unexpected {other:?}"),
            }
        }
        for data in world.inbox.remove(&newcomer.key).unwrap_or_default() {
            let m = sync::Message::decode(&data).expect("valid");
            saw_v2 |= m.version == MessageVersion::V2;
            let mut probe = Automerge::new();
            for chunk in m.changes.iter() {
                probe.load_incremental(chunk).expect("loads");
            }
            assert!(
                probe.get_missing_deps(&[]).is_empty(),
                "an orphan was forwarded"
            );
            doc.receive_sync_message(&mut state, m).expect("apply");
        }
    }
    assert!(saw_v2, "the test must exercise the whole-document path");
    assert_eq!(Device::visit_keys(&doc).len(), 10);
}

#[test]
fn hostile_bloom_filters_are_refused_before_automerge() {
    let mut world = World::new(1, KeeperLimits::default());
    // num_entries 1, bits per entry 0, probes 7: `% 0` inside Automerge.
    let bloom = [1u8, 0, 7];
    let mut data = vec![0x42, 0, 0, 1, 0];
    data.push(bloom.len() as u8);
    data.extend_from_slice(&bloom);
    data.push(0);
    world.device_sends(0, data);
    assert!(
        matches!(world.refusals.last(), Some((_, Refusal::Inadmissible(_)))),
        "{:?}",
        world.refusals
    );
    assert!(!world.keeper.needs_reload(), "nothing reached the document");
}

#[test]
fn the_document_ceiling_refuses_with_a_clear_error() {
    let limits = KeeperLimits {
        max_document_bytes: 1,
        ..KeeperLimits::default()
    };
    let mut world = World::new(1, limits);
    world.devices[0].record_visit("too much");
    // The device retries and is refused every time: it never goes quiet.
    assert!(!world.run(10));
    assert!(
        world
            .refusals
            .iter()
            .any(|(_, r)| matches!(r, Refusal::DocumentFull { .. })),
        "{:?}",
        world.refusals
    );
    assert!(world.store.chunks.is_empty());
}

#[test]
fn a_snapshot_is_verified_against_the_heads() {
    let mut doc = base();
    doc.set_actor(ActorId::random());
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, "touched", 1).expect("put");
    tx.commit();
    let heads = doc.get_heads();
    let bytes = doc.save();
    assert!(verify_snapshot(&bytes, &heads).is_ok());
    assert!(verify_snapshot(&bytes[..bytes.len() / 2], &heads).is_err());
    assert!(
        verify_snapshot(&base().save(), &heads).is_err(),
        "wrong heads"
    );
}

// ---------------------------------------------------------------------------
// Review proofs (hostile review of the sync core). Each test asserts the
// *desired* behaviour, so it FAILS while the finding stands.
// ---------------------------------------------------------------------------

/// Two changes by one new actor, both depending only on `base`'s heads:
/// `z1` (seq 1) and `z2` (seq 2, its ops numbered after z1's). Applied in
/// message order they are fine; a change numbered 2 applied first panics.
/// Ground until `z2`'s hash sorts before `z1`'s, as the store's load order
/// (`created_at, hash`) then puts z2 first.
fn concurrent_pair_of_one_actor(base: &Automerge) -> (automerge::Change, automerge::Change) {
    loop {
        let actor = ActorId::random();
        let mut fork = base.fork().with_actor(actor);
        let mut tx = fork.transaction();
        tx.put(automerge::ROOT, "x", 1).expect("put");
        tx.commit();
        let mut tx = fork.transaction();
        tx.put(automerge::ROOT, "y", 2).expect("put");
        tx.commit();
        let changes = fork.get_changes(&base.get_heads());
        let z1 = changes[0].clone();
        let mut second = automerge::ExpandedChange::from(&changes[1]);
        assert_eq!(second.seq, 2);
        second.deps = base.get_heads();
        second.hash = None;
        let z2 = automerge::Change::from(second);
        if z2.hash().to_string() < z1.hash().to_string() {
            return (z1, z2);
        }
    }
}

#[test]
fn review_a_pair_that_could_not_load_back_is_refused_not_stored() {
    let mut world = World::new(1, KeeperLimits::default());
    let base = world.keeper.document().fork();
    let (mut z1, mut z2) = concurrent_pair_of_one_actor(&base);
    let data = message_with(vec![z1.bytes().into_owned(), z2.bytes().into_owned()], {
        let mut heads = vec![z1.hash(), z2.hash()];
        heads.sort();
        heads
    });
    let key = world.devices[0].key.clone();
    // Automerge applies the pair in this order, but a store that loads it
    // back change by change cannot: seq 2 does not descend from seq 1.
    match world.keeper.receive(&key, &data, 1) {
        Err(Refusal::OutOfSequence { .. }) => {}
        other => panic!("expected a refusal: {other:?}"),
    }
    assert!(
        world.keeper.needs_reload(),
        "the pair was applied in memory"
    );
    world
        .keeper
        .reload(world.store.load(), world.store.stored_bytes());
    assert_eq!(world.keeper.heads(), base.get_heads());
}

#[test]
fn review_one_orphan_must_not_turn_every_message_into_the_whole_document() {
    let mut world = World::new(3, KeeperLimits::default());
    for n in 0..200 {
        // Visits with a 1 KiB note of incompressible text.
        let note: String = (0..32).map(|_| format!("{:032x}", rand_u128())).collect();
        let doc = &mut world.devices[1].doc;
        let mut tx = doc.transaction();
        let visits = match tx.get(automerge::ROOT, "visits") {
            Ok(Some((_, id))) => id,
            other => panic!("no visits map: {other:?}"),
        };
        let visit = tx
            .put_object(&visits, format!("h{n}"), automerge::ObjType::Map)
            .expect("visit");
        tx.put(&visit, "note", note).expect("note");
        tx.commit();
    }
    world.quiesce();
    let whole = world.keeper.snapshot().len();

    // Baseline: device 1 records one visit; what does device 2 get?
    world.devices[1].record_visit("before");
    world.quiesce_and_measure(2); // warm-up
    world.devices[1].record_visit("baseline");
    let baseline = world.quiesce_and_measure(2);

    // Device 0 (the attacker) plants one orphan: a change whose dependency
    // it never sends. It stays in Automerge's queue after device 0 leaves.
    let (changes, head) = orphan_chain(1);
    world.device_sends(0, message_with(changes, vec![head]));
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
    let _ = world.keeper.remove_peer(&world.devices[0].key.clone());
    world.devices.truncate(3);

    world.devices[1].record_visit("after");
    let after = world.quiesce_and_measure(2);
    eprintln!(
        "document save: {whole} bytes; bytes sent to device 2 for one new visit: before the orphan {baseline}, after {after}"
    );
    assert!(
        after < whole / 2,
        "one 100-byte orphan makes every V2 message carry the whole document \
         ({after} bytes for one visit, baseline {baseline}, document {whole})"
    );
}

impl World {
    /// Runs to quiescence (the attacker, device 0, stays silent) and returns
    /// the bytes the keeper sent to device `i` meanwhile.
    fn quiesce_and_measure(&mut self, i: usize) -> usize {
        let key = self.devices[i].key.clone();
        let mut total = 0;
        for _ in 0..50 {
            let mut quiet = true;
            for d in 1..self.devices.len() {
                let k = self.devices[d].key.clone();
                for data in self.inbox.remove(&k).unwrap_or_default() {
                    quiet = false;
                    if k == key {
                        total += data.len();
                    }
                    let device = &mut self.devices[d];
                    let m = sync::Message::decode(&data).expect("valid");
                    device
                        .doc
                        .receive_sync_message(&mut device.state, m)
                        .expect("apply");
                }
                let device = &mut self.devices[d];
                if let Some(m) = device.doc.generate_sync_message(&mut device.state) {
                    quiet = false;
                    self.device_sends(d, m.encode());
                }
            }
            self.inbox.remove(&self.devices[0].key.clone());
            if quiet {
                break;
            }
        }
        total
    }
}

fn rand_u128() -> u128 {
    u128::from_le_bytes(ActorId::random().to_bytes().try_into().expect("16 bytes"))
}

/// `n` changes, each by a fresh actor, chained on `base`'s heads.
fn one_change_per_actor(base: &Automerge, n: usize) -> Vec<Vec<u8>> {
    // Built without Automerge's per-actor bookkeeping on our side: every
    // change is made on a two-change document (base + the previous one)
    // by re-basing the expanded form, so the attacker's cost is linear.
    let mut out = Vec::with_capacity(n);
    let mut fork = base.fork().with_actor(ActorId::random());
    let mut tx = fork.transaction();
    // A fresh value: a put that changes nothing makes no change.
    tx.put(automerge::ROOT, "k", (rand_u128() >> 65) as i64)
        .expect("put");
    tx.commit();
    let template = automerge::ExpandedChange::from(&fork.get_changes(&base.get_heads())[0]);
    let mut deps = base.get_heads();
    for i in 0..n {
        let mut e = template.clone();
        e.actor_id = ActorId::random();
        e.deps = deps.clone();
        e.hash = None;
        e.start_op =
            std::num::NonZeroU64::new(template.start_op.get() + i as u64).expect("nonzero");
        let change = automerge::Change::from(e);
        deps = vec![change.hash()];
        out.push(change.raw_bytes().to_vec());
    }
    out
}

#[test]
#[ignore = "measurement: cargo test -p doorstep-protocol review_actor_fanout -- --ignored --nocapture"]
fn review_actor_fanout_costs_quadratic_time_in_automerge() {
    for n in std::env::var("REVIEW_ACTORS")
        .map(|v| {
            v.split(',')
                .map(|n| n.parse().expect("n"))
                .collect::<Vec<usize>>()
        })
        .unwrap_or_else(|_| vec![2_000, 4_000, 8_000, 16_000])
    {
        let mut world = World::new(1, KeeperLimits::default());
        let base = world.keeper.document().fork();
        let changes = one_change_per_actor(&base, n);
        let bytes: usize = changes.iter().map(Vec::len).sum();
        let head = {
            let last = automerge::Change::from_bytes(changes.last().expect("one").clone())
                .expect("change");
            last.hash()
        };
        let data = message_with(changes, vec![head]);
        let key = world.devices[0].key.clone();
        let started = std::time::Instant::now();
        let step = world.keeper.receive(&key, &data, 1);
        let took = started.elapsed();
        let persisted = matches!(step, Ok(Step::Persist(ref b)) if b.changes.len() == n);
        let hwm = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM"))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        eprintln!(
            "{n} actors: message {} KiB ({bytes} B of changes), receive {took:?}, persisted all: {persisted}, {hwm}",
            data.len() / 1024
        );
    }
}

/// One change (by a fresh actor, on `base`) that adds a visit record under a
/// canonical UUIDv7 key holding a chain of `depth` nested maps.
fn deeply_nested_visit(base: &Automerge, depth: usize) -> (Vec<u8>, ChangeHash) {
    let mut fork = base.fork().with_actor(ActorId::random());
    let mut tx = fork.transaction();
    let visits = match tx.get(automerge::ROOT, "visits") {
        Ok(Some((_, id))) => id,
        other => panic!("no visits map: {other:?}"),
    };
    let key = crate::schema::RecordId::new_v7().to_string();
    let mut obj = tx
        .put_object(&visits, key.as_str(), automerge::ObjType::Map)
        .expect("visit");
    for _ in 0..depth {
        obj = tx
            .put_object(&obj, "a", automerge::ObjType::Map)
            .expect("nest");
    }
    tx.commit();
    let mut change = fork
        .get_changes(&base.get_heads())
        .pop()
        .expect("one change");
    (change.bytes().into_owned(), change.hash())
}

#[test]
#[ignore = "measurement: cargo test -p doorstep-protocol review_nesting -- --ignored --nocapture"]
fn review_nesting_costs_quadratic_patches_in_receive() {
    let depths: Vec<usize> = std::env::var("REVIEW_DEPTHS")
        .map(|v| v.split(',').map(|n| n.parse().expect("n")).collect())
        .unwrap_or_else(|_| vec![1_000, 2_000, 4_000]);
    for depth in depths {
        let mut world = World::new(1, KeeperLimits::default());
        let base = world.keeper.document().fork();
        let (bytes, hash) = deeply_nested_visit(&base, depth);
        let data = message_with(vec![bytes], vec![hash]);
        let key = world.devices[0].key.clone();
        let started = std::time::Instant::now();
        let step = world.keeper.receive(&key, &data, 1);
        let took = started.elapsed();
        let patches = match &step {
            Ok(Step::Persist(b)) => b.patches.iter().map(|p| p.path.len()).sum::<usize>(),
            _ => 0,
        };
        let hwm = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM"))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        eprintln!(
            "depth {depth}: message {} B, receive {took:?}, path elements over all patches {patches}, {hwm}",
            data.len()
        );
    }
}

#[test]
// Were the walk unbounded, this would abort the whole test binary: a
// failure all the same.
fn review_the_projection_walk_of_a_nested_record_must_not_overflow_a_pool_thread() {
    // Tokio's blocking-pool threads have 2 MiB stacks; a stack overflow
    // aborts the whole process (catch_unwind cannot catch it).
    let depth: usize = std::env::var("REVIEW_DEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let base = base();
    let (bytes, _) = deeply_nested_visit(&base, depth);
    let mut doc = base.fork();
    doc.load_incremental(&bytes).expect("applies");
    // Run the walk in a child process-like isolation: a thread with the
    // pool's stack size. If it overflows, this test process aborts.
    let walked = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let visits = match doc.get(automerge::ROOT, "visits") {
                Ok(Some((_, id))) => id,
                other => panic!("no visits: {other:?}"),
            };
            let key = doc.keys(&visits).next().expect("one visit");
            let Ok(Some((_, record))) = doc.get(&visits, key.as_str()) else {
                panic!("record")
            };
            crate::schema::conflicted_fields(&doc, &record).len()
        })
        .expect("thread")
        .join();
    assert!(walked.is_ok());
}

#[test]
fn a_change_nesting_past_the_depth_limit_is_refused_before_automerge() {
    let mut world = World::new(2, KeeperLimits::default());
    world.devices[1].record_visit("honest");
    world.quiesce();
    let base = world.keeper.document().fork();
    let heads = world.keeper.heads();
    // 8,000 deep cost the server 3.2 GB in Automerge's patch log; refused
    // here before it is applied, it costs the walk of one chain.
    let (bytes, hash) = deeply_nested_visit(&base, 8_000);
    let started = std::time::Instant::now();
    world.device_sends(0, message_with(vec![bytes], vec![hash]));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert!(
        matches!(
            world.refusals.last(),
            Some((_, Refusal::TooDeep { limit: 32, .. }))
        ),
        "{:?}",
        world.refusals
    );
    assert!(!world.keeper.needs_reload(), "nothing reached Automerge");
    assert_eq!(world.keeper.heads(), heads);
    assert!(world.store.chunks.len() == 1, "nothing more stored");
    // The other device goes on syncing.
    world.devices[1].record_visit("after");
    world.refusals.clear();
    world.quiesce();
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
    let keys = Device::visit_keys(world.keeper.document());
    assert_eq!(keys, vec!["after".to_owned(), "honest".to_owned()]);
}

#[test]
fn nesting_within_the_limit_passes_and_counts_from_the_document_root() {
    let mut world = World::new(1, KeeperLimits::default());
    // visits (1) > the record (2) > 30 more: 32, the limit.
    let base = world.keeper.document().fork();
    let (bytes, hash) = deeply_nested_visit(&base, 30);
    world.device_sends(0, message_with(vec![bytes], vec![hash]));
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
    assert_eq!(world.keeper.heads(), vec![hash]);

    // One more level under the deepest, in a later message: its parent is
    // in the document, 32 deep, so this one would be 33.
    let mut fork = world.keeper.document().fork().with_actor(ActorId::random());
    let visits = match fork.get(automerge::ROOT, "visits") {
        Ok(Some((_, id))) => id,
        other => panic!("no visits map: {other:?}"),
    };
    let record = fork.keys(&visits).next().expect("one visit");
    let Ok(Some((_, mut deepest))) = fork.get(&visits, record.as_str()) else {
        panic!("record")
    };
    while let Ok(Some((_, id))) = fork.get(&deepest, "a") {
        deepest = id;
    }
    let mut tx = fork.transaction();
    tx.put_object(&deepest, "b", automerge::ObjType::Map)
        .expect("nest");
    tx.commit();
    let mut change = fork.get_changes(&[hash]).pop().expect("one change");
    world.device_sends(
        0,
        message_with(vec![change.bytes().into_owned()], vec![change.hash()]),
    );
    assert!(
        matches!(
            world.refusals.last(),
            Some((
                _,
                Refusal::TooDeep {
                    depth: 33,
                    limit: 32
                }
            ))
        ),
        "{:?}",
        world.refusals
    );
    assert_eq!(world.keeper.heads(), vec![hash]);
}

#[test]
fn nesting_split_across_changes_of_one_message_is_measured_whole() {
    let mut world = World::new(1, KeeperLimits::default());
    let base = world.keeper.document().fork();
    // Ten changes of five levels each, one under the other: 2 + 50 deep.
    let mut fork = base.fork().with_actor(ActorId::random());
    let mut obj = match fork.get(automerge::ROOT, "visits") {
        Ok(Some((_, id))) => id,
        other => panic!("no visits map: {other:?}"),
    };
    for _ in 0..10 {
        let mut tx = fork.transaction();
        for _ in 0..5 {
            obj = tx
                .put_object(&obj, "a", automerge::ObjType::Map)
                .expect("nest");
        }
        tx.commit();
    }
    let changes: Vec<Vec<u8>> = fork
        .get_changes(&base.get_heads())
        .into_iter()
        .map(|mut c| c.bytes().into_owned())
        .collect();
    world.device_sends(0, message_with(changes, fork.get_heads()));
    assert!(
        matches!(world.refusals.last(), Some((_, Refusal::TooDeep { .. }))),
        "{:?}",
        world.refusals
    );
    assert_eq!(world.keeper.heads(), base.get_heads());
}

#[test]
fn a_document_refuses_actors_past_its_lifetime_limit() {
    let limits = KeeperLimits {
        max_document_actors: 12,
        ..KeeperLimits::default()
    };
    let mut world = World::new(2, limits);
    // The genesis actor and device 1's make two; nine more fit.
    world.devices[1].record_visit("first");
    world.quiesce();
    let base = world.keeper.document().fork();
    let changes = one_change_per_actor(&base, 9);
    let head = automerge::Change::from_bytes(changes.last().expect("one").clone())
        .expect("change")
        .hash();
    world.device_sends(0, message_with(changes, vec![head]));
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
    assert_eq!(world.keeper.heads(), vec![head]);

    // Two more in a later message would pass 12: refused, nothing applied.
    let base = world.keeper.document().fork();
    let changes = one_change_per_actor(&base, 2);
    let next = automerge::Change::from_bytes(changes.last().expect("one").clone())
        .expect("change")
        .hash();
    world.device_sends(0, message_with(changes, vec![next]));
    assert!(
        matches!(
            world.refusals.last(),
            Some((
                _,
                Refusal::DocumentActors {
                    count: 11,
                    incoming: 2,
                    limit: 12
                }
            ))
        ),
        "{:?}",
        world.refusals
    );
    assert!(!world.keeper.needs_reload());
    assert_eq!(world.keeper.heads(), vec![head]);

    // One more fits, and the count survives a reload from the store.
    world
        .keeper
        .reload(world.store.load(), world.store.stored_bytes());
    let (id, key) = (world.devices[0].id, world.devices[0].key.clone());
    world.keeper.add_peer(key, id, None, 1);
    world.refusals.clear();
    let base = world.keeper.document().fork();
    let changes = one_change_per_actor(&base, 1);
    let last = automerge::Change::from_bytes(changes[0].clone())
        .expect("change")
        .hash();
    world.device_sends(0, message_with(changes, vec![last]));
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
    let base = world.keeper.document().fork();
    let changes = one_change_per_actor(&base, 1);
    world.device_sends(0, message_with(changes, vec![]));
    assert!(
        matches!(
            world.refusals.last(),
            Some((_, Refusal::DocumentActors { count: 12, .. }))
        ),
        "{:?}",
        world.refusals
    );
    // The devices already in the document go on writing.
    world.devices[1].record_visit("still");
    world.quiesce();
    assert!(Device::visit_keys(world.keeper.document()).contains(&"still".to_owned()));
}

#[test]
fn a_document_refuses_changes_past_its_lifetime_limit() {
    let limits = KeeperLimits {
        max_document_changes: 4,
        ..KeeperLimits::default()
    };
    let mut world = World::new(1, limits);
    // The genesis and two visits: three.
    world.devices[0].record_visit("a");
    world.devices[0].record_visit("b");
    world.quiesce();
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
    let heads = world.keeper.heads();
    world.devices[0].record_visit("c");
    world.devices[0].record_visit("d");
    // The device retries and is refused each time: it never falls quiet.
    assert!(!world.run(5));
    assert!(
        matches!(
            world.refusals.first(),
            Some((
                _,
                Refusal::DocumentChanges {
                    count: 3,
                    incoming: 2,
                    limit: 4
                }
            ))
        ),
        "{:?}",
        world.refusals
    );
    assert_eq!(world.keeper.heads(), heads);
}

#[test]
fn a_whole_document_nesting_past_the_limit_is_refused_before_automerge() {
    let mut world = World::new(1, KeeperLimits::default());
    let base = world.keeper.document().fork();
    let (bytes, _) = deeply_nested_visit(&base, 40);
    let mut doc = base.fork();
    doc.load_incremental(&bytes).expect("applies");
    // Automerge's V2 reply to a peer missing much: `save()` as one chunk.
    let data = sync::Message {
        heads: doc.get_heads(),
        need: Vec::new(),
        have: vec![sync::Have::default()],
        changes: sync::ChunkList::from(doc.save()),
        flags: None,
        version: MessageVersion::V2,
    }
    .encode();
    world.device_sends(0, data);
    assert!(
        matches!(world.refusals.last(), Some((_, Refusal::TooDeep { .. }))),
        "{:?}",
        world.refusals
    );
    assert!(!world.keeper.needs_reload());
    assert_eq!(world.keeper.heads(), base.get_heads());
}

#[test]
fn an_orphan_is_measured_when_the_change_it_waits_for_arrives() {
    let mut world = World::new(1, KeeperLimits::default());
    let base = world.keeper.document().fork();
    // The first change nests 20 under a new visit (22 deep); the second,
    // sent first, nests 20 more under its deepest (42).
    let mut fork = base.fork().with_actor(ActorId::random());
    let visits = match fork.get(automerge::ROOT, "visits") {
        Ok(Some((_, id))) => id,
        other => panic!("no visits map: {other:?}"),
    };
    let mut obj = visits;
    for round in 0..2 {
        let mut tx = fork.transaction();
        for _ in 0..20 {
            obj = tx
                .put_object(&obj, format!("r{round}").as_str(), automerge::ObjType::Map)
                .expect("nest");
        }
        tx.commit();
    }
    let mut changes = fork.get_changes(&base.get_heads());
    assert_eq!(changes.len(), 2);
    let second = changes.pop().expect("second");
    let first = changes.pop().expect("first");
    let bytes = |c: &automerge::Change| c.raw_bytes().to_vec();

    // Alone, the second waits for the first: nothing to measure yet.
    world.device_sends(0, message_with(vec![bytes(&second)], vec![second.hash()]));
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
    assert_eq!(world.keeper.heads(), base.get_heads());
    // The first arrives: together they are 41 deep (visits 1, then 40).
    world.device_sends(0, message_with(vec![bytes(&first)], vec![first.hash()]));
    assert!(
        matches!(world.refusals.last(), Some((_, Refusal::TooDeep { .. }))),
        "{:?}",
        world.refusals
    );
    assert_eq!(world.keeper.heads(), base.get_heads());
}

#[test]
fn an_object_made_inside_one_the_document_never_held_is_refused() {
    let mut world = World::new(1, KeeperLimits::default());
    let base = world.keeper.document().fork();
    // Change A makes a visit; change B, by another actor, makes a map in
    // it. B is rewritten to depend on the base alone, and A never sent:
    // B applies at once, into an object that does not exist.
    let mut fork = base.fork().with_actor(ActorId::random());
    let visits = match fork.get(automerge::ROOT, "visits") {
        Ok(Some((_, id))) => id,
        other => panic!("no visits map: {other:?}"),
    };
    let mut tx = fork.transaction();
    let visit = tx
        .put_object(&visits, "v", automerge::ObjType::Map)
        .expect("visit");
    tx.commit();
    let after_a = fork.get_heads();
    let mut other = fork.fork().with_actor(ActorId::random());
    let mut tx = other.transaction();
    tx.put_object(&visit, "inner", automerge::ObjType::Map)
        .expect("inner");
    tx.commit();
    let b = other.get_changes(&after_a).pop().expect("b");
    let mut expanded = automerge::ExpandedChange::from(&b);
    expanded.deps = base.get_heads();
    expanded.hash = None;
    let b = automerge::Change::from(expanded);
    world.device_sends(
        0,
        message_with(vec![b.raw_bytes().to_vec()], vec![b.hash()]),
    );
    assert!(
        matches!(
            world.refusals.last(),
            Some((_, Refusal::UnknownParent { .. }))
        ),
        "{:?}",
        world.refusals
    );
    assert!(!world.keeper.needs_reload());
    assert_eq!(world.keeper.heads(), base.get_heads());
}

#[test]
fn one_device_cannot_use_up_a_documents_actors() {
    let limits = KeeperLimits {
        max_actors_per_device: 3,
        ..KeeperLimits::default()
    };
    let mut world = World::new(2, limits);
    world.devices[1].record_visit("first");
    world.quiesce();
    // Device 0 adds its share, three actors.
    let base = world.keeper.document().fork();
    let changes = one_change_per_actor(&base, 3);
    let head = automerge::Change::from_bytes(changes.last().expect("one").clone())
        .expect("change")
        .hash();
    world.device_sends(0, message_with(changes, vec![head]));
    assert!(world.refusals.is_empty(), "{:?}", world.refusals);
    // A fourth is refused before anything applies; nothing to reload.
    let base = world.keeper.document().fork();
    let changes = one_change_per_actor(&base, 1);
    world.device_sends(0, message_with(changes, vec![]));
    assert!(
        matches!(
            world.refusals.last(),
            Some((
                _,
                Refusal::DeviceActors {
                    count: 3,
                    incoming: 1,
                    limit: 3
                }
            ))
        ),
        "{:?}",
        world.refusals
    );
    assert!(!world.keeper.needs_reload());
    assert_eq!(world.keeper.heads(), vec![head]);
    // Another device still brings a new actor (a restored phone, an
    // import): the first device's flood did not close the document.
    world.devices[1].record_visit("second");
    world.quiesce();
    assert!(Device::visit_keys(world.keeper.document()).contains(&"second".to_owned()));
    // The counts the store knows at load are where a device starts.
    let (id0, id1) = (world.devices[0].id, world.devices[1].id);
    world
        .keeper
        .set_device_actors([(id0, 3), (id1, 3)].into_iter().collect());
    let (key, id) = (world.devices[0].key.clone(), id0);
    world.keeper.add_peer(key, id, None, 1);
    world.refusals.clear();
    let base = world.keeper.document().fork();
    let changes = one_change_per_actor(&base, 1);
    world.device_sends(0, message_with(changes, vec![]));
    assert!(
        matches!(
            world.refusals.last(),
            Some((_, Refusal::DeviceActors { count: 3, .. }))
        ),
        "{:?}",
        world.refusals
    );
}

/// Convergence under random schedules (issue 15): devices record, correct
/// (the same field and different fields, concurrently) and delete typed
/// visits, and talk to the keeper in random orders with messages dropped,
/// duplicated and reordered, reconnections (partitions healed) and failed
/// commits. Once everyone reconnects and falls quiet: identical heads on
/// every device, the keeper and the store; identical typed content; a save
/// loads back to the same heads and content; and exactly the visits
/// created and not deleted are there.
mod convergence {
    use std::collections::BTreeSet;

    use automerge::transaction::Transactable;
    use proptest::prelude::*;

    use super::*;
    use crate::schema::log::{MonthlyLog, Visit, VisitKind};
    use crate::schema::{RecordId, delete_record, write_record};
    use crate::values::{Date, Fen};

    const DEVICES: usize = 3;
    const KEYS: u8 = 6;

    #[derive(Debug, Clone)]
    enum Step {
        /// Device records visit `key` (its own: keys are per device).
        Record { device: usize, key: u8 },
        /// Device corrects the notes of a visit it holds (the same field).
        Notes {
            device: usize,
            of: (usize, u8),
            text: u8,
        },
        /// Device corrects the cash aid of a visit it holds (another field).
        Aid {
            device: usize,
            of: (usize, u8),
            yuan: u8,
        },
        /// Device deletes a visit it holds.
        Delete { device: usize, of: (usize, u8) },
        /// Device sends its next message to the keeper, which may be lost
        /// or arrive twice.
        Send { device: usize, fate: Fate },
        /// The keeper's messages to a device arrive, some duplicated,
        /// reordered or dropped.
        Deliver { device: usize, fate: Fate },
        /// The connection drops; the device reconnects with a fresh state.
        Reconnect { device: usize },
        /// The store fails its next commit.
        FailNextCommit,
    }

    #[derive(Debug, Clone, Copy)]
    enum Fate {
        InOrder,
        Duplicated,
        Reversed,
        FirstDropped,
    }

    fn step() -> impl Strategy<Value = Step> {
        let device = 0..DEVICES;
        let of = (0..DEVICES, 0..KEYS);
        prop_oneof![
            3 => (device.clone(), 0..KEYS).prop_map(|(device, key)| Step::Record { device, key }),
            2 => (device.clone(), of.clone(), 0..4u8)
                .prop_map(|(device, of, text)| Step::Notes { device, of, text }),
            2 => (device.clone(), of.clone(), 0..100u8)
                .prop_map(|(device, of, yuan)| Step::Aid { device, of, yuan }),
            1 => (device.clone(), of).prop_map(|(device, of)| Step::Delete { device, of }),
            4 => (device.clone(), prop_oneof![
                6 => Just(Fate::InOrder),
                1 => Just(Fate::Duplicated),
                1 => Just(Fate::FirstDropped),
            ])
                .prop_map(|(device, fate)| Step::Send { device, fate }),
            4 => (device.clone(), prop_oneof![
                Just(Fate::InOrder),
                Just(Fate::Duplicated),
                Just(Fate::Reversed),
                Just(Fate::FirstDropped),
            ])
                .prop_map(|(device, fate)| Step::Deliver { device, fate }),
            1 => device.prop_map(|device| Step::Reconnect { device }),
            1 => Just(Step::FailNextCommit),
        ]
    }

    /// The id of device `device`'s visit `key`: fixed, so a schedule names
    /// the same visit however it runs.
    fn id((device, key): (usize, u8)) -> RecordId {
        let n = (u128::try_from(device).unwrap_or(0) << 8) | u128::from(key);
        // A UUIDv7 layout (version 7, RFC variant) around the number.
        let bits = (0x0190_0000_0000_7000_8000_0000_0000_0000_u128) | n;
        format!("{}", uuid::Uuid::from_u128(bits))
            .parse()
            .expect("a canonical UUIDv7")
    }

    fn day() -> Date {
        Date::from_ymd(2026, 11, 5).expect("date")
    }

    fn visit(device: usize) -> Visit {
        Visit {
            date: day(),
            member_id: id((9, 0)),
            kind: VisitKind::Routine,
            visitors: [format!("志愿者{device}")].into_iter().collect(),
            aid_cash: Fen::from_yuan(10),
            aid_goods: Fen::ZERO,
            goods_description: None,
            notes: Some("初次".into()),
            follow_up: None,
            recorded_by: Some(format!("device-{device}")),
        }
    }

    /// Puts one field of a visit the device holds; false if it holds none.
    fn put_field(
        doc: &mut Automerge,
        of: RecordId,
        field: &str,
        value: automerge::ScalarValue,
    ) -> bool {
        let mut tx = doc.transaction();
        let visit = match tx.get(automerge::ROOT, "visits") {
            Ok(Some((_, visits))) => match tx.get(&visits, of.to_string()) {
                Ok(Some((_, visit))) => visit,
                _ => return false,
            },
            _ => return false,
        };
        tx.put(&visit, field, value).expect("put");
        tx.commit();
        true
    }

    fn typed(doc: &Automerge) -> (BTreeMap<RecordId, Visit>, usize) {
        let log = MonthlyLog::load(doc);
        (log.visits, log.invalid.len())
    }

    fn run(steps: &[Step]) -> Result<(), TestCaseError> {
        let mut world = World::new(DEVICES, KeeperLimits::default());
        let (mut created, mut deleted) = (BTreeSet::new(), BTreeSet::new());
        for step in steps {
            match step.clone() {
                Step::Record { device, key } => {
                    let visit_id = id((device, key));
                    if created.insert(visit_id) {
                        let doc = &mut world.devices[device].doc;
                        let mut tx = doc.transaction();
                        write_record(&mut tx, visit_id, &visit(device)).expect("write");
                        tx.commit();
                    }
                }
                Step::Notes { device, of, text } => {
                    let notes = format!("更正{device}-{text}");
                    put_field(
                        &mut world.devices[device].doc,
                        id(of),
                        "notes",
                        notes.into(),
                    );
                }
                Step::Aid { device, of, yuan } => {
                    let fen = i64::from(yuan) * 100;
                    put_field(
                        &mut world.devices[device].doc,
                        id(of),
                        "aid_cash",
                        fen.into(),
                    );
                }
                Step::Delete { device, of } => {
                    let doc = &mut world.devices[device].doc;
                    let mut tx = doc.transaction();
                    if delete_record::<Visit, _>(&mut tx, id(of)).expect("delete") {
                        deleted.insert(id(of));
                    }
                    tx.commit();
                }
                Step::Send { device, fate } => {
                    let key = world.devices[device].key.clone();
                    if !world.keeper.has_peer(&key) {
                        // Reconnected (or refused): a fresh exchange.
                        world.devices[device].state = sync::State::new();
                        world
                            .keeper
                            .add_peer(key, world.devices[device].id, None, 1);
                    }
                    let d = &mut world.devices[device];
                    if let Some(message) = d.doc.generate_sync_message(&mut d.state) {
                        let data = message.encode();
                        match fate {
                            Fate::FirstDropped => {}
                            Fate::Duplicated => {
                                world.device_sends(device, data.clone());
                                world.device_sends(device, data);
                            }
                            Fate::InOrder | Fate::Reversed => world.device_sends(device, data),
                        }
                    }
                }
                Step::Deliver { device, fate } => {
                    let key = world.devices[device].key.clone();
                    let mut messages = world.inbox.remove(&key).unwrap_or_default();
                    match fate {
                        Fate::InOrder => {}
                        Fate::Duplicated => {
                            messages = messages
                                .iter()
                                .flat_map(|m| [m.clone(), m.clone()])
                                .collect()
                        }
                        Fate::Reversed => messages.reverse(),
                        Fate::FirstDropped => {
                            if !messages.is_empty() {
                                messages.remove(0);
                            }
                        }
                    }
                    let d = &mut world.devices[device];
                    for data in messages {
                        let message =
                            sync::Message::decode(&data).expect("keeper sends valid messages");
                        d.doc
                            .receive_sync_message(&mut d.state, message)
                            .expect("device applies");
                    }
                }
                Step::Reconnect { device } => {
                    let key = world.devices[device].key.clone();
                    world.keeper.remove_peer(&key);
                    world.inbox.remove(&key);
                }
                Step::FailNextCommit => world.store.fail_next = true,
            }
        }
        // Everyone reconnects (a dropped message may have stalled an
        // exchange, as a dropped connection would) and falls quiet.
        for device in &world.devices {
            world.keeper.remove_peer(&device.key);
        }
        world.inbox.clear();
        world.store.fail_next = false;
        prop_assert!(world.run(200), "did not quiesce");

        let heads = world.keeper.heads();
        let stored = world.store.load();
        prop_assert_eq!(
            stored.get_heads(),
            heads.clone(),
            "the store holds what was advertised"
        );
        let expected = typed(&stored);
        for device in &world.devices {
            prop_assert_eq!(device.doc.get_heads(), heads.clone());
            prop_assert_eq!(typed(&device.doc), expected.clone());
        }
        let reloaded = Automerge::load(&world.keeper.document().save()).expect("a save loads");
        prop_assert_eq!(reloaded.get_heads(), heads);
        prop_assert_eq!(typed(&reloaded), expected.clone());
        let present: BTreeSet<RecordId> = expected.0.keys().copied().collect();
        let alive: BTreeSet<RecordId> = created.difference(&deleted).copied().collect();
        prop_assert_eq!(present, alive, "exactly the visits created and not deleted");
        prop_assert_eq!(expected.1, 0, "no visit became invalid");
        Ok(())
    }

    proptest! {
        // 1,000 schedules per run; DOORSTEP_CONVERGENCE_CASES for more.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("DOORSTEP_CONVERGENCE_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1000),
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_schedules_converge_to_the_same_typed_content(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            run(&steps)?;
        }
    }
}
