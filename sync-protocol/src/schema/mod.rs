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
//! that does not, so a branch secretary can be shown what to fix.

mod conflicts;
mod fields;
mod genesis;
pub mod log;
pub mod roster;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjType, ReadDoc, Value};
use uuid::Uuid;

pub use conflicts::{ConflictedField, conflicted_fields, display_value};
pub use fields::{FieldError, FieldReader, FieldWriter};
pub use genesis::{DocumentKind, GENESIS_ACTOR, genesis};

/// The id of a record inside a document: a UUIDv7 made by the device.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RecordId(Uuid);

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
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(RecordId)
    }
}

/// A record type stored in one root map of a document.
pub trait Record: Sized {
    /// The root map holding records of this type.
    const COLLECTION: &'static str;

    /// Reads a record; shape errors only (missing fields, wrong types).
    fn read<D: ReadDoc>(r: &FieldReader<'_, D>) -> Result<Self, FieldError>;

    /// Writes the record's fields, leaving unchanged fields untouched.
    fn write<T: Transactable>(&self, w: &mut FieldWriter<'_, T>) -> Result<(), AutomergeError>;

    /// Rules beyond shape (non-negative money, consistent counts). Each
    /// returned string is one problem, phrased for a branch secretary.
    fn problems(&self) -> Vec<String> {
        Vec::new()
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
    let mut loaded = Loaded {
        records: BTreeMap::new(),
        invalid: Vec::new(),
    };
    let collection = match doc.get(automerge::ROOT, R::COLLECTION) {
        Ok(Some((Value::Object(ObjType::Map), id))) => id,
        _ => return loaded,
    };
    for key in doc.keys(&collection) {
        let invalid = |problems| InvalidRecord {
            collection: R::COLLECTION,
            key: key.clone(),
            problems,
        };
        let id = match key.parse::<RecordId>() {
            Ok(id) => id,
            Err(_) => {
                loaded
                    .invalid
                    .push(invalid(vec!["record key is not a UUID".into()]));
                continue;
            }
        };
        let obj = match doc.get(&collection, key.as_str()) {
            Ok(Some((Value::Object(ObjType::Map), obj))) => obj,
            _ => {
                loaded
                    .invalid
                    .push(invalid(vec!["record is not a map".into()]));
                continue;
            }
        };
        let reader = FieldReader::new(doc, obj, format!("{}.{key}", R::COLLECTION));
        match R::read(&reader) {
            Ok(record) => {
                let problems = record.problems();
                if problems.is_empty() {
                    loaded.records.insert(id, record);
                } else {
                    loaded.invalid.push(invalid(problems));
                }
            }
            Err(e) => loaded.invalid.push(invalid(vec![e.to_string()])),
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
