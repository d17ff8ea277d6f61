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

#[test]
fn record_ids_parse_only_in_their_canonical_v7_form() {
    let id = RecordId::new_v7();
    let text = id.to_string();
    assert_eq!(text.parse::<RecordId>(), Ok(id));
    let uuid = *id.as_uuid();
    let other_forms = [
        text.to_uppercase(),
        format!("{{{text}}}"),
        format!("urn:uuid:{text}"),
        uuid.simple().to_string(),
        format!(" {text}"),
        // Version 4 and the nil UUID, canonically written.
        Uuid::new_v4().to_string(),
        Uuid::nil().to_string(),
        Uuid::from_u128(42).to_string(),
    ];
    for form in other_forms {
        assert!(
            form.parse::<RecordId>().is_err(),
            "{form:?} should not parse"
        );
    }
    // A v7 with the variant bits of another family is not one either.
    let mut bytes = *uuid.as_bytes();
    bytes[8] &= 0x3f;
    assert!(
        Uuid::from_bytes(bytes)
            .to_string()
            .parse::<RecordId>()
            .is_err()
    );
}

#[test]
fn records_keyed_in_a_non_canonical_form_are_invalid_never_counted() {
    let mut doc = device(1, DocumentKind::MonthlyLog(november()));
    let member = RecordId::new_v7();
    let good = RecordId::new_v7();
    let mut tx = doc.transaction();
    write_record(&mut tx, good, &visit("2026-11-05", member)).expect("write");
    let (_, visits) = tx
        .get(automerge::ROOT, "visits")
        .expect("get")
        .expect("visits");
    let id = RecordId::new_v7();
    let keys = [
        id.to_string().to_uppercase(),
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        id.as_uuid().simple().to_string(),
        Uuid::new_v4().to_string(),
    ];
    for key in &keys {
        let obj = tx.put_object(&visits, key, ObjType::Map).expect("put");
        let mut w = FieldWriter::new(&mut tx, obj);
        visit("2026-11-06", member).write(&mut w).expect("write");
    }
    tx.commit();

    let log = MonthlyLog::load(&doc);
    assert_eq!(log.visits.keys().copied().collect::<Vec<_>>(), vec![good]);
    let mut listed: Vec<&str> = log.invalid.iter().map(|i| i.key.as_str()).collect();
    listed.sort_unstable();
    let mut expected: Vec<&str> = keys.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(listed, expected);
    assert!(
        log.invalid
            .iter()
            .all(|i| i.problems == vec![NOT_A_RECORD_KEY.to_owned()]),
        "{:#?}",
        log.invalid
    );
}

