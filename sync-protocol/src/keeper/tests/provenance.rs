//! The keeper keeps one form of an imported edit: the original or a stand-in
//! for it, whichever came first.

use automerge::transaction::CommitOptions;

use super::*;
use crate::provenance::stand_in_message;

/// The change that records visit `key` on a fork of `base` by a new actor,
/// with `message`.
fn visit_change(base: &Automerge, key: &str, message: Option<String>) -> automerge::Change {
    let mut doc = base.fork().with_actor(ActorId::random());
    let mut tx = doc.transaction();
    let visits = match tx.get(automerge::ROOT, "visits") {
        Ok(Some((_, id))) => id,
        other => panic!("no visits map: {other:?}"),
    };
    let visit = tx
        .put_object(&visits, key, automerge::ObjType::Map)
        .expect("visit");
    tx.put(&visit, "note", "hello").expect("note");
    let options = match message {
        Some(message) => CommitOptions::default().with_message(message),
        None => CommitOptions::default(),
    };
    let (hash, _) = tx.commit_with(options);
    doc.get_change_by_hash(&hash.expect("a change"))
        .expect("the change")
}

/// Sends one change from device `i`; true if the keeper stored it.
fn send(world: &mut World, i: usize, mut change: automerge::Change) -> bool {
    let before = world.refusals.len();
    let hash = change.hash();
    world.device_sends(
        i,
        message_with(vec![change.bytes().into_owned()], vec![hash]),
    );
    world.refusals.len() == before && world.store.chunks.contains_key(&hash)
}

fn refused_as_kept(world: &World, hash: ChangeHash) -> bool {
    world
        .refusals
        .iter()
        .any(|(_, r)| *r == Refusal::KeptInAnotherForm { hash })
}

#[test]
fn a_stand_in_for_an_original_the_document_keeps_is_refused() {
    let mut world = World::new(2, KeeperLimits::default());
    let original = visit_change(&base(), "v", None);
    let stand_in = visit_change(&base(), "v", Some(stand_in_message(&original.hash())));
    assert!(send(&mut world, 0, original.clone()));
    assert!(!send(&mut world, 1, stand_in.clone()));
    assert!(refused_as_kept(&world, stand_in.hash()));
    // Rolled back: the document holds the original alone.
    let doc = world.keeper.document();
    assert!(doc.get_change_meta_by_hash(&stand_in.hash()).is_none());
    assert_eq!(Device::visit_keys(doc), vec!["v".to_owned()]);
    let visits = doc
        .get(automerge::ROOT, "visits")
        .expect("read")
        .expect("map")
        .1;
    assert_eq!(doc.get_all(&visits, "v").expect("read").len(), 1);
}

#[test]
fn an_original_whose_stand_in_the_document_keeps_is_refused_also_after_a_reload() {
    let mut world = World::new(4, KeeperLimits::default());
    let original = visit_change(&base(), "v", None);
    let stand_in = visit_change(&base(), "v", Some(stand_in_message(&original.hash())));
    assert!(send(&mut world, 1, stand_in.clone()));
    // A fresh keeper (the server restarted) knows it from the store alone.
    world.keeper = Keeper::new(
        world.store.load(),
        world.store.stored_bytes(),
        KeeperLimits::default(),
        1,
    );
    for d in &world.devices {
        world.keeper.add_peer(d.key.clone(), d.id, None, 1);
    }
    assert!(!send(&mut world, 0, original.clone()));
    assert!(refused_as_kept(&world, original.hash()));
    // A second stand-in for the same original (another phone imported the
    // same file) is refused as well; an unrelated stand-in is not (from
    // another device: a refused one's connection ends).
    let second = visit_change(&base(), "v", Some(stand_in_message(&original.hash())));
    assert!(!send(&mut world, 2, second.clone()));
    assert!(refused_as_kept(&world, second.hash()));
    let other = visit_change(&base(), "w", None);
    let for_other = visit_change(&base(), "w", Some(stand_in_message(&other.hash())));
    assert!(send(&mut world, 3, for_other));
}

#[test]
fn an_original_and_its_stand_in_in_one_message_are_refused() {
    let mut world = World::new(1, KeeperLimits::default());
    let mut original = visit_change(&base(), "v", None);
    let mut stand_in = visit_change(&base(), "v", Some(stand_in_message(&original.hash())));
    world.device_sends(
        0,
        message_with(
            vec![original.bytes().into_owned(), stand_in.bytes().into_owned()],
            {
                let mut heads = vec![original.hash(), stand_in.hash()];
                heads.sort();
                heads
            },
        ),
    );
    assert!(
        world
            .refusals
            .iter()
            .any(|(_, r)| matches!(r, Refusal::KeptInAnotherForm { .. })),
        "{:?}",
        world.refusals
    );
    assert!(world.store.chunks.is_empty());
}
