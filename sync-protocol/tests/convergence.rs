//! Property: N in-memory peers that make random edits and sync over random
//! schedules reach identical heads and identical typed state, and no record
//! is lost.

use std::collections::{BTreeMap, BTreeSet};

use automerge::ActorId;
use doorstep_protocol::schema::log::{MonthlyLog, Visit, VisitKind};
use doorstep_protocol::schema::{DocumentKind, RecordId, delete_record, genesis, write_record};
use doorstep_protocol::session::DocSession;
use doorstep_protocol::{Date, Fen, Month, PeerId, TenantId};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Step {
    /// Peer records a new visit.
    Record { peer: usize, day: u8, cash: u32 },
    /// Peer changes the notes of the n-th visit it knows (a field edit).
    Annotate { peer: usize, nth: usize, text: u8 },
    /// Peer deletes the n-th visit it knows.
    Delete { peer: usize, nth: usize },
    /// Two peers exchange a few messages; a sync may stop half way.
    Sync { a: usize, b: usize, rounds: u8 },
}

fn step(peers: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..peers, 1u8..=28, 0u32..100_000).prop_map(|(peer, day, cash)| Step::Record { peer, day, cash }),
        2 => (0..peers, 0usize..8, any::<u8>()).prop_map(|(peer, nth, text)| Step::Annotate { peer, nth, text }),
        1 => (0..peers, 0usize..8).prop_map(|(peer, nth)| Step::Delete { peer, nth }),
        3 => (0..peers, 0..peers, 1u8..4).prop_map(|(a, b, rounds)| Step::Sync { a, b, rounds }),
    ]
}

fn peer_id(i: usize) -> PeerId {
    PeerId::new(format!("peer-{i}")).expect("peer id")
}

fn visits(session: &DocSession) -> BTreeMap<RecordId, Visit> {
    MonthlyLog::load(session.document()).visits
}

/// Up to `rounds` exchanges each way; true when both sides fell quiet.
fn exchange(replicas: &mut [DocSession], a: usize, b: usize, rounds: u8) -> bool {
    if a == b {
        return true;
    }
    for _ in 0..rounds {
        let to_b = replicas[a].generate(&peer_id(b), 0);
        if let Some(m) = &to_b {
            replicas[b].receive(&peer_id(a), m, 0).expect("receive");
        }
        let to_a = replicas[b].generate(&peer_id(a), 0);
        if let Some(m) = &to_a {
            replicas[a].receive(&peer_id(b), m, 0).expect("receive");
        }
        if to_a.is_none() && to_b.is_none() {
            return true;
        }
    }
    false
}

fn edit(session: &mut DocSession, f: impl FnOnce(&mut automerge::transaction::Transaction<'_>)) {
    let mut tx = session.document_mut().transaction();
    f(&mut tx);
    tx.commit();
}

fn run(peers: usize, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let branch = TenantId::from_uuid(Uuid::from_u128(7));
    let month: Month = "2026-02".parse().expect("month");
    let mut replicas: Vec<DocSession> = (0..peers)
        .map(|i| {
            let doc = genesis(branch, DocumentKind::MonthlyLog(month))
                .with_actor(ActorId::from([i as u8 + 1; 16]));
            let mut session = DocSession::new(doc, 0);
            for j in (0..peers).filter(|j| *j != i) {
                session.add_peer(peer_id(j), None, 0).expect("add peer");
            }
            session
        })
        .collect();
    let member = RecordId::new_v7();
    let mut created = BTreeSet::new();
    let mut deleted = BTreeSet::new();

    for s in steps {
        match s {
            Step::Record { peer, day, cash } => {
                let id = RecordId::new_v7();
                let v = Visit {
                    date: Date::from_ymd(2026, 2, day).expect("date"),
                    member_id: member,
                    kind: VisitKind::Routine,
                    visitors: BTreeSet::from([format!("peer-{peer}")]),
                    aid_cash: Fen(i64::from(cash)),
                    aid_goods: Fen::ZERO,
                    goods_description: None,
                    notes: None,
                    follow_up: None,
                    recorded_by: None,
                };
                edit(&mut replicas[peer], |tx| {
                    write_record(tx, id, &v).expect("write")
                });
                created.insert(id);
            }
            Step::Annotate { peer, nth, text } => {
                if let Some((id, v)) = visits(&replicas[peer]).into_iter().nth(nth) {
                    let v = Visit {
                        notes: Some(format!("note {text}")),
                        ..v
                    };
                    edit(&mut replicas[peer], |tx| {
                        write_record(tx, id, &v).expect("write")
                    });
                }
            }
            Step::Delete { peer, nth } => {
                if let Some(id) = visits(&replicas[peer]).into_keys().nth(nth) {
                    edit(&mut replicas[peer], |tx| {
                        delete_record::<Visit, _>(tx, id).expect("delete");
                    });
                    deleted.insert(id);
                }
            }
            Step::Sync { a, b, rounds } => {
                exchange(&mut replicas, a, b, rounds);
            }
        }
    }

    // A final schedule through peer 0, twice so news from the last peer
    // reaches the first ones.
    for _ in 0..2 {
        for i in 1..peers {
            prop_assert!(exchange(&mut replicas, 0, i, 64), "sync did not quiesce");
        }
    }
    let heads = replicas[0].heads();
    let state = visits(&replicas[0]);
    for r in &replicas[1..] {
        prop_assert_eq!(&r.heads(), &heads);
        prop_assert_eq!(&visits(r), &state);
    }
    let expected: BTreeSet<RecordId> = created.difference(&deleted).copied().collect();
    prop_assert_eq!(state.keys().copied().collect::<BTreeSet<_>>(), expected);
    prop_assert!(MonthlyLog::load(replicas[0].document()).invalid.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn peers_converge_without_losing_records(
        (peers, steps) in (2usize..=4).prop_flat_map(|n| (Just(n), prop::collection::vec(step(n), 1..40)))
    ) {
        run(peers, steps)?;
    }
}