#[test]
fn amounts_and_counts_too_large_to_sum_are_invalid() {
    use super::log::{Activity, FundDirection, FundEntry, Training, TrainingLevel};

    let member = RecordId::new_v7();
    let at_bound = Visit {
        aid_cash: Fen::MAX_AMOUNT,
        aid_goods: Fen::MAX_AMOUNT,
        ..visit("2026-11-05", member)
    };
    assert!(at_bound.problems().is_empty());
    for huge in [Fen(Fen::MAX_AMOUNT.as_i64() + 1), Fen(i64::MAX)] {
        let cash = Visit {
            aid_cash: huge,
            ..visit("2026-11-05", member)
        };
        assert_eq!(cash.problems().len(), 1, "{huge:?}");
        let goods = Visit {
            aid_goods: huge,
            ..visit("2026-11-05", member)
        };
        assert_eq!(goods.problems().len(), 1, "{huge:?}");
        let fund = FundEntry {
            date: date("2026-11-05"),
            direction: FundDirection::Donation,
            amount: huge,
            member_id: None,
            purpose: None,
            note: None,
        };
        assert_eq!(fund.problems().len(), 1, "{huge:?}");
        assert!(
            FundEntry {
                amount: Fen::MAX_AMOUNT,
                ..fund
            }
            .problems()
            .is_empty()
        );
    }

    let training = |attendance| Training {
        date: date("2026-11-05"),
        level: TrainingLevel::Community,
        topic: "劳动法".into(),
        attendance,
        attendees: BTreeSet::new(),
    };
    assert!(training(Training::MAX_ATTENDANCE).problems().is_empty());
    assert_eq!(training(Training::MAX_ATTENDANCE + 1).problems().len(), 1);
    assert_eq!(training(i64::MAX).problems().len(), 1);

    let activity = |people: i64, each: i64| Activity {
        date: date("2026-11-05"),
        team_id: None,
        title: "敬老".into(),
        minutes: (0..people).map(|p| (format!("p{p}"), each)).collect(),
    };
    assert!(activity(10_000, 24 * 60).problems().is_empty());
    assert_eq!(activity(10_001, 24 * 60).problems().len(), 1);
    // Every entry out of range, and their sum past i64::MAX: described, no panic.
    let wild = activity(3, i64::MAX);
    assert_eq!(wild.problems().len(), 3);
    assert_eq!(wild.total_minutes(), i64::MAX);

    // And a document holding such a visit lists it as invalid.
    let mut doc = device(1, DocumentKind::MonthlyLog(november()));
    let mut tx = doc.transaction();
    let id = RecordId::new_v7();
    write_record(
        &mut tx,
        id,
        &Visit {
            aid_cash: Fen(i64::MAX),
            ..visit("2026-11-05", member)
        },
    )
    .expect("write");
    tx.commit();
    let log = MonthlyLog::load(&doc);
    assert!(log.visits.is_empty());
    assert_eq!(log.invalid.len(), 1);
    assert_eq!(log.invalid[0].key, id.to_string());
}

#[test]
fn check_record_in_finds_the_type_by_the_collection_name() {
    let kind = DocumentKind::MonthlyLog(november());
    let mut doc = device(1, kind);
    let good = RecordId::new_v7();
    let early = RecordId::new_v7();
    let mut tx = doc.transaction();
    write_record(&mut tx, good, &visit("2026-11-05", RecordId::new_v7())).expect("write");
    write_record(&mut tx, early, &visit("2026-10-05", RecordId::new_v7())).expect("write");
    let (_, visits) = tx
        .get(automerge::ROOT, "visits")
        .expect("get")
        .expect("visits");
    tx.put(&visits, "not-an-id", 1_i64).expect("put");
    let stray = tx
        .put_object(automerge::ROOT, "visitz", automerge::ObjType::Map)
        .expect("put");
    tx.put(&stray, good.to_string(), 1_i64).expect("put");
    // A roster collection written into a log.
    let misplaced = tx
        .put_object(automerge::ROOT, "hardship", automerge::ObjType::Map)
        .expect("put");
    tx.put_object(&misplaced, good.to_string(), automerge::ObjType::Map)
        .expect("put");
    tx.commit();
    assert!(matches!(
        check_record_in(&doc, kind, "visits", &good.to_string()),
        Checked::Valid(id, ()) if id == good
    ));
    assert!(matches!(
        check_record_in(&doc, kind, "visits", &early.to_string()),
        Checked::Invalid(_)
    ));
    assert!(matches!(
        check_record_in(&doc, kind, "visits", "not-an-id"),
        Checked::Invalid(_)
    ));
    assert!(matches!(
        check_record_in(&doc, kind, "visitz", &good.to_string()),
        Checked::Invalid(_)
    ));
    assert_eq!(
        check_record_in(&doc, kind, "visits", &RecordId::new_v7().to_string()),
        Checked::Absent
    );
    assert!(matches!(
        check_record_in(&doc, kind, "hardship", &good.to_string()),
        Checked::Invalid(_)
    ));
    // A roster collection's map is not in a log.
    assert_eq!(
        check_record_in(&doc, kind, "members", &good.to_string()),
        Checked::Absent
    );
}

