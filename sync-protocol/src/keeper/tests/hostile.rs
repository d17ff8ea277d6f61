//! Hostile document shapes by generator (issue 15): three devices send, in
//! a random order, changes nesting objects at random depths, changes by many
//! fresh actors, changes carrying an author footer at random sequence
//! numbers, and chains of orphans, while three honest devices record visits
//! at random moments (each one's first edit brings a new actor). After
//! every message, whatever the keeper took must keep the document within
//! its limits: no object deeper than `max_depth`, no more authors than
//! `max_document_actors`, no more queued orphans than `max_orphans`; a
//! refused message changes nothing; no message panics. At the end every
//! honest visit is in the document, unless the document's actors were all
//! taken (the three hostile devices' shares add up to more than the
//! document holds, so that limit binds too), and the store loads to the
//! keeper's heads. The hand-written tests each pin one of these findings; this one
//! finds any of them again from a random plan (see RELIABILITY.md for the
//! reverts that show it).

use std::collections::HashSet;

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, Value};
use proptest::prelude::*;

use super::*;

/// Small limits, so random plans reach past them in a few steps.
fn limits() -> KeeperLimits {
    KeeperLimits {
        max_depth: 8,
        max_document_actors: 8,
        max_actors_per_device: 4,
        max_orphans: 8,
        ..KeeperLimits::default()
    }
}

/// Devices 0 to 2 are hostile; the honest ones follow.
const HOSTILE: usize = 3;
const HONEST: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    /// A hostile device sends what `Shape` says.
    Hostile(usize, Shape),
    /// Honest device `n` (counted from the first honest one) records a
    /// visit and syncs until quiet.
    Honest(usize),
}

#[derive(Debug, Clone)]
enum Shape {
    /// A visit holding a chain of maps this many deep (the record itself
    /// sits at depth 2).
    Nest(usize),
    /// One change each by this many fresh actors, in one message.
    Actors(usize),
    /// A change with an author footer at this sequence number of a fresh
    /// actor (its earlier changes in the same message, footer-less).
    Authored(u64),
    /// A chain of this many changes whose first dependency never comes.
    Orphans(usize),
}

fn step() -> impl Strategy<Value = Step> {
    let shape = prop_oneof![
        (1usize..=14).prop_map(Shape::Nest),
        (1usize..=8).prop_map(Shape::Actors),
        (1u64..=3).prop_map(Shape::Authored),
        (1usize..=12).prop_map(Shape::Orphans),
    ];
    prop_oneof![
        7 => (0..HOSTILE, shape).prop_map(|(by, shape)| Step::Hostile(by, shape)),
        3 => (0..HONEST).prop_map(Step::Honest),
    ]
}

/// How deep the deepest object of `doc` sits (the root is 0).
fn deepest(doc: &Automerge) -> usize {
    fn walk(doc: &Automerge, obj: &ObjId, depth: usize) -> usize {
        let values: Vec<Option<(Value<'_>, ObjId)>> = match doc.object_type(obj) {
            Ok(ObjType::Map | ObjType::Table) => doc
                .keys(obj)
                .map(|key| doc.get(obj, key.as_str()).ok().flatten())
                .collect(),
            Ok(ObjType::List | ObjType::Text) => (0..doc.length(obj))
                .map(|i| doc.get(obj, i).ok().flatten())
                .collect(),
            Err(_) => Vec::new(),
        };
        let children: Vec<ObjId> = values
            .into_iter()
            .flatten()
            .filter(|(value, _)| matches!(value, Value::Object(_)))
            .map(|(_, id)| id)
            .collect();
        children
            .iter()
            .map(|child| walk(doc, child, depth + 1))
            .max()
            .unwrap_or(depth)
    }
    walk(doc, &automerge::ROOT, 0)
}

/// A change by `actor` on `doc`'s heads: a visit nesting `depth` maps.
fn nested(doc: &Automerge, actor: &ActorId, depth: usize) -> Vec<u8> {
    let mut fork = doc.fork().with_actor(actor.clone());
    let mut tx = fork.transaction();
    let Ok(Some((_, visits))) = tx.get(automerge::ROOT, "visits") else {
        panic!("no visits map")
    };
    let key = crate::schema::RecordId::new_v7().to_string();
    let mut obj = tx
        .put_object(&visits, key.as_str(), ObjType::Map)
        .expect("visit");
    for _ in 0..depth {
        obj = tx.put_object(&obj, "a", ObjType::Map).expect("nest");
    }
    tx.commit();
    fork.get_last_local_change()
        .expect("a change")
        .bytes()
        .into_owned()
}

