//! Record validation: the input, read as a little program, writes a
//! record of any shape (any field, any value type, nested maps, lists and
//! text) into a monthly log and the roster under an id or a non-id; every
//! record must then be read as valid or reported invalid, never dropped
//! unseen and never a panic.
#![no_main]

use automerge::transaction::Transactable;
use automerge::{ActorId, ObjId, ObjType, ReadDoc, ScalarValue};
use doorstep_protocol::schema::log::MonthlyLog;
use doorstep_protocol::schema::roster::Roster;
use doorstep_protocol::schema::{Checked, DocumentKind, RecordId, check_record_in, genesis};
use doorstep_protocol::{Month, TenantId};
use libfuzzer_sys::fuzz_target;

const FIELDS: &[&str] = &[
    "date", "member_id", "kind", "visitors", "aid_cash", "aid_goods", "goods_description",
    "notes", "follow_up", "due", "done", "name", "kinds", "phone", "address", "x",
];

fn scalar(byte: u8, next: u8) -> ScalarValue {
    match byte % 8 {
        0 => ScalarValue::Str(format!("2026-11-{:02}", next % 40).into()),
        1 => ScalarValue::Int(i64::from(next as i8) * 1_000_003),
        2 => ScalarValue::Uint(u64::from(next)),
        3 => ScalarValue::F64(f64::from(next) / 3.0),
        4 => ScalarValue::Boolean(next % 2 == 0),
        5 => ScalarValue::Null,
        6 => ScalarValue::Str(RecordId::new_v7().to_string().into()),
        _ => ScalarValue::Str(["routine", "condolence", "", "志愿者"][usize::from(next % 4)].into()),
    }
}

fn write(tx: &mut automerge::transaction::Transaction<'_>, record: &ObjId, program: &[u8]) {
    let mut objects = vec![record.clone()];
    for op in program.chunks(3) {
        let [what, field, value] = [op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0)];
        let obj = objects[usize::from(what >> 4) % objects.len()].clone();
        let key = FIELDS[usize::from(field) % FIELDS.len()];
        let is_list = matches!(tx.object_type(&obj), Ok(ObjType::List));
        let made = match (what % 4, is_list) {
            (0, false) => tx.put(&obj, key, scalar(field, value)).map(|()| None),
            (1, false) => tx.put_object(&obj, key, [ObjType::Map, ObjType::List, ObjType::Text][usize::from(value % 3)]).map(Some),
            (2, false) => tx.delete(&obj, key).map(|()| None),
            (_, true) => tx.insert(&obj, 0, scalar(field, value)).map(|()| None),
            _ => Ok(None),
        };
        if let Ok(Some(made)) = made {
            objects.push(made);
        }
    }
}

fuzz_target!(|program: &[u8]| {
    let month: Month = "2026-11".parse().expect("month");
    let branch = TenantId::new_v7();
    for (kind, collection) in [
        (DocumentKind::MonthlyLog(month), "visits"),
        (DocumentKind::Roster, "members"),
    ] {
        let mut doc = genesis(branch, kind).with_actor(ActorId::from([1u8; 16]));
        let key = if program.first().is_some_and(|b| b % 5 == 0) {
            "not-an-id".to_owned()
        } else {
            RecordId::new_v7().to_string()
        };
        let mut tx = doc.transaction();
        let Ok(Some((_, map))) = tx.get(automerge::ROOT, collection) else {
            panic!("genesis has {collection}")
        };
        let Ok(record) = tx.put_object(&map, key.as_str(), ObjType::Map) else {
            return;
        };
        write(&mut tx, &record, program);
        tx.commit();
        let checked = check_record_in(&doc, kind, collection, &key);
        assert!(!matches!(checked, Checked::Absent), "a written record read as absent");
        // The collection load agrees: valid, or listed as invalid.
        let (valid, invalid) = match kind {
            DocumentKind::MonthlyLog(_) => {
                let log = MonthlyLog::load(&doc);
                (log.visits.len(), log.invalid.len())
            }
            DocumentKind::Roster => {
                let roster = Roster::load(&doc);
                (roster.members.len(), roster.invalid.len())
            }
        };
        assert_eq!(valid + invalid, 1, "the record was dropped unseen");
        assert_eq!(valid == 1, matches!(checked, Checked::Valid(..)));
    }
});