#[test]
fn check_record_tells_absent_valid_and_invalid_apart() {
    let mut doc = device(1, DocumentKind::MonthlyLog(november()));
    let good = RecordId::new_v7();
    let early = RecordId::new_v7();
    let mut tx = doc.transaction();
    write_record(&mut tx, good, &visit("2026-11-05", RecordId::new_v7())).expect("write");
    write_record(&mut tx, early, &visit("2026-10-05", RecordId::new_v7())).expect("write");
    tx.commit();
    let (_, visits) = doc
        .get(automerge::ROOT, "visits")
        .expect("get")
        .expect("visits");
    let month = Some(november());
    assert!(matches!(
        check_record::<Visit, _>(&doc, &visits, &good.to_string(), month),
        Checked::Valid(id, _) if id == good
    ));
    assert!(matches!(
        check_record::<Visit, _>(&doc, &visits, &early.to_string(), month),
        Checked::Invalid(p) if p.len() == 1 && p[0].contains("outside the log's month")
    ));
    // Without a month (a roster's rules), the date is not checked.
    assert!(matches!(
        check_record::<Visit, _>(&doc, &visits, &early.to_string(), None),
        Checked::Valid(..)
    ));
    assert_eq!(
        check_record::<Visit, _>(&doc, &visits, &RecordId::new_v7().to_string(), month),
        Checked::Absent
    );
}

#[test]
fn each_problem_names_its_field() {
    use super::log::{FollowUp, FundDirection, FundEntry};

    let member = RecordId::new_v7();
    let visit = Visit {
        aid_cash: Fen(-1),
        aid_goods: Fen(-1),
        follow_up: Some(FollowUp {
            due: date("2026-11-01"),
            action: "call".into(),
            done: false,
        }),
        ..visit("2026-11-05", member)
    };
    let fields: Vec<&str> = visit.field_problems().into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, vec!["aid_cash", "aid_goods", "follow_up.due"]);
    assert_eq!(
        visit.problems().len(),
        3,
        "the plain list is the same problems"
    );
    let fund = FundEntry {
        date: date("2026-11-05"),
        direction: FundDirection::Payment,
        amount: Fen::ZERO,
        member_id: None,
        purpose: None,
        note: None,
    };
    assert_eq!(fund.field_problems()[0].0, "amount");
}

/// Record validation under fuzzing (issue 15): documents whose records
/// hold any value in any field (what a stock client or a bug can write):
/// loading never panics, and every record is either loaded or reported
/// invalid, never dropped unseen.
mod fuzz {
    use automerge::{ObjId, ScalarValue};
    use proptest::prelude::*;

    use super::*;

    /// Field names the records use, and some they do not.
    const FIELDS: &[&str] = &[
        "date",
        "member_id",
        "kind",
        "visitors",
        "aid_cash",
        "aid_goods",
        "goods_description",
        "notes",
        "follow_up",
        "due",
        "action",
        "done",
        "recorded_by",
        "name",
        "kinds",
        "birthday",
        "phone",
        "address",
        "household_size",
        "status",
        "needs",
        "joined",
        "people",
        "x",
    ];

    #[derive(Debug, Clone)]
    enum Value {
        Scalar(ScalarValue),
        Map(Vec<(usize, Value)>),
        List(Vec<Value>),
        Text(String),
    }

