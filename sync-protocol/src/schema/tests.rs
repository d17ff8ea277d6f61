use std::collections::BTreeSet;

use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType, ReadDoc};
use uuid::Uuid;

use super::log::{MonthlyLog, Visit, VisitKind};
use super::roster::{Member, MemberKind, Roster};
use super::*;
use crate::ids::TenantId;
use crate::values::{Date, Fen, Month};

fn branch() -> TenantId {
    TenantId::from_uuid(Uuid::from_u128(42))
}

fn november() -> Month {
    "2026-11".parse().expect("month")
}

fn date(s: &str) -> Date {
    s.parse().expect("date")
}

fn visit(day: &str, member: RecordId) -> Visit {
    Visit {
        date: date(day),
        member_id: member,
        kind: VisitKind::HolidayCondolence,
        visitors: BTreeSet::from(["volunteer-a".to_string()]),
        aid_cash: Fen::from_yuan(500),
        aid_goods: Fen(12_050),
        goods_description: Some("rice and oil".into()),
        notes: None,
        follow_up: None,
        recorded_by: None,
    }
}

fn device(actor: u8, kind: DocumentKind) -> Automerge {
    genesis(branch(), kind).with_actor(ActorId::from([actor; 16]))
}

#[test]
fn two_replicas_build_the_same_genesis() {
    let kind = DocumentKind::MonthlyLog(november());
    let a = genesis(branch(), kind);
    let b = genesis(branch(), kind);
    assert_eq!(a.get_heads(), b.get_heads());
    assert_eq!(a.get_heads().len(), 1);
    assert_ne!(
        a.get_heads(),
        genesis(branch(), DocumentKind::MonthlyLog(november().next())).get_heads()
    );
    assert_ne!(
        a.get_heads(),
        genesis(branch(), DocumentKind::Roster).get_heads()
    );
}

#[test]
fn visits_recorded_offline_on_two_devices_merge_into_one_map() {
    let kind = DocumentKind::MonthlyLog(november());
    let (mut a, mut b) = (device(1, kind), device(2, kind));
    let member = RecordId::new_v7();
    let (va, vb) = (RecordId::new_v7(), RecordId::new_v7());
    let mut tx = a.transaction();
    write_record(&mut tx, va, &visit("2026-11-03", member)).expect("write");
    tx.commit();
    let mut tx = b.transaction();
    write_record(&mut tx, vb, &visit("2026-11-04", member)).expect("write");
    tx.commit();

    a.merge(&mut b).expect("merge");
    let log = MonthlyLog::load(&a);
    assert_eq!(log.visits.len(), 2, "both visits kept: {:?}", log.invalid);
    assert_eq!(log.visits[&va], visit("2026-11-03", member));
    assert!(log.invalid.is_empty());
    // The `visits` map itself did not conflict: both came from the genesis.
    let (_, visits) = a
        .get(automerge::ROOT, "visits")
        .expect("get")
        .expect("visits");
    assert_eq!(a.get_all(automerge::ROOT, "visits").expect("get").len(), 1);
    assert_eq!(a.keys(&visits).count(), 2);
}

#[test]
fn concurrent_edits_to_different_fields_both_survive() {
    let mut a = device(1, DocumentKind::Roster);
    let id = RecordId::new_v7();
    let member = Member {
        name: "王秀兰".into(),
        kinds: BTreeSet::from([MemberKind::Hardship]),
        ..Member::default()
    };
    let mut tx = a.transaction();
    write_record(&mut tx, id, &member).expect("write");
    tx.commit();
    let mut b = a.fork().with_actor(ActorId::from([2; 16]));

    let mut tx = a.transaction();
    write_record(
        &mut tx,
        id,
        &Member {
            phone: Some("13900000001".into()),
            ..member.clone()
        },
    )
    .expect("write");
    tx.commit();
    let mut tx = b.transaction();
    let mut kinds = member.kinds.clone();
    kinds.insert(MemberKind::Retired);
    write_record(
        &mut tx,
        id,
        &Member {
            kinds,
            ..member.clone()
        },
    )
    .expect("write");
    tx.commit();

    a.merge(&mut b).expect("merge");
    let got = read_record::<Member, _>(&a, id)
        .expect("read")
        .expect("present");
    assert_eq!(got.phone.as_deref(), Some("13900000001"));
    assert!(got.kinds.contains(&MemberKind::Retired) && got.kinds.contains(&MemberKind::Hardship));
}

