//! An index of the monthly logs' records, kept in the local store: which
//! month holds each record, and each valid visit's date, member and open
//! follow-up. Reads that span months (follow-ups due, a member's history,
//! finding a record to correct or delete) look here and then load only the
//! months that hold an answer, instead of every month's document in turn
//! under the lock edits need.
//!
//! The rows of a document are rewritten in the same SQLite transaction as
//! the changes that touched them (an edit, or changes received from the
//! server), from the records `Automerge::diff` says changed, so the index
//! never disagrees with what is on disk. Logs stored before the index
//! existed are indexed once, on first use (`documents.indexed`).
//!
//! On disk the index is kept small (a day of visits is a few dozen bytes
//! of compacted Automerge each, and the index must not outweigh it): ids
//! are stored as their 16 bytes, months and days as small integers, and a
//! collection as its place in the monthly log's list (`StoredRow`).

use std::collections::BTreeSet;

use automerge::{Automerge, ChangeHash, ObjType, Prop, ReadDoc, Value};
use doorstep_protocol::schema::log::Visit;
use doorstep_protocol::schema::{
    Checked, DocumentKind, LOG_COLLECTIONS, Record, RecordId, check_record,
};
use doorstep_protocol::{Date, Month};
use uuid::Uuid;

/// One record's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub collection: &'static str,
    /// The record's map key (not necessarily a valid id: a broken record
    /// can still be found, to be deleted).
    pub key: String,
    /// A valid visit's date.
    pub visit_date: Option<Date>,
    /// A valid visit's member.
    pub member_id: Option<RecordId>,
    /// A valid visit's follow-up due date, if not done.
    pub follow_up_due: Option<Date>,
}

/// What to write for one document with its changes.
#[derive(Debug, Default)]
pub(crate) struct Update {
    /// The log's month: its rows are stored under it.
    pub month: Option<Month>,
    /// Every row of the document is replaced (and it counts as indexed).
    pub full: bool,
    /// The records whose rows are rewritten: deleted, then `rows` put.
    pub touched: Vec<(&'static str, String)>,
    pub rows: Vec<Row>,
}

fn collections(month: Month) -> &'static [&'static str] {
    DocumentKind::MonthlyLog(month).collections()
}

/// The row of the record at `collection`/`key`, `None` if it is absent.
fn row(doc: &Automerge, month: Month, collection: &'static str, key: &str) -> Option<Row> {
    let Ok(Some((Value::Object(ObjType::Map), map))) = doc.get(automerge::ROOT, collection) else {
        return None;
    };
    let Ok(Some(_)) = doc.get(&map, key) else {
        return None;
    };
    let mut row = Row {
        collection,
        key: key.to_owned(),
        visit_date: None,
        member_id: None,
        follow_up_due: None,
    };
    if collection == Visit::COLLECTION
        && let Checked::Valid(_, visit) = check_record::<Visit, _>(doc, &map, key, Some(month))
    {
        row.visit_date = Some(visit.date);
        row.member_id = Some(visit.member_id);
        row.follow_up_due = visit.follow_up.filter(|f| !f.done).map(|f| f.due);
    }
    Some(row)
}

/// Every row of a log.
pub(crate) fn full(doc: &Automerge, month: Month) -> Update {
    let mut rows = Vec::new();
    for collection in collections(month) {
        let Ok(Some((Value::Object(ObjType::Map), map))) = doc.get(automerge::ROOT, *collection)
        else {
            continue;
        };
        for key in doc.keys(&map) {
            rows.extend(row(doc, month, collection, &key));
        }
    }
    Update {
        month: Some(month),
        full: true,
        touched: Vec::new(),
        rows,
    }
}

