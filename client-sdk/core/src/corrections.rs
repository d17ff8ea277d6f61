//! Correction notes: who corrected or deleted a log record, when, why, and
//! what the record was before.
//!
//! A deleted record's key is removed from its collection, not marked: the
//! schema already defines absence as "not counted" ([`check_record`] returns
//! `Absent`), so the server's projection drops its rows on the merge that
//! carries the deletion, and every reader (older SDKs, the server, exports)
//! agrees without learning a tombstone flag. What a tombstone would have
//! kept, the record as it was, the note keeps (`before`, as JSON), so the
//! history a branch secretary sees does not depend on digging through
//! Automerge's change history. A correction made offline on another device
//! while the record was deleted here edits fields of a map no longer
//! reachable: the record stays deleted, and both notes are kept.
//!
//! Notes live in the log's root map `corrections`, keyed by a fresh UUIDv7,
//! beside the collections (the projection only reads the collections). Two
//! devices making a month's first correction offline both create that map;
//! Automerge keeps both, and [`load`] reads every concurrent one, so no note
//! is lost to the conflict.
//!
//! [`check_record`]: doorstep_protocol::schema::check_record

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value};
use doorstep_protocol::schema::RecordId;

use crate::queries::LogRecordKind;
use crate::tree::Node;

/// The log's root map holding the notes.
pub(crate) const NOTES: &str = "corrections";

/// What was done to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum CorrectionAction {
    Corrected,
    Deleted,
}

impl CorrectionAction {
    fn as_str(&self) -> &'static str {
        match self {
            CorrectionAction::Corrected => "corrected",
            CorrectionAction::Deleted => "deleted",
        }
    }
}

/// One correction or deletion of a log record.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Correction {
    /// The note's own id.
    pub id: RecordId,
    pub kind: LogRecordKind,
    pub record_id: RecordId,
    pub action: CorrectionAction,
    /// The device that made it.
    pub by_device: String,
    pub at_unix_secs: i64,
    pub why: String,
    /// The record as it was before, as JSON (field names as stored).
    pub before: String,
}

const KINDS: [LogRecordKind; 5] = [
    LogRecordKind::Visit,
    LogRecordKind::Activity,
    LogRecordKind::Training,
    LogRecordKind::Placement,
    LogRecordKind::FundEntry,
];

/// The record at `key` of `collection` as JSON, or `null` if absent.
pub(crate) fn record_json<D: ReadDoc>(doc: &D, collection: &str, key: &str) -> String {
    let record = match doc.get(automerge::ROOT, collection) {
        Ok(Some((Value::Object(ObjType::Map), obj))) => Node::read_key(doc, &obj, key),
        _ => None,
    };
    record
        .map(|n| n.to_json())
        .unwrap_or(serde_json::Value::Null)
        .to_string()
}

/// Writes a note into the log the transaction edits.
pub(crate) fn write<T: Transactable>(tx: &mut T, note: &Correction) -> Result<(), AutomergeError> {
    let notes = match tx.get(automerge::ROOT, NOTES)? {
        Some((Value::Object(ObjType::Map), obj)) => obj,
        _ => tx.put_object(automerge::ROOT, NOTES, ObjType::Map)?,
    };
    let obj = tx.put_object(&notes, note.id.to_string(), ObjType::Map)?;
    tx.put(&obj, "collection", note.kind.collection())?;
    tx.put(&obj, "record_id", note.record_id.to_string())?;
    tx.put(&obj, "action", note.action.as_str())?;
    tx.put(&obj, "by_device", note.by_device.as_str())?;
    tx.put(&obj, "at", note.at_unix_secs)?;
    tx.put(&obj, "why", note.why.as_str())?;
    tx.put(&obj, "before", note.before.as_str())?;
    Ok(())
}

/// Every note of one log; notes that do not read are skipped (they are
/// history, not records that count).
pub(crate) fn load<D: ReadDoc>(doc: &D) -> Vec<Correction> {
    let mut notes = Vec::new();
    let Ok(maps) = doc.get_all(automerge::ROOT, NOTES) else {
        return notes;
    };
    for (value, obj) in maps {
        if !matches!(value, Value::Object(ObjType::Map)) {
            continue;
        }
        for key in doc.keys(&obj) {
            if let Some(note) = read_note(doc, &obj, &key)
                && !notes.iter().any(|n: &Correction| n.id == note.id)
            {
                notes.push(note);
            }
        }
    }
    notes
}

fn read_note<D: ReadDoc>(doc: &D, notes: &ObjId, key: &str) -> Option<Correction> {
    let id: RecordId = key.parse().ok()?;
    let Ok(Some((Value::Object(ObjType::Map), obj))) = doc.get(notes, key) else {
        return None;
    };
    let text = |field: &str| match doc.get(&obj, field) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    };
    let collection = text("collection")?;
    let kind = KINDS.into_iter().find(|k| k.collection() == collection)?;
    let action = match text("action")?.as_str() {
        "corrected" => CorrectionAction::Corrected,
        "deleted" => CorrectionAction::Deleted,
        _ => return None,
    };
    let at_unix_secs = match doc.get(&obj, "at") {
        Ok(Some((Value::Scalar(s), _))) => s.as_i64().unwrap_or(0),
        _ => 0,
    };
    Some(Correction {
        id,
        kind,
        record_id: text("record_id")?.parse().ok()?,
        action,
        by_device: text("by_device").unwrap_or_default(),
        at_unix_secs,
        why: text("why").unwrap_or_default(),
        before: text("before").unwrap_or_else(|| "null".into()),
    })
}

#[cfg(test)]
mod tests {
    use automerge::{AutoCommit, Automerge};

    use super::*;

    fn note(why: &str) -> Correction {
        Correction {
            id: RecordId::new_v7(),
            kind: LogRecordKind::Visit,
            record_id: RecordId::new_v7(),
            action: CorrectionAction::Corrected,
            by_device: "d1".into(),
            at_unix_secs: 1_700_000_000,
            why: why.into(),
            before: "{}".into(),
        }
    }

    #[test]
    fn notes_from_two_devices_that_both_created_the_map_are_all_read()
    -> Result<(), Box<dyn std::error::Error>> {
        let base = AutoCommit::new();
        let mut a = base.clone().with_actor(automerge::ActorId::random());
        let mut b = base.clone().with_actor(automerge::ActorId::random());
        let (na, nb) = (note("typo in the amount"), note("wrong member"));
        write(&mut a, &na)?;
        write(&mut b, &nb)?;
        a.merge(&mut b)?;
        let doc: Automerge = a.document().clone();
        let mut read = load(&doc);
        read.sort_by_key(|n| n.id);
        let mut expected = vec![na, nb];
        expected.sort_by_key(|n| n.id);
        assert_eq!(read, expected);
        Ok(())
    }
}
