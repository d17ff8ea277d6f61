//! The branch documents and their typed records.
//!
//! A branch has one **roster** document (members, hardship register, mutual
//! aid pairings, volunteer teams) and one **log** document per month (visits,
//! activities, training, placements, hardship fund entries). Records live in
//! maps keyed by client-generated UUIDv7, never in lists, so concurrent
//! additions from offline devices never collide. Money is integer fen; dates
//! are ISO strings.
//!
//! Reading a document never panics on bad data: [`load_collection`] returns
//! the records that parse and validate, and an [`InvalidRecord`] for each one
//! that does not, so a branch secretary can be shown what to fix. Whether a
//! record counts is decided in one place, [`check_record`], which the server's
//! projection and a device's lists both use, so the figures an office sees and
//! the records a volunteer sees never disagree.

mod conflicts;
mod fields;
mod genesis;
pub mod log;
pub mod roster;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, Value};
use uuid::Uuid;

use crate::values::{Date, Month};

pub use conflicts::{ConflictedField, conflicted_fields, display_value};
pub use fields::{FieldError, FieldReader, FieldWriter};
pub use genesis::{DocumentKind, GENESIS_ACTOR, LOG_COLLECTIONS, genesis};

/// The id of a record inside a document: a UUIDv7 made by the device.
///
/// Its text form is exactly one string per id (lowercase, hyphenated), and
/// only that form parses: records are found by the string, so an id that
/// `Uuid::try_parse` would also read as `{...}`, `urn:uuid:...`, uppercase or
/// without hyphens would name a record no lookup by id can find.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RecordId(Uuid);

/// A string that is not a record id in its one accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a canonical UUIDv7 (lowercase, hyphenated): {0:?}")]
pub struct RecordIdError(String);

impl RecordId {
    pub fn new_v7() -> Self {
        RecordId(Uuid::now_v7())
    }

    pub const fn from_uuid(id: Uuid) -> Self {
        RecordId(id)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for RecordId {
    type Err = RecordIdError;

    /// Accepts only the canonical form of a version 7, RFC 4122 UUID.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let refuse = || RecordIdError(s.chars().take(64).collect());
        // The canonical form is 36 ASCII characters; check before parsing.
        if s.len() != 36 {
            return Err(refuse());
        }
        let id = Uuid::try_parse(s).map_err(|_| refuse())?;
        let mut canonical = Uuid::encode_buffer();
        if id.get_version() != Some(uuid::Version::SortRand)
            || id.get_variant() != uuid::Variant::RFC4122
            || id.hyphenated().encode_lower(&mut canonical) != s
        {
            return Err(refuse());
        }
        Ok(RecordId(id))
    }
}

/// The problem listed for a record whose map key is not a record id.
pub const NOT_A_RECORD_KEY: &str = "record key is not a canonical UUIDv7";

/// A record type stored in one root map of a document.
pub trait Record: Sized {
    /// The root map holding records of this type.
    const COLLECTION: &'static str;

    /// Reads a record; shape errors only (missing fields, wrong types).
    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError>;

    /// Writes the record's fields, leaving unchanged fields untouched.
    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError>;