    fn scalar() -> impl Strategy<Value = ScalarValue> {
        prop_oneof![
            any::<String>().prop_map(|s| ScalarValue::Str(s.into())),
            Just(ScalarValue::Str("2026-11-05".into())),
            Just(ScalarValue::Str("routine".into())),
            Just(ScalarValue::Str(RecordId::new_v7().to_string().into())),
            any::<i64>().prop_map(ScalarValue::Int),
            any::<u64>().prop_map(ScalarValue::Uint),
            any::<f64>().prop_map(ScalarValue::F64),
            any::<bool>().prop_map(ScalarValue::Boolean),
            Just(ScalarValue::Null),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(ScalarValue::Bytes),
            any::<i64>().prop_map(ScalarValue::counter),
            any::<i64>().prop_map(ScalarValue::Timestamp),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            4 => scalar().prop_map(Value::Scalar),
            1 => "[a-z0-9 -]{0,12}".prop_map(Value::Text),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec((0..FIELDS.len(), inner.clone()), 0..4)
                    .prop_map(Value::Map),
                proptest::collection::vec(inner, 0..4).prop_map(Value::List),
            ]
        })
    }

    /// (key is a record id, shape: 0..=7 a map of fields, 8 a string, 9 a
    /// list, fields).
    type Written = (bool, u8, Vec<(usize, Value)>);

    fn record() -> impl Strategy<Value = Written> {
        (
            any::<bool>(),
            0u8..10,
            proptest::collection::vec((0..FIELDS.len(), value()), 0..10),
        )
    }

    fn put(
        tx: &mut automerge::transaction::Transaction<'_>,
        obj: &ObjId,
        key: &str,
        value: &Value,
    ) {
        let result = match value {
            Value::Scalar(s) => tx.put(obj, key, s.clone()),
            Value::Text(text) => tx
                .put_object(obj, key, ObjType::Text)
                .and_then(|t| tx.splice_text(&t, 0, 0, text)),
            Value::Map(fields) => tx.put_object(obj, key, ObjType::Map).map(|m| {
                for (field, v) in fields {
                    put(tx, &m, FIELDS[*field], v);
                }
            }),
            Value::List(items) => tx.put_object(obj, key, ObjType::List).map(|l| {
                for (i, v) in items.iter().enumerate() {
                    let _ = match v {
                        Value::Scalar(s) => tx.insert(&l, i, s.clone()),
                        _ => tx.insert_object(&l, i, ObjType::Map).map(|_| ()),
                    };
                }
            }),
        };
        // A put the document refuses (never expected) is not the point here.
        let _ = result;
    }

    fn document(kind: DocumentKind, collection: &str, records: &[Written]) -> (Automerge, usize) {
        let mut doc = device(7, kind);
        let mut tx = doc.transaction();
        let map = match tx.get(automerge::ROOT, collection) {
            Ok(Some((_, map))) => map,
            _ => tx
                .put_object(automerge::ROOT, collection, ObjType::Map)
                .expect("collection"),
        };
        let mut keys = BTreeSet::new();
        for (n, (canonical, shape, fields)) in records.iter().enumerate() {
            let key = if *canonical {
                RecordId::new_v7().to_string()
            } else {
                format!("not-an-id-{n}")
            };
            keys.insert(key.clone());
            match shape {
                8 => {
                    tx.put(&map, key.as_str(), "not a record").expect("put");
                    continue;
                }
                9 => {
                    tx.put_object(&map, key.as_str(), ObjType::List)
                        .expect("list");
                    continue;
                }
                _ => {}
            }
            let record = tx
                .put_object(&map, key.as_str(), ObjType::Map)
                .expect("record");
            for (field, value) in fields {
                put(&mut tx, &record, FIELDS[*field], value);
            }
        }
        tx.commit();
        (doc, keys.len())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_visit_loads_or_is_reported_invalid(records in proptest::collection::vec(record(), 0..6)) {
            let (doc, written) = document(DocumentKind::MonthlyLog(november()), "visits", &records);
            let log = MonthlyLog::load(&doc);
            let invalid = log.invalid.iter().filter(|r| r.collection == "visits").count();
            prop_assert_eq!(log.visits.len() + invalid, written);
        }

        #[test]
        fn any_member_loads_or_is_reported_invalid(records in proptest::collection::vec(record(), 0..6)) {
            let (doc, written) = document(DocumentKind::Roster, "members", &records);
            let roster = Roster::load(&doc);
            let invalid = roster.invalid.iter().filter(|r| r.collection == "members").count();
            prop_assert_eq!(roster.members.len() + invalid, written);
        }
    }
}