/// The rows of the records that changed since `before` (heads `doc` holds).
pub(crate) fn delta(doc: &Automerge, month: Month, before: &[ChangeHash]) -> Update {
    if before.is_empty() {
        return full(doc, month);
    }
    let mut touched = BTreeSet::new();
    for patch in doc.diff(before, &doc.get_heads()) {
        let mut keys = patch.path.iter().filter_map(|(_, prop)| match prop {
            Prop::Map(key) => Some(key.clone()),
            Prop::Seq(_) => None,
        });
        let (collection, key) = match (keys.next(), keys.next(), &patch.action) {
            (Some(collection), Some(record), _) => (collection, record),
            (Some(collection), None, automerge::PatchAction::PutMap { key, .. })
            | (Some(collection), None, automerge::PatchAction::DeleteMap { key }) => {
                (collection, key.clone())
            }
            // A whole collection put or deleted at the root: rebuild.
            (None, None, _) => return full(doc, month),
            _ => continue,
        };
        if let Some(collection) = collections(month).iter().find(|c| **c == collection) {
            touched.insert((*collection, key));
        }
    }
    let rows = touched
        .iter()
        .filter_map(|(collection, key)| row(doc, month, collection, key))
        .collect();
    Update {
        month: Some(month),
        full: false,
        touched: touched.into_iter().collect(),
        rows,
    }
}

/// A month as stored: `year * 12 + month - 1`.
pub(crate) fn month_number(month: Month) -> i64 {
    i64::from(month.year()) * 12 + i64::from(month.month()) - 1
}

/// A date as stored: days since 1970-01-01 (two bytes in SQLite's record
/// format until the year 2059, where text would take ten).
pub(crate) fn day_number(date: Date) -> i64 {
    const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;
    i64::from(date.as_time().to_julian_day()) - UNIX_EPOCH_JULIAN_DAY
}

/// A monthly log's collection as stored: its place in the log's list,
/// which only ever grows at the end (the documents' schema is append-only).
pub(crate) fn collection_code(collection: &str) -> Option<i64> {
    LOG_COLLECTIONS
        .iter()
        .position(|c| *c == collection)
        .and_then(|at| i64::try_from(at).ok())
}

/// The collection code of the visits.
pub(crate) fn visits_code() -> i64 {
    collection_code(Visit::COLLECTION).unwrap_or_default()
}

/// A record key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoredKey {
    /// A key in the one form record ids take (canonical UUID): its 16 bytes.
    Id([u8; 16]),
    /// Any other key (a broken record, kept findable to be deleted) as text:
    /// SQLite never finds a text equal to a blob, so the two cannot mix.
    Other(String),
}

impl StoredKey {
    pub(crate) fn of(key: &str) -> StoredKey {
        match Uuid::try_parse(key) {
            Ok(id) if id.hyphenated().to_string() == key => StoredKey::Id(id.into_bytes()),
            _ => StoredKey::Other(key.to_owned()),
        }
    }
}

/// A key stored as 16 bytes, as the text record ids are written in.
pub(crate) fn key_text(bytes: &[u8]) -> Option<String> {
    Uuid::from_slice(bytes)
        .ok()
        .map(|id| id.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_codes_are_pinned() {
        // Stored codes: reordering the log's collections would misfile
        // every indexed record, so the order is pinned here.
        let codes: Vec<_> = ["visits", "activities", "trainings", "placements", "fund"]
            .iter()
            .map(|c| collection_code(c))
            .collect();
        assert_eq!(codes, [Some(0), Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(collection_code("members"), None);
        assert_eq!(visits_code(), 0);
    }

    #[test]
    fn dates_and_months_are_small_integers() {
        let day = |y, m, d| day_number(Date::from_ymd(y, m, d).expect("date"));
        assert_eq!(day(1970, 1, 1), 0);
        assert_eq!(day(2026, 12, 7), 20_794);
        assert!(day(2026, 2, 28) < day(2026, 3, 1));
        let month = |y, m| month_number(Month::new(y, m).expect("month"));
        assert_eq!(month(2026, 1) + 11, month(2026, 12));
        assert_eq!(month(2026, 12) + 1, month(2027, 1));
    }

    #[test]
    fn canonical_ids_are_stored_as_bytes_and_read_back_as_written() {
        let id = RecordId::new_v7().to_string();
        let StoredKey::Id(bytes) = StoredKey::of(&id) else {
            panic!("a record id is stored as bytes");
        };
        assert_eq!(key_text(&bytes), Some(id.clone()));
        // Not its one accepted form: kept as written, so it is still found.
        let upper = id.to_uppercase();
        assert_eq!(StoredKey::of(&upper), StoredKey::Other(upper.clone()));
        assert_eq!(StoredKey::of("x"), StoredKey::Other("x".into()));
        assert_eq!(key_text(b"short"), None);
    }
}