    /// Rules beyond shape (non-negative money, consistent counts), each
    /// with the field it is about (the Rust field name, nested fields joined
    /// with `.`), so an app can point at the input to fix.
    fn field_problems(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// [`Record::field_problems`] without the fields: each string is one
    /// problem, phrased for a branch secretary.
    fn problems(&self) -> Vec<String> {
        self.field_problems().into_iter().map(|(_, p)| p).collect()
    }

    /// The day a log record happened, which must fall in its log's month
    /// (or it would be counted in the wrong period); `None` for records
    /// that are not dated.
    fn dated(&self) -> Option<Date> {
        None
    }
}

/// One record of a collection, read by its map key and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked<R> {
    /// No record at that key (never written, or deleted).
    Absent,
    /// A record that counts.
    Valid(RecordId, R),
    /// Present, but not counted: each string is one problem.
    Invalid(Vec<String>),
}

/// Reads and checks the record at `key` of the collection map `collection`:
/// a canonical UUIDv7 key, a map, the record's shape, its own rules and, in a
/// monthly log (`month`), its date inside the month.
pub fn check_record<R: Record, D: ReadDoc>(
    doc: &D,
    collection: &ObjId,
    key: &str,
    month: Option<Month>,
) -> Checked<R> {
    let value = match doc.get(collection, key) {
        Ok(Some((value, obj))) => (value, obj),
        Ok(None) | Err(_) => return Checked::Absent,
    };
    let Ok(id) = key.parse::<RecordId>() else {
        return Checked::Invalid(vec![NOT_A_RECORD_KEY.to_owned()]);
    };
    let (Value::Object(ObjType::Map), obj) = value else {
        return Checked::Invalid(vec!["record is not a map".to_owned()]);
    };
    let record = match R::read(&FieldReader::new(
        doc,
        obj,
        format!("{}.{key}", R::COLLECTION),
    )) {
        Ok(record) => record,
        Err(e) => return Checked::Invalid(vec![e.to_string()]),
    };
    let mut problems = record.problems();
    if let (Some(month), Some(date)) = (month, record.dated())
        && date.month() != month
    {
        problems.push(format!("dated {date}, outside the log's month {month}"));
    }
    if problems.is_empty() {
        Checked::Valid(id, record)
    } else {
        Checked::Invalid(problems)
    }
}

/// [`check_record`] for a collection named at run time (from a patch's
/// path, say) in a document of `kind`: the record's type is its
/// collection's, and a log's records must fall in its month. A value under
/// a key of a collection this kind of document does not have is invalid;
/// no collection map at all means the record is absent.
pub fn check_record_in<D: ReadDoc>(
    doc: &D,
    kind: DocumentKind,
    collection: &str,
    key: &str,
) -> Checked<()> {
    use log::{Activity, FundEntry, Placement, Training, Visit};
    use roster::{HardshipEntry, Member, Pairing, Team};
    fn erased<R>(checked: Checked<R>) -> Checked<()> {
        match checked {
            Checked::Absent => Checked::Absent,
            Checked::Valid(id, _) => Checked::Valid(id, ()),
            Checked::Invalid(problems) => Checked::Invalid(problems),
        }
    }
    let Ok(Some((Value::Object(ObjType::Map), map))) = doc.get(automerge::ROOT, collection) else {
        return Checked::Absent;
    };
    let month = match kind {
        DocumentKind::Roster => None,
        DocumentKind::MonthlyLog(month) => Some(month),
    };
    if !kind.collections().contains(&collection) {
        return match doc.get(&map, key) {
            Ok(Some(_)) => Checked::Invalid(vec![format!(
                "{collection} is not a collection of this document"
            )]),
            _ => Checked::Absent,
        };
    }
    match collection {
        Member::COLLECTION => erased(check_record::<Member, D>(doc, &map, key, None)),
        HardshipEntry::COLLECTION => erased(check_record::<HardshipEntry, D>(doc, &map, key, None)),
        Pairing::COLLECTION => erased(check_record::<Pairing, D>(doc, &map, key, None)),
        Team::COLLECTION => erased(check_record::<Team, D>(doc, &map, key, None)),
        Visit::COLLECTION => erased(check_record::<Visit, D>(doc, &map, key, month)),
        Activity::COLLECTION => erased(check_record::<Activity, D>(doc, &map, key, month)),
        Training::COLLECTION => erased(check_record::<Training, D>(doc, &map, key, month)),
        Placement::COLLECTION => erased(check_record::<Placement, D>(doc, &map, key, month)),
        FundEntry::COLLECTION => erased(check_record::<FundEntry, D>(doc, &map, key, month)),
        _ => match doc.get(&map, key) {
            Ok(Some(_)) => Checked::Invalid(vec![format!("{collection} is not a collection")]),
            _ => Checked::Absent,
        },
    }
}

/// A record that is present in a document but failed to read or validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    pub collection: &'static str,
    /// The map key; not necessarily a valid id.
    pub key: String,
    pub problems: Vec<String>,
}

