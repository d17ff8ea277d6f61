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

use std::collections::BTreeSet;

use automerge::{Automerge, ChangeHash, ObjType, Prop, ReadDoc, Value};
use doorstep_protocol::Month;
use doorstep_protocol::schema::log::Visit;
use doorstep_protocol::schema::{Checked, DocumentKind, Record, check_record};

/// One record's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub collection: &'static str,
    /// The record's map key (not necessarily a valid id: a broken record
    /// can still be found, to be deleted).
    pub key: String,
    /// A valid visit's date (`YYYY-MM-DD`).
    pub visit_date: Option<String>,
    /// A valid visit's member.
    pub member_id: Option<String>,
    /// A valid visit's follow-up due date (`YYYY-MM-DD`), if not done.
    pub follow_up_due: Option<String>,
}

/// What to write for one document with its changes.
#[derive(Debug, Default)]
pub(crate) struct Update {
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
        row.visit_date = Some(visit.date.to_string());
        row.member_id = Some(visit.member_id.to_string());
        row.follow_up_due = visit
            .follow_up
            .filter(|f| !f.done)
            .map(|f| f.due.to_string());
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
        full: false,
        touched: touched.into_iter().collect(),
        rows,
    }
}