/// `seq` changes by a fresh actor on `doc`'s heads, the last carrying an
/// author footer (Automerge 0.12 asserts `seq == 1` for those).
fn authored(doc: &Automerge, seq: u64) -> (Vec<Vec<u8>>, ChangeHash) {
    let mut fork = doc.fork().with_actor(ActorId::random());
    // Fresh values: a put that changes nothing makes no change.
    let fresh = || (rand_u128() >> 65) as i64;
    for _ in 1..seq {
        let mut tx = fork.transaction();
        tx.put(automerge::ROOT, "k", fresh()).expect("put");
        tx.commit();
    }
    let mut changes: Vec<automerge::Change> = fork.get_changes(&doc.get_heads());
    let mut tx = fork.transaction();
    tx.put(automerge::ROOT, "k", fresh()).expect("put");
    tx.commit();
    let last = fork.get_last_local_change().expect("a change");
    let mut expanded = automerge::ExpandedChange::from(&last);
    expanded.hash = None;
    let name = b"li-na";
    expanded.extra_bytes = [&[1, name.len() as u8][..], name].concat();
    let signed = automerge::Change::from(expanded);
    let hash = signed.hash();
    changes.push(signed);
    (
        changes
            .into_iter()
            .map(|mut c| c.bytes().into_owned())
            .collect(),
        hash,
    )
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut world = World::new(HOSTILE + HONEST, limits());
    let hostile: Vec<ActorId> = (0..HOSTILE).map(|_| ActorId::random()).collect();
    let mut recorded: Vec<(usize, String)> = Vec::new();
    // The authors each hostile device brought into the document.
    let mut brought: Vec<HashSet<ActorId>> = vec![HashSet::new(); HOSTILE];
    let authors_of = |doc: &Automerge| -> HashSet<ActorId> {
        doc.get_changes_meta(&[])
            .into_iter()
            .map(|m| m.actor.as_ref().clone())
            .collect()
    };
    for (n, step) in steps.iter().enumerate() {
        let before = world.keeper.heads();
        let refusals = world.refusals.len();
        let doc = world.keeper.document().fork();
        let message = match step {
            // Built on what the keeper holds, so the device's own actor's
            // sequence follows what it took.
            Step::Hostile(by, Shape::Nest(depth)) => Some((
                *by,
                message_with(vec![nested(&doc, &hostile[*by], *depth)], Vec::new()),
            )),
            Step::Hostile(by, Shape::Actors(count)) => Some((
                *by,
                message_with(one_change_per_actor(&doc, *count), Vec::new()),
            )),
            Step::Hostile(by, Shape::Authored(seq)) => {
                let (changes, hash) = authored(&doc, *seq);
                Some((*by, message_with(changes, vec![hash])))
            }
            Step::Hostile(by, Shape::Orphans(len)) => {
                let (changes, head) = orphan_chain(*len);
                Some((*by, message_with(changes, vec![head])))
            }
            Step::Honest(honest) => {
                let device = HOSTILE + honest;
                let key = format!("honest-{device}-{n}");
                world.devices[device].record_visit(&key);
                recorded.push((device, key));
                // Until quiet, or as far as a full round budget goes.
                world.run(50);
                None
            }
        };
        if let Some((by, data)) = message {
            let authors_before = authors_of(world.keeper.document());
            world.device_sends(by, data);
            brought[by].extend(
                authors_of(world.keeper.document())
                    .difference(&authors_before)
                    .cloned(),
            );
            prop_assert!(
                brought[by].len() <= limits().max_actors_per_device,
                "device {} brought {} authors",
                by,
                brought[by].len()
            );
            if world.refusals.len() > refusals {
                prop_assert_eq!(
                    world.keeper.heads(),
                    before,
                    "a refused message changed the document"
                );
            }
        }
        let keeper_doc = world.keeper.document();
        prop_assert!(
            deepest(keeper_doc) <= limits().max_depth,
            "after {:?}: an object {} deep",
            step,
            deepest(keeper_doc)
        );
        let authors = authors_of(keeper_doc);
        prop_assert!(
            authors.len() <= limits().max_document_actors,
            "after {:?}: {} authors",
            step,
            authors.len()
        );
        prop_assert!(
            world.keeper.orphans.len() <= limits().max_orphans,
            "after {:?}: {} orphans queued",
            step,
            world.keeper.orphans.len()
        );
    }
    // Everyone syncs to the end: every honest visit is in, and the store
    // holds what the keeper advertises.
    // A device shut out of a full document retries for good: no quiet then.
    let quiet = world.run(200);
    let keys = Device::visit_keys(world.keeper.document());
    for (device, key) in &recorded {
        let full = world.refusals.iter().any(|(peer, refusal)| {
            *peer == world.devices[*device].key && matches!(refusal, Refusal::DocumentActors { .. })
        });
        prop_assert!(
            keys.contains(key) || full,
            "honest visit {} is missing: {:?}",
            key,
            world.refusals
        );
    }
    let shut_out = world
        .refusals
        .iter()
        .any(|(_, refusal)| matches!(refusal, Refusal::DocumentActors { .. }));
    prop_assert!(quiet || shut_out, "did not quiesce");
    prop_assert_eq!(world.store.load().get_heads(), world.keeper.heads());
    Ok(())
}

proptest! {
    // 256 plans per run; DOORSTEP_HOSTILE_CASES for more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("DOORSTEP_HOSTILE_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn hostile_shapes_never_take_the_document_past_its_limits_nor_shut_honest_devices_out(
        steps in proptest::collection::vec(step(), 1..16)
    ) {
        run(&steps)?;
    }
}