/// Every valid record of one collection, and the invalid ones.
#[derive(Debug)]
pub struct Loaded<R> {
    pub records: BTreeMap<RecordId, R>,
    pub invalid: Vec<InvalidRecord>,
}

/// Reads one collection record by record, so one bad record costs only itself.
pub fn load_collection<R: Record, D: ReadDoc>(doc: &D) -> Loaded<R> {
    load_collection_of_month(doc, None)
}

/// [`load_collection`] for a monthly log: a record dated outside `month` is
/// invalid.
pub fn load_collection_of_month<R: Record, D: ReadDoc>(doc: &D, month: Option<Month>) -> Loaded<R> {
    let mut loaded = Loaded {
        records: BTreeMap::new(),
        invalid: Vec::new(),
    };
    let collection = match doc.get(automerge::ROOT, R::COLLECTION) {
        Ok(Some((Value::Object(ObjType::Map), id))) => id,
        _ => return loaded,
    };
    for key in doc.keys(&collection) {
        match check_record::<R, D>(doc, &collection, &key, month) {
            Checked::Absent => {}
            Checked::Valid(id, record) => {
                loaded.records.insert(id, record);
            }
            Checked::Invalid(problems) => loaded.invalid.push(InvalidRecord {
                collection: R::COLLECTION,
                key,
                problems,
            }),
        }
    }
    loaded
}

/// Reads one record by id.
pub fn read_record<R: Record, D: ReadDoc>(doc: &D, id: RecordId) -> Result<Option<R>, FieldError> {
    let Ok(Some((Value::Object(ObjType::Map), collection))) =
        doc.get(automerge::ROOT, R::COLLECTION)
    else {
        return Ok(None);
    };
    let key = id.to_string();
    match doc.get(&collection, key.as_str()) {
        Ok(Some((Value::Object(ObjType::Map), obj))) => R::read(&FieldReader::new(
            doc,
            obj,
            format!("{}.{key}", R::COLLECTION),
        ))
        .map(Some),
        _ => Ok(None),
    }
}

/// Creates or updates a record. Only fields whose value changed are written.
pub fn write_record<R: Record, T: Transactable>(
    tx: &mut T,
    id: RecordId,
    record: &R,
) -> Result<(), AutomergeError> {
    let collection = match tx.get(automerge::ROOT, R::COLLECTION)? {
        Some((Value::Object(ObjType::Map), id)) => id,
        _ => tx.put_object(automerge::ROOT, R::COLLECTION, ObjType::Map)?,
    };
    let mut root = FieldWriter::new(tx, collection);
    let mut w = root.child(&id.to_string())?;
    record.write(&mut w)
}

/// Deletes a record; a deleted record stops counting everywhere.
pub fn delete_record<R: Record, T: Transactable>(
    tx: &mut T,
    id: RecordId,
) -> Result<bool, AutomergeError> {
    let Some((Value::Object(ObjType::Map), collection)) = tx.get(automerge::ROOT, R::COLLECTION)?
    else {
        return Ok(false);
    };
    let key = id.to_string();
    if tx.get(&collection, key.as_str())?.is_none() {
        return Ok(false);
    }
    tx.delete(&collection, key.as_str())?;
    Ok(true)
}

/// Declares an enum stored as a snake_case string.
macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        #[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {:?}",
                        stringify!($name),
                        other.chars().take(40).collect::<String>()
                    )),
                }
            }
        }
    };
}
pub(crate) use string_enum;

#[cfg(test)]
mod tests;
