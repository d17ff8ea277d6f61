//! The admission harness under a 512 MB address-space limit (issue 15): a
//! process of its own (each integration test file is one), limited before
//! any input is read, feeds `inspect_sync_message` the production limits
//! with real sync messages, mutated ones and hand-made bombs. An allocation
//! past the limit aborts the process and fails the test; admission must
//! bound what it holds by its limits, not by the input's claims.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType};
use doorstep_protocol::admission::{AdmissionLimits, inspect_sync_message};
use doorstep_protocol::mutation::{Mutation, mutate};
use proptest::prelude::*;

const LIMIT_BYTES: u64 = 512 * 1024 * 1024;

fn limit_address_space() {
    rlimit::setrlimit(rlimit::Resource::AS, LIMIT_BYTES, LIMIT_BYTES)
        .expect("setrlimit(RLIMIT_AS)");
}

/// Real sync messages: a first message, one carrying changes, one carrying
/// a whole document.
fn corpus() -> Vec<Vec<u8>> {
    let mut doc = Automerge::new().with_actor(ActorId::from([1u8; 16]));
    let mut tx = doc.transaction();
    let visits = tx
        .put_object(automerge::ROOT, "visits", ObjType::Map)
        .expect("map");
    for n in 0..50 {
        let visit = tx
            .put_object(&visits, format!("v{n}"), ObjType::Map)
            .expect("visit");
        tx.put(&visit, "notes", format!("第{n}次走访"))
            .expect("notes");
        tx.put(&visit, "aid_cash", n * 100).expect("aid");
    }
    tx.commit();
    let mut messages = Vec::new();
    let mut empty = Automerge::new();
    let (mut ours, mut theirs) = (sync::State::new(), sync::State::new());
    for _ in 0..4 {
        if let Some(m) = doc.generate_sync_message(&mut ours) {
            let bytes = m.clone().encode();
            messages.push(bytes);
            empty.receive_sync_message(&mut theirs, m).expect("applies");
        }
        if let Some(m) = empty.generate_sync_message(&mut theirs) {
            messages.push(m.clone().encode());
            doc.receive_sync_message(&mut ours, m).expect("applies");
        }
    }
    messages
}

/// Inputs that claim far more than they carry.
fn bombs() -> Vec<Vec<u8>> {
    let leb = |mut v: u64| {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    };
    let mut bombs = Vec::new();
    // Heads and need lists claiming 2^60 hashes.
    let mut claim = vec![0x42];
    claim.extend(leb(1 << 60));
    bombs.push(claim);
    // A have with a bloom filter claiming 2^32-1 entries of 2^32-1 bits.
    let mut bloom = vec![0x42, 0x00, 0x00, 0x01, 0x00];
    bloom.extend(leb(20));
    bloom.extend(leb(u64::from(u32::MAX)));
    bloom.extend(leb(u64::from(u32::MAX)));
    bloom.extend(leb(u64::from(u32::MAX)));
    bombs.push(bloom);
    // A chunk list claiming 2^40 chunks of 2^40 bytes.
    let mut chunks = vec![0x42, 0x00, 0x00, 0x00];
    chunks.extend(leb(1 << 40));
    chunks.extend(leb(1 << 40));
    bombs.push(chunks);
    bombs
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

#[test]
fn admission_stays_within_512_mb_whatever_it_is_sent() {
    let corpus = corpus();
    let limits = AdmissionLimits::default();
    limit_address_space();
    for message in &corpus {
        inspect_sync_message(message, &limits).expect("a real message is admitted");
    }
    for bomb in bombs() {
        assert!(inspect_sync_message(&bomb, &limits).is_err());
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1024,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(any::<usize>(), proptest::collection::vec(mutation(), 1..8)),
            |(pick, mutations)| {
                let mut message = corpus[pick % corpus.len()].clone();
                mutate(&mut message, &mutations);
                let _ = inspect_sync_message(&message, &limits);
                Ok(())
            },
        )
        .expect("no mutated message breaks admission");
}