#[test]
fn invalid_records_are_reported_not_loaded_and_never_panic() {
    let mut doc = device(1, DocumentKind::MonthlyLog(november()));
    let member = RecordId::new_v7();
    let good = RecordId::new_v7();
    let negative = RecordId::new_v7();
    let wrong_month = RecordId::new_v7();
    let mut tx = doc.transaction();
    write_record(&mut tx, good, &visit("2026-11-05", member)).expect("write");
    write_record(
        &mut tx,
        negative,
        &Visit {
            aid_cash: Fen(-1),
            ..visit("2026-11-05", member)
        },
    )
    .expect("write");
    write_record(&mut tx, wrong_month, &visit("2026-10-31", member)).expect("write");
    // Shapes no writer of ours produces: a non-UUID key, a scalar record,
    // a bad date, an unknown kind.
    let (_, visits) = tx
        .get(automerge::ROOT, "visits")
        .expect("get")
        .expect("visits");
    let bad = tx
        .put_object(&visits, "not-a-uuid", ObjType::Map)
        .expect("put");
    tx.put(&bad, "date", "2026-11-01").expect("put");
    tx.put(&visits, RecordId::new_v7().to_string(), 7)
        .expect("put");
    let bad_date = tx
        .put_object(&visits, RecordId::new_v7().to_string(), ObjType::Map)
        .expect("put");
    tx.put(&bad_date, "date", "2026-11-31").expect("put");
    let unknown_kind = tx
        .put_object(&visits, RecordId::new_v7().to_string(), ObjType::Map)
        .expect("put");
    tx.put(&unknown_kind, "date", "2026-11-02").expect("put");
    tx.put(&unknown_kind, "member_id", member.to_string())
        .expect("put");
    tx.put(&unknown_kind, "kind", "séance").expect("put");
    tx.commit();

    let log = MonthlyLog::load(&doc);
    assert_eq!(log.visits.keys().copied().collect::<Vec<_>>(), vec![good]);
    assert_eq!(log.invalid.len(), 6, "{:#?}", log.invalid);
    assert!(
        log.invalid
            .iter()
            .all(|i| i.collection == "visits" && !i.problems.is_empty())
    );
}

#[test]
fn text_strings_and_float_numbers_from_js_clients_are_read() {
    let mut doc = device(1, DocumentKind::Roster);
    let id = RecordId::new_v7();
    let mut tx = doc.transaction();
    let (_, members) = tx
        .get(automerge::ROOT, "members")
        .expect("get")
        .expect("members");
    let m = tx
        .put_object(&members, id.to_string(), ObjType::Map)
        .expect("put");
    let name = tx.put_object(&m, "name", ObjType::Text).expect("put");
    tx.splice_text(&name, 0, 0, "李四").expect("splice");
    let kinds = tx.put_object(&m, "kinds", ObjType::Map).expect("put");
    tx.put(&kinds, "no_post", true).expect("put");
    tx.commit();
    let roster = Roster::load(&doc);
    assert!(roster.invalid.is_empty(), "{:?}", roster.invalid);
    assert_eq!(roster.members[&id].name, "李四");
    assert_eq!(
        roster.members[&id].kinds,
        BTreeSet::from([MemberKind::NoPost])
    );
}

#[test]
fn rewriting_an_unchanged_record_makes_no_change() {
    let mut doc = device(1, DocumentKind::MonthlyLog(november()));
    let id = RecordId::new_v7();
    let v = visit("2026-11-05", RecordId::new_v7());
    let mut tx = doc.transaction();
    write_record(&mut tx, id, &v).expect("write");
    tx.commit();
    let heads = doc.get_heads();
    let mut tx = doc.transaction();
    write_record(&mut tx, id, &v).expect("write");
    assert_eq!(tx.pending_ops(), 0);
    tx.commit();
    assert_eq!(doc.get_heads(), heads);
}

#[test]
fn deleting_a_record_removes_it() {
    let mut doc = device(1, DocumentKind::MonthlyLog(november()));
    let id = RecordId::new_v7();
    let mut tx = doc.transaction();
    write_record(&mut tx, id, &visit("2026-11-05", RecordId::new_v7())).expect("write");
    tx.commit();
    let mut tx = doc.transaction();
    assert!(delete_record::<Visit, _>(&mut tx, id).expect("delete"));
    assert!(!delete_record::<Visit, _>(&mut tx, id).expect("delete"));
    tx.commit();
    assert!(MonthlyLog::load(&doc).visits.is_empty());
}
